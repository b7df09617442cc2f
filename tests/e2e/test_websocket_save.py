"""``await session.save()`` in a websocket, over a real uvicorn server, a real websocket
client and a SQLite file: each change is stored as it comes, while the socket stays open."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from coatcheck import CookieConfig, SessionConfig, SQLiteStore

from ..test_save import make_app
from .conftest import served_here

pytestmark = pytest.mark.anyio


async def test_a_websocket_stores_each_change_while_it_stays_open(tmp_path: Path) -> None:
    config = SessionConfig(cookie=CookieConfig(secure=False), secret_keys=["k" * 32])
    store = SQLiteStore(tmp_path / "sessions.db")
    async with served_here(make_app(store, config)) as port:
        origin = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=origin, headers={"origin": origin}) as tab:
            assert (await tab.post("/early")).status_code == 200
            cookie = f"session={tab.cookies['session']}"
            async with connect(
                f"ws://127.0.0.1:{port}/ws", origin=origin, additional_headers={"cookie": cookie}
            ) as socket:
                for item in ("pear", "plum"):
                    await socket.send(item)
                    assert await socket.recv() == "saved"
                    # Another tab sees the item while the socket is still open.
                    cart = (await tab.get("/state")).json()["data"]["cart"]
                    assert cart[-1] == item
            assert (await tab.get("/state")).json()["data"] == {"cart": ["apple", "pear", "plum"]}
    await store.aclose()
