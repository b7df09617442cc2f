"""Switching stores with MovingStore: sessions move from the old to the new as they
are used, and nobody is signed out by the switch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coatcheck import ConfigurationError, MemoryStore, SessionConfig, StoreUnavailableError
from coatcheck._ids import store_key
from coatcheck._persist import Persistence
from coatcheck.session import Session
from coatcheck.store_contract import NOW, StoreContract, make_record
from coatcheck.stores import MovingStore, SessionRecord, Store
from coatcheck.stores.base import MOVED_FOR, creator_of
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import FakeClock

from ..conftest import DownStore
from ..store_kinds import build_store

pytestmark = pytest.mark.anyio

# Moves people make: onto a shared store from the embedded one, and between servers.
MOVES = [
    ("memory", "memory"),
    ("redis", "sqlite"),
    ("postgres", "sqlite"),
    ("redis-cluster", "redis"),
]


class TestMovingStoreContract(StoreContract):
    """Every promise of a store holds for a moving one, whatever is left in the old."""

    @pytest.fixture(params=MOVES, ids=[f"{old}-to-{new}" for new, old in MOVES])
    async def store(self, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
        new, old = request.param
        (tmp_path / "new").mkdir()
        (tmp_path / "old").mkdir()
        moving = MovingStore(build_store(new, tmp_path / "new"), build_store(old, tmp_path / "old"))
        try:
            yield moving
        finally:
            await moving.aclose()


@pytest.fixture(params=MOVES, ids=[f"{old}-to-{new}" for new, old in MOVES])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    new_kind, old_kind = request.param
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    new, old = build_store(new_kind, tmp_path / "new"), build_store(old_kind, tmp_path / "old")
    try:
        yield new, old
    finally:
        await new.aclose()
        await old.aclose()


async def _signed_in(persistence: Persistence, user: str) -> str:
    session = await Session(persistence, {"headers": []}).load()
    session.login(user)
    session["cart"] = ["apple"]
    header = dict(await persistence.commit(session, 200))[b"set-cookie"].decode()
    return header.split(";", 1)[0].split("=", 1)[1]


async def _open(persistence: Persistence, cookie: str) -> Session:
    headers = [(b"cookie", f"__Host-session={cookie}".encode())]
    return await Session(persistence, {"headers": headers}).load()


async def test_sessions_of_the_old_store_stay_signed_in_and_move_when_used(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    new, old = stores
    before = Persistence(old, SessionConfig(clock=clock), None)
    laptop = await _signed_in(before, "alice")
    clock.advance(1)
    phone = await _signed_in(before, "alice")
    after = Persistence(MovingStore(new, old), SessionConfig(clock=clock), None)

    session = await _open(after, laptop)  # the first request after the switch
    assert (session.user_id, session["cart"]) == ("alice", ["apple"])
    assert await old.load(store_key(laptop), clock()) is None
    assert await new.load(store_key(laptop), clock()) is not None
    session["cart"].append("pear")
    assert await after.commit(session, 200) == []
    assert (await _open(after, laptop))["cart"] == ["apple", "pear"]

    # The phone has not been used since: still listed, and revocable from the laptop.
    devices = await session.devices()
    assert [device.current for device in devices] == [True, False]
    assert await session.revoke(devices[1].id) is True
    assert await old.load(store_key(phone), clock()) is None
    assert (await _open(after, phone)).user_id is None


async def test_log_out_everywhere_reaches_both_stores(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    new, old = stores
    before = Persistence(old, SessionConfig(clock=clock), None)
    cookies = [await _signed_in(before, "alice") for _ in range(3)]
    after = Persistence(MovingStore(new, old), SessionConfig(clock=clock), None)
    here = await _open(after, cookies[0])
    assert await here.revoke_all() == 3
    await after.commit(here, 200)
    for cookie in cookies:
        assert (await _open(after, cookie)).user_id is None
    assert await new.count(clock()) == await old.count(clock()) == 0


async def test_a_revocation_between_the_read_and_the_copy_is_not_undone() -> None:
    """The move reads the old store, then copies: a revocation that ended the session
    in between (it found nothing in the new store) must not be undone by the copy."""
    record = make_record(user_id="alice")

    class RevokedMeanwhile(MemoryStore):
        async def load(self, key: str, now: float) -> SessionRecord | None:
            found = await super().load(key, now)
            if found is not None and not self.revoked:
                self.revoked = True
                await self.delete_user("alice")  # after this read, before the copy
            return found

        revoked = False

    old, new = RevokedMeanwhile(), MemoryStore()
    await old.save(record)
    moving = MovingStore(new, old)
    assert await moving.load(record.key, NOW) is None
    assert await new.load(record.key, NOW) is None
    assert await moving.list_user("alice", NOW) == []


async def test_a_new_store_that_cannot_create_is_refused() -> None:
    class Plain(MemoryStore):
        create = None  # type: ignore[assignment]

    with pytest.raises(ConfigurationError, match="needs a new store with create"):
        MovingStore(Plain(), MemoryStore())  # type: ignore[arg-type]
    # Sessions sealed in browsers' cookies are found by no key: nothing to move.
    with pytest.raises(ConfigurationError, match="between server-side stores"):
        MovingStore(MemoryStore(), CookieStore())
    assert "MovingStore(new=" in repr(MovingStore(MemoryStore(), MemoryStore()))


@pytest.mark.parametrize("end", ["delete_user", "delete_all"])
async def test_a_session_moved_while_sessions_are_ended_is_ended_too(end: str) -> None:
    """A click while "sign everyone out" sweeps the old store moves that session: the
    end must still reach it, wherever it went."""
    phone = make_record(user_id="alice")
    moving: MovingStore

    class Clicked(MemoryStore):
        async def delete_user(self, user_id: str, **options: Any) -> int:
            await moving.load(phone.key, NOW)  # the phone's request, during the sweep
            return await super().delete_user(user_id, **options)

        async def delete_all(self, now: float) -> int:
            await moving.load(phone.key, NOW)
            return await super().delete_all(now)

    old = Clicked()
    await old.save(phone)
    moving = MovingStore(MemoryStore(), old)
    if end == "delete_user":
        assert await moving.delete_user("alice", now=NOW) == 1
    else:
        assert await moving.delete_all(NOW) == 1
    assert await moving.load(phone.key, NOW) is None


async def test_a_session_moved_by_a_parallel_request_is_found_where_it_went() -> None:
    """The first page after the switch fetches several things at once: a request that
    missed the session in the new store, then finds it gone from the old (a parallel
    request moved it in between), finds it in the new store after all."""
    session = make_record(user_id="alice")
    moving: MovingStore

    class MovedMeanwhile(MemoryStore):
        async def load(self, key: str, now: float) -> SessionRecord | None:
            missed = await super().load(key, now)
            if missed is None and self.parallel:
                self.parallel = False
                assert await moving.load(key, now) == session  # the other request
            return missed

        parallel = True

    old = MemoryStore()
    await old.save(session)
    moving = MovingStore(MovedMeanwhile(), old)
    assert await moving.load(session.key, NOW) == session
    assert await old.load(session.key, NOW) is None


class _Down(DownStore):
    async def delete_user(self, user_id: str, **options: Any) -> int:
        if self.down:
            raise StoreUnavailableError("the store is down", retry_after=1)
        return await super().delete_user(user_id, **options)


async def test_a_moved_session_logs_out_while_the_old_store_is_down(clock: FakeClock) -> None:
    """Once moved, a session no longer needs the old store, not even to end; ending a
    user's sessions does, since some may not have moved yet: it fails rather than
    leave those signed in."""
    old = _Down()
    before = Persistence(old, SessionConfig(clock=clock), None)
    cookie = await _signed_in(before, "alice")
    new = MemoryStore()
    after = Persistence(MovingStore(new, old), SessionConfig(clock=clock), None)
    assert (await _open(after, cookie)).user_id == "alice"  # moved
    old.down = True
    session = await _open(after, cookie)
    session.logout()
    await after.commit(session, 200)
    assert await new.load(store_key(cookie), clock()) is None
    with pytest.raises(StoreUnavailableError):
        await MovingStore(new, old).delete_user("alice", now=clock())


@pytest.mark.parametrize("carried_out", [False, True], ids=["refused", "reply-lost"])
async def test_a_move_the_old_store_fails_to_finish_leaves_one_copy(carried_out: bool) -> None:
    """Left in both stores, a session that a logout ends in the new one would be moved
    again from the old one, and its cookie would sign in again; left in neither, its
    user would be signed out. The copy stays only where the old one is known gone."""

    class DeleteFails(MemoryStore):
        async def delete(self, key: str) -> None:
            if carried_out:  # done, but the reply timed out
                await super().delete(key)
            raise StoreUnavailableError("the store is down", retry_after=1)

    session = make_record(user_id="alice")
    old, new = DeleteFails(), MemoryStore()
    await old.save(session)
    with pytest.raises(StoreUnavailableError):
        await MovingStore(new, old).load(session.key, NOW)
    assert (await new.load(session.key, NOW) is not None) is carried_out
    assert (await old.load(session.key, NOW) is not None) is not carried_out


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_id_a_login_retired_is_not_brought_back_from_the_old_store(
    kind: str, tmp_path: Path
) -> None:
    """One request has copied the session over and not yet deleted it from the old
    store; another logs in on the copy, giving it a new ID. A third, with the old
    cookie, must not copy the retired ID over again: it would live beside the login."""
    old, new = MemoryStore(), build_store(kind, tmp_path)
    retired = make_record(user_id="alice")
    await old.save(retired)
    create = creator_of(new)
    assert create is not None
    assert await create(retired)  # the first request's copy, still in the old store too
    login = make_record(user_id="alice", last_seen_at=NOW + 1)
    assert await new.save(login, replaces=retired.key, expected_version=retired.version)
    moving = MovingStore(new, old)
    try:
        assert await moving.load(retired.key, NOW + 2) is None
        assert await new.load(retired.key, NOW + 2) is None
        assert await moving.moved_at(retired.key, NOW + 2) is not None  # so: a 409
    finally:
        await moving.aclose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_sql_store_creates_nothing_over_a_fresh_move_mark(
    kind: str, tmp_path: Path
) -> None:
    """The SQL stores keep a move's mark as a row under the retired key: until it lapses,
    the key is not free, or a copy brought over again would revive it."""
    store = build_store(kind, tmp_path)
    try:
        create = creator_of(store)
        assert create is not None
        retired = make_record(user_id="alice")
        await store.save(retired)
        login = make_record(user_id="alice", last_seen_at=NOW + 1)
        assert await store.save(login, replaces=retired.key, expected_version=retired.version)
        again = retired._replace(last_seen_at=NOW + 2)
        assert await create(again) is False
        lapsed = retired._replace(last_seen_at=NOW + 1 + MOVED_FOR, expires_at=NOW + 2 * MOVED_FOR)
        assert await create(lapsed) is True
    finally:
        await store.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_login_on_a_copy_being_moved_keeps_its_mark_and_retires_the_old_record(
    kind: str, tmp_path: Path
) -> None:
    """A request copies the session over; before it deletes it from the old store, a
    parallel request logs in on the copy. The move then ends the retired ID in the old
    store, and leaves the login's mark (a SQL store's row under that ID), which tells a
    late request with the old cookie that its session moved (a 409, not a new cookie)."""
    retired = make_record(user_id="alice")
    login = make_record(user_id="alice", last_seen_at=NOW + 1)
    new = build_store(kind, tmp_path)

    class LoginMeanwhile(MemoryStore):
        reads = 0

        async def load(self, key: str, now: float) -> SessionRecord | None:
            self.reads += 1
            if self.reads == 2:  # the move's second look, after its copy
                assert await new.save(login, replaces=key, expected_version=retired.version)
            return await super().load(key, now)

    old = LoginMeanwhile()
    await old.save(retired)
    moving = MovingStore(new, old)
    try:
        assert await moving.load(retired.key, NOW) is None
        assert await old.load(retired.key, NOW) is None  # never to be moved again
        assert await moving.moved_at(retired.key, NOW + 2) is not None
        assert await moving.load(login.key, NOW + 2) == login
    finally:
        await moving.aclose()
