"""The store contract as a test kit: the promises coatcheck's own stores are held to,
ready to run against a store of your own.

Subclass :class:`StoreContract` and give it a ``store`` fixture that yields a fresh,
empty store; every contract test then runs against it::

    import pytest
    from coatcheck.store_contract import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        async def store(self):
            store = MyStore(...)
            yield store
            await store.aclose()

The kit needs pytest. Its tests are async and run on anyio's pytest plugin, which
comes with anyio (a Starlette dependency), on asyncio: the loop coatcheck runs on,
even where trio is installed too. pytest-asyncio's auto mode would take the ``store``
fixture onto an event loop of its own: run the kit with ``-o asyncio_mode=strict``.
For pytest's detailed assertion messages, add
``pytest.register_assert_rewrite("coatcheck.store_contract")`` to a ``conftest.py``.
Tests of your own can build records with :func:`make_record`, live at :data:`NOW`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from ._ids import new_public_id, new_session_id, store_key
from .stores.base import MOVED_FOR as _MOVED_FOR
from .stores.base import (
    Create,
    MovedAt,
    MovedTo,
    SessionRecord,
    Store,
    creator_of,
    follower_of,
    mover_of,
)

__all__ = ["HOUR", "NOW", "StoreContract", "make_record"]

# One clock for every test: stores take ``now`` from the caller. It sits near the real
# time so that backends which also hand deadlines to a server (Redis TTLs) agree with it.
NOW = float(int(time.time()))
HOUR = 3600.0


def make_record(**overrides: Any) -> SessionRecord:
    """A live anonymous record under a fresh key; any field can be overridden. With a
    ``user_id``, the login was made when the session was (as ``Session.login`` does)."""
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
    if fields["user_id"] is not None:
        fields.setdefault("authenticated_at", fields["created_at"])
    return SessionRecord(**fields)


def _keys(records: list[SessionRecord]) -> list[str]:
    return [record.key for record in records]


def _mover(store: Store) -> MovedAt:
    """The store's optional ``moved_at()``; a store without one skips the tests of it."""
    moved_at = mover_of(store)
    if moved_at is None:
        pytest.skip("the store does not track moves (optional: see mover_of)")
    return moved_at


def _creator(store: Store) -> Create:
    """The store's optional ``create()``; a store without one skips the tests of it."""
    create = creator_of(store)
    if create is None:
        pytest.skip("the store cannot create (optional: see creator_of)")
    return create


def _follower(store: Store) -> MovedTo:
    """The store's optional ``moved_to()``; a store without one skips the tests of it."""
    moved_to = follower_of(store)
    if moved_to is None:
        pytest.skip("the store does not say where moves went (optional: see follower_of)")
    return moved_to


class StoreContract:
    """Every promise of the ``Store`` protocol, as tests of the ``store`` fixture.

    The fixture is the subclass's to define (or a ``conftest.py``'s); each test gets a
    new store, and expects it empty.
    """

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def anyio_backend(self) -> str:
        """asyncio only: anyio would also run each test on trio, where it is installed."""
        return "asyncio"

    async def test_every_store_satisfies_the_protocol(self, store: Store) -> None:
        assert isinstance(store, Store)

    # -- load and save -----------------------------------------------------------------

    async def test_round_trip_keeps_every_field(self, store: Store) -> None:
        record = SessionRecord(
            key=store_key(new_session_id()),
            public_id="pub-Xy_9",
            data=b'{"user": "alice", "cart": [1, 2]}',
            user_id="alice@example.com",
            created_at=NOW - 1234.25,
            last_seen_at=NOW - 1.5,
            expires_at=NOW + 7200.125,
            remember=True,
            user_agent="Mozilla/5.0 (X11; Linux x86_64) ünïcödé ☂",
            version=42,
            ip_address="2001:db8::1%eth0",
            authenticated_at=NOW - 600.5,  # signed in again since the session was made
            idle_timeout=900,  # limits of its own, shorter than the configured ones
            absolute_timeout=7 * 86400,
        )
        await store.save(record)

        loaded = await store.load(record.key, NOW)

        assert loaded == record
        assert loaded is not None
        assert type(loaded.data) is bytes
        assert type(loaded.remember) is bool
        assert type(loaded.version) is int
        assert type(loaded.created_at) is float
        assert type(loaded.expires_at) is float
        assert type(loaded.idle_timeout) is type(loaded.absolute_timeout) is int

    async def test_round_trip_keeps_defaults_and_anonymous_user(self, store: Store) -> None:
        record = make_record(user_id=None)
        assert (
            record.remember,
            record.user_agent,
            record.version,
            record.ip_address,
            record.authenticated_at,
            record.idle_timeout,
            record.absolute_timeout,
        ) == (False, "", 1, "", 0.0, 0, 0)
        await store.save(record)

        loaded = await store.load(record.key, NOW)

        assert loaded == record
        assert loaded is not None
        assert loaded.user_id is None
        assert loaded.remember is False

    @pytest.mark.parametrize(
        "authenticated_at",
        [NOW - 60.0, NOW - 30.25, 0.0],
        ids=["at-creation", "signed-in-again", "adopted-unknown"],
    )
    async def test_the_time_of_the_login_comes_back(
        self, store: Store, authenticated_at: float
    ) -> None:
        record = make_record(
            user_id="alice", created_at=NOW - 60.0, authenticated_at=authenticated_at
        )
        await store.save(record)

        assert await store.load(record.key, NOW) == record
        assert await store.list_user("alice", NOW) == [record]

    async def test_load_of_missing_key_is_none(self, store: Store) -> None:
        await store.save(make_record())

        assert await store.load(store_key(new_session_id()), NOW) is None

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\x00",
            b"a\x00b\x00",
            b"\xff\xfe\xfd",
            b"\xc3\x28\xa0\xa1",  # invalid UTF-8 sequences
            bytes(range(256)),
            os.urandom(64 * 1024),
        ],
        ids=["empty", "nul", "embedded-nul", "high-bytes", "invalid-utf8", "all-bytes", "64KiB"],
    )
    async def test_arbitrary_bytes_round_trip(self, store: Store, data: bytes) -> None:
        record = make_record(data=data)
        await store.save(record)

        loaded = await store.load(record.key, NOW)

        assert loaded is not None
        assert type(loaded.data) is bytes
        assert loaded.data == data

    async def test_save_overwrites_the_same_key(self, store: Store) -> None:
        first = make_record(data=b"first", user_id="alice", version=1)
        second = first._replace(
            data=b"second", last_seen_at=NOW, expires_at=NOW + 2 * HOUR, version=2
        )
        await store.save(first)
        await store.save(second)

        assert await store.load(first.key, NOW) == second
        assert await store.count(NOW) == 1
        assert await store.list_user("alice", NOW) == [second]

    async def test_save_with_replaces_removes_the_old_key(self, store: Store) -> None:
        old = make_record(user_id=None, data=b"anonymous")
        await store.save(old)
        new = make_record(user_id="alice", data=b"logged in", created_at=old.created_at)

        await store.save(new, replaces=old.key)

        assert await store.load(old.key, NOW) is None
        assert await store.load(new.key, NOW) == new
        assert await store.count(NOW) == 1
        assert await store.list_user("alice", NOW) == [new]

    async def test_save_with_replaces_drops_the_old_key_from_its_user(self, store: Store) -> None:
        old = make_record(user_id="alice")
        await store.save(old)
        new = make_record(user_id=None)

        await store.save(new, replaces=old.key)

        assert await store.list_user("alice", NOW) == []
        assert await store.load(old.key, NOW) is None
        assert await store.load(new.key, NOW) == new

    async def test_save_with_replaces_of_a_missing_key_still_saves(self, store: Store) -> None:
        other = make_record()
        await store.save(other)
        new = make_record(user_id="alice")

        await store.save(new, replaces=store_key(new_session_id()))

        assert await store.load(new.key, NOW) == new
        assert await store.load(other.key, NOW) == other
        assert await store.count(NOW) == 2

    async def test_save_with_replaces_of_its_own_key_keeps_the_record(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)
        updated = record._replace(data=b"updated", version=2)

        await store.save(updated, replaces=record.key)

        assert await store.load(record.key, NOW) == updated
        assert await store.count(NOW) == 1

    # -- conditional saves: an ended session stays ended ------------------------------

    async def test_existing_save_updates_a_live_record(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)
        updated = record._replace(data=b"updated", version=2)
        assert await store.save(updated, expected_version=1) is True
        assert await store.load(record.key, NOW) == updated

    async def test_existing_save_of_a_deleted_record_writes_nothing(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)
        await store.delete(record.key)
        assert await store.save(record._replace(version=2), expected_version=1) is False
        assert await store.load(record.key, NOW) is None
        assert await store.list_user("alice", NOW) == []

    @pytest.mark.parametrize("rotate", [False, True], ids=["same-key", "rotation"])
    async def test_existing_save_of_a_record_dead_at_that_instant_writes_nothing(
        self, store: Store, rotate: bool
    ) -> None:
        base = make_record(user_id="alice", expires_at=NOW)
        await store.save(base)
        later = base._replace(last_seen_at=NOW, expires_at=NOW + HOUR, version=2)
        if rotate:
            later = later._replace(key=make_record().key)
        replaces = base.key if rotate else None

        # The base died at NOW itself, the instant of this save: it is not continued.
        assert await store.save(later, replaces=replaces, expected_version=1) is False
        assert await store.load(base.key, NOW - 1) == base
        assert await store.load(base.key, NOW) is None
        if rotate:
            assert await store.load(later.key, NOW) is None

        # A moment earlier it was still live, and the same save goes through.
        earlier = later._replace(last_seen_at=NOW - 0.001)
        assert await store.save(earlier, replaces=replaces, expected_version=1) is True
        assert await store.load(later.key, NOW) == earlier

    async def test_existing_rotation_needs_the_old_record(self, store: Store) -> None:
        old = make_record(user_id="alice")
        await store.save(old)
        new = make_record(user_id="alice")
        await store.delete_user("alice", now=NOW)
        assert await store.save(new, replaces=old.key, expected_version=1) is False
        assert await store.load(new.key, NOW) is None
        await store.save(old)
        assert await store.save(new, replaces=old.key, expected_version=1) is True
        assert await store.load(old.key, NOW) is None
        assert _keys(await store.list_user("alice", NOW)) == [new.key]

    async def test_a_stale_version_is_refused_without_a_merge(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)
        await store.save(record._replace(data=b"theirs", version=2), expected_version=1)
        ours = record._replace(data=b"ours", version=2)
        assert await store.save(ours, expected_version=1) is False
        stored = await store.load(record.key, NOW)
        assert stored is not None
        assert (stored.data, stored.version) == (b"theirs", 2)

    @pytest.mark.parametrize("rotate", [False, True], ids=["same-key", "rotation"])
    async def test_a_stale_version_is_merged_onto_the_winner(
        self, store: Store, rotate: bool
    ) -> None:
        record = make_record(user_id="alice", data=b"a")
        await store.save(record)
        await store.save(record._replace(data=b"ab", version=2), expected_version=1)
        seen: list[SessionRecord] = []

        def merge(base: SessionRecord) -> SessionRecord:
            seen.append(base)
            return ours._replace(data=base.data + b"c", version=base.version + 1)

        ours = record._replace(data=b"ac", version=2)
        if rotate:
            ours = ours._replace(key=make_record().key)
        replaces = record.key if rotate else None
        assert await store.save(ours, replaces=replaces, expected_version=1, merge=merge) is True
        assert seen
        assert (seen[-1].data, seen[-1].version) == (b"ab", 2)
        stored = await store.load(ours.key, NOW)
        assert stored is not None
        assert (stored.data, stored.version) == (b"abc", 3)
        if rotate:
            assert await store.load(record.key, NOW) is None
        assert _keys(await store.list_user("alice", NOW)) == [ours.key]

    async def test_a_merge_never_resurrects_a_deleted_session(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)
        await store.delete(record.key)

        def merge(base: SessionRecord) -> SessionRecord:
            raise AssertionError("nothing to merge with")

        later = record._replace(version=2)
        assert await store.save(later, expected_version=1, merge=merge) is False
        assert await store.load(record.key, NOW) is None

    @pytest.mark.parametrize("rotate", [False, True], ids=["same-key", "rotation"])
    async def test_a_merge_that_raises_writes_nothing(self, store: Store, rotate: bool) -> None:
        """The app's change may refuse the winner's data: its error reaches the caller,
        and the store holds what it held, under the old key."""
        record = make_record(user_id="alice", data=b"a")
        await store.save(record)
        theirs = record._replace(data=b"ab", version=2)
        await store.save(theirs, expected_version=1)

        class Refused(Exception):
            pass

        def merge(base: SessionRecord) -> SessionRecord:
            raise Refused

        ours = record._replace(data=b"ac", version=2)
        if rotate:
            ours = ours._replace(key=make_record().key)
        replaces = record.key if rotate else None
        with pytest.raises(Refused):
            await store.save(ours, replaces=replaces, expected_version=1, merge=merge)
        stored = await store.load(record.key, NOW)
        assert stored is not None
        assert (stored.data, stored.version) == (b"ab", 2)
        if rotate:
            assert await store.load(ours.key, NOW) is None
        assert _keys(await store.list_user("alice", NOW)) == [record.key]

    async def test_parallel_saves_of_one_version_lose_nothing(self, store: Store) -> None:
        """A page's parallel requests save the version they all loaded: each save lands,
        merged onto the ones before it. A compare-and-set that reads the version and
        then writes, not in one atomic step (a read without ``FOR UPDATE``, say), lets
        two of them both win, and one's change is lost while the app is told True."""
        record = make_record(data=b"")
        await store.save(record)
        marks = [bytes([ord("a") + n]) for n in range(12)]

        async def add(mark: bytes) -> bool:
            def merge(base: SessionRecord) -> SessionRecord:
                return base._replace(data=base.data + mark, version=base.version + 1)

            ours = record._replace(data=mark, version=2)
            return await store.save(ours, expected_version=1, merge=merge)

        assert await asyncio.gather(*(add(mark) for mark in marks)) == [True] * len(marks)
        stored = await store.load(record.key, NOW)
        assert stored is not None
        assert sorted(stored.data) == sorted(b"".join(marks)), "a save that won was lost"
        assert stored.version == 1 + len(marks)

    async def test_unconditional_save_reports_success(self, store: Store) -> None:
        assert await store.save(make_record()) is True

    # -- expiry ------------------------------------------------------------------------

    async def test_expired_records_are_never_served_even_before_purge(self, store: Store) -> None:
        # expires_at == now is already dead: the deadline is an instant, not a last second.
        at_deadline = make_record(user_id="alice", expires_at=NOW, created_at=NOW - 30)
        past_deadline = make_record(user_id="alice", expires_at=NOW - 1, created_at=NOW - 20)
        anonymous_dead = make_record(user_id=None, expires_at=NOW - 0.001)
        live = make_record(user_id="alice", expires_at=NOW + 0.001, created_at=NOW - 10)
        for record in (at_deadline, past_deadline, anonymous_dead, live):
            await store.save(record)

        for dead in (at_deadline, past_deadline, anonymous_dead):
            assert await store.load(dead.key, NOW) is None
        assert await store.load(live.key, NOW) == live
        assert await store.list_user("alice", NOW) == [live]
        assert await store.count(NOW) == 1
        # They were really stored, merely hidden: the purge finds exactly these three.
        assert await store.purge_expired(NOW) == 3

    async def test_purge_expired_removes_only_expired_records(self, store: Store) -> None:
        dead = [
            make_record(expires_at=NOW),
            make_record(expires_at=NOW - HOUR, user_id="alice"),
            make_record(expires_at=NOW - 0.5, user_id="bob"),
        ]
        live = [
            make_record(expires_at=NOW + 1, user_id="alice"),
            make_record(expires_at=NOW + HOUR),
        ]
        for record in dead + live:
            await store.save(record)

        assert await store.purge_expired(NOW) == 3

        assert await store.count(NOW) == 2
        for record in live:
            assert await store.load(record.key, NOW) == record
        assert await store.list_user("alice", NOW) == [live[0]]
        assert await store.list_user("bob", NOW) == []
        # Nothing is left to purge, and a purge of an empty set is a clean zero.
        assert await store.purge_expired(NOW) == 0
        # Purging later catches the records that have expired since.
        assert await store.purge_expired(NOW + 1) == 1
        assert await store.count(NOW + 1) == 1

    async def test_count_counts_live_records_only(self, store: Store) -> None:
        assert await store.count(NOW) == 0
        records = [
            make_record(),
            make_record(),
            make_record(user_id="alice"),
            make_record(user_id="bob"),
            make_record(expires_at=NOW - 1),
            make_record(expires_at=NOW, user_id="alice"),
        ]
        for record in records:
            await store.save(record)

        assert await store.count(NOW) == 4
        # The same store, asked about a later instant, sees everything expire.
        assert await store.count(NOW + 2 * HOUR) == 0

    # -- delete ------------------------------------------------------------------------

    async def test_delete_removes_the_record(self, store: Store) -> None:
        record = make_record(user_id="alice")
        keep = make_record(user_id="alice")
        await store.save(record)
        await store.save(keep)

        await store.delete(record.key)

        assert await store.load(record.key, NOW) is None
        assert await store.list_user("alice", NOW) == [keep]
        assert await store.count(NOW) == 1

    async def test_delete_of_a_missing_key_is_a_no_op(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)

        await store.delete(store_key(new_session_id()))
        await store.delete(record.key)
        await store.delete(record.key)  # twice: still not an error

        assert await store.load(record.key, NOW) is None
        assert await store.count(NOW) == 0

    # -- users -------------------------------------------------------------------------

    async def test_list_user_returns_live_sessions_oldest_first(self, store: Store) -> None:
        newest = make_record(user_id="alice", created_at=NOW - 10, ip_address="198.51.100.7")
        oldest = make_record(user_id="alice", created_at=NOW - 1000)
        middle = make_record(user_id="alice", created_at=NOW - 100)
        expired = make_record(user_id="alice", created_at=NOW - 5000, expires_at=NOW - 1)
        bobs = make_record(user_id="bob", created_at=NOW - 500)
        anonymous = make_record(user_id=None, created_at=NOW - 50)
        # Saved in an order that is neither creation order nor its reverse.
        for record in (middle, expired, newest, bobs, anonymous, oldest):
            await store.save(record)

        assert await store.list_user("alice", NOW) == [oldest, middle, newest]
        assert await store.list_user("bob", NOW) == [bobs]
        assert await store.list_user("nobody", NOW) == []

    async def test_list_user_order_follows_creation_not_last_write(self, store: Store) -> None:
        older = make_record(user_id="alice", created_at=NOW - 100)
        younger = make_record(user_id="alice", created_at=NOW - 50)
        await store.save(older)
        await store.save(younger)
        touched = older._replace(last_seen_at=NOW, version=2)

        await store.save(touched)

        assert _keys(await store.list_user("alice", NOW)) == [older.key, younger.key]

    async def test_delete_user_removes_all_their_sessions(self, store: Store) -> None:
        alices = [make_record(user_id="alice", created_at=NOW - i) for i in range(3)]
        bobs = [make_record(user_id="bob", created_at=NOW - i) for i in range(2)]
        anonymous = make_record(user_id=None)
        for record in [*alices, *bobs, anonymous]:
            await store.save(record)

        assert await store.delete_user("alice", now=NOW) == 3

        assert await store.list_user("alice", NOW) == []
        for record in alices:
            assert await store.load(record.key, NOW) is None
        assert _keys(await store.list_user("bob", NOW)) == [bobs[1].key, bobs[0].key]
        assert await store.load(anonymous.key, NOW) == anonymous
        assert await store.count(NOW) == 3
        # A second call finds nothing left.
        assert await store.delete_user("alice", now=NOW) == 0

    async def test_delete_user_can_keep_one_session(self, store: Store) -> None:
        alices = [make_record(user_id="alice", created_at=NOW - 10 * i) for i in range(4)]
        bob = make_record(user_id="bob")
        for record in [*alices, bob]:
            await store.save(record)

        assert await store.delete_user("alice", keep=alices[2].key, now=NOW) == 3

        assert await store.list_user("alice", NOW) == [alices[2]]
        assert await store.load(alices[2].key, NOW) == alices[2]
        assert await store.list_user("bob", NOW) == [bob]

    async def test_delete_user_keep_of_someone_elses_key_protects_nothing(
        self, store: Store
    ) -> None:
        alices = [make_record(user_id="alice") for _ in range(2)]
        bob = make_record(user_id="bob")
        for record in [*alices, bob]:
            await store.save(record)

        assert await store.delete_user("alice", keep=bob.key, now=NOW) == 2

        assert await store.list_user("alice", NOW) == []
        assert await store.load(bob.key, NOW) == bob

    async def test_delete_user_counts_only_the_sessions_live_at_now(self, store: Store) -> None:
        live = make_record(user_id="alice")
        expired = make_record(user_id="alice", last_seen_at=NOW - HOUR, expires_at=NOW - 60)
        at_deadline = make_record(user_id="alice", expires_at=NOW)  # dead from that instant
        kept = make_record(user_id="alice", expires_at=NOW - 30)
        for record in (live, expired, at_deadline, kept):
            await store.save(record)

        assert await store.delete_user("alice", keep=kept.key, now=NOW) == 1

        # The expired records went too: an earlier clock would still have seen them.
        left = _keys(await store.list_user("alice", NOW - 2 * HOUR))
        assert expired.key not in left
        assert at_deadline.key not in left
        assert await store.load(live.key, NOW) is None

    async def test_delete_user_judges_liveness_by_the_callers_clock(self, store: Store) -> None:
        soon = make_record(user_id="alice", expires_at=NOW + 60)
        later = make_record(user_id="alice", expires_at=NOW + 2 * HOUR)
        for record in (soon, later):
            await store.save(record)

        # An injected clock an hour ahead: ``soon`` is already dead for the caller.
        assert await store.delete_user("alice", now=NOW + HOUR) == 1

        assert await store.list_user("alice", NOW) == []

    async def test_delete_user_without_now_uses_the_current_time(self, store: Store) -> None:
        now = time.time()  # the clock delete_user reads, not the one the kit was loaded at
        live = make_record(
            user_id="alice", created_at=now - 60, last_seen_at=now - 10, expires_at=now + HOUR
        )
        expired = make_record(user_id="alice", last_seen_at=now - HOUR, expires_at=now - 60)
        for record in (live, expired):
            await store.save(record)

        assert await store.delete_user("alice") == 1

        assert await store.list_user("alice", now - 2 * HOUR) == []

    async def test_delete_user_of_unknown_user_returns_zero(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)

        assert await store.delete_user("mallory", now=NOW) == 0
        assert await store.delete_user("mallory", keep=record.key, now=NOW) == 0
        assert await store.load(record.key, NOW) == record

    async def test_delete_all_ends_every_session_and_counts_the_live_ones(
        self, store: Store
    ) -> None:
        alices = [make_record(user_id="alice", created_at=NOW - i) for i in range(2)]
        bob = make_record(user_id="bob")
        anonymous = make_record(user_id=None)
        expired = make_record(user_id="alice", last_seen_at=NOW - HOUR, expires_at=NOW - 60)
        everyone = [*alices, bob, anonymous, expired]
        for record in everyone:
            await store.save(record)

        assert await store.delete_all(NOW) == 4

        # An earlier clock would still see the expired record: it went too.
        earlier = NOW - 2 * HOUR
        for record in everyone:
            assert await store.load(record.key, earlier) is None
        assert await store.list_user("alice", earlier) == []
        assert await store.list_user("bob", earlier) == []
        assert await store.count(earlier) == 0
        assert await store.delete_all(NOW) == 0

    async def test_delete_all_leaves_no_way_back_for_a_request_in_flight(
        self, store: Store
    ) -> None:
        record = make_record(user_id="alice")
        await store.save(record)

        assert await store.delete_all(NOW) == 1

        # A slower request that loaded the session before: its save must not revive it.
        later = record._replace(last_seen_at=NOW, data=b'{"late": true}', version=2)
        assert await store.save(later, expected_version=1) is False
        rotated = later._replace(key=store_key(new_session_id()))
        assert await store.save(rotated, replaces=record.key, expected_version=1) is False
        assert await store.load(record.key, NOW) is None
        assert await store.load(rotated.key, NOW) is None
        assert await store.list_user("alice", NOW) == []

    async def test_sessions_begun_after_delete_all_work_as_ever(self, store: Store) -> None:
        for _ in range(3):
            await store.save(make_record(user_id="alice"))
        await store.delete_all(NOW)

        fresh = make_record(user_id="alice")
        assert await store.save(fresh) is True

        assert await store.load(fresh.key, NOW) == fresh
        assert await store.list_user("alice", NOW) == [fresh]
        assert await store.count(NOW) == 1

    async def test_resaving_with_another_user_moves_the_record(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)
        as_bob = record._replace(user_id="bob", version=2)

        await store.save(as_bob)

        assert await store.list_user("alice", NOW) == []
        assert await store.list_user("bob", NOW) == [as_bob]
        # A stale index entry would make delete_user("alice") take Bob's session with it.
        assert await store.delete_user("alice", now=NOW) == 0
        assert await store.load(record.key, NOW) == as_bob

    async def test_resaving_as_anonymous_leaves_the_user_index(self, store: Store) -> None:
        record = make_record(user_id="alice")
        await store.save(record)
        logged_out = record._replace(user_id=None, version=2)

        await store.save(logged_out)

        assert await store.list_user("alice", NOW) == []
        assert await store.delete_user("alice", now=NOW) == 0
        assert await store.load(record.key, NOW) == logged_out
        assert await store.count(NOW) == 1

    async def test_users_are_matched_exactly(self, store: Store) -> None:
        records = {
            user: make_record(user_id=user) for user in ("alice", "Alice", "alice ", "", "al%")
        }
        for record in records.values():
            await store.save(record)

        for user, record in records.items():
            assert await store.list_user(user, NOW) == [record]
        assert await store.list_user("al", NOW) == []
        assert await store.delete_user("al%", now=NOW) == 1
        assert await store.count(NOW) == 4

    # -- moves: optional (see coatcheck.stores.base.mover_of) ---------------------------

    async def test_a_key_a_save_replaced_is_remembered_as_moved(self, store: Store) -> None:
        moved_at = _mover(store)
        old = make_record(user_id=None, data=b"anonymous")
        await store.save(old)
        new = make_record(user_id="alice", last_seen_at=NOW, created_at=old.created_at)

        await store.save(new, replaces=old.key)

        assert await moved_at(old.key, NOW) == NOW
        assert await moved_at(old.key, NOW + _MOVED_FOR - 1) == NOW
        assert await moved_at(old.key, NOW + _MOVED_FOR) is None
        assert await moved_at(old.key, NOW - 1) == NOW  # a server whose clock is behind
        assert await moved_at(new.key, NOW) is None
        # The mark is no session: nothing loads, counts, lists or purges it.
        assert await store.load(old.key, NOW) is None
        assert await store.count(NOW) == 1
        assert await store.count(NOW - 5) == 1  # nor on a clock that runs behind
        assert await store.list_user("alice", NOW) == [new]
        assert await store.purge_expired(NOW) == 0
        assert await moved_at(old.key, NOW) == NOW
        assert await store.delete_user("alice", now=NOW) == 1
        assert await store.count(NOW) == 0
        assert await moved_at(old.key, NOW) == NOW  # the login's session ended, not moved
        # Nor is it counted once purged, its time over.
        assert await store.purge_expired(NOW + _MOVED_FOR + 1) == 0

    async def test_a_checked_rotation_marks_its_move_and_a_refused_one_nothing(
        self, store: Store
    ) -> None:
        moved_at = _mover(store)
        old = make_record(user_id="alice")
        await store.save(old)
        new = make_record(user_id="alice", last_seen_at=NOW)

        assert await store.save(new, replaces=old.key, expected_version=old.version)
        assert await moved_at(old.key, NOW) == NOW

        gone = store_key(new_session_id())
        refused = make_record(user_id="bob", last_seen_at=NOW)
        assert not await store.save(refused, replaces=gone, expected_version=1)
        assert await moved_at(gone, NOW) is None
        assert await store.load(refused.key, NOW) is None

    async def test_a_key_replaced_without_a_record_is_remembered_as_moved(
        self, store: Store
    ) -> None:
        """A login in the request that first brings an old library's cookie moves the ID
        derived from it, under which nothing was stored yet."""
        moved_at = _mover(store)
        derived = store_key(new_session_id())
        new = make_record(user_id="alice", last_seen_at=NOW)

        assert await store.save(new, replaces=derived)

        assert await moved_at(derived, NOW) == NOW
        assert await store.load(derived, NOW) is None
        assert await store.count(NOW - 5) == 1
        assert await store.delete_all(NOW - 5) == 1

    async def test_deletes_and_saves_in_place_are_no_moves(self, store: Store) -> None:
        moved_at = _mover(store)
        record = make_record(user_id="alice", last_seen_at=NOW)
        await store.save(record)
        updated = record._replace(data=b"updated", version=2)
        assert await store.save(updated, replaces=record.key, expected_version=1)
        assert await moved_at(record.key, NOW) is None

        await store.delete(record.key)
        assert await moved_at(record.key, NOW) is None
        assert await moved_at(store_key(new_session_id()), NOW) is None

    async def test_a_move_names_the_key_it_went_to(self, store: Store) -> None:
        moved_to = _follower(store)
        old = make_record(user_id=None, data=b"anonymous")
        await store.save(old)
        new = make_record(user_id="alice", last_seen_at=NOW, created_at=old.created_at)
        await store.save(new, replaces=old.key)
        assert await moved_to(old.key, NOW) == new.key
        assert await moved_to(old.key, NOW + _MOVED_FOR - 1) == new.key
        assert await moved_to(old.key, NOW + _MOVED_FOR) is None
        assert await moved_to(new.key, NOW) is None

        # A checked rotation (a login again), and a key under which nothing was stored.
        again = make_record(user_id="alice", last_seen_at=NOW)
        assert await store.save(again, replaces=new.key, expected_version=new.version)
        assert await moved_to(new.key, NOW) == again.key
        derived = store_key(new_session_id())
        other = make_record(user_id="bob", last_seen_at=NOW)
        assert await store.save(other, replaces=derived)
        assert await moved_to(derived, NOW) == other.key

        # Deletes and saves in place are no moves.
        await store.delete(again.key)
        assert await moved_to(again.key, NOW) is None
        assert await store.save(other._replace(data=b"updated", version=2), expected_version=1)
        assert await moved_to(other.key, NOW) is None
        assert await moved_to(store_key(new_session_id()), NOW) is None

    # -- creation: optional (see coatcheck.stores.base.creator_of) ------------------------

    async def test_create_writes_only_where_no_live_record_is(self, store: Store) -> None:
        """The first of the parallel requests that bring one old cookie of the library
        the app switched from stores the session; the others find it and merge."""
        create = _creator(store)
        first = make_record(user_id="alice", data=b'{"from":"first"}')
        assert await create(first) is True
        assert await store.load(first.key, NOW) == first
        assert _keys(await store.list_user("alice", NOW)) == [first.key]

        second = first._replace(public_id="second-public", data=b'{"from":"second"}')
        assert await create(second) is False
        assert await store.load(first.key, NOW) == first

        # A dead record under the key is written over, as a save would.
        later = first._replace(
            last_seen_at=first.expires_at + 1, expires_at=first.expires_at + HOUR
        )
        assert await create(later) is True
        assert await store.load(first.key, later.last_seen_at) == later

    # -- lifecycle ---------------------------------------------------------------------

    async def test_aclose_then_reuse_reopens_the_store(self, store: Store) -> None:
        first = make_record(user_id="alice")
        await store.save(first)

        await store.aclose()
        assert await store.load(first.key, NOW) == first
        second = make_record(user_id="alice", created_at=first.created_at + 1)
        await store.save(second)
        assert await store.list_user("alice", NOW) == [first, second]

        await store.aclose()
        await store.aclose()  # closing twice is harmless
        assert await store.count(NOW) == 2
