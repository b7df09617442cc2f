"""The public store kit catches a store that breaks the contract, and passes one that keeps it."""

from __future__ import annotations

import time

import pytest

from coatcheck.stores import SessionRecord
from coatcheck.stores.base import Merge

pytest_plugins = ["pytester"]


class DictStore:
    """The store a user might write first: a dict, every save written as it comes.

    It keeps no compare-and-set (``expected_version`` and ``merge`` go unread, so a save
    always succeeds) and replaces a key in two steps. Everything else is right.
    """

    def __init__(self) -> None:
        self.records: dict[str, SessionRecord] = {}

    async def load(self, key: str, now: float) -> SessionRecord | None:
        record = self.records.get(key)
        return record if record is not None and record.expires_at > now else None

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        self.records[record.key] = record
        if replaces is not None and replaces != record.key:
            await self.delete(replaces)
        return True

    async def delete(self, key: str) -> None:
        self.records.pop(key, None)

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        mine = [r for r in self.records.values() if r.user_id == user_id and r.expires_at > now]
        return sorted(mine, key=lambda r: r.created_at)

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        doomed = [r for r in self.records.values() if r.user_id == user_id and r.key != keep]
        for record in doomed:
            del self.records[record.key]
        return sum(record.expires_at > now for record in doomed)

    async def delete_all(self, now: float) -> int:
        live = await self.count(now)
        self.records.clear()
        return live

    async def purge_expired(self, now: float) -> int:
        dead = [key for key, r in self.records.items() if r.expires_at <= now]
        for key in dead:
            del self.records[key]
        return len(dead)

    async def count(self, now: float) -> int:
        return sum(r.expires_at > now for r in self.records.values())

    async def aclose(self) -> None:
        pass


# What a store author writes, per the kit's docstring: once for each store.
AUTHORS_TESTS = """
import pytest
from coatcheck.store_contract import StoreContract
from coatcheck.stores import MemoryStore
from {module} import DictStore

class TestDictStore(StoreContract):
    @pytest.fixture
    async def store(self):
        store = DictStore()
        yield store
        await store.aclose()

class TestMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self):
        store = MemoryStore()
        yield store
        await store.aclose()
"""

# The promises a store without compare-and-set breaks: an ended session stays ended,
# and a stale write is refused or merged, never laid over the newer one.
BROKEN_BY_DICT_STORE = {
    "test_existing_save_of_a_deleted_record_writes_nothing",
    "test_existing_save_of_a_record_dead_at_that_instant_writes_nothing[same-key]",
    "test_existing_save_of_a_record_dead_at_that_instant_writes_nothing[rotation]",
    "test_existing_rotation_needs_the_old_record",
    "test_a_stale_version_is_refused_without_a_merge",
    "test_a_stale_version_is_merged_onto_the_winner[same-key]",
    "test_a_stale_version_is_merged_onto_the_winner[rotation]",
    "test_a_merge_never_resurrects_a_deleted_session",
    "test_a_merge_that_raises_writes_nothing[same-key]",
    "test_a_merge_that_raises_writes_nothing[rotation]",
    "test_parallel_saves_of_one_version_lose_nothing",
    "test_delete_all_leaves_no_way_back_for_a_request_in_flight",
}
# What a store without the optional create(), moved_at() and moved_to() skips (see
# coatcheck.stores.base.creator_of, mover_of and follower_of).
SKIPPED_WITHOUT_OPTIONALS = {
    "test_create_writes_only_where_no_live_record_is",
    "test_a_key_a_save_replaced_is_remembered_as_moved",
    "test_a_checked_rotation_marks_its_move_and_a_refused_one_nothing",
    "test_a_key_replaced_without_a_record_is_remembered_as_moved",
    "test_deletes_and_saves_in_place_are_no_moves",
    "test_a_move_names_the_key_it_went_to",
}

Outcomes = dict[str, tuple[str, str]]


def run_kit(pytester: pytest.Pytester) -> tuple[Outcomes, Outcomes]:
    """Run the kit as a store author would, on the dict store and on ``MemoryStore``.

    Each test's name maps to the phase that decided it and its outcome: a failed
    assertion is ``("call", "failed")``, a broken fixture a ``"setup"`` one.
    """
    pytester.makeini("[pytest]\naddopts = --strict-markers\nfilterwarnings = error\n")
    pytester.makepyfile(test_my_store=AUTHORS_TESTS.format(module=__name__))
    recorder = pytester.inline_run("-p", "no:cacheprovider")
    by_class: dict[str, Outcomes] = {"TestDictStore": {}, "TestMemoryStore": {}}
    for report in recorder.getreports("pytest_runtest_logreport"):
        if report.when == "call" or report.outcome != "passed":
            _, cls, test = report.nodeid.split("::")
            by_class[cls].setdefault(test, (report.when, report.outcome))
    return by_class["TestDictStore"], by_class["TestMemoryStore"]


def test_a_dict_store_fails_exactly_the_promises_it_breaks(pytester: pytest.Pytester) -> None:
    dict_store, _ = run_kit(pytester)

    failed = {test for test, outcome in dict_store.items() if outcome == ("call", "failed")}
    assert failed == BROKEN_BY_DICT_STORE
    passed = {test for test, outcome in dict_store.items() if outcome == ("call", "passed")}
    assert passed == set(dict_store) - BROKEN_BY_DICT_STORE - SKIPPED_WITHOUT_OPTIONALS
    skipped = {test for test, outcome in dict_store.items() if outcome == ("call", "skipped")}
    assert skipped == SKIPPED_WITHOUT_OPTIONALS
    assert "test_every_store_satisfies_the_protocol" in passed


def test_a_correct_store_passes_the_same_tests_throughout(pytester: pytest.Pytester) -> None:
    dict_store, memory = run_kit(pytester)

    assert set(memory.values()) == {("call", "passed")}
    assert set(memory) == set(dict_store)
