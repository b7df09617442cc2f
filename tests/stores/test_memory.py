"""The memory store is bounded: a flood of anonymous sessions cannot grow it forever."""

from __future__ import annotations

import tracemalloc

import pytest

from coatcheck.serializers import JSONSerializer
from coatcheck.stores import MemoryStore, SessionRecord

from .conftest import HOUR, NOW, make_record

pytestmark = pytest.mark.anyio

# The memory store takes ``now`` from the caller only, so looking at a moment long
# before NOW shows whether a record is still held, expired or not.
LONG_AGO = NOW - 100 * HOUR


async def held(store: MemoryStore, record: SessionRecord) -> bool:
    return await store.load(record.key, LONG_AGO) == record


async def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(max_entries=0)


async def test_full_store_drops_the_least_recently_written() -> None:
    store = MemoryStore(max_entries=3)
    first, second, third = (make_record() for _ in range(3))
    for record in (first, second, third):
        await store.save(record)

    fourth = make_record()
    await store.save(fourth)

    assert not await held(store, first)
    for record in (second, third, fourth):
        assert await store.load(record.key, NOW) == record
    assert await store.count(NOW) == 3


async def test_rewriting_a_record_makes_it_recent() -> None:
    store = MemoryStore(max_entries=3)
    first, second, third = (make_record() for _ in range(3))
    for record in (first, second, third):
        await store.save(record)
    refreshed = first._replace(last_seen_at=NOW, version=2)
    await store.save(refreshed)  # at capacity, but the same key: nothing is evicted
    assert await store.count(NOW) == 3

    await store.save(make_record())

    assert await store.load(first.key, NOW) == refreshed
    assert not await held(store, second)
    assert await store.load(third.key, NOW) == third


async def test_full_store_drops_an_expired_record_first() -> None:
    store = MemoryStore(max_entries=3)
    oldest_live = make_record(created_at=NOW - 300)
    expired = make_record(created_at=NOW - 200, expires_at=NOW - 1)
    newest_live = make_record(created_at=NOW - 100)
    for record in (oldest_live, expired, newest_live):
        await store.save(record)

    incoming = make_record(last_seen_at=NOW)
    await store.save(incoming)

    assert not await held(store, expired)
    for record in (oldest_live, newest_live, incoming):
        assert await store.load(record.key, NOW) == record


async def test_expiry_for_eviction_is_judged_at_the_incoming_records_time() -> None:
    store = MemoryStore(max_entries=2)
    # Still live at NOW, but dead by the time the next request is seen.
    soon_dead = make_record(expires_at=NOW + 5)
    live = make_record(expires_at=NOW + HOUR)
    await store.save(live)
    await store.save(soon_dead)

    later = make_record(last_seen_at=NOW + 10, expires_at=NOW + 2 * HOUR)
    await store.save(later)

    assert await store.load(live.key, NOW + 10) == live
    assert await store.load(later.key, NOW + 10) == later
    assert not await held(store, soon_dead)


async def test_replacing_at_capacity_does_not_evict_a_bystander() -> None:
    store = MemoryStore(max_entries=3)
    old, bystander, other = (make_record() for _ in range(3))
    for record in (old, bystander, other):
        await store.save(record)

    rotated = make_record(user_id="alice")
    await store.save(rotated, replaces=old.key)

    assert await store.load(old.key, NOW) is None
    for record in (bystander, other, rotated):
        assert await store.load(record.key, NOW) == record


async def test_user_index_stays_consistent_after_eviction() -> None:
    store = MemoryStore(max_entries=3)
    alice_old = make_record(user_id="alice", created_at=NOW - 30)
    alice_new = make_record(user_id="alice", created_at=NOW - 20)
    bob_only = make_record(user_id="bob", created_at=NOW - 10)
    for record in (alice_old, alice_new, bob_only):
        await store.save(record)

    # Signed-in newcomers: no anonymous session is left to go first.
    await store.save(make_record(user_id="carol"))  # evicts alice_old
    assert await store.list_user("alice", NOW) == [alice_new]
    assert await store.delete_user("alice", keep=alice_new.key) == 0

    await store.save(make_record(user_id="carol"))  # evicts alice_new
    await store.save(make_record(user_id="carol"))  # evicts bob_only, Bob's last session
    assert await store.list_user("alice", NOW) == []
    assert await store.list_user("bob", NOW) == []
    assert await store.delete_user("alice") == 0
    assert await store.delete_user("bob") == 0
    assert await store.count(NOW) == 3

    # The evicted users can come back and are indexed afresh.
    back = make_record(user_id="bob")
    await store.save(back)
    assert await store.list_user("bob", NOW) == [back]
    assert await store.delete_user("bob") == 1


async def test_an_anonymous_flood_never_pushes_out_a_signed_in_session() -> None:
    """Reads write nothing, so an active user's record may well be the oldest written:
    a client looping over an anonymous cart route signed everyone out."""
    store = MemoryStore(max_entries=50)
    alice = make_record(user_id="alice")
    await store.save(alice)
    flood = [make_record() for _ in range(500)]
    for record in flood:
        await store.save(record)
    assert await store.list_user("alice", NOW) == [alice]
    assert await store.count(LONG_AGO) == 50
    assert [await held(store, record) for record in flood[-49:]] == [True] * 49
    await store.delete(flood[-1].key)
    assert await store.count(LONG_AGO) == 49


async def test_a_flood_stays_within_max_entries() -> None:
    store = MemoryStore(max_entries=50)
    flood = [make_record() for _ in range(500)]
    for record in flood:
        await store.save(record)

    assert await store.count(LONG_AGO) == 50
    for record in flood[-50:]:
        assert await held(store, record)
    for record in flood[:-50]:
        assert not await held(store, record)


async def test_max_entries_one_keeps_only_the_latest() -> None:
    store = MemoryStore(max_entries=1)
    first = make_record(user_id="alice")
    second = make_record(user_id="bob")
    await store.save(first)
    await store.save(second)

    assert await store.load(first.key, NOW) is None
    assert await store.load(second.key, NOW) == second
    assert await store.list_user("alice", NOW) == []
    assert await store.list_user("bob", NOW) == [second]


async def test_a_record_holds_only_the_memory_its_data_needs() -> None:
    """orjson's result may keep a buffer of kilobytes for a few bytes of JSON: kept as
    it is, 10,000 small sessions would take tens of megabytes."""
    store, serializer = MemoryStore(max_entries=2000), JSONSerializer()
    records = [make_record() for _ in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, record in enumerate(records):  # each encoded afresh, as each request does
            await store.save(record._replace(data=serializer.dumps({"n": n})))
        per_record = (tracemalloc.get_traced_memory()[0] - before) / 1000
    finally:
        tracemalloc.stop()
    assert per_record < 1500, per_record


async def test_moves_are_remembered_for_at_most_max_entries_keys() -> None:
    """A flood of logins cannot grow what the store remembers of moves without bound."""
    store = MemoryStore(max_entries=3)
    olds = []
    for _ in range(4):
        old = make_record(user_id=None)
        olds.append(old)
        await store.save(old)
        await store.save(make_record(user_id=None, last_seen_at=NOW), replaces=old.key)
    assert await store.moved_at(olds[0].key, NOW) is None
    assert await store.moved_at(olds[-1].key, NOW) == NOW
