"""The documents cite tests as proof of what they promise: each citation must name one."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITATION = re.compile(r"\btests/[\w/]+\.py(?:::\w+)+")


def _citations() -> list[str]:
    return sorted({found for path in DOCUMENTS for found in CITATION.findall(path.read_text())})


def test_the_documents_cite_tests() -> None:
    assert len(_citations()) > 50  # the pattern still finds them


@pytest.mark.parametrize("citation", _citations())
def test_a_cited_test_exists(citation: str) -> None:
    path, *names = citation.split("::")
    target: object = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    for name in names:
        assert hasattr(target, name), f"{citation}: no {name} in {target!r}"
        target = getattr(target, name)
    assert names[-1].startswith("test_"), citation
    assert callable(target), citation
