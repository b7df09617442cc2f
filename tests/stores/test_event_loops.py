"""Stores whose connections belong to an event loop, used from one loop after another,
as a test suite that gives each test its own loop and runs no lifespan uses them.

Each case runs in a process of its own, so that a loop that never ends fails the test
rather than hanging the suite."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..postgres_server import PostgresServer
from ..redis_servers import RedisClusterServers, RedisServer
from .conftest import unique_prefix

SERVERS = {"redis": "redis_server", "redis cluster": "redis_cluster", "postgres": "postgres"}

# Each step in a loop of its own, as each test would be; ``CLOSE`` ends a loop, either
# as asyncio.run does or by hand, without cancelling what is left in it.
SCRIPT = """
import asyncio, sys
from coatcheck import store_from_url
from coatcheck.store_contract import NOW, make_record

steady, steps = asyncio.new_event_loop(), []

def run(step):
    steps.append(step)
    if sys.argv[2] == "asyncio.run":
        return asyncio.run(step)
    if sys.argv[2] == "alternating" and len(steps) % 2:  # a TestClient's loop, say
        return steady.run_until_complete(step)
    if sys.argv[2] == "alternating":
        return asyncio.run(step)
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(step)
    finally:
        loop.close()

async def cancel_the_rest():  # as asyncio.run does at its end
    left = asyncio.all_tasks() - {asyncio.current_task()}
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)

def end_steady():
    steady.run_until_complete(cancel_the_rest())
    steady.close()

store = store_from_url(sys.argv[1])
records = [make_record(user_id="alice") for _ in range(3)]
for record in records:
    run(store.save(record))
    assert run(store.load(record.key, NOW)) == record
assert len(run(store.list_user("alice", NOW))) == 3
assert run(store.delete_user("alice", now=NOW)) == 3
run(store.aclose())
end_steady()
print("done")
"""


def store_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The URL of a store of ``kind`` on a new prefix or table."""
    server: RedisServer | RedisClusterServers | PostgresServer
    server = request.getfixturevalue(SERVERS[kind])
    if kind == "postgres":
        return f"{server.url}?table={unique_prefix()}"
    return f"{server.url}?prefix={unique_prefix()}&timeout=2"


@pytest.mark.parametrize("ending", ["asyncio.run", "by hand", "alternating"])
@pytest.mark.parametrize("kind", SERVERS)
def test_a_store_works_on_in_each_new_event_loop(
    request: pytest.FixtureRequest, kind: str, ending: str
) -> None:
    """A connection of a finished loop fails in the next one: the store closes its
    connections as their loop ends, and the next loop opens its own; a loop still open
    (a TestClient's, between calls of asyncio.run) finds its own again. A loop closed by
    hand, which cancels nothing, leaves them to the garbage collector (and to the
    warnings Python gives unclosed sockets, ignored here)."""
    warnings = "ignore" if ending == "by hand" else "default"
    result = subprocess.run(
        [sys.executable, "-W", warnings, "-c", SCRIPT, store_url(request, kind), ending],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr
    if ending != "by hand":  # each loop's connections closed in it, and nothing logged
        assert result.stderr == ""


CLOSED = """
import asyncio, gc, sys
from coatcheck import store_from_url
from coatcheck.store_contract import NOW, make_record

async def main():
    for _ in range(3):  # a store per tenant, or per test on one loop: made, used, closed
        store = store_from_url(sys.argv[1])
        await store.save(make_record())
        await store.aclose()
        del store
        gc.collect()
        await asyncio.sleep(0)
    store = store_from_url(sys.argv[1])
    await store.aclose()
    await store.count(NOW)  # used again once closed: closed again as the loop ends

asyncio.run(main())
print("done")
"""


@pytest.mark.parametrize("kind", SERVERS)
def test_a_store_closed_by_aclose_leaves_no_task_pending(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """Its watch on the loop stayed pending, and was collected with the store: asyncio
    logged "Task was destroyed but it is pending!" for each store made and closed."""
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", CLOSED, store_url(request, kind)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr
    assert result.stderr == ""
