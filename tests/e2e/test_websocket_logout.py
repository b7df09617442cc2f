"""Logging out in one tab closes the socket another tab holds open, over a real uvicorn
server and a real websocket client."""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from coatcheck import CookieConfig, MemoryStore
from coatcheck.testing import FakeClock

from ..test_websocket_recheck import make_app
from .conftest import served_here

pytestmark = pytest.mark.anyio


async def test_logging_out_elsewhere_closes_the_open_socket() -> None:
    clock = FakeClock()
    app = make_app(MemoryStore(), clock, cookie=CookieConfig(secure=False))
    async with served_here(app) as port:
        origin = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=origin, headers={"origin": origin}) as tab:
            await tab.post("/login")
            cookie = f"session={tab.cookies['session']}"
            async with connect(
                f"ws://127.0.0.1:{port}/ws", origin=origin, additional_headers={"cookie": cookie}
            ) as socket:
                await socket.send("hello")
                assert await socket.recv() == "alice: hello"
                assert (await tab.post("/logout")).status_code == 200
                clock.advance(60)
                await socket.send("anyone?")
                with pytest.raises(ConnectionClosed) as closed:
                    await socket.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "session ended"
