"""The documents cite tests as proof of what they promise: each citation must name one;
and a recipe the README prints, run as printed."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocketClose

from coatcheck import CookieConfig, MemoryStore, SessionConfig, SessionMiddleware
from coatcheck.testing import TEST_BASE_URL

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


def _readme_block(defining: str) -> str:
    """The README's Python block that contains ``defining``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (found,) = [block for block in blocks if defining in block]
    return found


@pytest.mark.anyio
@pytest.mark.parametrize("root_path", ["", "/shop"])
async def test_the_nicegui_guard_refuses_a_stranger_under_a_root_path_too(root_path: str) -> None:
    """The README's guard for NiceGUI's Socket.IO, run as printed: behind a proxy's
    prefix (uvicorn --root-path), ``scope["path"]`` carries the prefix."""
    app = FastAPI()
    app.mount("/_nicegui_ws", PlainTextResponse("socket.io handshake"))
    namespace = {
        "app": app,
        "store": MemoryStore(),
        "config": SessionConfig(cookie=CookieConfig(name="__Host-app")),
        "SessionMiddleware": SessionMiddleware,
        "PlainTextResponse": PlainTextResponse,
        "WebSocketClose": WebSocketClose,
        "ASGIApp": object,
        "Scope": object,
        "Receive": object,
        "Send": object,
    }
    exec(_readme_block("def signed_in_sockets"), namespace)  # noqa: S102  # the README's own code
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url=TEST_BASE_URL) as stranger:
        answer = await stranger.get(f"{root_path}/_nicegui_ws/socket.io/?EIO=4")
    assert answer.status_code == 401, answer.text
