"""Fifty parallel ``POST /cart/items`` with one cookie leave exactly fifty items."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import httpx
import pytest

from ..postgres_server import PostgresServer
from ..redis_servers import RedisServer
from ..store_kinds import unique_prefix
from .conftest import StartServer

pytestmark = pytest.mark.e2e

PARALLEL = 50


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


def add_fifty_in_parallel(url: str) -> list[str]:
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    same_origin = {"sec-fetch-site": "same-origin"}
    with httpx.Client(base_url=url, timeout=30, cookies=jar, headers=same_origin) as client:
        login = client.post("/login", json={"username": "alice", "password": "wonderland"})
        assert login.status_code == 200
        cookie = {"cookie": login.headers["set-cookie"].split(";", 1)[0]}

        def add(n: int) -> tuple[int, str]:
            # A connection of its own each, so the requests really run side by side
            # (and reach both workers where there are two).
            with httpx.Client(base_url=url, timeout=30, cookies=jar, headers=same_origin) as own:
                response = own.post("/cart/items", json={"item": f"item-{n}"}, headers=cookie)
                return response.status_code, response.text

        with ThreadPoolExecutor(PARALLEL) as pool:
            answers = list(pool.map(add, range(PARALLEL)))
        refused = [answer for answer in answers if answer[0] != 201]
        assert refused == []
        items: list[str] = client.get("/cart", headers=cookie).json()["items"]
    return items


def expected() -> list[str]:
    return sorted(f"item-{n}" for n in range(PARALLEL))


def test_sqlite_with_two_workers(start_server: StartServer) -> None:
    server = start_server("--workers", "2")
    assert sorted(add_fifty_in_parallel(server.url)) == expected()


def test_memory_store(start_server: StartServer) -> None:
    server = start_server("--store", "memory://", pass_store=False)
    assert sorted(add_fifty_in_parallel(server.url)) == expected()


def test_redis_with_two_workers(start_server: StartServer, redis_url: str) -> None:
    server = start_server("--store", redis_url, "--workers", "2", pass_store=False)
    assert sorted(add_fifty_in_parallel(server.url)) == expected()


def test_postgres_with_two_workers(start_server: StartServer, postgres: PostgresServer) -> None:
    store = f"{postgres.url}?table={unique_prefix()}"
    server = start_server("--store", store, "--workers", "2", pass_store=False)
    assert sorted(add_fifty_in_parallel(server.url)) == expected()
