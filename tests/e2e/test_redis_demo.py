"""The reference app on Redis through a real uvicorn server: outages and Cluster."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import httpx
import pytest

from ..redis_servers import RedisClusterServers, RedisServer
from .conftest import StartServer, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def client_for(url: str) -> httpx.Client:
    """A client that keeps no cookies: each test sends the one it means by hand."""
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(
        base_url=url, timeout=10, cookies=jar, headers={"sec-fetch-site": "same-origin"}
    )


def demo_on(start_server: StartServer, store_url: str) -> str:
    return start_server("--store", store_url, name="redis-demo", pass_store=False).url


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "retry" in response.json()["detail"]
    assert "set-cookie" not in response.headers


def assert_outage_answered(client: httpx.Client, cookie: dict[str, str], within: float) -> None:
    """With the store down: every request that needs the session gets the 503 within
    ``within`` seconds in all (bounded timeouts, no hang), and one that needs none works."""
    started = time.monotonic()
    assert_unavailable(client.get("/me", headers=cookie))
    assert_unavailable(client.post("/cart/items", json={"item": "fig"}, headers=cookie))
    assert_unavailable(client.post("/login", json={"username": "bob", "password": "builder"}))
    assert time.monotonic() - started < within
    assert client.get("/static/style.css").status_code == 200


def login(client: httpx.Client) -> dict[str, str]:
    response = client.post("/login", json={"username": "alice", "password": "wonderland"})
    assert response.status_code == 200, response.text
    value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    return {"cookie": f"session={value}"}


def test_a_stopped_redis_gives_503_then_the_app_recovers_by_itself(
    start_server: StartServer, redis_server: RedisServer
) -> None:
    url = demo_on(start_server, redis_server.url)
    with client_for(url) as client:
        alice = login(client)
        assert client.post("/cart/items", json={"item": "pear"}, headers=alice).status_code == 201

        redis_server.stop()
        assert_outage_answered(client, alice, within=6)

        redis_server.start()  # same port, empty: the server keeps nothing on disk
        assert client.get("/me", headers=alice).status_code == 401
        assert client.post("/cart/items", json={"item": "kiwi"}).status_code == 201
        assert login(client) != alice


def test_a_frozen_redis_times_out_into_503_and_the_session_survives(
    start_server: StartServer, redis_server: RedisServer
) -> None:
    url = demo_on(start_server, redis_server.url)
    assert redis_server.process is not None
    pid = redis_server.process.pid
    with client_for(url) as client:
        alice = login(client)
        assert client.post("/cart/items", json={"item": "pear"}, headers=alice).status_code == 201
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert_unavailable(client.get("/cart", headers=alice))
            assert time.monotonic() - started < 4  # about the 1 s command timeout
            assert client.get("/static/style.css").status_code == 200
        finally:
            os.kill(pid, signal.SIGCONT)
        for _ in range(50):  # the pool reconnects on its own; no restart of the app
            response = client.get("/cart", headers=alice)
            if response.status_code == 200:
                break
            time.sleep(0.1)
        assert response.json() == {"items": ["pear"]}
        assert client.get("/me", headers=alice).json()["user"] == "alice"


def test_the_demo_runs_on_a_redis_cluster(start_server: StartServer, tmp_path: Path) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster").start()
    try:
        url = demo_on(start_server, cluster.url)
        with client_for(url) as client:
            phone = login(client)
            laptop = login(client)
            assert (
                client.post("/cart/items", json={"item": "plum"}, headers=laptop).status_code == 201
            )
            sessions = client.get("/sessions", headers=laptop).json()["sessions"]
            assert [entry["current"] for entry in sessions].count(True) == 1
            assert len(sessions) == 2
            other = next(entry["id"] for entry in sessions if not entry["current"])
            assert client.delete(f"/sessions/{other}", headers=laptop).status_code == 204
            assert client.get("/me", headers=phone).status_code == 401
            assert client.get("/cart", headers=laptop).json() == {"items": ["plum"]}
            assert (
                client.post("/logout", headers={**laptop, "accept": "application/json"}).status_code
                == 204
            )
            assert client.get("/me", headers=laptop).status_code == 401
    finally:
        cluster.stop()


def test_revoke_all_from_the_shell_reaches_every_cluster_node(
    start_server: StartServer, tmp_path: Path
) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster").start()
    try:
        url = demo_on(start_server, cluster.url)
        with client_for(url) as client:
            sessions = [login(client) for _ in range(12)]  # spread over the nodes' slots
            result = run_cli("sessions", "revoke-all", "--store", cluster.url, "--yes")
            assert result.stdout.startswith("Revoked 12 live sessions")
            assert [client.get("/me", headers=s).status_code for s in sessions] == [401] * 12
            assert client.get("/sessions", headers=login(client)).json()["sessions"][0]["current"]
    finally:
        cluster.stop()
