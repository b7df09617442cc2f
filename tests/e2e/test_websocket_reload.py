"""``await session.reload()`` in a websocket, over a real uvicorn server, a real websocket
client and a SQLite file: the open socket sees the cart another tab fills."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from coatcheck import CookieConfig, SessionConfig, SQLiteStore

from ..test_reload import make_app
from .conftest import served_here

pytestmark = pytest.mark.anyio


async def test_an_open_websocket_sees_what_another_tab_saved(tmp_path: Path) -> None:
    config = SessionConfig(cookie=CookieConfig(secure=False), secret_keys=["k" * 32])
    store = SQLiteStore(tmp_path / "sessions.db")
    async with served_here(make_app(store, config)) as port:
        origin = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=origin, headers={"origin": origin}) as tab:
            assert (await tab.post("/add/apple")).status_code == 200
            cookie = f"session={tab.cookies['session']}"
            async with connect(
                f"ws://127.0.0.1:{port}/ws", origin=origin, additional_headers={"cookie": cookie}
            ) as socket:
                await socket.send("cart?")
                assert json.loads(await socket.recv()) == ["apple"]
                for item, cart in (
                    ("pear", ["apple", "pear"]),
                    ("plum", ["apple", "pear", "plum"]),
                ):
                    assert (await tab.post(f"/add/{item}")).status_code == 200
                    await socket.send("cart?")
                    assert json.loads(await socket.recv()) == cart
    await store.aclose()
