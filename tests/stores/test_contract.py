"""The store contract, run against every backend through the ``Store`` protocol only.

The store-agnostic tests are the public kit's (``coatcheck.store_contract``); here they
run against each of coatcheck's own stores, with a model-based test beside them.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coatcheck.store_contract import HOUR, NOW, StoreContract, make_record
from coatcheck.stores import SessionRecord, Store
from coatcheck.stores.base import creator_of, follower_of, mover_of

from ..store_kinds import STORE_KINDS, build_store, fresh_store

pytestmark = pytest.mark.anyio


class TestContract(StoreContract):
    @pytest.fixture(params=STORE_KINDS)
    async def store(self, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
        built = build_store(request.param, tmp_path)
        try:
            yield built
        finally:
            await built.aclose()

    async def test_a_move_is_remembered_for_ten_minutes(self, store: Store) -> None:
        """What the docs promise in minutes: a slow upload that loads its session nine
        minutes after the login that moved it still finds the move."""
        moved_at = mover_of(store)
        assert moved_at is not None  # each of coatcheck's own stores tracks moves
        old = make_record(user_id=None)
        await store.save(old)
        await store.save(make_record(user_id="alice", last_seen_at=NOW), replaces=old.key)
        assert await moved_at(old.key, NOW + 9 * 60) == NOW
        assert await moved_at(old.key, NOW + 10 * 60) is None
        assert await store.load(old.key, NOW - 5) is None  # nor on a clock behind

    async def test_a_rotation_that_merges_with_a_parallel_save_marks_its_move(
        self, store: Store
    ) -> None:
        """A login whose session another request saved meanwhile: merged, and moved."""
        moved_at = mover_of(store)
        assert moved_at is not None
        old = make_record(user_id=None, data=b"first")
        await store.save(old)
        parallel = old._replace(data=b"parallel", version=2)
        assert await store.save(parallel, expected_version=1)
        new = make_record(user_id="alice", last_seen_at=NOW, created_at=old.created_at)

        def merge(base: SessionRecord) -> SessionRecord:
            return new._replace(data=base.data + b"+login", version=base.version + 1)

        assert await store.save(new, replaces=old.key, expected_version=1, merge=merge)
        assert await moved_at(old.key, NOW) == NOW
        moved_to = follower_of(store)
        assert moved_to is not None
        assert await moved_to(old.key, NOW) == new.key
        loaded = await store.load(new.key, NOW)
        assert loaded is not None
        assert loaded.data == b"parallel+login"


# -- a model-based property test -------------------------------------------------------

SLOTS = 4
USERS = ("alice", "bob")


def slot_key(slot: int) -> str:
    return hashlib.sha256(f"slot-{slot}".encode()).hexdigest()


@dataclass(frozen=True)
class Save:
    slot: int
    user_id: str | None
    expires_in: float
    data: bytes
    replaces: int | None


@dataclass(frozen=True)
class Delete:
    slot: int


@dataclass(frozen=True)
class DeleteUser:
    user_id: str
    keep: int | None


@dataclass(frozen=True)
class DeleteAll:
    """Rare among the operations (see ``operations``): it empties the model."""


@dataclass(frozen=True)
class Load:
    slot: int


@dataclass(frozen=True)
class Check:
    """Compare the whole visible state with the model."""


slots = st.integers(0, SLOTS - 1)
saves = st.builds(
    Save,
    slot=slots,
    user_id=st.sampled_from((None, *USERS)),
    # Mostly live, with the boundary (0.0: expires exactly now) and the dead mixed in.
    expires_in=st.sampled_from((HOUR, 1.0, HOUR, 0.0, -1.0)),
    data=st.binary(max_size=24),
    replaces=st.none() | slots,
)
operations = st.lists(
    st.one_of(
        saves,
        saves,  # listed twice: a store must fill up before deletes say much
        st.builds(Delete, slot=slots),
        st.builds(DeleteUser, user_id=st.sampled_from(USERS), keep=st.none() | slots),
        st.builds(Load, slot=slots),
        st.just(Check()),
        # Kept rare, so most examples still build up state worth checking.
        st.integers(0, 9).map(lambda n: DeleteAll() if n == 0 else Check()),
    ),
    min_size=8,
    max_size=40,
)


def live(record: SessionRecord) -> bool:
    return record.expires_at > NOW


async def check_state(store: Store, model: dict[str, SessionRecord]) -> None:
    for slot in range(SLOTS):
        expected = model.get(slot_key(slot))
        assert await store.load(slot_key(slot), NOW) == (
            expected if expected is not None and live(expected) else None
        )
    for user in USERS:
        wanted = sorted(
            (r for r in model.values() if r.user_id == user and live(r)),
            key=lambda r: r.created_at,
        )
        assert await store.list_user(user, NOW) == wanted
    assert await store.count(NOW) == sum(1 for r in model.values() if live(r))


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations)
async def test_store_behaves_like_a_dict(kind: str, ops: list[object]) -> None:
    model: dict[str, SessionRecord] = {}
    async with fresh_store(kind) as store:
        for step, op in enumerate(ops):
            if isinstance(op, Save):
                record = SessionRecord(
                    key=slot_key(op.slot),
                    public_id=f"public-{step}",
                    data=op.data,
                    user_id=op.user_id,
                    created_at=NOW - 1000 + step,  # distinct, so oldest-first is one order
                    last_seen_at=NOW - 1,
                    expires_at=NOW + op.expires_in,
                    version=step + 1,
                )
                replaces = None if op.replaces is None else slot_key(op.replaces)
                await store.save(record, replaces=replaces)
                if replaces is not None:
                    model.pop(replaces, None)
                model[record.key] = record
            elif isinstance(op, Delete):
                await store.delete(slot_key(op.slot))
                model.pop(slot_key(op.slot), None)
            elif isinstance(op, DeleteUser):
                keep = None if op.keep is None else slot_key(op.keep)
                doomed = [k for k, r in model.items() if r.user_id == op.user_id and k != keep]
                removed = await store.delete_user(op.user_id, keep=keep, now=NOW)
                # Expired rows are deleted too, but only live ones are counted.
                assert removed == sum(1 for k in doomed if live(model[k]))
                for k in doomed:
                    del model[k]
            elif isinstance(op, DeleteAll):
                assert await store.delete_all(NOW) == sum(1 for r in model.values() if live(r))
                model.clear()
            elif isinstance(op, Load):
                expected = model.get(slot_key(op.slot))
                assert await store.load(slot_key(op.slot), NOW) == (
                    expected if expected is not None and live(expected) else None
                )
            else:
                await check_state(store, model)
        await check_state(store, model)


# -- creation, for a page's parallel first requests after a switch ----------------------


@pytest.fixture(params=STORE_KINDS)
async def own_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    built = build_store(request.param, tmp_path)
    try:
        yield built
    finally:
        await built.aclose()


async def test_every_store_of_coatcheck_can_create(own_store: Store) -> None:
    """The kit's tests of ``create`` skip a store without it: coatcheck's own have it."""
    assert creator_of(own_store) is not None
