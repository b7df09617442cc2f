"""Nothing of a finished request stays alive: not its session (its data, its ID, its
cookie), held by a connection, a pool's worker or a task the store made while serving
it; and nothing of an event loop closed without a word (no asyncio.run(), no aclose()).
A worker lives for days, and all of that added up."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from coatcheck import Session
from coatcheck.stores import Store
from coatcheck.stores._loops import LoopWatch

from ..apps import make_app
from ..conftest import client_for
from ..store_kinds import build_store

pytestmark = pytest.mark.anyio

VISITORS = 12


def alive() -> list[Session]:
    gc.collect()
    return [found for found in gc.get_objects() if type(found) is Session]


@pytest.mark.parametrize(
    "kind", ["memory", "sqlite", "redis", "redis-cluster", "redis-sentinel", "postgres"]
)
async def test_no_session_outlives_its_request(kind: str, tmp_path: Path) -> None:
    """The store connects lazily, while serving the first requests that need it: a
    burst of them makes it open several connections (and a pool, a loop's watcher)."""
    store: Store = build_store(kind, tmp_path)
    app = make_app(store)
    clients = [client_for(app) for _ in range(VISITORS)]
    try:
        for client in clients:
            answer = await client.post("/write")
            assert answer.status_code == 200
            client.headers["cookie"] = f"__Host-session={answer.cookies['__Host-session']}"
        answers = await asyncio.gather(*(client.get("/read") for client in clients))
        assert [answer.json()["data"] for answer in answers] == [{"n": 1}] * VISITORS
        # A timeout's timer, cancelled, stays in the loop's schedule until it is due.
        await asyncio.sleep(2.5)
        assert alive() == []
    finally:
        for client in clients:
            await client.aclose()
        await store.aclose()


def test_a_loop_closed_without_a_word_is_let_go() -> None:
    """Each loop that used a store got a watcher task, which held on to that loop for
    good when it was closed by hand without ``aclose()``."""
    closed: list[str] = []

    async def close(loop: asyncio.AbstractEventLoop) -> None:
        closed.append("closed")

    watch = LoopWatch(close)

    async def use() -> None:
        watch.watch(asyncio.get_running_loop())

    for _ in range(20):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(use())
        loop.close()
    gc.collect()
    assert len(watch._tasks) <= 1
    loops = [found for found in gc.get_objects() if isinstance(found, asyncio.AbstractEventLoop)]
    assert sum(loop.is_closed() for loop in loops) <= 1
    assert closed == []  # nothing was left to close them in
