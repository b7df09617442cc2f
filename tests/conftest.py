from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
import pytest

from coatcheck import MemoryStore, SessionRecord, SQLiteStore, Store
from coatcheck.stores.base import Merge


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """A controllable wall clock for expiry tests: time moves only when told."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore:
    """A real store that also counts the calls made to it, to prove laziness."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def load(self, key: str, now: float) -> SessionRecord | None:
        self.calls["load"] += 1
        return await self.inner.load(key, now)

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        self.calls["save"] += 1
        return await self.inner.save(
            record, replaces=replaces, expected_version=expected_version, merge=merge
        )

    async def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        await self.inner.delete(key)

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        self.calls["list_user"] += 1
        return await self.inner.list_user(user_id, now)

    async def delete_user(self, user_id: str, *, keep: str | None = None) -> int:
        self.calls["delete_user"] += 1
        return await self.inner.delete_user(user_id, keep=keep)

    async def purge_expired(self, now: float) -> int:
        return await self.inner.purge_expired(now)

    async def count(self, now: float) -> int:
        return await self.inner.count(now)

    async def aclose(self) -> None:
        self.calls["aclose"] += 1
        await self.inner.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    yield store
    await store.aclose()


def client_for(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    """An in-process HTTPS client that keeps no cookies: tests send each one by hand."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="https://testserver",
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        **kwargs,
    )
