"""coatcheck under ASGI servers other than uvicorn, run as their users run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from coatcheck._context import ASYNCIO_ONLY

from .conftest import free_port

pytestmark = pytest.mark.e2e

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from coatcheck import MemoryStore, SessionConfig, SessionMiddleware


async def home(request):
    return PlainTextResponse("hi")


app = SessionMiddleware(
    Starlette(routes=[Route("/", home)]), MemoryStore(), SessionConfig(secret_keys=["k" * 32])
)
"""


def test_hypercorn_on_trio_is_stopped_at_start_up(tmp_path: Path) -> None:
    """Not left serving with every session request a 500, as a raised error would leave
    it (ASGI has a server go on without a lifespan then): it is told start-up failed."""
    (tmp_path / "trio_app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    bind = f"127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", bind, "trio_app:app"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its workers go with it when the test stops it
    )
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"hypercorn went on serving without its lifespan:\n{output}")
    assert "Lifespan failure in startup" in output, output
    assert ASYNCIO_ONLY in output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
