"""Every store backend the suite knows, built fresh and empty on demand.

Adding a backend means adding a kind here (plus whatever server fixture it needs);
tests that take the ``store`` or ``any_store`` fixture then run against it too.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

from coatcheck.stores import MemoryStore, SQLiteStore, Store

from . import postgres_server, redis_servers

STORE_KINDS = (
    "memory",
    "sqlite",
    "redis",
    "redis-cluster",
    "redis-sentinel",
    "valkey",
    "postgres",
)


def unique_prefix() -> str:
    """Tests share one server of each kind and stay apart by key prefix or table name."""
    return f"t{uuid4().hex[:8]}"


def build_store(kind: str, directory: Path) -> Store:
    """A fresh, empty store of ``kind``; file-backed kinds live under ``directory``,
    Redis kinds under a new key prefix on the session's server, PostgreSQL in a new
    table on the run's server."""
    if kind == "memory":
        return MemoryStore()
    # No purges on their own count (tests/stores/test_sqlite.py tests those): one at a
    # random save would remove the records a test dated at a fixed moment, now past.
    if kind == "sqlite":
        return SQLiteStore(directory / "sessions.db", purge_every=0)
    if kind in ("redis", "redis-cluster", "redis-sentinel", "valkey"):
        from coatcheck.stores.redis import RedisStore

        servers = redis_servers.active()
        server = {
            "redis": servers.standalone,
            "valkey": servers.valkey,
            "redis-cluster": servers.cluster,
            "redis-sentinel": servers.sentinel,
        }
        return RedisStore.from_url(server[kind]().url, prefix=unique_prefix())
    if kind == "postgres":
        from coatcheck.stores.postgres import PostgresStore

        server = postgres_server.active().server()
        return PostgresStore(server.url, table=unique_prefix(), purge_every=0)
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
