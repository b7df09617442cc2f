"""Stores whose connections belong to an event loop, used from one loop after another,
as a test suite that gives each test its own loop and runs no lifespan uses them."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from coatcheck import store_from_url

from ..postgres_server import PostgresServer
from ..redis_servers import RedisClusterServers, RedisServer
from .conftest import NOW, make_record, unique_prefix

SERVERS = {"redis": "redis_server", "redis cluster": "redis_cluster", "postgres": "postgres"}


def store_url(request: pytest.FixtureRequest, kind: str) -> tuple[str, str]:
    """The URL of a store of ``kind`` on a new prefix or table, and that name."""
    server: RedisServer | RedisClusterServers | PostgresServer
    server = request.getfixturevalue(SERVERS[kind])
    name = unique_prefix()
    if kind == "postgres":
        return f"{server.url}?table={name}&application_name={name}", name
    return f"{server.url}?prefix={name}&timeout=2", name


@pytest.mark.parametrize("kind", SERVERS)
def test_a_store_works_on_in_each_new_event_loop(request: pytest.FixtureRequest, kind: str) -> None:
    """The connections of a finished loop fail in the next one: they are closed as their
    loop ends, and the next loop opens its own."""
    url, name = store_url(request, kind)
    store = store_from_url(url)
    records = [make_record(user_id="alice") for _ in range(3)]
    for record in records:  # each in a loop of its own, as each test would be
        asyncio.run(store.save(record))
        assert asyncio.run(store.load(record.key, NOW)) == record
    assert len(asyncio.run(store.list_user("alice", NOW))) == 3
    assert asyncio.run(store.delete_user("alice", now=NOW)) == 3
    asyncio.run(store.aclose())
    if kind == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        with postgres.connect() as db:  # every loop's connections were closed with it
            left = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchall()
        assert left == []


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_loop_closed_without_finalising_leaves_the_next_one_a_working_store(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """A loop closed by hand never closes the store's connections: the next loop gets
    connections of its own (in a process of its own: the old ones are reclaimed with
    the warnings Python gives unclosed sockets)."""
    url, _ = store_url(request, kind)
    code = (
        "import asyncio, sys\n"
        "from coatcheck import store_from_url\n"
        "from coatcheck.store_contract import NOW, make_record\n"
        "store, record = store_from_url(sys.argv[1]), make_record()\n"
        "loop = asyncio.new_event_loop()\n"
        "loop.run_until_complete(store.save(record))\n"
        "loop.close()\n"
        "assert asyncio.run(store.load(record.key, NOW)) == record\n"
        "print('loaded')\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "loaded\n"), result.stderr
