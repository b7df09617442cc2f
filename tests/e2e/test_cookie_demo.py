"""The reference app with its sessions in cookies, through a real uvicorn with two
workers: nothing is stored, and every worker opens what another sealed."""

from __future__ import annotations

import httpx
import pytest

from .conftest import StartServer
from .test_redis_demo import client_for, login

pytestmark = pytest.mark.e2e


def next_cookie(response: httpx.Response, current: dict[str, str]) -> dict[str, str]:
    """The cookie a browser holds after ``response``: a write seals a new one."""
    header = response.headers.get("set-cookie")
    if header is None:
        return current
    return {"cookie": header.split(";", 1)[0]}


def test_two_workers_share_sessions_that_live_only_in_cookies(start_server: StartServer) -> None:
    server = start_server(
        "--store", "cookie://", "--workers", "2", name="cookie-demo", pass_store=False
    )
    with client_for(server.url) as client:
        alice = login(client)
        items = [f"item-{n}" for n in range(12)]
        for item in items:  # a dozen requests: both workers take some
            added = client.post("/cart/items", json={"item": item}, headers=alice)
            assert added.status_code == 201, added.text
            alice = next_cookie(added, alice)
        assert client.get("/cart", headers=alice).json() == {"items": items}
        assert client.get("/me", headers=alice).json()["user"] == "alice"
        page = client.get("/", headers=alice)
        assert "no list on the server" in page.text
        devices = client.get("/sessions", headers=alice)
        assert devices.status_code == 501
        assert "server-side store" in devices.json()["detail"]
        logout = client.post("/logout", headers={**alice, "accept": "application/json"})
        assert logout.status_code == 204
        assert "Max-Age=0" in logout.headers["set-cookie"]
    assert not server.db.exists()
    assert not list(server.workdir.glob("*.db"))
