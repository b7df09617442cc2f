"""Cross-site websocket hijacking, over a real uvicorn server and a real websocket client:
a handshake from another origin never reaches the session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from coatcheck import CookieConfig, MemoryStore, SessionConfig, SessionMiddleware
from coatcheck.fastapi import SessionDep

from .conftest import served_here

pytestmark = pytest.mark.anyio


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, str]:
        session.login("alice")
        session["secret"] = "alice's notes"
        return {}

    @app.websocket("/ws")
    async def notes(websocket: WebSocket, session: SessionDep) -> None:
        await websocket.accept()
        await websocket.send_text(session.get("secret", "-"))
        await websocket.close()

    config = SessionConfig(cookie=CookieConfig(secure=False))
    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=config)
    return app


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with served_here(make_app()) as port:
        yield f"127.0.0.1:{port}"


async def read_notes(host: str, cookie: str, origin: str) -> str | int:
    """What the socket says to a page at ``origin``, or the handshake's HTTP status."""
    try:
        async with connect(
            f"ws://{host}/ws", origin=origin, additional_headers={"cookie": cookie}
        ) as socket:
            return str(await socket.recv())
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_a_page_on_another_origin_cannot_open_the_users_socket(server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}") as client:
        response = await client.post("/login", headers={"origin": f"http://{server}"})
    cookie = f"session={response.cookies['session']}"
    assert await read_notes(server, cookie, f"http://{server}") == "alice's notes"
    assert await read_notes(server, cookie, "http://evil.example") == 403
    assert await read_notes(server, cookie, f"http://sibling.{server}") == 403
