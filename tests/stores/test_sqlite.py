"""What the SQLite store promises beyond the shared contract: WAL, indexes, hashed keys,
a bounded wait on locks that never blocks the event loop, batched purges, safe sharing
between processes, and clean errors."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from coatcheck._ids import new_session_id, store_key
from coatcheck.exceptions import StoreError, StoreUnavailableError
from coatcheck.stores import SQLiteStore
from coatcheck.stores.sqlite import _immediate

from .conftest import HOUR, NOW, assert_upgraded, make_record

pytestmark = pytest.mark.anyio

TABLE = "coatcheck_sessions"


def connect(path: Path) -> closing[sqlite3.Connection]:
    """A second, independent connection to the store's file, closed on exit."""
    return closing(sqlite3.connect(path, isolation_level=None))


def raw_rows(path: Path, table: str = TABLE) -> int:
    """Rows on disk, expired or not: what the store itself would never show."""
    with connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.db"


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(db_path)
    try:
        yield store
    finally:
        await store.aclose()


# -- the file --------------------------------------------------------------------------


async def test_file_uses_wal(sqlite_store: SQLiteStore, db_path: Path) -> None:
    await sqlite_store.save(make_record())

    with connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("first", ["save", "load"])
@pytest.mark.parametrize("inline", [True, False])
async def test_a_new_file_is_readable_by_its_owner_alone(
    db_path: Path, first: str, inline: bool
) -> None:
    """It holds user ids, addresses and session data; its WAL files take its mode."""
    store = SQLiteStore(db_path, inline_reads=inline)
    try:
        if first == "load":
            assert await store.load(make_record().key, NOW) is None
        await store.save(make_record())
        for name in ("sessions.db", "sessions.db-wal", "sessions.db-shm"):  # while open
            assert (db_path.parent / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        await store.aclose()


async def test_an_existing_file_keeps_its_mode(db_path: Path) -> None:
    os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o640))
    os.chmod(db_path, 0o640)  # the umask may have taken some away
    store = SQLiteStore(db_path)
    try:
        await store.save(make_record())
    finally:
        await store.aclose()
    assert os.stat(db_path).st_mode & 0o777 == 0o640


async def test_user_and_expiry_columns_are_indexed(
    sqlite_store: SQLiteStore, db_path: Path
) -> None:
    await sqlite_store.save(make_record(user_id="alice"))

    with connect(db_path) as db:
        leading_columns = {
            db.execute(f"PRAGMA index_info({name!r})").fetchone()[2]
            for _, name, *_ in db.execute(f"PRAGMA index_list({TABLE})").fetchall()
        }
        by_user = db.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM {TABLE} WHERE user_id = ? AND expires_at > ?",
            ("alice", NOW),
        ).fetchall()
        by_expiry = db.execute(
            f"EXPLAIN QUERY PLAN SELECT key FROM {TABLE}"
            " WHERE expires_at <= ? AND version != -1 LIMIT 10",
            (NOW,),
        ).fetchall()

    assert {"user_id", "expires_at"} <= leading_columns
    # The queries the store runs can actually use them (no full table scan).
    assert any("USING INDEX" in row[-1] for row in by_user), by_user
    assert any("USING" in row[-1] and "expires_at" in row[-1] for row in by_expiry), by_expiry


async def test_only_the_hash_of_the_session_id_is_stored(
    sqlite_store: SQLiteStore, db_path: Path
) -> None:
    session_id = new_session_id()
    record = make_record(key=store_key(session_id), user_id="alice")
    await sqlite_store.save(record)

    with connect(db_path) as db:
        stored = [row[0] for row in db.execute(f"SELECT key FROM {TABLE}")]
    assert stored == [hashlib.sha256(session_id.encode()).hexdigest()]
    assert session_id not in stored

    await sqlite_store.aclose()
    files = [file async for file in anyio.Path(db_path.parent).glob(db_path.name + "*")]
    assert files
    for file in files:
        assert session_id.encode() not in await file.read_bytes(), file


async def test_records_survive_a_new_store_on_the_same_file(db_path: Path) -> None:
    record = make_record(user_id="alice")
    first = SQLiteStore(db_path)
    try:
        await first.save(record)
    finally:
        await first.aclose()

    second = SQLiteStore(db_path)
    try:
        assert await second.load(record.key, NOW) == record
        assert await second.list_user("alice", NOW) == [record]
    finally:
        await second.aclose()


@pytest.mark.parametrize("inline_reads", [True, False])
async def test_a_store_nobody_closed_closes_its_connections_when_collected(
    db_path: Path, inline_reads: bool
) -> None:
    """As one is where no lifespan runs (a test's ASGITransport, a mounted app): its
    connections go with it, and the last one to close folds the WAL into the file."""
    record = make_record(user_id="alice")
    store = SQLiteStore(db_path, inline_reads=inline_reads)
    await store.save(record)
    assert await store.load(record.key, NOW) == record
    opened = list(store._connections)
    # One per thread of the pool that ran a call (a busy machine may start a second),
    # and the inline reader.
    assert (store._reader in opened) is inline_reads
    assert len(opened) >= (2 if inline_reads else 1)
    del store
    gc.collect()

    for connection in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("SELECT 1")
    assert not db_path.with_name(db_path.name + "-wal").exists()
    with connect(db_path) as db:
        assert db.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (1,)


async def test_a_read_while_the_store_closes_leaves_no_closed_reader_behind(
    db_path: Path,
) -> None:
    """A request still served as the lifespan closes the store makes a new reader; the
    store, used again by the next lifespan, must not keep that reader closed, which
    sends every load to the thread pool from then on."""
    record = make_record()
    store = SQLiteStore(db_path)
    await store.save(record)
    closing = asyncio.ensure_future(store.aclose())
    await asyncio.sleep(0)  # aclose() now waits for the pool to shut down
    assert await store.load(record.key, NOW) == record
    await closing
    try:
        assert await store.load(record.key, NOW) == record
        assert store._reader is not None
        assert store._reader.execute("SELECT 1").fetchall() == [(1,)]  # open, and used
    finally:
        await store.aclose()


async def test_a_closed_store_can_be_used_again_and_closed_again(db_path: Path) -> None:
    record = make_record(user_id="alice")
    store = SQLiteStore(db_path)
    await store.save(record)
    await store.aclose()
    assert await store.load(record.key, NOW) == record
    await store.aclose()
    assert store._connections == []
    assert not db_path.with_name(db_path.name + "-wal").exists()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_file_deleted_or_replaced_under_a_running_store_is_followed(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Writes through connections to a deleted file would each succeed, and be gone
    with the last connection: once it notices (within a second, here at once), the
    store reopens what is at the path, and what it writes there stays."""
    monkeypatch.setattr("coatcheck.stores.sqlite._LOOK_EVERY", 0.0)
    store = SQLiteStore(db_path)
    try:
        before = make_record()
        await store.save(before)
        assert await store.load(before.key, NOW) == before  # inline reader open too
        for leftover in db_path.parent.glob(f"{db_path.name}*"):
            leftover.unlink()
        if how == "replaced":  # as by an operator's restore of an older copy
            other = SQLiteStore(db_path)
            await other.save(make_record(user_id="restored"))
            await other.aclose()
        after = make_record(user_id="alice")
        await store.save(after)
        assert await store.load(before.key, NOW) is None
        assert await store.load(after.key, NOW) == after
    finally:
        await store.aclose()
    restarted = SQLiteStore(db_path)
    try:
        assert await restarted.load(after.key, NOW) == after
        assert await restarted.count(NOW) == (2 if how == "replaced" else 1)
    finally:
        await restarted.aclose()


async def test_a_table_dropped_under_a_running_store_is_made_again(
    sqlite_store: SQLiteStore, db_path: Path
) -> None:
    await sqlite_store.save(make_record())
    with connect(db_path) as db:
        db.execute(f"DROP TABLE {TABLE}")
    record = make_record()
    await sqlite_store.save(record)  # not a 503 until a restart
    assert await sqlite_store.load(record.key, NOW) == record


async def test_a_connection_that_cannot_write_is_replaced(sqlite_store: SQLiteStore) -> None:
    """A connection opened while the file was read-only never writes through it, even
    once the file is writable again. Made read-only here with query_only, since root,
    which the tests may run as, opens a read-only file for writing all the same."""
    await sqlite_store.save(make_record())
    threads = sqlite_store._threads
    for _ in range(threads * 4):  # reach every thread's connection
        await sqlite_store._run(lambda db: db.execute("PRAGMA query_only = 1"))
    for _ in range(threads * 4):
        record = make_record()
        await sqlite_store.save(record)
        assert await sqlite_store.load(record.key, NOW) == record


async def test_custom_table_is_used_and_kept_apart(db_path: Path) -> None:
    default = SQLiteStore(db_path)
    custom = SQLiteStore(db_path, table="my_sessions")
    try:
        in_default = make_record()
        in_custom = make_record()
        await default.save(in_default)
        await custom.save(in_custom)

        assert await custom.load(in_custom.key, NOW) == in_custom
        assert await custom.load(in_default.key, NOW) is None
        assert await default.load(in_custom.key, NOW) is None
        assert raw_rows(db_path, "my_sessions") == 1
        assert raw_rows(db_path) == 1
    finally:
        await default.aclose()
        await custom.aclose()


async def test_a_relative_path_keeps_its_file_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    store = SQLiteStore("sessions.db")
    monkeypatch.chdir(elsewhere)  # before the first connection: the file is opened now
    try:
        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()

    assert list(elsewhere.iterdir()) == []
    assert raw_rows(home / "sessions.db") == 1
    assert store.path == home / "sessions.db"


# -- locks and the busy timeout ---------------------------------------------------------


# The busy timeout of the lock tests. A save that blocked the event loop would let the
# ticker below tick not once; one that waits in a thread lets it tick about 45 times,
# so only a stall of the whole process for most of this long could fail the check.
BUSY = 0.5


async def unavailable_save(
    store: SQLiteStore, *, replaces: str | None = None
) -> tuple[StoreUnavailableError, float, int]:
    """A save that must fail as unavailable: the error, how long it took, and how often
    a ticker task on the same event loop ticked meanwhile."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ticker)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            await store.save(make_record(), replaces=replaces)
        elapsed = time.monotonic() - started
        tasks.cancel_scope.cancel()
    return caught.value, elapsed, ticks


async def save_under_a_held_lock(
    store: SQLiteStore, db_path: Path, begin: str, *, replaces: str | None = None
) -> tuple[StoreUnavailableError, float, int]:
    """``unavailable_save`` while another connection holds the write lock."""
    with connect(db_path) as other:
        other.execute(f"BEGIN {begin}")
        try:
            return await unavailable_save(store, replaces=replaces)
        finally:
            other.execute("ROLLBACK")


@pytest.mark.parametrize("begin", ["IMMEDIATE", "EXCLUSIVE"])
@pytest.mark.parametrize("rotate", [False, True], ids=["plain", "replaces"])
async def test_held_write_lock_gives_unavailable_after_busy_timeout(
    db_path: Path, begin: str, rotate: bool
) -> None:
    store = SQLiteStore(db_path, busy_timeout=BUSY, retry_after=7)
    try:
        existing = make_record()
        await store.save(existing)  # the file, table and WAL exist before the lock

        error, elapsed, ticks = await save_under_a_held_lock(
            store, db_path, begin, replaces=existing.key if rotate else None
        )

        # It waited for the busy timeout, not longer (generous ceiling for slow CI) ...
        assert BUSY * 0.8 <= elapsed < BUSY + 1.5, elapsed
        # ... off the event loop: the ticker kept running while the save waited.
        assert ticks >= 5, ticks
        assert error.retry_after == 7
        assert isinstance(error.__cause__, sqlite3.OperationalError)

        # The lock is gone: writes work again and the failed one left no trace.
        after = make_record()
        await store.save(after)
        assert await store.load(after.key, NOW) == after
        assert await store.load(existing.key, NOW) == existing
        assert await store.count(NOW) == 2
    finally:
        await store.aclose()


async def test_reads_proceed_while_another_connection_writes(db_path: Path) -> None:
    record = make_record(user_id="alice")
    setup = SQLiteStore(db_path)
    try:
        await setup.save(record)
    finally:
        await setup.aclose()

    # A store that has not connected yet, like a worker that just started, and enough
    # concurrent reads that every thread of its pool needs a connection of its own.
    store = SQLiteStore(db_path, busy_timeout=0.2)
    try:
        with connect(db_path) as other:
            other.execute("BEGIN IMMEDIATE")
            try:
                other.execute(f"DELETE FROM {TABLE}")  # a write in progress, uncommitted
                loads = await asyncio.gather(*(store.load(record.key, NOW) for _ in range(8)))
                assert loads == [record] * 8
                lists = await asyncio.gather(*(store.list_user("alice", NOW) for _ in range(4)))
                assert lists == [[record]] * 4
                assert await store.count(NOW) == 1
                with pytest.raises(StoreUnavailableError):
                    await store.delete_user("alice")  # writers do wait for the lock
            finally:
                other.execute("ROLLBACK")
        assert await store.delete_user("alice") == 1
    finally:
        await store.aclose()


async def test_first_use_under_a_held_lock_is_unavailable_then_recovers(db_path: Path) -> None:
    setup = SQLiteStore(db_path)
    try:
        await setup.save(make_record())
    finally:
        await setup.aclose()

    store = SQLiteStore(db_path, busy_timeout=BUSY)  # has never connected yet
    try:
        _, elapsed, ticks = await save_under_a_held_lock(store, db_path, "EXCLUSIVE")
        assert elapsed < BUSY + 1.5
        assert ticks >= 5

        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()


async def test_first_use_waits_for_a_peer_that_holds_the_lock_in_rollback_mode(
    db_path: Path,
) -> None:
    # A worker that opens a brand-new file and switches it to WAL holds SQLite's
    # RESERVED lock in rollback-journal mode for a moment. Another worker switching at
    # the same time gets SQLITE_BUSY at once, without the busy handler (SQLite refuses
    # to wait where two upgrading readers could deadlock), so the store has to retry
    # on its own within busy_timeout. Seen as a rare failure of two workers starting
    # together on a fresh file; here the peer is made deterministic.
    peer = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    try:
        peer.execute("BEGIN IMMEDIATE")
        peer.execute("CREATE TABLE peer_was_here (x)")
        release = threading.Timer(0.3, peer.execute, ("COMMIT",))
        release.start()
        store = SQLiteStore(db_path, busy_timeout=5)
        try:
            record = make_record()
            await store.save(record)  # waits out the peer, well within busy_timeout
            assert await store.load(record.key, NOW) == record
        finally:
            release.join()
            await store.aclose()
    finally:
        peer.close()
    with connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_first_use_gives_up_on_a_peer_that_never_lets_go(db_path: Path) -> None:
    store = SQLiteStore(db_path, busy_timeout=BUSY)
    with connect(db_path) as peer:
        peer.execute("BEGIN IMMEDIATE")
        peer.execute("CREATE TABLE peer_was_here (x)")
        try:
            _, elapsed, ticks = await unavailable_save(store)
        finally:
            peer.execute("ROLLBACK")
            await store.aclose()
    # It waits about busy_timeout, like any writer: not failing at once, and the retries
    # of the WAL switch and the schema are bounded by it too.
    assert BUSY * 0.8 <= elapsed < BUSY + 1.5, elapsed
    assert ticks >= 5, ticks


async def test_a_file_that_cannot_be_created_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    """A missing folder (or a full or read-only disk) is an outage to report with 503."""
    store = SQLiteStore(tmp_path / "missing" / "sessions.db")
    try:
        with pytest.raises(StoreUnavailableError):
            await store.save(make_record())
    finally:
        await store.aclose()


async def test_a_full_disk_is_an_outage_for_every_kind_of_save(db_path: Path) -> None:
    """SQLite rolls back on a full disk itself; the store must report the full disk
    (503, try again), not the failed second rollback, and keep no transaction open."""
    store = SQLiteStore(db_path, threads=1)
    try:
        first = make_record(user_id="alice")
        await store.save(first)
        pages = await store._run(lambda db: db.execute("PRAGMA page_count").fetchone()[0])
        await store._run(lambda db: db.execute(f"PRAGMA max_page_count = {pages}"))
        big = first._replace(data=b'{"x": "' + b"x" * 200_000 + b'"}', version=2)
        saves = {
            "versioned": lambda: store.save(big, expected_version=1),
            "rotation": lambda: store.save(make_record(data=big.data), replaces=first.key),
            "new": lambda: store.save(make_record(data=big.data)),
        }
        for kind, save in saves.items():
            with pytest.raises(StoreUnavailableError, match="full") as caught:
                await save()
            assert "rollback" not in str(caught.value), kind
        assert not await store._run(lambda db: db.in_transaction)
        assert await store.load(first.key, NOW) == first
    finally:
        await store.aclose()


# -- purging ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [10, 1])
@pytest.mark.parametrize("expired", [35, 30, 10, 9, 1])
async def test_purge_expired_works_through_every_batch(
    db_path: Path, expired: int, batch: int
) -> None:
    store = SQLiteStore(db_path, purge_batch=batch, purge_every=0)
    try:
        live = [make_record(user_id="alice", created_at=NOW - i) for i in range(3)]
        for i in range(expired):
            await store.save(make_record(expires_at=NOW - i))
        for record in live:
            await store.save(record)
        assert raw_rows(db_path) == expired + 3

        assert await store.purge_expired(NOW) == expired

        assert raw_rows(db_path) == 3
        assert await store.list_user("alice", NOW) == live[::-1]
        assert await store.purge_expired(NOW) == 0
    finally:
        await store.aclose()


def _insert_rows(db: sqlite3.Connection, count: int, *, marks: bool) -> None:
    """``count`` expired sessions, or marks of moves still in their ten minutes."""
    sql = (
        f"INSERT INTO {TABLE} (key, public_id, data, user_id, created_at, last_seen_at,"
        " expires_at, version) VALUES (?, '', x'', NULL, ?, ?, ?, ?)"
    )
    version, last_seen_at = (-1, NOW + 600) if marks else (1, NOW - HOUR)
    rows = [
        (store_key(new_session_id()), NOW - HOUR, last_seen_at, NOW - 1 - i, version)
        for i in range(count)
    ]
    db.executemany(sql, rows)


def _steps_of_a_purge_batch(store: SQLiteStore, db: sqlite3.Connection) -> int:
    """The work of one batch of a purge, in SQLite's virtual machine steps: a count
    that does not depend on how busy the machine is."""
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(step, 10)
    try:
        with _immediate(db):
            store._purge_batch(db, NOW)
    finally:
        db.set_progress_handler(None, 10)
    return steps


@pytest.mark.parametrize("backlog", ["expired sessions", "marks of moves"])
async def test_a_purge_batch_costs_the_same_however_many_rows_of_the_other_kind(
    db_path: Path, backlog: str
) -> None:
    """Sessions and the marks of moves each have an index of their own. In one, each
    batch walked every row of the other kind, under the write lock: a purge of 200,000
    expired sessions took 25 s, with saves of other workers waiting out their busy
    timeout (503s), and the logins of the last ten minutes made every purge slow."""
    store = SQLiteStore(db_path, purge_every=0, purge_batch=50)
    try:
        await store.count(NOW)  # makes the table
        steps = []
        for count in (1_000, 10_000):
            with connect(db_path) as db:
                db.execute(f"DELETE FROM {TABLE}")
                _insert_rows(db, count, marks=backlog == "marks of moves")
                steps.append(_steps_of_a_purge_batch(store, db))
        assert steps[1] < 2 * steps[0], steps
    finally:
        await store.aclose()


async def test_the_indexes_of_an_earlier_release_are_brought_up_to_date(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        await store.save(make_record(user_id="alice"))
    finally:
        await store.aclose()
    with connect(db_path) as db:  # as an earlier release left them
        db.execute(f'DROP INDEX "{TABLE}_expiry"')
        db.execute(f'DROP INDEX "{TABLE}_moved"')
        db.execute(f'CREATE INDEX "{TABLE}_expires" ON {TABLE} (expires_at)')
    store = SQLiteStore(db_path)
    try:
        assert len(await store.list_user("alice", NOW)) == 1
    finally:
        await store.aclose()
    with connect(db_path) as db:
        listed = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
        names = {row[0] for row in db.execute(listed, (TABLE,))}
    assert names == {f"{TABLE}_user", f"{TABLE}_expiry", f"{TABLE}_moved"}


async def test_purge_expired_works_through_every_batch_of_marks_of_moves(db_path: Path) -> None:
    """Logins leave a row for each key they moved: once its ten minutes are over, a
    purge removes every one, batch after batch, not only the first batch."""
    store = SQLiteStore(db_path, purge_batch=2, purge_every=0)
    try:
        for _ in range(5):
            old = make_record(user_id=None)
            await store.save(old)
            await store.save(make_record(user_id="alice", last_seen_at=NOW), replaces=old.key)
        assert raw_rows(db_path) == 10

        assert await store.purge_expired(NOW + 601) == 0  # marks are no sessions

        assert raw_rows(db_path) == 5  # alice's five, still live
    finally:
        await store.aclose()


@pytest.mark.parametrize("batch", [10, 1])
@pytest.mark.parametrize("sessions", [25, 20, 10, 1, 0])
async def test_delete_all_works_through_every_batch(
    db_path: Path, sessions: int, batch: int
) -> None:
    store = SQLiteStore(db_path, purge_batch=batch, purge_every=0)
    try:
        for i in range(sessions):
            await store.save(make_record(user_id=f"user{i % 3}"))
        await store.save(make_record(expires_at=NOW - 1))
        assert raw_rows(db_path) == sessions + 1

        assert await store.delete_all(NOW) == sessions

        assert raw_rows(db_path) == 0
        assert await store.list_user("user0", NOW) == []
    finally:
        await store.aclose()


async def test_revoking_a_user_takes_the_write_lock_a_batch_at_a_time(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bot account's hundred thousand sessions in one transaction held the write lock
    for seconds, past the busy timeout of every other worker's saves."""
    from coatcheck.stores import sqlite as module

    transactions = 0
    immediate = module._immediate

    def counted(db: sqlite3.Connection) -> Any:
        nonlocal transactions
        transactions += 1
        return immediate(db)

    store = SQLiteStore(db_path, purge_batch=5, purge_every=0)
    try:
        kept, *doomed = [make_record(user_id="bot") for _ in range(24)]
        others = [make_record(user_id="alice") for _ in range(2)]
        for record in [kept, *doomed, *others, make_record(user_id="bot", expires_at=NOW - 1)]:
            await store.save(record)
        monkeypatch.setattr(module, "_immediate", counted)

        assert await store.delete_user("bot", keep=kept.key, now=NOW) == 23

        assert transactions == 5  # 24 rows, the dead one too: 5, 5, 5, 5 and 4
        assert await store.list_user("bot", NOW) == [kept]
        assert len(await store.list_user("alice", NOW)) == 2
    finally:
        await store.aclose()


async def test_purge_under_a_held_lock_is_unavailable_and_loses_nothing(db_path: Path) -> None:
    store = SQLiteStore(db_path, busy_timeout=BUSY, purge_batch=2, purge_every=0, retry_after=7)
    try:
        expired = [make_record(expires_at=NOW - i) for i in range(5)]
        live = [make_record(user_id="alice", created_at=NOW - i) for i in range(3)]
        for record in expired + live:
            await store.save(record)

        with connect(db_path) as other:
            other.execute("BEGIN IMMEDIATE")
            try:
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError) as caught:
                    await store.purge_expired(NOW)
                elapsed = time.monotonic() - started
            finally:
                other.execute("ROLLBACK")

        assert BUSY * 0.8 <= elapsed < BUSY + 1.5, elapsed
        assert caught.value.retry_after == 7
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert raw_rows(db_path) == 8
        # Once the lock is gone, the next purge does the whole job.
        assert await store.purge_expired(NOW) == 5
        assert raw_rows(db_path) == 3
        assert await store.list_user("alice", NOW) == live[::-1]
    finally:
        await store.aclose()


async def test_purge_runs_by_itself_every_purge_every_saves(db_path: Path) -> None:
    store = SQLiteStore(db_path, purge_every=5)
    store._saves = 0  # where in the cycle a store starts is random (below)
    try:
        for _ in range(3):
            await store.save(make_record(last_seen_at=NOW - 2 * HOUR, expires_at=NOW - HOUR))
        await store.save(make_record(last_seen_at=NOW))
        assert raw_rows(db_path) == 4  # four saves: no purge yet

        await store.save(make_record(last_seen_at=NOW))  # the fifth save purges
        assert raw_rows(db_path) == 2

        for _ in range(2):
            await store.save(make_record(last_seen_at=NOW, expires_at=NOW + 1))
        for _ in range(2):
            await store.save(make_record(last_seen_at=NOW + 10, expires_at=NOW + 2 * HOUR))
        assert raw_rows(db_path) == 6  # saves six to nine: no purge

        await store.save(make_record(last_seen_at=NOW + 10))  # the tenth save purges
        assert raw_rows(db_path) == 5
        assert await store.count(NOW + 10) == 5
    finally:
        await store.aclose()


async def test_the_purge_a_save_runs_keeps_ahead_of_what_saves_create(db_path: Path) -> None:
    """One record per save, every one of them expired by the next purge: one batch per
    purge would leave half of them behind for good, a few full batches do not."""
    store = SQLiteStore(db_path, purge_every=10, purge_batch=5)
    store._saves = 0  # where in the cycle a store starts is random (below)
    try:
        for live in range(1, 4):
            for _ in range(9):
                await store.save(make_record(last_seen_at=NOW - 2 * HOUR, expires_at=NOW - HOUR))
            await store.save(make_record(last_seen_at=NOW))  # the tenth save purges
            assert raw_rows(db_path) == live  # all nine expired: two batches, not one
        # Bounded all the same: at most four batches (20 rows) per purge.
        store.purge_every = 0
        for _ in range(30):
            await store.save(make_record(last_seen_at=NOW - 2 * HOUR, expires_at=NOW - HOUR))
        store.purge_every = 1
        await store.save(make_record(last_seen_at=NOW))
        assert raw_rows(db_path) == 3 + 31 - 20
    finally:
        await store.aclose()


async def test_workers_recycled_before_purge_every_saves_still_purge(db_path: Path) -> None:
    """gunicorn's --max-requests and short-lived pods end workers before their
    thousandth save: each starts somewhere in the cycle, so some of them purge."""
    for _ in range(20):  # each with half a cycle: all twenty miss it once in a million
        store = SQLiteStore(db_path, purge_every=10)
        try:
            for _ in range(5):  # each dead by the time of the next save
                await store.save(make_record(last_seen_at=NOW, expires_at=NOW))
        finally:
            await store.aclose()
    assert raw_rows(db_path) < 100


async def test_purge_every_zero_never_purges_by_itself(db_path: Path) -> None:
    store = SQLiteStore(db_path, purge_every=0)
    try:
        for _ in range(12):
            await store.save(make_record(last_seen_at=NOW + HOUR, expires_at=NOW))
        assert raw_rows(db_path) == 12
        assert await store.count(NOW) == 0
    finally:
        await store.aclose()


# -- several processes on one file -----------------------------------------------------

WRITER = r"""
import asyncio, hashlib, pathlib, sys, time

from coatcheck.stores import SessionRecord, SQLiteStore

path, tag, ready, go, now = sys.argv[1:6]
now = float(now)


async def main():
    store = SQLiteStore(path)
    records = [
        SessionRecord(
            key=hashlib.sha256(f"{tag}-{i}".encode()).hexdigest(),
            public_id=f"{tag}-{i}",
            data=f"{tag}:{i}".encode() + b"\x00\xff",
            user_id=tag,
            created_at=now + i,
            last_seen_at=now,
            expires_at=now + 3600,
        )
        for i in range(200)
    ]
    pathlib.Path(ready).touch()
    deadline = time.monotonic() + 30
    while not pathlib.Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit("never told to go")
        await asyncio.sleep(0.002)
    try:
        await asyncio.gather(*(store.save(record) for record in records))
    finally:
        await store.aclose()


asyncio.run(main())
"""


FORKED = r"""
import asyncio, os, sys, time, traceback

from coatcheck.stores import SessionRecord, SQLiteStore

store = SQLiteStore(sys.argv[1])


def record(tag):
    now = time.time()
    return SessionRecord(tag * 64, "p", b"{}", tag, now, now, now + 600)


async def busy():
    # Every thread of the pool at work, then the app forks (gunicorn --preload).
    await asyncio.gather(*(store.purge_expired(time.time()) for _ in range(8)))
    await store.save(record("a"))


async def use(tag):
    mine = record(tag)
    await asyncio.wait_for(store.save(mine), 10)
    assert await asyncio.wait_for(store.load(mine.key, time.time()), 10) == mine
    assert await asyncio.wait_for(store.count(time.time()), 10) >= 2


asyncio.run(busy())
pid = os.fork()
if pid == 0:
    try:
        asyncio.run(use("b"))
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
asyncio.run(use("c"))  # the parent goes on with its own pool
sys.exit(os.waitstatus_to_exitcode(status))
"""


PURGE_PHASES = r"""
import os, sys

from coatcheck.stores import SQLiteStore
from coatcheck.stores.postgres import PostgresStore

stores = [SQLiteStore(sys.argv[1]), PostgresStore("postgresql://127.0.0.1:1/none")]
print("parent", *[store._saves for store in stores], flush=True)
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        print("child", *[store._saves for store in stores], flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_forked_workers_each_start_their_own_purge_cycle(tmp_path: Path) -> None:
    """Workers forked from one parent (gunicorn --preload) and recycled before their
    thousandth save: had each inherited the parent's point in the cycle, none would
    purge whenever that point was early."""
    done = subprocess.run(
        [sys.executable, "-c", PURGE_PHASES, str(tmp_path / "phases.db")],
        capture_output=True,
        timeout=60,
        check=True,
    )
    lines = [line.split() for line in done.stdout.decode().splitlines()]
    parent = lines[0][1:]
    children = [line[1:] for line in lines[1:]]
    assert len(children) == 4
    for kind in (0, 1):  # SQLite, PostgreSQL: four draws of 1,000 all equal to the parent's
        assert any(child[kind] != parent[kind] for child in children)


def test_a_store_used_before_a_fork_works_in_the_child(tmp_path: Path) -> None:
    """gunicorn --preload: an app that used its store at import forks its workers.
    The pool's threads stay behind in the parent; the child's first write waited for
    them for ever."""
    db_path = tmp_path / "forked.db"
    done = subprocess.run(
        [sys.executable, "-c", FORKED, str(db_path)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    with connect(db_path) as db:
        keys = sorted(row[0][0] for row in db.execute(f"SELECT key FROM {TABLE}"))
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert keys == ["a", "b", "c"]


@pytest.mark.parametrize("fresh", [True, False], ids=["new-file", "existing-file"])
def test_two_processes_write_one_file_concurrently(tmp_path: Path, fresh: bool) -> None:
    db_path = tmp_path / "shared.db"
    if not fresh:
        anyio.run(create_schema, db_path)
    # else both processes also race to switch the new file to WAL and create the schema
    # (the rollback-mode peer tests above pin that race down deterministically).
    go = tmp_path / "go"
    with ExitStack() as stack:
        writers = []
        for tag in ("left", "right"):
            ready = tmp_path / f"{tag}.ready"
            argv = [sys.executable, "-W", "error", "-c", WRITER]
            argv += [str(db_path), tag, str(ready), str(go), str(NOW)]
            process = stack.enter_context(subprocess.Popen(argv, stderr=subprocess.PIPE))
            stack.callback(kill_if_running, process)  # runs before Popen's own exit
            writers.append((tag, ready, process))

        deadline = time.monotonic() + 30
        while not all(ready.exists() for _, ready, _ in writers):
            assert time.monotonic() < deadline, "writers did not start"
            assert all(process.poll() is None for *_, process in writers)
            time.sleep(0.005)
        go.touch()  # both start saving at the same moment
        for tag, _, process in writers:
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, f"{tag}: {stderr.decode()}"

    with connect(db_path) as db:
        rows = db.execute(f"SELECT user_id, count(*) FROM {TABLE} GROUP BY user_id").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(rows) == [("left", 200), ("right", 200)]

    async def check() -> None:
        store = SQLiteStore(db_path)
        try:
            assert await store.count(NOW) == 400
            lefts = await store.list_user("left", NOW)
            assert [r.public_id for r in lefts] == [f"left-{i}" for i in range(200)]
            assert lefts[7].data == b"left:7\x00\xff"
        finally:
            await store.aclose()

    anyio.run(check)


async def create_schema(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        await store.purge_expired(NOW)  # any call connects, which creates the table
    finally:
        await store.aclose()


def kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"this is not a database, just notes\n" * 100, b"SQLite format 3\x00" + b"\xde\xad" * 2048],
    ids=["text", "garbled-header"],
)
async def test_corrupt_file_raises_store_error(db_path: Path, content: bytes) -> None:
    await anyio.Path(db_path).write_bytes(content)
    store = SQLiteStore(db_path)
    try:
        with pytest.raises(StoreError, match=r"sessions\.db") as on_save:
            await store.save(make_record())
        with pytest.raises(StoreError) as on_load:
            await store.load(store_key(new_session_id()), NOW)
    finally:
        await store.aclose()

    for caught in (on_save, on_load):
        assert not isinstance(caught.value, sqlite3.Error)
        assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert (
        await anyio.Path(db_path).read_bytes() == content
    )  # the store did not paper over the file


@pytest.mark.parametrize(
    "table",
    [
        "bad name",
        "sessions;drop table users",
        "sessions; --",
        "",
        "1sessions",
        "sessions-2",
        'sessions"',
        "x" * 64,
        "sessions\n",  # `$` in the identifier pattern also matches before a final newline
    ],
)
def test_table_name_is_validated(tmp_path: Path, table: str) -> None:
    with pytest.raises(ValueError, match="table"):
        SQLiteStore(tmp_path / "sessions.db", table=table)


@pytest.mark.parametrize("table", ["order", "select", "sqlite_sessions"])
async def test_table_name_sqlite_cannot_use_is_rejected_or_works(db_path: Path, table: str) -> None:
    try:
        store = SQLiteStore(db_path, table=table)
    except ValueError:
        return  # rejected up front, as a configuration mistake should be
    try:
        record = make_record()
        await store.save(record)  # otherwise it must work, not fail on every request
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()


@pytest.mark.parametrize("path", ["", ":memory:"])
def test_in_memory_database_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="MemoryStore"):
        SQLiteStore(path)


# -- inline reads ------------------------------------------------------------------------


@pytest.mark.parametrize("inline", [True, False])
async def test_loads_read_on_the_loop_thread_only_when_asked(db_path: Path, inline: bool) -> None:
    store = SQLiteStore(db_path, inline_reads=inline)
    try:
        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
        assert (store._reader is not None) is inline
    finally:
        await store.aclose()


async def test_an_inline_read_that_fails_falls_back_to_the_pool(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
        assert store._reader is not None
        store._reader.close()  # any sqlite3 error on the fast path sends the read to the pool
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()


async def test_inline_reads_see_writes_of_other_processes(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        first = make_record()
        await store.save(first)
        assert await store.load(first.key, NOW) == first
        second = make_record()
        other = SQLiteStore(db_path, inline_reads=False)
        try:
            await other.save(second)
            await other.delete(first.key)
        finally:
            await other.aclose()
        assert await store.load(second.key, NOW) == second
        assert await store.load(first.key, NOW) is None
    finally:
        await store.aclose()


async def test_inline_reads_do_not_wait_behind_a_writer(db_path: Path) -> None:
    store = SQLiteStore(db_path, busy_timeout=2)
    try:
        record = make_record()
        await store.save(record)
        with connect(db_path) as writer:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute(f"DELETE FROM {TABLE}")
            started = time.perf_counter()
            assert await store.load(record.key, NOW) == record  # WAL: the old snapshot
            assert time.perf_counter() - started < 0.5
            writer.execute("ROLLBACK")
    finally:
        await store.aclose()


# Tables as earlier releases made them: before sessions kept the client address, before
# they kept the time of the login, and before a login could shorten its limits.
_FIRST_TABLE = (
    f"CREATE TABLE {TABLE} ("
    " key TEXT PRIMARY KEY, public_id TEXT NOT NULL, data BLOB NOT NULL,"
    " user_id TEXT, created_at REAL NOT NULL, last_seen_at REAL NOT NULL,"
    " expires_at REAL NOT NULL, remember INTEGER NOT NULL DEFAULT 0,"
    " user_agent TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 1"
    ") WITHOUT ROWID"
)
_ADDRESS_TABLE = _FIRST_TABLE.replace("DEFAULT 1", "DEFAULT 1, ip_address TEXT NOT NULL DEFAULT ''")
_LOGIN_TIME_TABLE = _ADDRESS_TABLE.replace(") WITHOUT", ", authenticated_at REAL) WITHOUT")


@pytest.mark.parametrize(
    "schema",
    [_FIRST_TABLE, _ADDRESS_TABLE, _LOGIN_TIME_TABLE],
    ids=["first", "addresses", "login-times"],
)
async def test_a_file_from_an_earlier_release_is_brought_up_to_date(
    db_path: Path, schema: str
) -> None:
    old = make_record(user_id="alice", user_agent="Firefox", version=3)
    row = (*old[:7], 0, old.user_agent, old.version)
    if "ip_address" in schema:
        row += (old.ip_address,)
    if "authenticated_at" in schema:
        row += (old.authenticated_at,)
    with connect(db_path) as db:
        db.execute(schema)
        db.execute(f"INSERT INTO {TABLE} VALUES ({','.join('?' * len(row))})", row)
    stores = [SQLiteStore(db_path) for _ in range(2)]  # two workers starting together
    try:
        await assert_upgraded(stores, old)
    finally:
        for store in stores:
            await store.aclose()
    with connect(db_path) as db:
        columns = [row[1] for row in db.execute(f"PRAGMA table_info({TABLE})")]
    added = ("ip_address", "authenticated_at", "idle_timeout", "absolute_timeout")
    assert [columns.count(name) for name in added] == [1, 1, 1, 1]


async def test_a_column_a_later_release_added_keeps_its_value_when_this_one_writes(
    db_path: Path,
) -> None:
    """In a rolling deploy, or after a rollback, this release saves rows that a later
    one made: what it does not know of them must stay as the later release left it."""
    store = SQLiteStore(db_path)
    try:
        record = make_record(user_id="alice", version=1)
        await store.save(record)
        with connect(db_path) as db:
            db.execute(f"ALTER TABLE {TABLE} ADD COLUMN future INTEGER NOT NULL DEFAULT 0")
            db.execute(f"UPDATE {TABLE} SET future = 300")
        changed = record._replace(data=b'{"cart":["pear"]}', version=2)
        assert await store.save(changed, expected_version=1)
        assert await store.load(record.key, NOW) == changed
    finally:
        await store.aclose()
    with connect(db_path) as db:
        assert db.execute(f"SELECT future FROM {TABLE}").fetchall() == [(300,)]


async def test_another_apps_table_of_the_same_name_is_refused_untouched(db_path: Path) -> None:
    with connect(db_path) as db:
        db.execute("CREATE TABLE sessions (session_key TEXT PRIMARY KEY, expire_date TEXT)")
    store = SQLiteStore(db_path, table="sessions")
    try:
        with pytest.raises(StoreError, match="not a coatcheck session table"):
            await store.save(make_record())
    finally:
        await store.aclose()
    with connect(db_path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(sessions)")]
    assert columns == ["session_key", "expire_date"]


def _save_until_stopped(path: str, tag: str, stop: Any, results: Any) -> None:
    """One worker process: saves one session after another until told to stop."""
    from coatcheck.stores.sqlite import SQLiteStore

    async def run() -> None:
        store = SQLiteStore(path)
        saved, failed, number = [], 0, 0
        while not stop.is_set():
            now = time.time()
            record = make_record(key=f"{tag}{number:063x}", created_at=now, last_seen_at=now)
            try:
                if await store.save(record):
                    saved.append((record.key, now))
            except StoreUnavailableError:
                failed += 1
            number += 1
            await asyncio.sleep(0.005)
        await store.aclose()
        results.put((saved, failed))

    asyncio.run(run())


def test_workers_sharing_a_file_deleted_under_them_go_on_in_a_new_one(tmp_path: Path) -> None:
    """Each worker notices within a second; SQLite leaves the deleted file's log behind,
    which a new file at the path would take for its own and fail every write on."""
    import multiprocessing

    path = str(tmp_path / "sessions.db")
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_save_until_stopped, args=(path, tag, stop, results)) for tag in "ab"
    ]
    for worker in workers:
        worker.start()
    try:
        # Spawned workers start slowly on a busy machine: the file must be there first.
        started = time.monotonic()
        while not os.path.exists(path) and time.monotonic() - started < 60:
            time.sleep(0.1)
        time.sleep(1.5)
        deleted_at = time.time()
        os.remove(path)  # as `rm sessions.db` does: the -wal and -shm stay
        time.sleep(4)
    finally:
        stop.set()
        outcomes = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(30)
    with connect(Path(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {key for (key,) in db.execute(f"SELECT key FROM {TABLE}")}
    for saved, failed in outcomes:
        later = [key for key, at in saved if at > deleted_at + 1.5]
        assert len(later) > 100  # they went on saving...
        assert set(later) <= stored  # ...into the file that is there now
        assert failed < 10


async def test_the_wal_file_shrinks_back_after_a_vacuum_while_the_app_runs(tmp_path: Path) -> None:
    """The README's ``sqlite3 sessions.db VACUUM`` writes the whole database into the
    -wal file; with no size limit on the store's connections it kept that size until
    every process closed, so the VACUUM gave almost nothing back on a running app."""
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path, purge_every=0)
    blob = b'{"cart": "' + b"y" * 3000 + b'"}'
    for _ in range(8):  # about 10 MB of sessions
        await asyncio.gather(*(store.save(make_record(data=blob)) for _ in range(400)))
    await store.aclose()
    store = SQLiteStore(path, purge_every=0)  # the app, started again
    try:
        await store.count(NOW)
        with closing(sqlite3.connect(path)) as operator:
            operator.execute("VACUUM")
        wal = anyio.Path(f"{path}-wal")
        assert (await wal.stat()).st_size > 9_000_000  # the whole database, written again
        for _ in range(3):
            await store.save(make_record())
        assert (await wal.stat()).st_size <= 8 * 1024 * 1024 + 64 * 1024
    finally:
        await store.aclose()


async def test_a_second_aclose_waits_for_the_work_the_first_one_let_finish(
    tmp_path: Path,
) -> None:
    """Two jobs, or a job and the app's shutdown, each close the store from a loop of
    their own. Work queued before the first close still runs, on a new connection:
    the second close took that one away under it (a lost save, or a crash)."""
    store = SQLiteStore(tmp_path / "s.db", threads=1)
    alice, bob = make_record(user_id="alice"), make_record(user_id="bob")
    assert await store.save(alice)
    assert await store.save(bob)
    merging = [threading.Event(), threading.Event()]
    go_on = [threading.Event(), threading.Event()]

    def slow_merge(number: int, base: Any) -> Any:
        def merge(found: Any) -> Any:
            merging[number].set()
            go_on[number].wait(5)
            return base._replace(version=found.version + 1, data=b'{"m": %d}' % number)

        return merge

    def close_in_a_loop_of_its_own() -> None:
        asyncio.run(store.aclose())

    # Two saves that each lost a race, on the pool's one thread: the second waits.
    saves = [
        asyncio.ensure_future(
            store.save(one._replace(version=5), expected_version=4, merge=slow_merge(n, one))
        )
        for n, one in enumerate((alice, bob))
    ]
    try:
        await asyncio.to_thread(merging[0].wait, 5)
        first = threading.Thread(target=close_in_a_loop_of_its_own)
        first.start()  # shuts the pool down: waits for both saves
        await asyncio.sleep(0.2)
        go_on[0].set()
        assert await asyncio.to_thread(merging[1].wait, 5)  # on a connection made since
        second = threading.Thread(target=close_in_a_loop_of_its_own)
        second.start()
        await asyncio.to_thread(second.join, 0.5)
        assert second.is_alive()  # waiting for the save, not closing under it
        go_on[1].set()
        assert await asyncio.gather(*saves) == [True, True]
        await asyncio.to_thread(second.join, 5)
        await asyncio.to_thread(first.join, 5)
        found = await store.load(bob.key, time.time())
        assert found is not None
        assert found.data == b'{"m": 1}'
    finally:
        for event in go_on:
            event.set()
        await store.aclose()


async def test_an_aclose_cut_short_leaves_its_connections_to_the_next(tmp_path: Path) -> None:
    """Cancelled while the pool finished its work (``asyncio.wait_for`` around it), it
    had taken the connections off the store's list: nothing closed them any more."""
    store = SQLiteStore(tmp_path / "s.db", threads=1)
    assert await store.save(make_record())
    busy, go_on = threading.Event(), threading.Event()
    work = asyncio.ensure_future(store._run(lambda db: (busy.set(), go_on.wait(5))))
    try:
        await asyncio.to_thread(busy.wait, 5)
        listed = len(store._connections)
        assert listed >= 1
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(store.aclose(), 0.2)
        assert len(store._connections) == listed  # listed again, still open
        go_on.set()
        await work
        await store.aclose()
        assert store._connections == []
    finally:
        go_on.set()
        await store.aclose()
