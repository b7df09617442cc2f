"""The embedded default: one SQLite file, shared safely by several worker processes.

Every call runs on a small thread pool, one connection per thread, so the event
loop never waits on disk or on a lock. WAL lets readers proceed while one process
writes; writers wait at most ``busy_timeout`` seconds, after which the request gets
a 503 with ``Retry-After`` instead of hanging or failing with a 500.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..exceptions import StoreError, StoreUnavailableError
from .base import SessionRecord

T = TypeVar("T")

_COLUMNS = (
    "key, public_id, data, user_id, created_at, last_seen_at, expires_at,"
    " remember, user_agent, version"
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class SQLiteStore:
    """Sessions in one SQLite file (WAL, busy timeout, indexes on user and expiry).

    Expired rows are never served; they are removed in batches by
    :meth:`purge_expired`, which also runs by itself every ``purge_every`` saves.
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
    ) -> None:
        if not _IDENTIFIER.match(table):
            raise ValueError(f"table name {table!r} is not a plain SQL identifier")
        if str(path) in ("", ":memory:"):
            raise ValueError("SQLiteStore needs a file: use MemoryStore for in-memory sessions")
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.table = table
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self.retry_after = retry_after
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._saves = 0

    # -- the store contract -------------------------------------------------------------

    async def load(self, key: str, now: float) -> SessionRecord | None:
        sql = f"SELECT {_COLUMNS} FROM {self.table} WHERE key = ? AND expires_at > ?"  # noqa: S608
        rows = await self._run(lambda db: db.execute(sql, (key, now)).fetchall())
        return _record(rows[0]) if rows else None

    async def save(self, record: SessionRecord, *, replaces: str | None = None) -> None:
        self._saves += 1
        purge = self.purge_every > 0 and self._saves % self.purge_every == 0
        values = (
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
        )
        insert = f"INSERT OR REPLACE INTO {self.table} ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"  # noqa: S608

        def write(db: sqlite3.Connection) -> None:
            if replaces is None or replaces == record.key:
                db.execute(insert, values)
            else:
                with _immediate(db):
                    db.execute(f"DELETE FROM {self.table} WHERE key = ?", (replaces,))  # noqa: S608
                    db.execute(insert, values)
            if purge:
                self._purge_batch(db, record.last_seen_at)

        await self._run(write)

    async def delete(self, key: str) -> None:
        sql = f"DELETE FROM {self.table} WHERE key = ?"  # noqa: S608
        await self._run(lambda db: db.execute(sql, (key,)))

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        sql = (
            f"SELECT {_COLUMNS} FROM {self.table}"  # noqa: S608
            " WHERE user_id = ? AND expires_at > ? ORDER BY created_at"
        )
        rows = await self._run(lambda db: db.execute(sql, (user_id, now)).fetchall())
        return [_record(row) for row in rows]

    async def delete_user(self, user_id: str, *, keep: str | None = None) -> int:
        sql = f"DELETE FROM {self.table} WHERE user_id = ? AND key IS NOT ?"  # noqa: S608
        return await self._run(lambda db: db.execute(sql, (user_id, keep)).rowcount)

    async def purge_expired(self, now: float) -> int:
        def purge(db: sqlite3.Connection) -> int:
            total = 0
            while removed := self._purge_batch(db, now):
                total += removed
            return total

        return await self._run(purge)

    async def count(self, now: float) -> int:
        sql = f"SELECT count(*) FROM {self.table} WHERE expires_at > ?"  # noqa: S608
        rows = await self._run(lambda db: db.execute(sql, (now,)).fetchall())
        return int(rows[0][0])

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()

    # -- mechanics ----------------------------------------------------------------------

    def _purge_batch(self, db: sqlite3.Connection, now: float) -> int:
        # Small batches keep each write lock short, so requests never queue behind a purge.
        sql = (
            f"DELETE FROM {self.table} WHERE key IN"  # noqa: S608
            f" (SELECT key FROM {self.table} WHERE expires_at <= ? LIMIT ?)"
        )
        return db.execute(sql, (now, self.purge_batch)).rowcount

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, "coatcheck-sqlite")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, work)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(
                f"SQLite session store {self.path.name!r} is unavailable: {exc}",
                retry_after=self.retry_after,
            ) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite session store {self.path.name!r} failed: {exc}") from exc

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return work(db)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across process crashes in WAL mode; only power loss can
            # roll back the last commits, which for sessions means a re-login.
            db.execute("PRAGMA synchronous = NORMAL")
            with _immediate(db):
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} ("
                    " key TEXT PRIMARY KEY, public_id TEXT NOT NULL, data BLOB NOT NULL,"
                    " user_id TEXT, created_at REAL NOT NULL, last_seen_at REAL NOT NULL,"
                    " expires_at REAL NOT NULL, remember INTEGER NOT NULL DEFAULT 0,"
                    " user_agent TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 1"
                    ") WITHOUT ROWID"
                )
                db.execute(
                    f"CREATE INDEX IF NOT EXISTS {self.table}_user"
                    f" ON {self.table} (user_id) WHERE user_id IS NOT NULL"
                )
                db.execute(
                    f"CREATE INDEX IF NOT EXISTS {self.table}_expires ON {self.table} (expires_at)"
                )
        except BaseException:
            db.close()
            raise
        with self._lock:
            self._connections.append(db)
        return db


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """Take the write lock up front, so the busy timeout applies instead of the
    ``SQLITE_BUSY`` that SQLite raises when a reader tries to become a writer."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _record(row: tuple[object, ...]) -> SessionRecord:
    key, public_id, data, user_id, created, seen, expires, remember, agent, version = row
    return SessionRecord(
        key=str(key),
        public_id=str(public_id),
        data=bytes(data),  # type: ignore[call-overload]
        user_id=None if user_id is None else str(user_id),
        created_at=float(created),  # type: ignore[arg-type]
        last_seen_at=float(seen),  # type: ignore[arg-type]
        expires_at=float(expires),  # type: ignore[arg-type]
        remember=bool(remember),
        user_agent=str(agent),
        version=int(version),  # type: ignore[call-overload]
    )
