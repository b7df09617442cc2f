"""What the Redis store promises beyond the shared contract, checked on real servers:
TTLs set by Redis, hashed keys only, one round trip per load and per save, sessions of
one user spread over Cluster slots, URLs, and a quick 503 (then recovery) in an outage."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from coatcheck import store_from_url, stores
from coatcheck._ids import new_session_id, store_key
from coatcheck.exceptions import ConfigurationError, StoreError, StoreUnavailableError
from coatcheck.stores import SessionRecord, _redis_codec
from coatcheck.stores.base import MOVED_FOR, Merge
from coatcheck.stores.redis import RedisStore

from ..apps import make_app
from ..conftest import client_for
from ..redis_servers import RedisClusterServers, RedisServer, free_port
from .conftest import HOUR, NOW, build_store, make_record, unique_prefix

pytestmark = pytest.mark.anyio

# Commands that only ever run inside the store's Lua scripts; INFO commandstats counts
# them too, so they are left out when counting what the client sent.
# Scripts read fields with HMGET only, so an HGET in the counts is a client's load.
SCRIPT_INTERNAL = {
    "hmget", "del", "hset", "pexpire", "pttl", "zadd", "zrem", "zrange", "zremrangebyscore"
}  # fmt: skip


@pytest.fixture
async def standalone(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_server.url, prefix=unique_prefix())
    yield store
    await store.aclose()


@pytest.fixture
async def clustered(redis_cluster: RedisClusterServers) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_cluster.url, prefix=unique_prefix())
    yield store
    await store.aclose()


@pytest.fixture(params=["redis", "redis-cluster"])
async def any_redis(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RedisStore]:
    store = build_store(request.param, tmp_path)
    assert isinstance(store, RedisStore)
    yield store
    await store.aclose()


def live_record(**overrides: object) -> SessionRecord:
    """A record on the real clock, so that Redis's TTL and ``expires_at`` agree."""
    now = time.time()
    fields: dict[str, object] = {"last_seen_at": now, "expires_at": now + 600.0}
    fields.update(overrides)
    return make_record(**fields)


def session_key(store: RedisStore, key: str) -> str:
    return f"{store.prefix}:s:{{{key}}}"


def index_key(store: RedisStore, user: str) -> str:
    return f"{store.prefix}:u:{{{user}}}"


class CommandStats:
    """Counts the commands clients send to one server, via INFO commandstats.

    It keeps one connection, opened before any reset, so that its own handshake is
    never counted."""

    def __init__(self, server: RedisServer) -> None:
        self.raw = server.client()
        self.raw.ping()

    def close(self) -> None:
        self.raw.close()

    def reset(self) -> None:
        self.raw.config_resetstat()

    def sent(self) -> dict[str, int]:
        stats = self.raw.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}
        return {
            name: count
            for name, count in calls.items()
            if name not in SCRIPT_INTERNAL and not name.startswith("config") and name != "info"
        }


@pytest.fixture
def stats(redis_server: RedisServer) -> Iterator[CommandStats]:
    counter = CommandStats(redis_server)
    yield counter
    counter.close()


# -- what lands in Redis ---------------------------------------------------------------


async def test_redis_expires_sessions_and_indexes_by_itself(any_redis: RedisStore) -> None:
    store = any_redis
    record = live_record(user_id="alice")
    await store.save(record)

    ttl = await store.client.pttl(session_key(store, record.key))
    index_ttl = await store.client.pttl(index_key(store, "alice"))

    assert 595_000 < ttl <= 600_000
    assert index_ttl >= ttl
    # A sliding save pushes both deadlines out.
    later = record._replace(expires_at=record.last_seen_at + 1200.0, version=2)
    assert await store.save(later, expected_version=1)
    assert 1_195_000 < await store.client.pttl(session_key(store, record.key)) <= 1_200_000
    assert await store.client.pttl(index_key(store, "alice")) > 1_195_000


async def test_redis_forgets_a_move_by_itself_after_ten_minutes(any_redis: RedisStore) -> None:
    """The note that a login moved a session (``moved_at``) lives in the old key's
    receipt for MOVED_FOR, by Redis's own clock: kept that long, and no longer."""
    old = live_record(user_id="alice")
    await any_redis.save(old)
    moved = live_record(user_id="alice", key=store_key(new_session_id()), version=2)
    assert await any_redis.save(moved, replaces=old.key, expected_version=old.version)
    receipt = f"{any_redis.prefix}:t:{{{old.key}}}"
    assert 595_000 < await any_redis.client.pttl(receipt) <= MOVED_FOR * 1000
    assert await any_redis.moved_at(old.key, moved.last_seen_at) is not None


async def test_the_ttl_follows_the_callers_clock_not_the_servers(any_redis: RedisStore) -> None:
    """A record is kept for its remaining lifetime, whatever the date on the caller's clock."""
    future = 1_900_000_000.0
    record = make_record(created_at=future - 100, last_seen_at=future, expires_at=future + 300)
    await any_redis.save(record)

    assert 295_000 < await any_redis.client.pttl(session_key(any_redis, record.key)) <= 300_000
    assert await any_redis.load(record.key, future + 299) == record
    assert await any_redis.load(record.key, future + 300) is None


async def test_keys_hold_only_the_hash_of_the_session_id(any_redis: RedisStore) -> None:
    store = any_redis
    session_id = new_session_id()
    key = store_key(session_id)
    old_id = new_session_id()
    await store.save(make_record(key=store_key(old_id), user_id="alice"))
    await store.save(make_record(key=key, user_id="alice"), replaces=store_key(old_id))

    names = sorted([raw.decode() async for raw in store.client.scan_iter(f"{store.prefix}:*")])

    session, index = f"{store.prefix}:s:{{{key}}}", f"{store.prefix}:u:{{alice}}"
    # A rotation leaves a short-lived receipt in the old session's slot: a resent copy
    # of the save that made the old session must not bring it back.
    receipt = [f"{store.prefix}:t:{{{store_key(old_id)}}}"]
    assert names == sorted([session, index, *receipt])
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    stored = await store.client.hgetall(session)
    members = await store.client.zrange(index, 0, -1)
    noted = [value for name in receipt for value in (await store.client.hgetall(name)).values()]
    everything = b" ".join([*(name.encode() for name in names), *stored.values(), *members, *noted])
    for raw_id in (session_id, old_id):
        assert raw_id.encode() not in everything


# -- round trips, counted by the server ------------------------------------------------


async def test_load_and_save_are_one_round_trip_each(
    standalone: RedisStore, stats: CommandStats
) -> None:
    record = make_record(user_id="alice")
    await standalone.save(record)  # connects, and loads the scripts used below
    await standalone.delete(store_key(new_session_id()))

    stats.reset()
    assert await standalone.load(record.key, NOW) == record
    assert stats.sent() == {"hget": 1}

    stats.reset()
    await standalone.save(record._replace(data=b"changed", version=2), expected_version=1)
    assert stats.sent() == {"evalsha": 1}

    # A login-style rotation that also moves the session to another user: still one.
    stats.reset()
    rotated = make_record(user_id="bob", created_at=record.created_at)
    assert await standalone.save(rotated, replaces=record.key, expected_version=2)
    assert stats.sent() == {"evalsha": 1}
    assert await standalone.list_user("alice", NOW) == []
    assert await standalone.list_user("bob", NOW) == [rotated]

    stats.reset()
    await standalone.delete(rotated.key)
    assert stats.sent() == {"evalsha": 1}


async def test_a_request_that_changes_nothing_writes_nothing(
    standalone: RedisStore, stats: CommandStats
) -> None:
    async with client_for(make_app(standalone)) as client:
        login = await client.post("/login", params={"user": "alice"})
        cookie = login.headers["set-cookie"].split(";", 1)[0]
        await client.get("/read", headers={"cookie": cookie})  # warm: every script loaded

        stats.reset()
        read = await client.get("/read", headers={"cookie": cookie})
        assert read.json() == {"data": {}, "user": "alice"}
        assert stats.sent() == {"hget": 1}

        stats.reset()
        await client.post("/write", headers={"cookie": cookie})
        assert stats.sent() == {"hget": 1, "evalsha": 1}


async def test_cluster_load_is_one_command(
    clustered: RedisStore, redis_cluster: RedisClusterServers
) -> None:
    record = make_record(user_id="alice")
    await clustered.save(record)
    await clustered.load(record.key, NOW)
    nodes = [CommandStats(node) for node in redis_cluster.nodes]
    try:
        for node in nodes:
            node.reset()

        assert await clustered.load(record.key, NOW) == record

        sent: dict[str, int] = {}
        for node in nodes:
            for name, count in node.sent().items():
                sent[name] = sent.get(name, 0) + count
        assert sent == {"hget": 1}
    finally:
        for node in nodes:
            node.close()


async def test_scripts_are_reloaded_after_a_script_flush(
    standalone: RedisStore, redis_server: RedisServer
) -> None:
    record = make_record(user_id="alice")
    await standalone.save(record)
    with redis_server.client() as raw:
        raw.script_flush()

    await standalone.save(record._replace(version=2), expected_version=1)
    assert await standalone.list_user("alice", NOW) == [record._replace(version=2)]
    with redis_server.client() as raw:
        raw.script_flush()
    assert await standalone.purge_expired(NOW + 2 * HOUR) == 1


async def test_parallel_saves_in_one_process_lose_at_most_one_race_each(
    any_redis: RedisStore,
) -> None:
    """Twenty saves of one session that all loaded version 1: they take turns, so each
    but the first loses once (to its predecessor), merges, and wins: 39 attempts. Racing
    freely, the last could lose nineteen times, and the store run up to 210."""
    store = any_redis
    record = live_record(data=b"[]")
    await store.save(record)
    merges = 0

    def append(n: int) -> Merge:
        def merge(winner: SessionRecord) -> SessionRecord:
            nonlocal merges
            merges += 1
            items = [*json.loads(winner.data), n]
            return winner._replace(data=json.dumps(items).encode(), version=winner.version + 1)

        return merge

    async def save(n: int) -> bool:
        mine = record._replace(data=json.dumps([n]).encode(), version=2)
        return await store.save(mine, expected_version=1, merge=append(n))

    assert await asyncio.gather(*(save(n) for n in range(20))) == [True] * 20
    assert merges == 19
    stored = await store.load(record.key, time.time())
    assert stored is not None
    assert stored.version == 21
    assert sorted(json.loads(stored.data)) == list(range(20))
    assert len(store._turns) == 0  # no lock outlives its saves


# -- Cluster: one user's sessions on several nodes -------------------------------------


async def spread_over_nodes(store: RedisStore, user: str, **fields: object) -> list[SessionRecord]:
    """Sessions of ``user`` until every primary holds at least one."""
    assert isinstance(store.client, RedisCluster)
    await store.client.initialize()
    primaries = {node.name for node in store.client.get_primaries()}
    records: list[SessionRecord] = []
    seen: set[str] = set()
    while seen != primaries:
        record = make_record(user_id=user, created_at=NOW - 1000 + len(records), **fields)
        records.append(record)
        seen.add(store.client.get_node_from_key(session_key(store, record.key)).name)
    assert len({store.client.keyslot(session_key(store, r.key)) for r in records}) > 1
    for record in records:
        await store.save(record)
    return records


async def test_cluster_delete_user_kills_sessions_on_every_node(clustered: RedisStore) -> None:
    alices = await spread_over_nodes(clustered, "alice")
    bob = make_record(user_id="bob")
    await clustered.save(bob)
    assert await clustered.list_user("alice", NOW) == alices

    assert await clustered.delete_user("alice", keep=alices[1].key) == len(alices) - 1

    for record in alices:
        exists = await clustered.client.exists(session_key(clustered, record.key))
        assert exists == (record is alices[1])
    assert await clustered.list_user("alice", NOW) == [alices[1]]
    assert await clustered.list_user("bob", NOW) == [bob]
    assert await clustered.delete_user("alice") == 1
    assert await clustered.client.exists(index_key(clustered, "alice")) == 0


async def test_a_users_index_lets_go_of_sessions_long_dead(any_redis: RedisStore) -> None:
    """A script that logs in every six hours and never lists its devices: Redis drops
    each session at its deadline, and the index must not keep their entries for ever."""
    index = index_key(any_redis, "alice")
    for hours_ago in range(70, 1, -6):  # 70, 64, ... 4
        then = NOW - hours_ago * HOUR
        await any_redis.save(
            make_record(user_id="alice", created_at=then, last_seen_at=then, expires_at=then + 60)
        )
    # Dead for less than a day (22, 16, 10 and 4 hours): kept, for an app server whose
    # clock runs that much behind.
    now = make_record(user_id="alice", created_at=NOW, last_seen_at=NOW, expires_at=NOW + HOUR)
    await any_redis.save(now)
    assert await any_redis.client.zcard(index) == 5
    assert await any_redis.list_user("alice", NOW) == [now]


async def test_delete_all_sweeps_every_batch_and_only_its_own_prefix(
    any_redis: RedisStore,
) -> None:
    """More sessions than one SCAN batch holds, on every node of a Cluster; a store under
    another prefix on the same server keeps its sessions."""
    neighbour = RedisStore(any_redis.client, prefix=unique_prefix())
    theirs = make_record(user_id="alice")
    await neighbour.save(theirs)
    ours = [make_record(user_id=f"user{i % 7}") for i in range(1_100)]
    for record in ours:
        await any_redis.save(record)

    assert await any_redis.delete_all(NOW) == len(ours)

    assert await any_redis.count(NOW) == 0
    for user in {record.user_id for record in ours}:
        assert user is not None
        assert await any_redis.client.exists(index_key(any_redis, user)) == 0
    assert await neighbour.load(theirs.key, NOW) == theirs
    assert await neighbour.list_user("alice", NOW) == [theirs]


async def test_cluster_delete_all_reaches_every_node(clustered: RedisStore) -> None:
    alices = await spread_over_nodes(clustered, "alice")

    assert await clustered.delete_all(NOW) == len(alices)

    for record in alices:
        assert await clustered.client.exists(session_key(clustered, record.key)) == 0
    assert await clustered.client.exists(index_key(clustered, "alice")) == 0


async def test_cluster_delete_all_is_not_done_while_a_slot_is_moving(
    clustered: RedisStore, redis_cluster: RedisClusterServers
) -> None:
    """A reshard moves keys between nodes while the SCAN goes from node to node: a key
    moved to a node already scanned is missed. "Everyone is signed out" must then not
    be said; once the slot has moved, it is true."""
    record = make_record(user_id="alice")
    await clustered.save(record)
    # A slot next to the session's, holding none of this store's keys: moving it makes
    # no command fail, so only the sweep's own look at the slots can tell.
    slot = (clustered.client.keyslot(session_key(clustered, record.key)) + 1) % 16384
    nodes = {}  # node id -> server
    for node in redis_cluster.nodes:
        with node.client() as raw:
            nodes[raw.execute_command("CLUSTER MYID").decode()] = node
    with redis_cluster.nodes[0].client() as raw:
        # Each entry: first slot, last slot, then [host, port, node id] of its primary.
        slots = raw.execute_command("CLUSTER SLOTS")
    holder = next(entry[2][2].decode() for entry in slots if entry[0] <= slot <= entry[1])
    source = nodes[holder]
    target_id, target = next((id_, node) for id_, node in nodes.items() if id_ != holder)
    with source.client() as from_, target.client() as to:
        to.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", holder)
        from_.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        try:
            with pytest.raises(StoreUnavailableError, match="moving slots"):
                await clustered.delete_all(NOW)
        finally:
            for raw in (to, from_):
                raw.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    await clustered.save(make_record(user_id="bob"))
    assert await clustered.delete_all(NOW) == 1  # bob; alice's went in the sweeps above
    assert await clustered.count(NOW) == 0
    assert await clustered.load(record.key, NOW) is None


async def test_cluster_revoke_all_bars_a_login_filed_but_not_yet_written(
    clustered: RedisStore,
) -> None:
    """A login racing "log out everywhere": its save has filed the new session in the
    user's index (its first step) but not yet written it when the revocation runs."""
    alice = make_record(user_id="alice")
    index = index_key(clustered, "alice")
    entry = [alice.key, repr(NOW + HOUR), "60000", repr(NOW)]
    await clustered._scripts.index_add(keys=[index], args=entry)

    assert await clustered.delete_user("alice", now=NOW) == 0  # nothing was live yet
    assert await clustered.save(alice) is False  # the rest of the save: refused
    assert await clustered.load(alice.key, NOW) is None
    assert await clustered.list_user("alice", NOW) == []
    assert await clustered.count(NOW) == 0


async def test_cluster_revoke_all_lets_go_of_entries_whose_session_redis_dropped(
    clustered: RedisStore,
) -> None:
    """An entry past its deadline with nothing behind it is a session Redis expired, not
    a save in flight: its entry goes, and its key is not barred."""
    gone = make_record(user_id="alice", expires_at=NOW - 1)
    index = index_key(clustered, "alice")
    entry = [gone.key, repr(gone.expires_at), "60000", repr(NOW)]
    await clustered._scripts.index_add(keys=[index], args=entry)

    assert await clustered.delete_user("alice", now=NOW) == 0
    assert await clustered.client.zscore(index, gone.key) is None
    assert await clustered.save(gone._replace(expires_at=NOW + HOUR)) is True


async def test_cluster_revoke_all_catches_a_login_saved_while_it_runs(
    clustered: RedisStore,
) -> None:
    """A login on another app server lands in full after the first pass read the index:
    a later pass finds it and ends it too."""
    first, late = make_record(user_id="alice"), make_record(user_id="alice")
    await clustered.save(first)
    scripts = clustered._scripts
    entries = scripts.entries
    reads: list[list[str]] = []

    async def then_a_login(index: str) -> list[tuple[str, str]]:
        found = await entries(index)
        reads.append([member for member, _ in found])
        if len(reads) == 1:
            assert await clustered.save(late) is True
        return found

    scripts.entries = then_a_login  # type: ignore[method-assign]

    assert await clustered.delete_user("alice", now=NOW) == 2
    assert reads[:2] == [[first.key], [late.key]]
    assert await clustered.load(late.key, NOW) is None
    assert await clustered.load(first.key, NOW) is None
    assert await clustered.list_user("alice", NOW) == []


async def test_cluster_list_user_skips_sessions_redis_dropped(clustered: RedisStore) -> None:
    alices = await spread_over_nodes(clustered, "alice")
    gone = make_record(user_id="alice", created_at=NOW - 5000, expires_at=NOW + 100)
    await clustered.save(gone)
    # As if its TTL ran out on its node before the index noticed.
    await clustered.client.delete(session_key(clustered, gone.key))
    index = index_key(clustered, "alice")

    assert await clustered.list_user("alice", NOW) == alices
    # Its deadline has not passed: the entry might be a save in flight, so it stays...
    assert await clustered.client.zscore(index, gone.key) is not None
    # ...until it has.
    assert await clustered.list_user("alice", NOW + 200) == alices
    assert await clustered.client.zscore(index, gone.key) is None


async def test_the_user_index_lists_only_what_is_stored(any_redis: RedisStore) -> None:
    """Entries go as their sessions do, on rotation, delete and purge: an active user's
    index would otherwise grow with every login until its TTL ran out."""
    store = any_redis
    index = index_key(store, "alice")
    first = make_record(user_id="alice")
    await store.save(first)
    rotated = make_record(user_id="alice", version=2)
    assert await store.save(rotated, replaces=first.key, expected_version=1)
    assert await store.client.zrange(index, 0, -1) == [rotated.key.encode()]

    await store.delete(rotated.key)
    assert await store.client.zrange(index, 0, -1) == []

    dying = make_record(user_id="alice", expires_at=NOW + 10)
    await store.save(dying)
    assert await store.purge_expired(NOW + 20) == 1
    assert await store.client.zrange(index, 0, -1) == []


async def test_a_server_whose_clock_runs_ahead_drops_no_live_session_from_the_index(
    any_redis: RedisStore,
) -> None:
    """Deadlines are on the writers' clocks, while Redis ends sessions by its own TTL:
    a login on a server two hours ahead must not prune the others' live sessions from
    the index, or "log out everywhere" would miss them."""
    store = any_redis
    laptop = make_record(user_id="alice", last_seen_at=NOW, expires_at=NOW + 1800)
    phone = make_record(user_id="alice", last_seen_at=NOW, expires_at=NOW + 1800)
    ahead = NOW + 2 * HOUR
    tablet = make_record(
        user_id="alice", created_at=ahead, last_seen_at=ahead, expires_at=ahead + 1800
    )
    for record in (laptop, phone, tablet):
        await store.save(record)

    assert len(await store.list_user("alice", NOW + 60)) == 3
    assert await store.delete_user("alice", now=NOW + 60) == 3
    for record in (laptop, phone, tablet):
        assert await store.load(record.key, NOW + 60) is None


async def test_saves_of_several_processes_on_one_session_all_land(
    redis_server: RedisServer,
) -> None:
    """Several processes writing one session without pause (four stores, as four
    workers, three requests each): a save that lost twice pauses, and then must build
    on what won meanwhile, or each later try loses again until it gives up with 409."""
    prefix = unique_prefix()
    workers = [RedisStore.from_url(redis_server.url, prefix=prefix) for _ in range(4)]
    start = live_record(data=b'{"n":0}')
    await workers[0].save(start)

    def add_one(base: SessionRecord) -> SessionRecord:
        n = json.loads(base.data)["n"] + 1
        changed = json.dumps({"n": n}).encode()
        return base._replace(data=changed, version=base.version + 1, last_seen_at=time.time())

    async def request(store: RedisStore, times: int) -> None:
        for _ in range(times):
            loaded = await store.load(start.key, time.time())
            assert loaded is not None
            await store.save(add_one(loaded), expected_version=loaded.version, merge=add_one)

    try:
        await asyncio.gather(*(request(store, 100) for store in workers for _ in range(3)))
        final = await workers[0].load(start.key, time.time())
    finally:
        for store in workers:
            await store.aclose()
    assert final is not None
    assert json.loads(final.data) == {"n": 1200}


async def test_revoking_a_user_with_many_sessions_takes_short_scripts(
    standalone: RedisStore, stats: CommandStats
) -> None:
    """A script blocks the whole server while it runs: a bot account with a hundred
    thousand sessions, revoked in one, held every other client for seconds."""
    records = [live_record(user_id="bot") for _ in range(1201)]
    kept = records[0]
    for record in records:
        await standalone.save(record)
    assert await standalone.delete_user("nobody") == 0  # the script is loaded
    stats.reset()

    assert await standalone.delete_user("bot", keep=kept.key) == 1200

    assert stats.sent()["evalsha"] == 3  # 500, 500 and 200 sessions
    assert await standalone.list_user("bot", time.time()) == [kept]
    assert await standalone.count(time.time()) == 1


async def test_a_resent_creation_does_not_bring_back_a_session_moved_away(
    any_redis: RedisStore,
) -> None:
    """redis-py sends a command again when its reply was lost. A creation whose first
    copy landed, and whose session then moved to a new ID (a login), must not come
    back under the old one when the copy arrives."""
    store = any_redis
    first = live_record(user_id="alice")
    token = _redis_codec.save_token()
    assert await store._save_once(first, None, "new", token) is True
    moved = live_record(user_id="alice", version=first.version + 1)
    assert await store.save(moved, replaces=first.key, expected_version=first.version)

    assert await store._save_once(first, None, "new", token) is not True

    assert await store.load(first.key, time.time()) is None
    assert [r.key for r in await store.list_user("alice", time.time())] == [moved.key]


async def test_a_stale_index_entry_never_reaches_another_users_session(
    any_redis: RedisStore,
) -> None:
    store = any_redis
    alice, gone = make_record(user_id="alice"), make_record(user_id="alice")
    bobs = make_record(user_id="bob", expires_at=NOW + 100)
    for record in (alice, gone, bobs):
        await store.save(record)
    # What a crash between writing a moved session and un-filing it leaves behind, and
    # an entry whose session Redis has already dropped.
    await store.client.zadd(index_key(store, "alice"), {bobs.key: bobs.expires_at})
    await store.client.delete(session_key(store, gone.key))

    assert await store.list_user("alice", NOW) == [alice]
    assert await store.delete_user("alice", now=NOW) == 1
    assert await store.load(bobs.key, NOW) == bobs
    assert await store.list_user("bob", NOW) == [bobs]
    assert await store.list_user("alice", NOW) == []


async def test_list_user_keeps_an_entry_that_a_save_filed_again_meanwhile(
    any_redis: RedisStore,
) -> None:
    store = any_redis
    gone = make_record(user_id="alice", expires_at=NOW + 100)
    await store.save(gone)
    await store.client.delete(session_key(store, gone.key))  # as if Redis dropped it
    back = gone._replace(expires_at=NOW + HOUR)
    unindex = store._scripts.unindex
    cleaned: list[str | bytes] = []

    # The session is saved again between list_user's reads, which found its entry stale,
    # and its clean-up: that save filed the entry anew, with a new score.
    async def after_a_save(keys: list[str], args: list[str | bytes]) -> object:
        cleaned.extend(args[::2])
        assert await store.save(back) is True
        return await unindex(keys=keys, args=args)

    store._scripts.unindex = after_a_save  # type: ignore[assignment]

    assert await store.list_user("alice", NOW + 200) == []
    assert cleaned == [gone.key]
    assert await store.client.zscore(index_key(store, "alice"), gone.key) == back.expires_at
    assert await store.list_user("alice", NOW + 200) == [back]
    assert await store.delete_user("alice", now=NOW + 200) == 1
    assert await store.load(back.key, NOW + 200) is None


@pytest.mark.parametrize("expected_version", [1, None])
async def test_a_session_saved_without_its_user_keeps_nothing_of_them(
    any_redis: RedisStore, expected_version: int | None
) -> None:
    store = any_redis
    alices = make_record(user_id="alice")
    await store.save(alices)
    anonymous = alices._replace(user_id=None, version=2, data=b"{}")

    assert await store.save(anonymous, expected_version=expected_version) is True

    stored = await store.client.hgetall(session_key(store, alices.key))
    assert b"u" not in stored
    assert await store.list_user("alice", NOW) == []
    # An entry left behind as on Cluster when a save's last step (un-filing the key from
    # its previous user) is lost: revocation must judge by the session, now nobody's.
    await store.client.zadd(index_key(store, "alice"), {alices.key: alices.expires_at})
    assert await store.list_user("alice", NOW) == []
    assert await store.delete_user("alice", now=NOW) == 0
    assert await store.load(alices.key, NOW) == anonymous


async def test_cluster_rotation_across_nodes_checks_the_old_session_first(
    clustered: RedisStore,
) -> None:
    assert isinstance(clustered.client, RedisCluster)
    await clustered.client.initialize()
    old = make_record(user_id="alice")

    def node(record: SessionRecord) -> str:
        assert isinstance(clustered.client, RedisCluster)
        return str(clustered.client.get_node_from_key(session_key(clustered, record.key)).name)

    new = make_record(user_id="alice")
    while node(new) == node(old):
        new = make_record(user_id="alice")
    await clustered.save(old)
    await clustered.delete(old.key)  # a logout on another request

    assert await clustered.save(new, replaces=old.key, expected_version=1) is False
    assert await clustered.client.exists(session_key(clustered, new.key)) == 0
    assert await clustered.list_user("alice", NOW) == []

    await clustered.save(old)
    assert await clustered.save(new, replaces=old.key, expected_version=1) is True
    assert await clustered.load(old.key, NOW) is None
    assert await clustered.list_user("alice", NOW) == [new]


# -- URLs ------------------------------------------------------------------------------


async def test_redis_url(redis_server: RedisServer) -> None:
    store = store_from_url(f"{redis_server.url}?prefix=url-test&timeout=0.5")
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.cluster, store.owns_client) == ("url-test", False, True)
    assert isinstance(store.client, Redis)
    kwargs = store.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.5
    await saves_and_loads(store)


async def test_unix_socket_url(redis_server: RedisServer) -> None:
    store = store_from_url(f"{redis_server.unix_url}?prefix={unique_prefix()}")
    assert isinstance(store, RedisStore)
    assert isinstance(store.client, Redis)
    assert store.client.connection_pool.connection_kwargs["path"] == str(redis_server.unix_socket)
    await saves_and_loads(store)


async def test_cluster_url(redis_cluster: RedisClusterServers) -> None:
    store = store_from_url(f"{redis_cluster.url}?prefix={unique_prefix()}&timeout=2")
    assert isinstance(store, RedisStore)
    assert store.cluster
    await saves_and_loads(store)


async def test_a_cluster_store_with_a_small_pool_still_lists_and_ends_a_users_sessions(
    redis_cluster: RedisClusterServers,
) -> None:
    """A batch over a user's sessions must fit a pool of ``?max_connections=2`` per
    node, which redis-py's Cluster client refuses to exceed rather than wait."""
    url = f"{redis_cluster.url}?prefix={unique_prefix()}&timeout=2&max_connections=2"
    store = store_from_url(url)
    single = store_from_url(
        f"{redis_cluster.url}?prefix={unique_prefix()}&timeout=2&max_connections=1"
    )
    try:
        # A first login also looks at the eviction policy: after its save, not beside it.
        for _ in range(3):
            assert await single.save(make_record(user_id="erin"))
        records = [make_record(user_id="dave") for _ in range(12)]
        for record in records:
            assert await store.save(record)
        assert len(await store.list_user("dave", NOW)) == 12
        assert await store.count(NOW) == 12
        assert await store.delete_user("dave", now=NOW) == 12
        assert all([await store.load(r.key, NOW) is None for r in records])
    finally:
        await store.aclose()
        await single.aclose()


@pytest.mark.parametrize("scheme", stores.REDIS_SCHEMES)
async def test_every_redis_scheme_reaches_the_redis_store(scheme: str) -> None:
    rest = {"unix": "/run/redis.sock"}.get(scheme, "127.0.0.1:6379")
    if scheme.endswith("+sentinel"):
        rest += "/main"
    store = store_from_url(f"{scheme}://{rest}")  # nothing connects until first use
    try:
        assert isinstance(store, RedisStore)
        assert store.cluster == scheme.endswith("+cluster")
    finally:
        await store.aclose()
    assert scheme in stores.SUPPORTED_SCHEMES


async def test_tls_url_builds_a_tls_client_without_connecting() -> None:
    store = RedisStore.from_url("rediss://sessions.example:6380/2", prefix="app")
    assert isinstance(store.client, Redis)
    pool = store.client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["db"] == 2
    assert store.prefix == "app"
    await store.aclose()


async def saves_and_loads(store: object) -> None:
    assert isinstance(store, RedisStore)
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        assert await store.load(record.key, NOW) == record
        assert await store.list_user("alice", NOW) == [record]
        assert await store.delete_user("alice") == 1
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://localhost?colour=blue", "colour"),
        ("redis://localhost?timeout=soon", "timeout"),
        ("redis://localhost?timeout=0", "timeout"),
        ("redis://localhost?timeout=nan", "timeout"),
        ("redis://localhost?timeout=", "timeout"),
        ("redis://localhost?prefix=a{b}", "prefix"),
        ("redis://localhost?prefix=", "prefix"),
        ("redis://localhost/notadb", "notadb"),
        ("redis+cluster://", "host:port"),
        ("redis+cluster://a:1,b:x", "invalid"),
        ("redis+cluster://a:1,b:2/3", "database 0"),
        ("redis+cluster://a:1?db=1", "database 0"),
    ],
)
def test_bad_redis_urls_are_configuration_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url)

    message = str(caught.value)
    assert words in message
    assert repr(url) in message or "prefix" in words


async def test_keywords_win_over_url_options() -> None:
    store = RedisStore.from_url("redis://localhost?prefix=url&timeout=3", prefix="kw", timeout=0.25)
    assert store.prefix == "kw"
    assert isinstance(store.client, Redis)
    assert store.client.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    await store.aclose()


async def test_a_decoding_client_is_refused() -> None:
    client = Redis(decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            RedisStore(client)
    finally:
        await client.aclose()


async def test_a_borrowed_client_is_left_open(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    try:
        store = RedisStore(client, prefix=unique_prefix())
        await store.save(make_record())
        # redis-py reconnects a closed client on its next command, so a PING would pass
        # either way: the server's ID for the connection says whether it was closed.
        connection = await client.client_id()
        await store.aclose()
        assert await client.client_id() == connection
    finally:
        await client.aclose()


async def test_an_owned_client_is_closed(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=unique_prefix())
    try:
        record = make_record()
        await store.save(record)
        connection = await store.client.client_id()
        await store.aclose()
        assert await store.client.client_id() != connection
        assert await store.load(record.key, NOW) == record  # and usable again
    finally:
        await store.aclose()


def test_without_redis_py_the_url_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import coatcheck\n"
        "coatcheck.store_from_url('redis://localhost')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "MissingDependencyError" in result.stderr
    assert "pip install 'coatcheck[redis]'" in result.stderr


# -- failures --------------------------------------------------------------------------


async def test_an_outage_is_a_quick_503_and_the_store_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "outage").start()
    store = RedisStore.from_url(server.url, prefix=unique_prefix())
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        assert await store.load(record.key, NOW) == record

        server.stop()
        for attempt in (store.load(record.key, NOW), store.save(make_record())):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await attempt
            assert time.monotonic() - started < 1.5

        server.start()  # same port, empty: the test server keeps nothing on disk
        assert await store.load(record.key, NOW) is None
        await store.save(record)
        assert await store.load(record.key, NOW) == record
        assert await store.list_user("alice", NOW) == [record]
    finally:
        await store.aclose()
        server.stop()


async def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections into the backlog, never replies
        port = silent.getsockname()[1]
        store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0?timeout=0.2", prefix="t")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await store.load(store_key(new_session_id()), NOW)
            assert time.monotonic() - started < 1.0
        finally:
            await store.aclose()


async def test_other_redis_errors_are_store_errors(
    standalone: RedisStore, redis_server: RedisServer
) -> None:
    key = store_key(new_session_id())
    with redis_server.client() as raw:
        raw.set(session_key(standalone, key), b"not a hash")

    with pytest.raises(StoreError) as caught:
        await standalone.load(key, NOW)

    assert not isinstance(caught.value, StoreUnavailableError)
    assert isinstance(caught.value.__cause__, redis.ResponseError)


async def test_a_primary_short_of_replicas_is_an_outage_that_passes(
    standalone: RedisStore, redis_server: RedisServer
) -> None:
    """``min-replicas-to-write`` refuses writes while too few replicas answer: an
    outage that ends once they are back, not an error to fix."""
    record = make_record()
    await standalone.save(record)
    with redis_server.client() as raw:
        raw.config_set("min-replicas-to-write", 1)
        try:
            with pytest.raises(StoreUnavailableError, match="NOREPLICAS"):
                await standalone.save(record._replace(version=2), expected_version=1)
            assert await standalone.load(record.key, NOW) == record  # reads still pass
        finally:
            raw.config_set("min-replicas-to-write", 0)
    assert await standalone.save(record._replace(version=2), expected_version=1)


async def test_a_server_busy_with_a_long_script_is_an_outage_that_passes(
    standalone: RedisStore, redis_server: RedisServer
) -> None:
    """Redis answers BUSY to everyone while a script runs past busy-reply-threshold:
    it ends by itself, so it must not be logged as an error waiting cannot cure."""
    record = live_record()
    await standalone.save(record)
    with redis_server.client() as raw:
        raw.config_set("busy-reply-threshold", 50)

        def loop_until_killed() -> None:
            with pytest.raises(redis.ResponseError):
                raw.eval("while true do end", 0)

        looping = threading.Thread(target=loop_until_killed, daemon=True)
        try:
            looping.start()
            await asyncio.sleep(0.3)
            with pytest.raises(StoreUnavailableError, match="BUSY"):
                await standalone.load(record.key, time.time())
        finally:
            with redis_server.client() as killer:
                killer.script_kill()
                # The kill lands at the script's next check: until then the server still
                # answers BUSY, and a threshold left at 50 ms would make every later
                # test's longer scripts an outage for the others.
                for _ in range(100):
                    try:
                        killer.config_set("busy-reply-threshold", 5000)
                        break
                    except redis.ResponseError as exc:
                        if "BUSY" not in str(exc):
                            raise
                        await asyncio.sleep(0.05)
            looping.join(5)
    assert await standalone.load(record.key, time.time()) == record


# The ACL the README gives, and what a Cluster's client needs on top of it.
ACL = ("+@read", "+@write", "+@scripting", "-@dangerous")
CLUSTER_ACL = (*ACL, "+cluster|slots", "+cluster|nodes", "+command")


def acl_user(nodes: list[RedisServer], rules: tuple[str, ...]) -> tuple[str, str]:
    """A user of its own key prefix, made on every node (a Cluster shares no ACLs)."""
    prefix, password = unique_prefix(), "s3cret-" + unique_prefix()
    for node in nodes:
        with node.client() as raw:
            raw.execute_command(
                "ACL", "SETUSER", prefix, "on", f">{password}", f"~{prefix}:*", *rules
            )
    return prefix, password


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_the_acl_the_readme_gives_is_enough_for_every_store_operation(
    kind: str, redis_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    nodes, url, rules = [redis_server], redis_server.url, ACL
    if kind == "redis-cluster":
        nodes, url, rules = redis_cluster.nodes, redis_cluster.url, CLUSTER_ACL
    prefix, password = acl_user(nodes, rules)
    scheme = url.split("://", 1)[0]
    url = url.replace(f"{scheme}://", f"{scheme}://{prefix}:{password}@", 1)
    store = RedisStore.from_url(url, prefix=prefix)
    try:
        laptop, phone = make_record(user_id="alice"), make_record(user_id="alice")
        for record in (laptop, phone):
            assert await store.save(record)
        assert await store.load(laptop.key, NOW) == laptop
        assert await store.save(laptop._replace(version=2), expected_version=1)
        assert len(await store.list_user("alice", NOW)) == 2
        assert await store.delete_user("alice", keep=laptop.key, now=NOW) == 1
        assert await store.count(NOW) == 1
        assert await store.purge_expired(NOW) == 0
        await store.delete(laptop.key)
        assert await store.save(make_record())
        assert await store.delete_all(NOW) == 1
    finally:
        await store.aclose()


async def test_a_cluster_user_without_the_clusters_permissions_is_told_so(
    redis_cluster: RedisClusterServers,
) -> None:
    """Not that the server is no Cluster, which is what redis-py's client says when
    the ACL refuses it ``CLUSTER SLOTS``: the operator would look at the URL."""
    prefix, password = acl_user(redis_cluster.nodes, ACL)
    url = redis_cluster.url.replace("://", f"://{prefix}:{password}@", 1)
    store = RedisStore.from_url(url, prefix=prefix)
    try:
        with pytest.raises(StoreError) as refused:
            await store.load(store_key(new_session_id()), NOW)
    finally:
        await store.aclose()
    assert not isinstance(refused.value, StoreUnavailableError)  # no wait cures it
    assert "lacks a permission" in str(refused.value)
    assert "cluster|slots" in str(refused.value)
    assert "not a Cluster" not in str(refused.value)


PASSWORD = "correct-horse-battery"


async def first_load_error(url: str) -> StoreError:
    """What the first load through a store built from ``url`` raises."""
    store = RedisStore.from_url(url, prefix=unique_prefix())
    try:
        with pytest.raises(StoreError) as caught:
            await store.load(store_key(new_session_id()), NOW)
    finally:
        await store.aclose()
    return caught.value


async def test_a_refused_password_is_a_store_error_not_an_outage(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "auth").start()
    try:
        with server.client() as admin:
            admin.config_set("requirepass", PASSWORD)  # as --requirepass does
        address = f"127.0.0.1:{server.port}/0"
        for credentials in ("", ":not-the-password@"):
            error = await first_load_error(f"redis://{credentials}{address}")
            # Waiting cannot cure it: an error for the operator, not an outage to wait out.
            assert type(error) is StoreError
            assert isinstance(error.__cause__, redis.AuthenticationError)
            assert "not-the-password" not in str(error)
        await saves_and_loads(
            RedisStore.from_url(f"redis://:{PASSWORD}@{address}", prefix=unique_prefix())
        )
    finally:
        server.stop()


async def test_an_unreachable_cluster_is_an_outage() -> None:
    error = await first_load_error(
        f"redis+cluster://:{PASSWORD}@127.0.0.1:{free_port()}?timeout=0.5"
    )
    assert isinstance(error, StoreUnavailableError)
    assert PASSWORD not in str(error)


async def test_a_password_the_cluster_refuses_is_a_store_error_not_an_outage(
    redis_cluster: RedisClusterServers,
) -> None:
    # No such ACL user: every node answers WRONGPASS, as to a wrong requirepass.
    nodes = redis_cluster.url.removeprefix("redis+cluster://")
    error = await first_load_error(f"redis+cluster://nobody:not-the-password@{nodes}")
    assert "not-the-password" not in str(error)
    assert type(error) is StoreError


async def test_a_password_refused_over_a_unix_socket_is_a_store_error_not_an_outage(
    redis_server: RedisServer,
) -> None:
    """redis-py wraps the refusal in a ConnectionError there, not over TCP."""
    assert redis_server.unix_socket is not None
    error = await first_load_error(f"unix://nobody:not-the-password@{redis_server.unix_socket}")
    assert "not-the-password" not in str(error)
    assert type(error) is StoreError
    assert "refused the credentials" in str(error)


async def test_a_cluster_url_naming_a_single_server_is_a_store_error_not_an_outage(
    redis_server: RedisServer,
) -> None:
    error = await first_load_error(f"redis+cluster://127.0.0.1:{redis_server.port}")
    assert type(error) is StoreError
    assert "not a Cluster, use redis://" in str(error)


@pytest.mark.parametrize(
    ("policy", "config"),
    [
        ("noeviction", ()),
        ("allkeys-lru", ()),
        ("volatile-ttl", ()),
        # ElastiCache and Azure evict by default and refuse CONFIG: INFO tells it.
        ("volatile-lru", ("--rename-command", "CONFIG", "")),
    ],
)
async def test_a_server_that_may_evict_a_users_index_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str, config: tuple[str, ...]
) -> None:
    """Under memory pressure such a server may drop a user's index while the sessions
    stay, and signing out everywhere would miss them: said once, at the first login."""
    extra = ("--maxmemory-policy", policy, *config)
    server = RedisServer(tmp_path / "r", extra=extra).start()
    store = RedisStore.from_url(server.url, prefix=unique_prefix())
    try:
        await store.save(make_record())  # anonymous: no index, no look
        assert not store._policy_checked
        for _ in range(2):
            await store.save(make_record(user_id="alice"))
        assert store._policy_checked
    finally:
        await store.aclose()
        server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "coatcheck"]
    if policy == "noeviction":
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert f"maxmemory-policy is {policy}" in warnings[0]


async def test_a_cluster_is_asked_for_its_eviction_policy_node_by_node(
    clustered: RedisStore, redis_cluster: RedisClusterServers, caplog: pytest.LogCaptureFixture
) -> None:
    (first, *_) = redis_cluster.nodes
    with first.client() as node:
        node.config_set("maxmemory-policy", "allkeys-random")
    try:
        await clustered.save(make_record(user_id="alice"))
        assert clustered._policy_checked
    finally:
        with first.client() as node:
            node.config_set("maxmemory-policy", "noeviction")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "coatcheck"]
    assert "maxmemory-policy is allkeys-random" in warning


async def test_a_record_dead_when_written_is_hidden_and_soon_gone(any_redis: RedisStore) -> None:
    record = make_record(expires_at=NOW - HOUR)

    assert await any_redis.save(record) is True

    assert await any_redis.load(record.key, NOW) is None
    assert 0 < await any_redis.client.pttl(session_key(any_redis, record.key)) <= 1000
    assert await any_redis.count(NOW) == 0
    assert await any_redis.purge_expired(NOW) == 1


_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(
    public_id=_texts,
    data=st.binary(max_size=64),
    user_id=st.none() | _texts.filter(bool),
    times=st.tuples(*[st.floats(0, 4e9, allow_nan=False)] * 3),
    remember=st.booleans(),
    user_agent=_texts,
    version=st.integers(1, 2**63),
    ip_address=_texts,
    login=st.none() | st.floats(0, 4e9, allow_nan=False),
    limits=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
@settings(max_examples=300, deadline=None)
def test_packed_records_come_back_field_for_field(
    public_id: str,
    data: bytes,
    user_id: str | None,
    times: tuple[float, float, float],
    remember: bool,
    user_agent: str,
    version: int,
    ip_address: str,
    login: float | None,
    limits: tuple[int, int],
) -> None:
    """``login``: None for the time the oldest format implies, else a time of its own;
    ``limits``: those a login chose, 0 for the configured ones."""
    implied = 0.0 if user_id is None else times[0]
    authenticated_at = implied if login is None else login
    record = SessionRecord(
        key=store_key(new_session_id()),
        public_id=public_id,
        data=data,
        user_id=user_id,
        created_at=times[0],
        last_seen_at=times[1],
        expires_at=times[2],
        remember=remember,
        user_agent=user_agent,
        version=version,
        ip_address=ip_address,
        authenticated_at=authenticated_at,
        idle_timeout=limits[0],
        absolute_timeout=limits[1],
    )
    loaded = _redis_codec.unpack(record.key, _redis_codec.pack(record))
    assert loaded == record
    assert type(loaded) is SessionRecord


@pytest.mark.parametrize("fmt", [0, 5, 255])
def test_a_packed_record_of_another_format_is_no_session_said_once(
    fmt: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Written by a later release (read after a rollback): a 503 would last until the
    record expires, whatever the user did; no session lets them sign in again."""
    record = make_record(user_id="alice")
    packed = _redis_codec.pack(record)
    _redis_codec._reported.clear()

    with caplog.at_level(logging.ERROR, logger="coatcheck"):
        assert _redis_codec.unpack(record.key, bytes([fmt]) + packed[1:]) is None
        assert _redis_codec.unpack(record.key, bytes([fmt]) + packed[1:]) is None
        assert _redis_codec.unpack(record.key, packed[:20]) is None  # cut short

    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert f"unknown record format {fmt}" in messages[0]
    assert "cannot be read" in messages[1]


async def test_a_record_of_a_later_format_leaves_a_new_login_possible(
    any_redis: RedisStore,
) -> None:
    redis_store = any_redis
    record = live_record(user_id="alice")
    assert await redis_store.save(record)
    name = redis_store._names.session(record.key)
    packed = await redis_store.client.execute_command("HGET", name, "b")
    await redis_store.client.execute_command("HSET", name, "b", b"\x09" + packed[1:])

    assert await redis_store.load(record.key, time.time()) is None
    assert await redis_store.list_user("alice", time.time()) == []
    # Left as it is, for the release that wrote it.
    assert await redis_store.client.execute_command("HGET", name, "b") == b"\x09" + packed[1:]
    fresh = live_record(user_id="alice")
    assert await redis_store.save(fresh)
    assert await redis_store.list_user("alice", time.time()) == [fresh]


def test_records_keep_the_oldest_format_that_holds_them() -> None:
    """During a rolling deploy, workers of the previous release read what new ones
    write: only a record with an address (record_ip), with a login adopted from
    another library (its time unknown), or with limits its login chose needs a newer
    format."""
    plain = make_record(user_id="alice", user_agent="Firefox")
    packed = _redis_codec.pack(plain)
    assert packed[0] == 1
    assert packed[1:].startswith(struct.pack("!dddQ?", *plain[4:7], plain.version, False))
    assert _redis_codec.unpack(plain.key, packed) == plain  # logged in when it was made
    anonymous = make_record(user_agent="Firefox")
    assert _redis_codec.pack(anonymous)[0] == 1
    with_address = plain._replace(ip_address="198.51.100.7")
    adopted = plain._replace(authenticated_at=0.0)
    shortened = plain._replace(idle_timeout=600)
    for record, fmt in [
        (with_address, 2),
        (adopted, 3),
        (adopted._replace(ip_address="::1"), 3),
        (shortened, 4),
        (shortened._replace(idle_timeout=0, absolute_timeout=3600, ip_address="::1"), 4),
    ]:
        assert _redis_codec.pack(record)[0] == fmt
        assert _redis_codec.unpack(plain.key, _redis_codec.pack(record)) == record


async def test_a_burst_of_saves_on_a_new_cluster_client_all_land(
    redis_cluster: RedisClusterServers,
) -> None:
    """The first requests after a start (or after an error that makes the client learn
    the slots again) come in a burst. Sent before the client knows the slots, each
    would meet a MOVED reply, and enough of those make redis-py start over, closing the
    connections of every command in flight: 503s under load."""
    store = RedisStore.from_url(redis_cluster.url, prefix=unique_prefix())
    try:
        records = [make_record(user_id="alice") for _ in range(40)]
        results = await asyncio.gather(*(store.save(record) for record in records))
        assert results == [True] * len(records)
        assert len(await store.list_user("alice", NOW)) == len(records)
    finally:
        await store.aclose()
