"""One store, used at the same time from the loop that serves requests and from a
thread that runs its own loop with ``asyncio.run`` (a scheduler's job, a worker's thread
pool), as the README advises for synchronous code. Each loop must get connections of
its own: a client or pool swapped under the serving loop broke its requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from coatcheck import Store
from coatcheck.stores import SessionRecord

from ..store_kinds import build_store, unique_prefix

pytestmark = pytest.mark.anyio

SESSIONS = 8
RUN_FOR = 1.5  # seconds of requests, with the thread's jobs among them


def record(user: str, number: int) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        key=f"{user}-{number}".encode().hex().ljust(64, "0"),
        public_id=f"p{user}{number}".ljust(16, "0"),
        data=b'{"n": 0}',
        user_id=user,
        created_at=now,
        last_seen_at=now,
        expires_at=now + 600,
    )


def jobs(store: Store, stop: threading.Event, done: Counter[str]) -> None:
    """A synchronous job, again and again: revoke a banned user, list one, purge."""
    while not stop.is_set():
        try:
            asyncio.run(store.delete_user("banned"))
            asyncio.run(store.list_user("alice", time.time()))
            asyncio.run(store.purge_expired(time.time()))
            done["ok"] += 1
        except Exception as exc:  # counted: the test shows what failed
            done[f"{type(exc).__name__}: {exc}"] += 1
        time.sleep(0.01)


Job = Callable[[Store, threading.Event, Counter[str]], None]


async def serve_beside(
    store: Store, job: Job, serve: Callable[[SessionRecord, Counter[str]], Awaitable[None]]
) -> tuple[Counter[str], Counter[str]]:
    """``serve`` each of alice's sessions for ``RUN_FOR`` seconds, as requests would,
    while a thread runs ``job`` again and again: what each side met, counted."""
    mine = [record("alice", number) for number in range(SESSIONS)]
    for one in mine:
        assert await store.save(one)
    outcome: Counter[str] = Counter()
    done: Counter[str] = Counter()
    stop = threading.Event()
    thread = threading.Thread(target=job, args=(store, stop, done))

    async def requests(one: SessionRecord) -> None:
        deadline = time.monotonic() + RUN_FOR
        while time.monotonic() < deadline:
            try:
                await serve(one, outcome)
            except Exception as exc:  # counted: the test shows what failed
                outcome[f"{type(exc).__name__}: {exc}"] += 1

    thread.start()
    try:
        await asyncio.gather(*(requests(one) for one in mine))
    finally:
        stop.set()
        await asyncio.to_thread(thread.join)
    return outcome, done


@pytest.mark.parametrize("kind", ["sqlite", "redis", "redis-cluster", "postgres"])
async def test_a_thread_with_its_own_loop_leaves_the_serving_loop_alone(
    kind: str, tmp_path: Path
) -> None:
    store = build_store(kind, tmp_path)
    try:
        banned = record("banned", 0)
        assert await store.save(banned)

        async def read(one: SessionRecord, outcome: Counter[str]) -> None:
            loaded = await store.load(one.key, time.time())
            outcome["read" if loaded is not None else "lost"] += 1
            await asyncio.sleep(0.002)

        outcome, done = await serve_beside(store, jobs, read)
        assert set(outcome) == {"read"}, outcome
        assert set(done) == {"ok"}, done
        assert await store.load(banned.key, time.time()) is None
        assert len(await store.list_user("alice", time.time())) == SESSIONS
    finally:
        await store.aclose()


def bursts_in_fresh_loops(store: Store, loops: int = 3, calls: int = 10) -> list[int]:
    """Of ``calls`` loads made at once, how many succeed in each of ``loops`` event
    loops in turn, as a job runner's or a test suite's would be."""

    async def burst(key: str) -> int:
        results = await asyncio.gather(
            *(store.load(key, time.time()) for _ in range(calls)), return_exceptions=True
        )
        return sum(isinstance(result, SessionRecord) for result in results)

    one = record("alice", 0)
    asyncio.run(store.save(one))
    return [asyncio.run(burst(one.key)) for _ in range(loops)]


@pytest.mark.parametrize("kind", ["redis-cluster", "redis-blocking-pool"])
def test_each_loop_gets_a_client_whose_locks_are_its_own(kind: str, tmp_path: Path) -> None:
    """A client closed with its loop keeps the locks it made there (the Cluster
    client's, a blocking pool's): handed to the next loop, a burst of calls failed."""
    if kind == "redis-blocking-pool":
        from coatcheck.stores.redis import RedisStore

        from .. import redis_servers

        url = redis_servers.active().standalone().url
        store: Store = RedisStore.from_url(f"{url}?max_connections=2", prefix=unique_prefix())
    else:
        store = build_store(kind, tmp_path)
    assert bursts_in_fresh_loops(store) == [10, 10, 10]


def closing_jobs(store: Store, stop: threading.Event, done: Counter[str]) -> None:
    """A job that closes the store in its own loop before that loop ends, as the README
    asks of a loop one closes oneself."""

    async def job() -> None:
        try:
            await store.list_user("alice", time.time())
            await store.count(time.time())
        finally:
            await store.aclose()

    while not stop.is_set():
        try:
            asyncio.run(job())
            done["ok"] += 1
        except Exception as exc:  # counted: the test shows what failed
            done[f"{type(exc).__name__}: {exc}"] += 1


@pytest.mark.parametrize("kind", ["sqlite", "redis", "redis-cluster", "postgres"])
async def test_a_job_that_closes_the_store_in_its_loop_leaves_the_serving_loop_alone(
    kind: str, tmp_path: Path
) -> None:
    """On SQLite, whose connections serve every thread, that closed the reader under the
    serving loop's reads: the process died of a segmentation fault."""
    store = build_store(kind, tmp_path)
    try:
        versions: dict[str, int] = {}

        async def read_and_write(one: SessionRecord, outcome: Counter[str]) -> None:
            loaded = await store.load(one.key, time.time())
            outcome["read" if loaded is not None else "lost"] += 1
            version = versions.get(one.key, one.version)
            changed = one._replace(data=b'{"n": %d}' % version, version=version + 1)
            saved = await store.save(changed, expected_version=version)
            outcome["saved" if saved else "refused"] += 1
            versions[one.key] = version + 1

        outcome, done = await serve_beside(store, closing_jobs, read_and_write)
        assert set(outcome) == {"read", "saved"}, outcome
        assert set(done) == {"ok"}, done
        assert done["ok"] > 5, done
        assert len(await store.list_user("alice", time.time())) == SESSIONS
    finally:
        await store.aclose()
