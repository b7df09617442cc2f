"""The embedded default: one SQLite file, shared safely by several worker processes.

Every call runs on a small thread pool, one connection per thread, so the event
loop never waits on disk or on a lock. WAL lets readers proceed while one process
writes; writers wait at most ``busy_timeout`` seconds, after which the request gets
a 503 with ``Retry-After`` instead of hanging or failing with a 500.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from .._user_ids import user_text
from ..exceptions import StoreError, StoreUnavailableError
from ._forks import after_fork
from .base import (
    CORE_COLUMNS,
    MOVED_VERSION,
    PURGE_ROUNDS,
    Merge,
    SessionRecord,
    checked_retry_after,
    legacy_login_time,
    mark_of,
    not_ours,
    purge_start,
)

T = TypeVar("T")

# Connections a forked child inherited: never used, and never closed (see _after_fork).
_INHERITED: list[sqlite3.Connection] = []


def _close_all(connections: list[sqlite3.Connection]) -> None:
    """Close and forget a store's connections (its pool's and its reader)."""
    while connections:
        with suppress(IndexError, sqlite3.Error):
            connections.pop().close()


# Pools a call tries, each shut down by an aclose() in another thread before it took
# the call, before it gives up.
_POOL_TRIES = 10
_COLUMNS = (
    "key, public_id, data, user_id, created_at, last_seen_at, expires_at,"
    " remember, user_agent, version, ip_address, authenticated_at, idle_timeout,"
    " absolute_timeout"
)
# Columns added since the first release, with their declarations: a table made by an
# earlier coatcheck gets them in place. A NULL authenticated_at, in a row written by
# one, stands for the row's created_at, the time of the login that made it.
_ADDED_COLUMNS = (
    ("ip_address", "TEXT NOT NULL DEFAULT ''"),
    ("authenticated_at", "REAL"),
    ("idle_timeout", "INTEGER NOT NULL DEFAULT 0"),
    ("absolute_timeout", "INTEGER NOT NULL DEFAULT 0"),
)
# A moved key's row (see coatcheck.stores.base.MOVED_FOR), made of the key, the key it
# moved to, the move's time and the end of its mark, over the old row if there is one;
# looked up at ``now``.
_MOVED_ROW = (
    "(key, public_id, data, user_id, created_at, expires_at, last_seen_at, version)"
    f" VALUES (?, '', ?, NULL, ?, ?, ?, {MOVED_VERSION}) ON CONFLICT(key) DO UPDATE SET"
    f" version = {MOVED_VERSION}, user_id = NULL, data = excluded.data,"
    " expires_at = excluded.expires_at, last_seen_at = excluded.last_seen_at"
)
_MOVED_AT = f"version = {MOVED_VERSION} AND last_seen_at > ?"
_LIVE = f"expires_at > ? AND version != {MOVED_VERSION}"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_LOOK_EVERY = 1.0  # seconds between looks at which file the path names
# Errors that mean "try again later" (a lock, a full or missing disk), not a bug: a 503.
_UNAVAILABLE = {
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_PROTOCOL",
    "SQLITE_READONLY",
}


_WAL_LIMIT = 8 * 1024 * 1024  # bytes of -wal file kept after a checkpoint


class SQLiteStore:
    """Sessions in one SQLite file (WAL, busy timeout, indexes on user and expiry).

    Expired rows are never served; they are removed in batches by
    :meth:`purge_expired`, which also runs by itself every ``purge_every`` saves.

    With ``inline_reads`` (the default) a session load is a primary-key lookup made on
    the event loop's thread by a connection that never waits for a lock (busy timeout
    0): in WAL mode readers are not blocked by writers, so the lookup costs a few
    microseconds, far less than the hand-off to a worker thread. Whenever SQLite
    reports contention the load is retried on the thread pool, where waiting is
    harmless. Turn it off for a database on a network filesystem, where even a read
    can stall.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 5.0,
        table: str = "coatcheck_sessions",
        threads: int = 4,
        purge_every: int = 1000,
        purge_batch: int = 500,
        retry_after: int | None = None,
        inline_reads: bool = True,
    ) -> None:
        if not _IDENTIFIER.fullmatch(table) or table.lower().startswith("sqlite_"):
            raise ValueError(f"table name {table!r} is not a plain SQL identifier")
        if not 0 <= busy_timeout < 3600:  # also rejects NaN
            raise ValueError(
                f"busy_timeout must be from 0 to under 3600 seconds, got {busy_timeout}"
            )
        if str(path) in ("", ":memory:"):
            raise ValueError("SQLiteStore needs a file: use MemoryStore for in-memory sessions")
        self.path = Path(path).resolve()  # a later chdir must not move the sessions
        self.busy_timeout = busy_timeout
        self.table = table
        self._sql_table = f'"{table}"'  # quoted, so reserved words such as "order" work
        # The statements of the per-request path, built once.
        self._select_live = (
            f"SELECT {_COLUMNS} FROM {self._sql_table}"  # noqa: S608
            f" WHERE key = ? AND {_LIVE}"
        )
        self._delete_key = f"DELETE FROM {self._sql_table} WHERE key = ?"  # noqa: S608
        # A key a save moved to a new one: see _MOVED_ROW.
        self._mark_moved = f"INSERT INTO {self._sql_table} {_MOVED_ROW}"
        self._select_moved = (
            f"SELECT expires_at, data FROM {self._sql_table} WHERE key = ? AND {_MOVED_AT}"  # noqa: S608
        )
        # An upsert rather than INSERT OR REPLACE: a column a later release adds keeps
        # its value when this one writes the row, in a rolling deploy or a rollback.
        updated = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[1:])
        self._insert = (
            f"INSERT INTO {self._sql_table} ({_COLUMNS})"  # noqa: S608
            f" VALUES ({','.join('?' * (_COLUMNS.count(',') + 1))})"
            f" ON CONFLICT(key) DO UPDATE SET {updated}"
        )
        # Only where no live row holds the key; a dead one is written over.
        self._create = (
            self._insert.replace(f"INTO {self._sql_table}", f"INTO {self._sql_table} AS t")
            # A move's mark is written over only once it lapses: until then, the key a
            # login retired is not free (a copy brought over again would revive it).
            + f" WHERE (t.version != {MOVED_VERSION} AND t.expires_at <= excluded.last_seen_at)"
            + f" OR (t.version = {MOVED_VERSION} AND t.last_seen_at <= excluded.last_seen_at)"
        )
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self.retry_after = checked_retry_after(retry_after)
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # A store no lifespan closed (a test's, a mounted app's) closes its connections
        # when it is collected, as aclose() would: Python 3.13 warns of each one left open.
        weakref.finalize(self, _close_all, self._connections)
        self._saves = purge_start(purge_every)
        self.inline_reads = inline_reads
        self._reader: sqlite3.Connection | None = None
        # Held for each inline read: aclose() from another thread (a job's own event
        # loop) must not close the reader under a read, which crashes the process.
        self._reading = threading.Lock()
        self._stopping: set[ThreadPoolExecutor] = set()  # pools that aclose() shuts down
        self._ready = False  # the file is in WAL mode and has the table
        # The file the connections have open, by device and inode. A file deleted or
        # replaced under a running app would otherwise take every later write, each
        # answered with success, and vanish with the last connection; so it is looked
        # at now and then, and connections made before it changed are made anew.
        self._identity: tuple[int, int] | None = None
        self._generation = 0  # counts the files the store has had open
        self._looked_at = 0.0  # time.monotonic() of the last look
        self._reader_generation = 0
        after_fork(self)

    def __repr__(self) -> str:
        return f"<SQLiteStore {str(self.path)!r} table={self.table!r}>"

    def _after_fork(self) -> None:
        """In a child forked from a process that used this store (gunicorn's --preload):
        start again. The pool's threads did not come along, so work sent to it would
        wait for ever; a lock held by one of them would stay held; and SQLite forbids
        using a connection made before the fork. Those are kept, unused and unclosed:
        closing one could checkpoint and reset the parent's log under it."""
        _INHERITED.extend(self._connections)  # the reader too
        self._connections.clear()  # in place: the finalizer holds this list
        self._executor = None
        self._local = threading.local()
        self._reader = None
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._stopping = set()  # their threads did not come along
        self._saves = purge_start(self.purge_every)  # its own point in the cycle

    # -- the store contract -------------------------------------------------------------

    async def load(self, key: str, now: float) -> SessionRecord | None:
        sql = self._select_live
        rows = self._read_inline(sql, (key, now)) if self.inline_reads and self._ready else None
        if rows is None:
            rows = await self._run(lambda db: db.execute(sql, (key, now)).fetchall())
        return _record(rows[0]) if rows else None

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        self._saves += 1
        purge = self.purge_every > 0 and self._saves % self.purge_every == 0
        previous = replaces or record.key

        def write(db: sqlite3.Connection) -> bool:
            chosen = record
            if expected_version is None and previous == record.key:
                db.execute(self._insert, _values(chosen))
            else:
                # The write lock is held from the read of the base to the commit, so a
                # merge sees the latest version and no other save can slip in between.
                with _immediate(db):
                    if expected_version is not None:
                        found = db.execute(self._select_live, (previous, record.last_seen_at))
                        row = found.fetchone()
                        if row is None:
                            return False
                        base = _record(row)
                        if base.version != expected_version:
                            if merge is None:
                                return False
                            chosen = merge(base)
                    if previous != chosen.key:
                        db.execute(self._mark_moved, mark_of(previous, chosen))
                    db.execute(self._insert, _values(chosen))
            if purge:
                try:
                    # Full batches mean more is waiting: a few more, so the purge keeps
                    # ahead of what saves create (at most one record each).
                    for _ in range(PURGE_ROUNDS):
                        if self._purge_batch(db, chosen.last_seen_at)[0] < self.purge_batch:
                            break
                except sqlite3.OperationalError as exc:
                    # The record is saved; the purge is housekeeping and waits for next time.
                    if not _is_transient(exc):
                        raise
            return True

        return await self._run(write)

    async def create(self, record: SessionRecord) -> bool:
        """Write ``record`` only if no live record holds its key; False when one does."""
        return await self._run(lambda db: db.execute(self._create, _values(record)).rowcount == 1)

    async def delete(self, key: str) -> None:
        await self._run(lambda db: db.execute(self._delete_key, (key,)))

    async def moved_at(self, key: str, now: float) -> float | None:
        """When a save moved the session under ``key`` to a new key, if less than
        ``MOVED_FOR`` seconds before ``now`` (see :func:`~coatcheck.stores.base.mover_of`)."""
        rows = await self._moves(key, now)
        return float(rows[0][0]) if rows else None

    async def moved_to(self, key: str, now: float) -> str | None:
        """The key that move went to (see :func:`~coatcheck.stores.base.follower_of`);
        None for a mark an earlier coatcheck made, which did not keep it."""
        rows = await self._moves(key, now)
        return bytes(rows[0][1]).decode() if rows and rows[0][1] else None

    async def _moves(self, key: str, now: float) -> list[Any]:
        sql = self._select_moved
        return await self._run(lambda db: db.execute(sql, (key, now)).fetchall())

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        user_id = user_text(user_id)
        sql = (
            f"SELECT {_COLUMNS} FROM {self._sql_table}"  # noqa: S608
            " WHERE user_id = ? AND expires_at > ? ORDER BY created_at"
        )
        rows = await self._run(lambda db: db.execute(sql, (user_id, now)).fetchall())
        return [_record(row) for row in rows]

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        user_id = user_text(user_id)
        moment = time.time() if now is None else now
        select = (
            f"SELECT key, expires_at FROM {self._sql_table}"  # noqa: S608
            " WHERE user_id = ? AND key IS NOT ? LIMIT ?"
        )

        def remove(db: sqlite3.Connection) -> int:
            # In batches, each counted as it is deleted: a bot's hundred thousand
            # sessions in one transaction held the write lock for seconds, past the
            # busy timeout of every other worker's saves.
            live = 0
            while True:
                with _immediate(db):
                    rows = db.execute(select, (user_id, keep, self.purge_batch)).fetchall()
                    db.executemany(self._delete_key, [(key,) for key, _ in rows])
                live += sum(1 for _, expires_at in rows if expires_at > moment)
                if len(rows) < self.purge_batch:
                    return live

        return await self._run(remove)

    async def delete_all(self, now: float) -> int:
        select = f"SELECT key, expires_at, version FROM {self._sql_table} LIMIT ?"  # noqa: S608
        delete = f"DELETE FROM {self._sql_table} WHERE key = ?"  # noqa: S608

        def remove(db: sqlite3.Connection) -> int:
            # In batches, as a purge: requests of other workers never wait long for a write.
            live = 0
            while True:
                with _immediate(db):
                    rows = db.execute(select, (self.purge_batch,)).fetchall()
                    db.executemany(delete, [(key,) for key, _, _ in rows])
                live += sum(
                    1 for _, ends, version in rows if ends > now and version != MOVED_VERSION
                )
                if len(rows) < self.purge_batch:
                    return live

        return await self._run(remove)

    async def purge_expired(self, now: float) -> int:
        total = 0
        while True:
            started = time.monotonic()
            rows, sessions = await self._run(lambda db: self._purge_batch(db, now))
            total += sessions
            if rows < self.purge_batch:
                return total
            # As long again before the next batch: a writer of another process, whose
            # busy handler looks again only every few milliseconds, gets the lock
            # between batches instead of waiting out its timeout behind a long purge.
            await asyncio.sleep(time.monotonic() - started)

    async def count(self, now: float) -> int:
        sql = f"SELECT count(*) FROM {self._sql_table} WHERE {_LIVE}"  # noqa: S608
        rows = await self._run(lambda db: db.execute(sql, (now,)).fetchall())
        return int(rows[0][0])

    async def aclose(self) -> None:
        """Close the connections and the threads made so far; the store opens new ones if
        used again. Safe from any thread, also while other threads or event loops use the
        store (a job that runs ``asyncio.run()`` beside the app): a connection is closed
        only once nothing runs on it, and their work goes on with new ones."""
        with self._reading, self._lock:
            executor, self._executor = self._executor, None
            if executor is not None:
                self._stopping.add(executor)
            # Every pool still shutting down, this call's and another's: work queued on
            # one may yet open a connection, listed from here on, and run on it.
            stopping = list(self._stopping)
            self._reader = None  # no inline read is on it: this holds the lock
            self._local = threading.local()
            closing = self._connections[:]
            # In place: the finalizer holds this list. Connections made from here on
            # (by another loop's work, in a new pool) are not this call's to close.
            self._connections.clear()
        try:
            for each in stopping:
                # Waits for the work sent to it; work sent later goes to a new pool.
                await asyncio.get_running_loop().run_in_executor(None, each.shutdown)
                self._stopping.discard(each)
        except BaseException:
            # Cancelled meanwhile: listed again, for a later aclose() (which waits for
            # the pools this one did not) or the finalizer to close.
            with self._lock:
                self._connections.extend(closing)
            raise
        _close_all(closing)

    # -- mechanics ----------------------------------------------------------------------

    def _read_inline(self, sql: str, parameters: tuple[object, ...]) -> list[Any] | None:
        """Run a point read on this thread, or return None to send it to the pool."""
        with self._reading:
            return self._read_on_reader(sql, parameters)

    def _read_on_reader(self, sql: str, parameters: tuple[object, ...]) -> list[Any] | None:
        try:
            self._look_at_file()
            if self._reader is not None and self._reader_generation != self._generation:
                self._forget(self._reader)
                self._reader = None
            if self._reader is None:
                self._reader_generation = self._generation
                _create_private(self.path)  # a first read would make the file otherwise
                reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                reader.execute("PRAGMA busy_timeout = 0")
                reader.execute("PRAGMA query_only = 1")
                with self._lock:
                    self._connections.append(reader)
                self._reader = reader
            # fetchall() ends the read transaction at once, so checkpoints are never held up.
            return self._reader.execute(sql, parameters).fetchall()
        except sqlite3.Error:
            # Busy, locked or anything odd: the pool path waits properly and reports errors.
            return None

    def _create_schema(self, db: sqlite3.Connection) -> None:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {self._sql_table} ("
            " key TEXT PRIMARY KEY, public_id TEXT NOT NULL, data BLOB NOT NULL,"
            " user_id TEXT, created_at REAL NOT NULL, last_seen_at REAL NOT NULL,"
            " expires_at REAL NOT NULL, remember INTEGER NOT NULL DEFAULT 0,"
            " user_agent TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 1,"
            " ip_address TEXT NOT NULL DEFAULT '', authenticated_at REAL,"
            " idle_timeout INTEGER NOT NULL DEFAULT 0,"
            " absolute_timeout INTEGER NOT NULL DEFAULT 0"
            ") WITHOUT ROWID"
        )
        db.execute(
            f'CREATE INDEX IF NOT EXISTS "{self.table}_user"'
            f" ON {self._sql_table} (user_id) WHERE user_id IS NOT NULL"
        )
        self._add_indexes(db)

    def _add_indexes(self, db: sqlite3.Connection) -> None:
        # Sessions and the marks of moves, each by when a purge may drop them, apart: in
        # one index, each batch of a purge would walk past every row of the other kind
        # (a backlog of expired sessions, or the logins of the last ten minutes), which
        # takes seconds under the write lock. The one index of earlier releases goes.
        db.execute(
            f'CREATE INDEX IF NOT EXISTS "{self.table}_expiry" ON {self._sql_table}'
            f" (expires_at) WHERE version != {MOVED_VERSION}"
        )
        db.execute(
            f'CREATE INDEX IF NOT EXISTS "{self.table}_moved" ON {self._sql_table}'
            f" (last_seen_at) WHERE version = {MOVED_VERSION}"
        )
        db.execute(f'DROP INDEX IF EXISTS "{self.table}_expires"')

    def _old_indexes(self, db: sqlite3.Connection) -> bool:
        """Whether the table has the indexes of an earlier release (see _add_indexes)."""
        listed = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
        names = {row[0] for row in db.execute(listed, (self.table,))}
        return f"{self.table}_moved" not in names or f"{self.table}_expires" in names

    def _missing_columns(self, db: sqlite3.Connection) -> list[tuple[str, str]]:
        present = {column[1] for column in db.execute(f"PRAGMA table_info({self._sql_table})")}
        if missing := CORE_COLUMNS - present:
            raise StoreError(not_ours(self.table, missing))
        return [column for column in _ADDED_COLUMNS if column[0] not in present]

    def _add_columns(self, db: sqlite3.Connection) -> None:
        """Bring a table made by an earlier coatcheck up to date: columns added in place
        (no rows are rewritten), by whichever process gets the write lock first."""
        for name, declaration in self._missing_columns(db):
            db.execute(f"ALTER TABLE {self._sql_table} ADD COLUMN {name} {declaration}")

    def _purge_batch(self, db: sqlite3.Connection, now: float) -> tuple[int, int]:
        """Rows deleted, and how many of them were sessions rather than the marks of
        moves (see _MOVED_ROW), which no count of sessions includes."""
        # Small batches keep each write lock short, so requests never queue behind a purge.
        # Two statements rather than one with RETURNING, which SQLite before 3.35 lacks.
        sessions = (
            f"DELETE FROM {self._sql_table} WHERE key IN"  # noqa: S608
            f" (SELECT key FROM {self._sql_table}"
            f"  WHERE expires_at <= ? AND version != {MOVED_VERSION} LIMIT ?)"
        )
        # A mark's expires_at (the move) comes before its last_seen_at (its end).
        marks = (
            f"DELETE FROM {self._sql_table} WHERE key IN"  # noqa: S608
            f" (SELECT key FROM {self._sql_table}"
            f"  WHERE version = {MOVED_VERSION} AND last_seen_at <= ? LIMIT ?)"
        )
        ended = db.execute(sessions, (now, self.purge_batch)).rowcount
        gone = db.execute(marks, (now, self.purge_batch)).rowcount
        return max(ended, gone), ended

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        for _ in range(_POOL_TRIES):
            executor = self._pool()
            try:
                done = loop.run_in_executor(executor, self._call, work)
                break
            except RuntimeError:
                if self._executor is executor:
                    raise  # not shut down by an aclose() in another thread meanwhile
        else:
            raise StoreUnavailableError(
                f"SQLite session store {str(self.path)!r} was closed again and again "
                "by other threads while this call waited for it",
                retry_after=self.retry_after,
            )
        try:
            return await done
        except sqlite3.Error as exc:
            if _is_transient(exc):
                raise StoreUnavailableError(
                    f"SQLite session store {str(self.path)!r} is unavailable: {exc}",
                    retry_after=self.retry_after,
                ) from exc
            raise StoreError(f"SQLite session store {str(self.path)!r} failed: {exc}") from exc

    def _pool(self) -> ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            with self._lock:  # one pool, also when loops in two threads start at once
                executor = self._executor
                if executor is None:
                    executor = self._executor = ThreadPoolExecutor(
                        self._threads, "coatcheck-sqlite"
                    )
        return executor

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        self._look_at_file()
        local = self._local
        for attempt in (1, 2):
            db: sqlite3.Connection | None = getattr(local, "db", None)
            if db is not None and local.generation != self._generation:
                self._drop(local)  # made on a file that is no longer at the path
                db = None
            if db is None:
                generation = self._generation
                db = self._connect()
                local.db, local.generation = db, generation
            try:
                return work(db)
            except sqlite3.Error as exc:
                if not _stale(exc) or attempt == 2:
                    raise
                # Opened while the file was read-only (SQLite then never writes through
                # it), or on a file since deleted or replaced, or the table went: nothing
                # was written, and a new connection sees the file as it is now.
                self._drop(local)
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, local: threading.local) -> None:
        db = local.db
        local.db = None
        self._forget(db)

    def _forget(self, db: sqlite3.Connection) -> None:
        with self._lock, suppress(ValueError):
            self._connections.remove(db)
        db.close()

    def _look_at_file(self) -> None:
        """Notice, within a second, that the file at the path is another one (or none)."""
        now = time.monotonic()
        if now - self._looked_at < _LOOK_EVERY:
            return
        self._looked_at = now
        try:
            found = os.stat(self.path)
        except OSError:
            identity = None
        else:
            identity = (found.st_dev, found.st_ino)
        if self._identity is not None and identity != self._identity:
            self._identity = None
            self._generation += 1

    def _connect(self) -> sqlite3.Connection:
        _clear_orphaned_log(self.path)
        if _is_new(self.path):
            # Workers starting together make a new file one at a time: one that opens it
            # while another has it empty, not yet in WAL mode, must not go on without.
            with _folder_lock(self.path.parent):
                return self._open()
        return self._open()

    def _open(self) -> sqlite3.Connection:
        _create_private(self.path)
        db = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        with self._lock:
            self._connections.append(db)
            if self._identity is None:
                found = os.stat(self.path)
                self._identity = (found.st_dev, found.st_ino)
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # Switching to WAL or creating the schema can meet SQLITE_BUSY at once, without
        # SQLite's busy handler, while another process does the same on a new file.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                # A switch that cannot be made now answers with the mode it keeps.
                if (
                    db.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
                    and db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal"
                ):
                    raise sqlite3.OperationalError("database is locked (not in WAL mode yet)")
                # Only a new file needs the schema: taking the write lock on every connect
                # would make readers wait behind a writer, which WAL exists to avoid.
                exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
                if not db.execute(exists, (self.table,)).fetchall():
                    with _immediate(db):
                        self._create_schema(db)
                elif self._missing_columns(db) or self._old_indexes(db):
                    with _immediate(db):
                        self._add_columns(db)
                        self._add_indexes(db)
                break
            except sqlite3.OperationalError as exc:
                if not _is_transient(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
        # NORMAL is durable across process crashes in WAL mode; only power loss can
        # roll back the last commits, which for sessions means a re-login.
        db.execute("PRAGMA synchronous = NORMAL")
        # A checkpoint cuts the -wal file back to this: without a limit it keeps its
        # largest size (a VACUUM writes the whole database into it) until every
        # connection of every process closes, which a running app never does.
        db.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
        self._ready = True


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """Take the write lock up front, so the busy timeout applies instead of the
    ``SQLITE_BUSY`` that SQLite raises when a reader tries to become a writer."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # A full disk or an I/O error has rolled the transaction back already: a second
        # ROLLBACK would fail and put its own error in place of the one that matters.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    try:
        db.execute("COMMIT")
    except sqlite3.Error:
        # Left open, the transaction would hold the write lock on this thread's
        # connection, and every later write of every worker would wait for it.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _stale(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says that the connection no longer fits the file: opened while
    it was read-only, or on a file since deleted or replaced (whose left-over journal
    another process may still hold), or the table went."""
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str) and name.startswith(_STALE):
        return True
    message = str(exc).lower()
    return any(sign in message for sign in _STALE_SIGNS)


_STALE = ("SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_NOTADB")
_STALE_SIGNS = ("readonly database", "no such table", "disk i/o error", "not a database")


def _is_transient(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+; "SQLITE_BUSY_SNAPSHOT"
    if isinstance(name, str):
        return "_".join(name.split("_")[:2]) in _UNAVAILABLE
    message = str(exc).lower()
    return any(word in message for word in ("locked", "busy", "unable to open", "disk"))


def _values(record: SessionRecord) -> tuple[object, ...]:
    return (
        record.key,
        record.public_id,
        record.data,
        record.user_id,
        record.created_at,
        record.last_seen_at,
        record.expires_at,
        int(record.remember),
        record.user_agent,
        record.version,
        record.ip_address,
        record.authenticated_at,
        record.idle_timeout,
        record.absolute_timeout,
    )


def _record(row: tuple[Any, ...]) -> SessionRecord:
    # Every load builds one: the fields are passed by position (``_make``), since a
    # named tuple takes fourteen keywords several times slower than one tuple.
    (
        key,
        public_id,
        data,
        user_id,
        created,
        seen,
        expires,
        remember,
        agent,
        version,
        ip,
        auth,
        idle,
        absolute,
    ) = row
    return SessionRecord._make(
        (
            str(key),
            str(public_id),
            bytes(data),
            None if user_id is None else str(user_id),
            float(created),
            float(seen),
            float(expires),
            bool(remember),
            str(agent),
            int(version),
            str(ip),
            float(auth) if auth is not None else legacy_login_time(auth, created, user_id),
            int(idle),
            int(absolute),
        )
    )


def _clear_orphaned_log(path: Path) -> None:
    """Remove the write-ahead log and index of a database file deleted under running
    processes, before a new file is made at its path.

    SQLite leaves them when the file it belonged to has gone, and a new file would take
    them for its own: every later write would fail. Under a lock on the folder, so that
    of several processes reconnecting at once, one clears and creates, and none removes
    the log of the file another has just made.
    """
    leftovers = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    if path.exists() or not any(leftover.exists() for leftover in leftovers):
        return
    with _folder_lock(path.parent):
        if path.exists():
            return
        for leftover in leftovers:
            with suppress(FileNotFoundError):
                leftover.unlink()
        _create_private(path)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows has no flock: a rare race stays
        yield
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # a missing folder, which SQLite reports when it opens the file
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _is_new(path: Path) -> bool:
    """Whether the file is missing or empty: not a database yet."""
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return True


def _create_private(path: Path) -> None:
    """Make a new database file readable by its owner alone (its WAL and shared-memory
    files take the same mode): it holds user ids, addresses and session data. An
    existing file keeps the mode it has; a folder that is missing is left for
    SQLite to report."""
    with suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
