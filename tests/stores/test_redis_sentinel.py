"""Redis behind Sentinel: the store finds the master by asking the Sentinels, and finds
the promoted replica by itself after a failover, with only 503s in between."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from coatcheck import StoreUnavailableError, store_from_url
from coatcheck.stores.redis import RedisStore

from .. import apps
from ..conftest import client_for
from ..redis_servers import RedisSentinelServers
from .conftest import NOW, make_record, unique_prefix

pytestmark = pytest.mark.anyio
NAME = "__Host-session"


def sentinel_connections(servers: RedisSentinelServers) -> int:
    """Clients connected to the Sentinel, this probe not counted."""
    with servers.sentinel.client() as probe:
        return len(probe.client_list()) - 1


async def test_the_url_reaches_the_master_the_sentinel_names(
    redis_sentinel: RedisSentinelServers,
) -> None:
    prefix = unique_prefix()
    store = store_from_url(f"{redis_sentinel.url}?prefix={prefix}&timeout=2")
    assert isinstance(store, RedisStore)
    assert not store.cluster
    before = sentinel_connections(redis_sentinel)
    try:
        record = make_record(user_id="alice")
        assert await store.save(record)
        assert await store.load(record.key, NOW) == record
        assert sentinel_connections(redis_sentinel) > before  # it asked the Sentinel
        with redis_sentinel.master.client() as master:
            assert master.keys(f"{prefix}:s:*") == [f"{prefix}:s:{{{record.key}}}".encode()]
    finally:
        await store.aclose()
    # Closing the store also hangs up on the Sentinel.
    assert sentinel_connections(redis_sentinel) == before


async def test_a_failover_is_a_short_outage_that_keeps_every_session(tmp_path: Path) -> None:
    servers = RedisSentinelServers(tmp_path / "sentinel").start()
    store = RedisStore.from_url(servers.url, prefix=unique_prefix(), timeout=0.5)
    try:
        async with client_for(apps.make_app(store)) as client:
            login = await client.post("/login")
            cookie = {"cookie": f"{NAME}={login.cookies[NAME]}"}
            assert (await client.post("/write", headers=cookie)).json()["data"] == {"n": 1}
            with servers.master.client() as master:
                assert master.execute_command("WAIT", 1, 2000) == 1  # the replica has it
            assert servers.master.process is not None
            servers.master.process.kill()  # no goodbye: as a crashed host
            servers.master.process.wait(timeout=5)  # gone before the next request

            answers: list[int] = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                response = await client.get("/read", headers=cookie)
                answers.append(response.status_code)
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
                await asyncio.sleep(0.2)
            # Requests failed quickly while no master was known, then found the new one.
            assert answers[-1] == 200, answers
            assert answers[0] == 503
            assert response.json() == {"data": {"n": 1}, "user": "alice"}
            assert servers.master_port() == servers.replica.port
            # The promoted replica takes writes: the session goes on, same cookie.
            assert (await client.post("/write", headers=cookie)).json()["data"] == {"n": 2}
            with servers.replica.client() as promoted:
                assert promoted.info("replication")["role"] == "master"
    finally:
        await store.aclose()
        servers.stop()


async def test_a_hung_sentinel_is_a_quick_outage(tmp_path: Path) -> None:
    """The Sentinels are asked within the store's timeout, once: redis-py's default
    would retry each on a timeout, with growing pauses, for up to a minute."""
    servers = RedisSentinelServers(tmp_path / "sentinel").start()
    store = RedisStore.from_url(servers.url, prefix=unique_prefix(), timeout=0.5)
    sentinel = servers.sentinel.process
    assert sentinel is not None
    try:
        sentinel.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.load(make_record().key, NOW)
        assert time.monotonic() - started < 3
        sentinel.send_signal(signal.SIGCONT)
        record = make_record()
        assert await store.save(record)  # back by itself
        assert await store.load(record.key, NOW) == record
    finally:
        sentinel.send_signal(signal.SIGCONT)
        await store.aclose()
        servers.stop()


async def test_no_sentinel_to_ask_is_said_in_a_line_not_a_client_repr() -> None:
    from ..redis_servers import free_port

    store = store_from_url(f"redis+sentinel://127.0.0.1:{free_port()}/coatcheck?timeout=0.5")
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await store.load(make_record().key, NOW)
    finally:
        await store.aclose()
    assert "No master found for 'coatcheck'" in str(caught.value)
    assert "<redis." not in str(caught.value)
    assert len(str(caught.value)) < 200
