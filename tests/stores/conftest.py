"""Fixtures shared by the store tests.

Every backend is listed in ``STORE_KINDS`` and built by ``build_store``; contract tests
only ever see the ``Store`` protocol, so adding Redis or PostgreSQL means adding a kind
here (plus whatever server fixture it needs), not touching the tests.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from coatcheck._ids import new_public_id, new_session_id, store_key
from coatcheck.stores import MemoryStore, SessionRecord, SQLiteStore, Store

from .. import redis_servers

# One clock for every test: stores take ``now`` from the caller. It sits near the real
# time so that backends which also hand deadlines to a server (Redis TTLs) agree with it.
NOW = float(int(time.time()))
HOUR = 3600.0

STORE_KINDS = ("memory", "sqlite", "redis", "redis-cluster")


def unique_prefix() -> str:
    """Tests share one Redis server each and stay apart by key prefix."""
    return f"t{uuid4().hex[:8]}"


def build_store(kind: str, directory: Path) -> Store:
    """A fresh, empty store of ``kind``; file-backed kinds live under ``directory``,
    Redis kinds under a new key prefix on the session's server."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(directory / "sessions.db")
    if kind in ("redis", "redis-cluster"):
        from coatcheck.stores.redis import RedisStore

        servers = redis_servers.active()
        url = servers.standalone().url if kind == "redis" else servers.cluster().url
        return RedisStore.from_url(url, prefix=unique_prefix())
    raise ValueError(f"unknown store kind {kind!r}")


@asynccontextmanager
async def fresh_store(kind: str) -> AsyncIterator[Store]:
    """A store for code that cannot use the function-scoped fixture (Hypothesis examples)."""
    with tempfile.TemporaryDirectory(prefix="coatcheck-store-") as directory:
        store = build_store(kind, Path(directory))
        try:
            yield store
        finally:
            await store.aclose()


def make_record(**overrides: Any) -> SessionRecord:
    """A live anonymous record under a fresh key; any field can be overridden."""
    fields: dict[str, Any] = {
        "key": store_key(new_session_id()),
        "public_id": new_public_id(),
        "data": b'{"cart": [1, 2, 3]}',
        "user_id": None,
        "created_at": NOW - 60.0,
        "last_seen_at": NOW - 10.0,
        "expires_at": NOW + HOUR,
    }
    fields.update(overrides)
    return SessionRecord(**fields)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def redis_servers_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[redis_servers.RedisServers]:
    """Redis servers for the whole run, each started the first time a test needs it."""
    servers = redis_servers.RedisServers(tmp_path_factory.mktemp("redis"))
    redis_servers.activate(servers)
    try:
        yield servers
    finally:
        redis_servers.activate(None)
        servers.stop()


@pytest.fixture(scope="session")
def redis_server(redis_servers_registry: redis_servers.RedisServers) -> redis_servers.RedisServer:
    return redis_servers_registry.standalone()


@pytest.fixture(scope="session")
def redis_cluster(
    redis_servers_registry: redis_servers.RedisServers,
) -> redis_servers.RedisClusterServers:
    return redis_servers_registry.cluster()


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    built = build_store(request.param, tmp_path)
    try:
        yield built
    finally:
        await built.aclose()
