"""Sessions in PostgreSQL, for apps whose data already lives there.

One table, keyed by the SHA-256 of the session ID, with indexes on user and expiry.
The table is created on first use, under an advisory lock so that several workers
starting at once do not trip over each other.

A load is one ``SELECT``; a save is one statement in the common case, a versioned
``UPDATE`` (or, when the ID rotates, a ``DELETE`` of the old row feeding an ``INSERT``
of the new one) that writes nothing unless the stored version is the one the request
loaded. Only when another request saved in between does the store lock the row, merge
onto the winner and write, in one transaction. Expired rows are never served, and are
removed in small batches by :meth:`PostgresStore.purge_expired`, which also runs by
itself every ``purge_every`` saves.

Connections come from a psycopg pool, opened on first use. Every call is bounded by
``timeout``: an unreachable or hung server becomes a quick 503 with ``Retry-After``,
and the pool reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .._context import apart
from .._user_ids import user_text
from ..exceptions import (
    ConfigurationError,
    MissingDependencyError,
    StoreError,
    StoreUnavailableError,
)
from . import POSTGRES_SCHEMES
from ._forks import after_fork
from ._loops import PerLoop
from ._redact import redact
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

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.rows import TupleRow
    from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("psycopg", "postgres") from exc

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["PostgresStore"]

T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# 63 bytes, PostgreSQL's longest name, less "_expires": the longer index name's suffix.
_LONGEST_TABLE = 63 - len("_expires")
_FIELDS = (
    "public_id, data, user_id, created_at, last_seen_at, expires_at, remember, user_agent,"
    " version, ip_address, authenticated_at, idle_timeout, absolute_timeout"
)
# A SessionRecord is a tuple in this order, so a record is its own row of parameters.
_COLUMNS = f"key, {_FIELDS}"
_VALUES = ", ".join(["%s"] * (_COLUMNS.count(",") + 1))
# Columns added since the first release, with their declarations: a table made by an
# earlier coatcheck gets them in place. A NULL authenticated_at, in a row written by
# one, stands for the row's created_at, the time of the login that made it.
_ADDED_COLUMNS = (
    ("ip_address", "text NOT NULL DEFAULT ''"),
    ("authenticated_at", "double precision"),
    ("idle_timeout", "integer NOT NULL DEFAULT 0"),
    ("absolute_timeout", "integer NOT NULL DEFAULT 0"),
)
_UPSERT = " ON CONFLICT (key) DO UPDATE SET " + ", ".join(
    f"{name} = EXCLUDED.{name}" for name in _FIELDS.split(", ")
)
# A moved key's row (see coatcheck.stores.base.MOVED_FOR): the old row set with the key
# it moved to, the move's time and the end of its mark (_MOVED_ROW), or, where there is
# none, a row made of the key and those (_MARK); looked up at a time ``now``.
_MOVED_ROW = (
    f"version = {MOVED_VERSION}, user_id = NULL, data = %s, expires_at = %s, last_seen_at = %s"
)
_MARK = (
    "(key, public_id, data, user_id, created_at, expires_at, last_seen_at, version)"
    f" VALUES (%s, '', %s, NULL, %s, %s, %s, {MOVED_VERSION}) ON CONFLICT (key)"
    f" DO UPDATE SET version = {MOVED_VERSION}, user_id = NULL, data = EXCLUDED.data,"
    " expires_at = EXCLUDED.expires_at, last_seen_at = EXCLUDED.last_seen_at"
)
_MOVED_AT = f"version = {MOVED_VERSION} AND last_seen_at > %s"
# Errors that mean "try again later": the server is down, restarting, overloaded or
# slow, or the pool has no connection to give in time. Anything else is a fault.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, OSError, asyncio.TimeoutError)
# SQLSTATE classes psycopg may raise as OperationalError that no retry cures: data
# exceptions, integrity, syntax or access, and program limits (an index entry too big).
_PERMANENT = ("22", "23", "42", "54")
# Of those, the ones the pool raises without having used a connection (closed: it gave
# up on its first connection while this request waited for it).
_POOL_ERRORS = (PoolTimeout, TooManyRequests, PoolClosed)
_OWN_OPTIONS = ("table", "timeout", "max_connections")
_ASK_AFTER_IDLE = 1.0  # seconds a pooled connection may sit unused before it is checked
# SQLSTATEs psycopg raises as other errors that pass all the same: a standby that is
# being promoted refuses writes, and an idle transaction ended by the server.
_READ_ONLY = "25006"
_PASSING = (_READ_ONLY, "25P03")
_NO_TABLE = "42P01"
# Refusals at connect that no wait cures; psycopg gives them no SQLSTATE, only the text.
_REFUSED_FOR_GOOD = re.compile(
    r"FATAL: +(password authentication failed|no pg_hba\.conf entry|role .* does not exist"
    r"|database .* does not exist|unsupported startup parameter|no such user)"
    # TLS that cannot work as configured: a certificate no CA given vouches for, a name
    # it does not carry, a root file missing, a server without TLS where it is required.
    r"|certificate verify failed|root certificate file|server certificate for"
    r"|does not support SSL, but SSL was required"
)
_NO_PRIVILEGE = "42501"
_CREATE_HINT = (
    "; create the table as a role that may (its SQL is store.schema_sql()), and give this "
    "store create_table=False and its role SELECT, INSERT, UPDATE and DELETE on the table"
)
_STANDBY_HINT = (
    " (a standby being promoted passes; a URL that names a read-only replica never does: "
    "give the primary's)"
)
# Batches (of ``purge_batch``) that revoking one user's sessions runs at most: millions
# of sessions. A user who goes on logging in without pause may outlive that.
_MAX_REVOKE_BATCHES = 10_000


def _tcp_defaults(timeout: float) -> tuple[tuple[str, int], ...]:
    """libpq's TCP settings, unless the URL gives its own: without them a connection
    waits as long as the operating system lets it (minutes), and a pooled connection
    whose packets a firewall, a NAT or a dead host silently drops stays checked out
    (every request 503s once the pool is full of them) for about fifteen minutes."""
    return (
        ("connect_timeout", max(2, round(timeout))),
        # Sent data left unacknowledged this long (milliseconds) ends the connection.
        ("tcp_user_timeout", round(max(5.0, 3 * timeout) * 1000)),
        # Idle ones are probed, which keeps a NAT's entry alive and finds a dead peer.
        ("keepalives_idle", 30),
        ("keepalives_interval", 10),
        ("keepalives_count", 3),
    )


def _libpq_query(url: str) -> tuple[str, str]:
    """``url`` cut at its query as libpq reads it: the user's part ends at the first
    ``@`` (before any ``/``), so a password may hold ``?`` or ``#``, which a generic
    URL parser takes for the start of the query or of a fragment."""
    scheme, sep, rest = url.partition("://")
    start = 0
    for at, char in enumerate(rest):
        if char in "@/":
            start = at + 1 if char == "@" else 0
            break
    base, _, query = rest[start:].partition("?")
    return f"{scheme}{sep}{rest[:start]}{base}", query


class _Pooled:
    """What the store connects with in one event loop: the pool it opened there (or
    the one the app gave), and the calls it gave up on that still tidy up."""

    __slots__ = ("abandoned", "opening", "pool")

    def __init__(self, pool: AsyncConnectionPool[Connection] | None = None) -> None:
        self.pool = pool
        self.opening = asyncio.Lock()  # one pool opens at a time
        self.abandoned: set[asyncio.Future[Any]] = set()  # timed out, still tidying up


class PostgresStore:
    """Sessions in one PostgreSQL table, shared by any number of workers and hosts.

    ``conninfo`` is a libpq connection string or URL. Or pass ``pool``, a
    ``psycopg_pool.AsyncConnectionPool`` of autocommit connections, to share the app's
    own; the store then leaves opening and closing it to the app. ``timeout`` bounds
    every call, waiting for a connection included. With ``create_table`` off, a
    missing table is an error instead of being created.
    """

    def __init__(
        self,
        conninfo: str = "",
        *,
        pool: AsyncConnectionPool[Connection] | None = None,
        table: str = "coatcheck_sessions",
        timeout: float = 2.0,
        max_connections: int = 10,
        create_table: bool = True,
        purge_every: int = 1000,
        purge_batch: int = 500,
        retry_after: int | None = None,
    ) -> None:
        parts = table.split(".")
        if len(parts) > 2 or not all(
            _IDENTIFIER.fullmatch(part) and not part.lower().startswith("pg_") for part in parts
        ):
            raise ConfigurationError(
                f"table name {table!r} is not a plain SQL identifier (or schema.identifier)"
            )
        if len(parts[-1]) > _LONGEST_TABLE:
            # PostgreSQL cuts names at 63 bytes: the indexes' would collide, or go unmade.
            raise ConfigurationError(
                f"table name {parts[-1]!r} is longer than {_LONGEST_TABLE} characters, "
                "which leaves no room for the names of its indexes"
            )
        if not 0 < timeout < 3600:  # also rejects NaN
            raise ConfigurationError(
                f"timeout must be over 0 and under 3600 seconds, got {timeout}"
            )
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be at least 1, got {max_connections}")
        if pool is not None and conninfo:
            raise ConfigurationError("give PostgresStore a conninfo or a pool, not both")
        told = None
        try:
            # A misspelt parameter fails now, not at each connect.
            params = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            told = _told(exc)
        if told is not None:  # raised out here: libpq's own text, which may quote the
            # password, must not ride along as the error's __context__ either
            raise ConfigurationError(f"invalid PostgreSQL connection string: {told}")
        for name in ("sslrootcert", "sslcert", "sslkey"):
            # libpq reads them only as it connects: a wrong path would fail every request.
            path = params.get(name)
            if isinstance(path, str) and path and path != "system" and not os.path.isfile(path):
                raise ConfigurationError(f"{name}= names no file: {path!r}")
        self.conninfo = conninfo
        self.table = table
        self.timeout = timeout
        self.max_connections = max_connections
        self.create_table = create_table
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self.retry_after = checked_retry_after(retry_after)
        self._given_pool = pool
        # A pool given is the app's, for the loop it uses it in: the same for every loop;
        # else each loop opens, and closes as it ends, a pool of its own.
        given = _Pooled(pool)
        self._pooled: PerLoop[_Pooled] = (
            PerLoop(lambda: given) if pool is not None else PerLoop(_Pooled, self._close_pool)
        )
        self._ready = False  # the table is known to exist
        # Columns added since the first release are added in place even without
        # create_table: the CLI, which never creates a table, must work on an old one.
        self._upgrade_in_place = False
        self._saves = purge_start(purge_every)
        after_fork(self)
        # Why the pool's last attempt to connect failed, and whether for good: the pool
        # logs the cause, but a request waiting for a connection only sees a timeout.
        self._refused: tuple[str, bool] | None = None
        self._used: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        # Quoted, so reserved words such as "order" work; a schema may come first.
        name = ".".join(f'"{part}"' for part in parts)
        self._index_prefix = parts[-1]  # an index lives in its table's schema
        self._sql_table = name
        # The statements of the per-request path, built once.
        self._select = (
            f"SELECT {_FIELDS} FROM {name}"  # noqa: S608
            f" WHERE key = %s AND expires_at > %s AND version != {MOVED_VERSION}"
        )
        self._select_locked = f"SELECT {_FIELDS} FROM {name} WHERE key = %s FOR UPDATE"  # noqa: S608
        self._insert = f"INSERT INTO {name} ({_COLUMNS}) VALUES ({_VALUES}){_UPSERT}"  # noqa: S608
        # Only where no live row holds the key; a dead one is written over, and a move's
        # mark once it lapses: until then, the key a login retired is not free.
        self._create = (
            f"INSERT INTO {name} AS t ({_COLUMNS}) VALUES ({_VALUES}){_UPSERT}"  # noqa: S608
            f" WHERE (t.version != {MOVED_VERSION} AND t.expires_at <= EXCLUDED.last_seen_at)"
            f" OR (t.version = {MOVED_VERSION} AND t.last_seen_at <= EXCLUDED.last_seen_at)"
        )
        self._delete_key = f"DELETE FROM {name} WHERE key = %s"  # noqa: S608
        # A rotation leaves the old key marked as moved: see _MARK.
        self._mark_moved = f"INSERT INTO {name} {_MARK}"
        self._select_moved = f"SELECT expires_at, data FROM {name} WHERE key = %s AND {_MOVED_AT}"  # noqa: S608
        self._replace = (
            f"WITH gone AS ({self._mark_moved})"  # noqa: S608
            f" INSERT INTO {name} ({_COLUMNS}) VALUES ({_VALUES}){_UPSERT}"
        )
        self._update_if = (
            f"UPDATE {name} SET ({_COLUMNS}) = ({_VALUES})"  # noqa: S608
            " WHERE key = %s AND version = %s AND expires_at > %s"
        )
        self._rotate_if = (
            f"WITH base AS (UPDATE {name} SET {_MOVED_ROW}"  # noqa: S608
            " WHERE key = %s AND version = %s AND expires_at > %s RETURNING 1)"
            f" INSERT INTO {name} ({_COLUMNS}) SELECT {_VALUES} FROM base{_UPSERT}"
        )

    @classmethod
    def from_url(cls, url: str, *, table: str | None = None) -> PostgresStore:
        """Build a store from ``postgresql://user:password@host:5432/db?table=...``.

        ``?table=``, ``?timeout=`` (seconds, 2 by default) and ``?max_connections=``
        (10) are the store's own options; every other query parameter (``sslmode``,
        ``application_name``…) goes to libpq. Nothing connects until first use.
        """
        if urlsplit(url).scheme not in POSTGRES_SCHEMES:
            raise ConfigurationError(f"not a PostgreSQL URL: {redact(url)!r}")
        head, query = _libpq_query(url)
        # libpq's parameters are passed on as written: decoded and encoded again, a
        # "%20" would come back as "+", which libpq does not read as a space.
        own: dict[str, str] = {}
        rest: list[str] = []
        for piece in filter(None, query.split("&")):
            [(name, value)] = parse_qsl(piece, keep_blank_values=True) or [(piece, "")]
            if name in _OWN_OPTIONS:
                own[name] = value
            else:
                rest.append(piece)
        try:
            timeout = float(own.get("timeout", 2.0))
            max_connections = int(own.get("max_connections", 10))
        except ValueError as exc:
            raise ConfigurationError(f"invalid option in store URL {redact(url)!r}: {exc}") from exc
        given = {piece.partition("=")[0] for piece in rest}
        for setting, number in _tcp_defaults(timeout):
            if setting not in given:
                rest.append(f"{setting}={number}")
        conninfo = f"{head}?{'&'.join(rest)}"
        return cls(
            conninfo,
            table=table or own.get("table", "coatcheck_sessions"),
            timeout=timeout,
            max_connections=max_connections,
        )

    def __repr__(self) -> str:
        # Not the connection string, which may hold a password in any of its forms.
        return f"<PostgresStore table={self.table!r}>"

    def _after_fork(self) -> None:
        """In a forked worker: its own point in the purge cycle, not the parent's."""
        self._saves = purge_start(self.purge_every)

    # -- the store contract -------------------------------------------------------------

    async def load(self, key: str, now: float) -> SessionRecord | None:
        async def read(db: Connection) -> SessionRecord | None:
            cursor = await db.execute(self._select, (key, now))
            row = await cursor.fetchone()
            return None if row is None else _record(key, row)

        return await self._run(read, idempotent=True)

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        previous = replaces or record.key
        self._saves += 1
        purge = self.purge_every > 0 and self._saves % self.purge_every == 0

        async def write(db: Connection) -> bool:
            written = await self._write(db, record, previous, expected_version, merge)
            if purge:
                await self._purge_quietly(db, record.last_seen_at)
            return written

        # Never sent twice: had the first copy run, a logout in between could be undone.
        return await self._run(write, idempotent=False)

    async def _write(
        self,
        db: Connection,
        record: SessionRecord,
        previous: str,
        expected: int | None,
        merge: Merge | None,
    ) -> bool:
        mark = mark_of(previous, record)
        moved = (mark[1], *mark[3:])  # the key it moved to, the move's time, its end
        if expected is None:
            if previous == record.key:
                await db.execute(self._insert, record)
            else:
                await db.execute(self._replace, (*mark, *record))
            return True
        # Optimistic: one statement that writes only over the version this request read.
        condition = (previous, expected, record.last_seen_at)
        if previous == record.key:
            done = await db.execute(self._update_if, (*record, *condition))
        else:
            done = await db.execute(self._rotate_if, (*moved, *condition, *record))
        if done.rowcount == 1:
            return True
        # The base is gone, dead, or another save got there first: settle it under the
        # row's lock, so no other save slips in between the read and the write.
        async with db.transaction():
            found = await db.execute(self._select_locked, (previous,))
            row = await found.fetchone()
            if row is None:
                return False
            base = _record(previous, row)
            if base.expires_at <= record.last_seen_at or base.version == MOVED_VERSION:
                return False
            chosen = record
            if base.version != expected:
                if merge is None:
                    return False
                chosen = merge(base)
            if previous != chosen.key:
                await db.execute(self._mark_moved, mark_of(previous, chosen))
            await db.execute(self._insert, chosen)
        return True

    async def create(self, record: SessionRecord) -> bool:
        """Write ``record`` only if no live record holds its key; False when one does."""

        async def write(db: Connection) -> bool:
            return (await db.execute(self._create, record)).rowcount == 1

        # Never sent twice: had the first copy run, the second would find it and say no.
        return await self._run(write, idempotent=False)

    async def delete(self, key: str) -> None:
        async def remove(db: Connection) -> None:
            await db.execute(self._delete_key, (key,))

        await self._run(remove, idempotent=True)

    async def moved_at(self, key: str, now: float) -> float | None:
        """When a save moved the session under ``key`` to a new key, if less than
        ``MOVED_FOR`` seconds before ``now`` (see :func:`~coatcheck.stores.base.mover_of`)."""

        row = await self._move(key, now)
        return None if row is None else float(row[0])

    async def moved_to(self, key: str, now: float) -> str | None:
        """The key that move went to (see :func:`~coatcheck.stores.base.follower_of`);
        None for a mark an earlier coatcheck made, which did not keep it."""
        row = await self._move(key, now)
        return bytes(row[1]).decode() if row is not None and row[1] else None

    async def _move(self, key: str, now: float) -> tuple[Any, ...] | None:
        async def read(db: Connection) -> tuple[Any, ...] | None:
            cursor = await db.execute(self._select_moved, (key, now))
            row: tuple[Any, ...] | None = await cursor.fetchone()
            return row

        return await self._run(read, idempotent=True)

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        user_id = user_text(user_id)
        sql = (
            f"SELECT key, {_FIELDS} FROM {self._sql_table}"  # noqa: S608
            " WHERE user_id = %s AND expires_at > %s ORDER BY created_at, key"
        )

        async def read(db: Connection) -> list[SessionRecord]:
            cursor = await db.execute(sql, (user_id, now))
            return [_record(str(key), row) for key, *row in await cursor.fetchall()]

        return await self._run(read, idempotent=True)

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        user_id = user_text(user_id)
        delete = (
            f"WITH gone AS (DELETE FROM {self._sql_table} WHERE key IN"  # noqa: S608
            f" (SELECT key FROM {self._sql_table}"
            "  WHERE user_id = %s AND key IS DISTINCT FROM %s LIMIT %s)"
            " RETURNING expires_at)"
            " SELECT count(*), count(*) FILTER (WHERE expires_at > %s) FROM gone"
        )
        remaining = (
            f"SELECT EXISTS (SELECT 1 FROM {self._sql_table}"  # noqa: S608
            " WHERE user_id = %s AND key IS DISTINCT FROM %s)"
        )
        moment = time.time() if now is None else now

        async def remove(db: Connection) -> tuple[int, int]:
            row = await _one(await db.execute(delete, (user_id, keep, self.purge_batch, moment)))
            return int(row[0]), int(row[1])

        async def left(db: Connection) -> bool:
            return bool((await _one(await db.execute(remaining, (user_id, keep))))[0])

        # In batches, each within the timeout: a bot's million sessions in one statement
        # outlasted it, and the revocation was reported failed after it had landed.
        # Until none of the user's rows is left: a session that rotated while a batch
        # ran is committed under a key that batch could not see, and its old row
        # vanished under it, so a short batch alone does not mean the end.
        live = 0
        for _ in range(_MAX_REVOKE_BATCHES):
            removed, alive = await self._run(remove, idempotent=True)
            live += alive
            if removed < self.purge_batch and not await self._run(left, idempotent=True):
                break
        return live

    async def delete_all(self, now: float) -> int:
        sql = (
            f"WITH gone AS (DELETE FROM {self._sql_table} WHERE key IN"  # noqa: S608
            f" (SELECT key FROM {self._sql_table} LIMIT %s) RETURNING expires_at, version)"
            " SELECT count(*),"
            f" count(*) FILTER (WHERE expires_at > %s AND version != {MOVED_VERSION}) FROM gone"
        )

        async def remove(db: Connection) -> tuple[int, int]:
            row = await _one(await db.execute(sql, (self.purge_batch, now)))
            return int(row[0]), int(row[1])

        # In batches, so no statement holds thousands of row locks for long, each within
        # the timeout, so a table of millions is emptied rather than given up on. Until
        # a batch finds nothing: one cut short by a parallel logout or rotation (its rows
        # deleted under it) does not mean the table is empty.
        live = 0
        while True:
            removed, alive = await self._run(remove, idempotent=True)
            live += alive
            if not removed:
                return live

    async def purge_expired(self, now: float) -> int:
        async def purge(db: Connection) -> tuple[int, int]:
            return await self._purge_batch(db, now)

        total = 0  # batch by batch, each within the timeout, as delete_all
        while True:
            rows, sessions = await self._run(purge, idempotent=True)
            total += sessions
            if not rows:
                return total

    async def count(self, now: float) -> int:
        sql = (
            f"SELECT count(*) FROM {self._sql_table}"  # noqa: S608
            f" WHERE expires_at > %s AND version != {MOVED_VERSION}"
        )

        async def read(db: Connection) -> int:
            return int((await _one(await db.execute(sql, (now,))))[0])

        return await self._run(read, idempotent=True)

    async def aclose(self) -> None:
        """Close this event loop's pool; a later use opens another. Other loops' pools
        close as their loops end."""
        pooled = self._pooled.leave(asyncio.get_running_loop())
        if pooled is None:
            return
        abandoned = pooled.abandoned
        if abandoned:
            # Calls given up on may still be waiting for a hung server: give them a
            # last chance, then cancel them.
            await asyncio.wait(abandoned, timeout=self.timeout)
            for task in list(abandoned):
                task.cancel()
            if abandoned:
                await asyncio.wait(abandoned, timeout=self.timeout)
        pool = pooled.pool
        if pool is None or pool is self._given_pool:
            return
        pooled.pool = None
        await pool.close()

    # -- mechanics ----------------------------------------------------------------------

    async def _purge_batch(self, db: Connection, now: float) -> tuple[int, int]:
        """Rows deleted, and how many of them were sessions rather than the marks of
        moves (see _MOVED_ROW), which no count of sessions includes."""
        # Small batches keep each statement short; rows another worker is purging or
        # saving right now are skipped rather than waited for.
        sql = (
            f"WITH gone AS (DELETE FROM {self._sql_table} WHERE key IN"  # noqa: S608
            f" (SELECT key FROM {self._sql_table} WHERE expires_at <= %s AND last_seen_at <= %s"
            " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING version)"
            f" SELECT count(*), count(*) FILTER (WHERE version != {MOVED_VERSION}) FROM gone"
        )
        rows, sessions = await _one(await db.execute(sql, (now, now, self.purge_batch)))
        return int(rows), int(sessions)

    async def _purge_quietly(self, db: Connection, now: float) -> None:
        """The housekeeping a save does now and then: its failure must not fail the save."""
        try:
            # Full batches mean more is waiting: a few more, so the purge keeps ahead of
            # what saves create (at most one record each).
            for _ in range(PURGE_ROUNDS):
                if (await self._purge_batch(db, now))[0] < self.purge_batch:
                    break
        except psycopg.Error:
            return

    async def _run(self, work: Callable[[Connection], Awaitable[T]], *, idempotent: bool) -> T:
        """Run ``work`` on a pooled connection within ``timeout``, translating errors.

        A server restart leaves every idle pooled connection dead, and the first use of
        each fails. After such a failure the pool tests its other idle connections, so
        one request, not one per connection, notices; a read or a delete then tries once
        more (a save never does: ``idempotent`` is false for it).
        """
        for attempt in (1, 2):
            call = None if idempotent else _Write()
            try:
                return await self._within(self._attempt(work, call), call)
            except _ClosedWhileIdle as exc:
                # Nothing was sent: the pool drops the other idle connections that were
                # closed too, and the work goes to one that answers, a save included.
                pool = self._here().pool
                if attempt == 1 and pool is not None:
                    with contextlib.suppress(*_UNAVAILABLE):
                        await self._within(pool.check())
                    continue
                raise StoreUnavailableError(
                    f"PostgreSQL session store is unavailable: {_describe(exc.__cause__ or exc)}",
                    retry_after=self.retry_after,
                ) from exc
            except _UNAVAILABLE as exc:
                state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
                if state and state[:2] in _PERMANENT:
                    # Refused for what was asked (a limit, bad data), not for the server
                    # being away: waiting cures nothing, so no 503 that says it will.
                    hint = _CREATE_HINT if state == _NO_PRIVILEGE and not self._ready else ""
                    raise StoreError(
                        f"PostgreSQL session store failed: {_describe(exc)}{hint}"
                    ) from exc
                pool = self._here().pool
                used = isinstance(exc, psycopg.OperationalError) and not isinstance(
                    exc, _POOL_ERRORS
                )
                if not used and self._refused is not None:
                    # Waited for a connection the pool could not make: say why.
                    told, permanent = self._refused
                    if permanent:
                        raise StoreError(
                            f"PostgreSQL session store cannot connect: {told}"
                        ) from exc
                    raise StoreUnavailableError(
                        f"PostgreSQL session store is unavailable: cannot connect: {told}",
                        retry_after=self.retry_after,
                    ) from exc
                if pool is not None and used and attempt == 1:
                    try:
                        await self._within(pool.check())
                    except _UNAVAILABLE:
                        pass
                    else:
                        if idempotent:
                            continue
                raise StoreUnavailableError(
                    f"PostgreSQL session store is unavailable: {_describe(exc)}",
                    retry_after=self.retry_after,
                ) from exc
            except psycopg.Error as exc:
                if exc.sqlstate == _NO_TABLE and self.create_table:
                    # Dropped behind the store's back: nothing was written, so the
                    # table is made again and the call run once more.
                    self._ready = False
                    if attempt == 1:
                        continue
                if exc.sqlstate == _READ_ONLY and attempt == 1:
                    # Refused before anything was written, on a connection made while
                    # the server was read-only and closed for it: another may be newer.
                    continue
                if exc.sqlstate in _PASSING:
                    hint = _STANDBY_HINT if exc.sqlstate == _READ_ONLY else ""
                    raise StoreUnavailableError(
                        f"PostgreSQL session store is unavailable: {_describe(exc)}{hint}",
                        retry_after=self.retry_after,
                    ) from exc
                hint = _CREATE_HINT if exc.sqlstate == _NO_PRIVILEGE and not self._ready else ""
                raise StoreError(
                    f"PostgreSQL session store failed: {_describe(exc)}{hint}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _within(self, work: Coroutine[Any, Any, T], write: _Write | None = None) -> T:
        """Await ``work`` for at most ``timeout`` seconds.

        A cancelled psycopg query asks the server to cancel it and waits up to ten
        seconds for that, and with a libpq older than 17 the request even blocks the
        event loop. So the work runs as a task of its own, which a timeout abandons
        rather than cancels: it ends when the server answers or the connection breaks,
        and its connection then goes back to the pool. A server that hangs for good
        holds at most ``max_connections`` of them in each event loop; later requests
        get the 503 as soon as the pool has none to give.

        A write is not simply abandoned: one waiting on a lock would land after the 503,
        and the client's retry would then run it twice (or a login would move the
        session away from the cookie the client still holds). A write that has not
        started never will; one that has is cancelled on the server, and its outcome
        awaited for up to ``timeout`` more: either it landed, and that is the answer, or
        it did not, and the 503 says so truthfully. Only a server that answers nothing
        at all leaves it undecided.
        """
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task,), timeout=self.timeout)
            if write is not None and not task.done():
                write.given_up = True
                running = None if write.landed else write.connection
                if running is not None:
                    write.stopping = asyncio.ensure_future(self._cancel(running))
                if write.landed or running is not None:
                    await asyncio.wait((task,), timeout=self.timeout)
                    if task.done() and task.exception() is not None:
                        raise asyncio.TimeoutError from task.exception()
        finally:
            unfinished = not task.done()  # timed out, or this request was cancelled
            if unfinished and write is not None:
                write.given_up = True  # what has not started yet never will
            if unfinished:
                abandoned = self._here().abandoned
                abandoned.add(task)
                task.add_done_callback(_forget(abandoned))
        if unfinished:
            raise asyncio.TimeoutError
        return task.result()

    async def _cancel(self, db: Connection) -> None:
        """Ask the server to stop what ``db`` runs, without blocking the event loop."""
        # A connection already broken has nothing left to stop.
        with contextlib.suppress(psycopg.Error, OSError):
            if psycopg.pq.version() >= 170000:
                await db.cancel_safe(timeout=self.timeout)
            else:  # pragma: no cover - an older libpq only has the blocking call
                await asyncio.to_thread(db.pgconn.get_cancel().cancel)

    async def _attempt(
        self, work: Callable[[Connection], Awaitable[T]], write: _Write | None = None
    ) -> T:
        pool = self._here().pool
        if pool is None:
            pool = await self._open()
        async with pool.connection(timeout=self.timeout) as db:
            if write is not None:
                if write.given_up:  # the request answered while this waited for a connection
                    raise asyncio.TimeoutError
                write.connection = db
            try:
                # One that sat idle may have been closed meanwhile by the server
                # (``idle_session_timeout``), a firewall or a NAT, and a save, never sent
                # twice, would fail on it: it is asked first. One in steady use is not,
                # which would cost every request a round trip.
                used = self._used.get(db)
                if used is not None and time.monotonic() - used > _ASK_AFTER_IDLE:
                    try:
                        await db.execute("")
                    except psycopg.OperationalError as exc:
                        raise _ClosedWhileIdle from exc
                if not self._ready:
                    await self._prepare(db)
                if write is not None and write.given_up:
                    raise asyncio.TimeoutError
                try:
                    result = await work(db)
                except psycopg.Error as exc:
                    if exc.sqlstate == _READ_ONLY:
                        # It took the server's read-only default when it connected (as
                        # maintenance sets it), and keeps it after the server is writable
                        # again: the pool makes a new one, which sees the server as it is.
                        await db.close()
                    raise
                if write is not None:
                    write.landed = True  # what is left is handing the connection back
                return result
            finally:
                self._used[db] = time.monotonic()
                if write is not None:
                    write.connection = None
                    if write.stopping is not None:
                        # A cancel may still be on its way: were the connection pooled
                        # again, it could stop another request's statement.
                        await asyncio.wait((write.stopping,))
                        await db.close()

    async def _open(self) -> AsyncConnectionPool[Connection]:
        pooled = self._here()
        async with pooled.opening:
            if pooled.pool is None:
                pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
                    self.conninfo,
                    # No statements prepared behind the scenes: PgBouncer in transaction
                    # mode hands them to other clients' server connections (a logout
                    # could run another statement), and a column migrated to another
                    # type would fail every cached plan until a restart.
                    kwargs={"autocommit": True, "prepare_threshold": None},
                    min_size=1,
                    max_size=self.max_connections,
                    open=False,
                    timeout=self.timeout,
                    # Give up a reconnection soon and start a fresh one on demand, rather
                    # than back off for minutes while the server is already back.
                    reconnect_timeout=max(5.0, 2 * self.timeout),
                    name=f"coatcheck-{self.table}",
                    connection_class=_recording(self),
                )
                # Apart from this request: its workers would keep what its context holds.
                await apart(pool.open(wait=False))
                pooled.pool = pool
                # Its first connection, before the first request takes one: were the pool
                # to grow meanwhile, a loop ending right after (a test's) would cut that
                # growth short. On a timeout, the pool closes itself; the next request
                # opens another.
                try:
                    await pool.wait(timeout=self.timeout)
                except PoolTimeout:
                    if pooled.pool is pool:
                        pooled.pool = None
                    raise
            return pooled.pool

    def _here(self) -> _Pooled:
        """The pool of the running event loop: a pool's connections and workers belong
        to the loop that opened it."""
        return self._pooled.here(asyncio.get_running_loop())

    async def _close_pool(self, pooled: _Pooled) -> None:
        """Close the pool of a loop as the loop cancels its tasks, the pool's own
        workers among them; so the pool's ``close()``, which waits for its workers,
        fails. Its idle connections are taken out and closed first, and its workers,
        which may have taken no cancellation, are still told to stop. Left open, its
        workers could even keep that loop from ending, since they take no cancellation
        while they connect."""
        pool, pooled.pool = pooled.pool, None
        if pool is None:
            return
        for _ in range(pool.get_stats().get("pool_available", 0)):
            # Never handed back: the pool would log each closed one it is given.
            connection = await pool.getconn(timeout=self.timeout)
            await connection.close()
        # Stops a worker that took no cancellation; the others ended cancelled, which
        # close() passes on once it has waited for them. Without a limit (``None``,
        # which it takes though typed ``float``), it leaves asyncio nothing to log.
        with contextlib.suppress(asyncio.CancelledError):
            await pool.close(timeout=None)  # type: ignore[arg-type]

    async def _prepare(self, db: Connection) -> None:
        if not await self._table_exists(db):
            if not self.create_table:
                raise StoreError(
                    f"PostgreSQL has no session table {self.table!r} on the search path;"
                    " check the URL and its ?table="
                )
            async with db.transaction():
                # Workers starting together would race on the catalog: one creates the
                # table and its indexes, the others find it made. The check comes first
                # because CREATE INDEX locks the table even when the index exists, and
                # must never queue among the requests of running workers.
                lock = "SELECT pg_advisory_xact_lock(hashtext(%s))"
                await db.execute(lock, (f"coatcheck:{self.table}",))
                if not await self._table_exists(db):
                    for statement in self._schema_statements():
                        await db.execute(statement)
        elif missing := await self._missing_columns(db):
            await self._add_columns(db, missing)
        self._ready = True

    async def _missing_columns(self, db: Connection) -> list[tuple[str, str]]:
        found = await db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attnum > 0 AND NOT attisdropped",
            (self._sql_table,),
        )
        present = {row[0] for row in await found.fetchall()}
        if missing := CORE_COLUMNS - present:
            raise StoreError(not_ours(self.table, missing))
        return [column for column in _ADDED_COLUMNS if column[0] not in present]

    async def _add_columns(self, db: Connection, missing: list[tuple[str, str]]) -> None:
        """Bring a table made by an earlier coatcheck up to date: columns with a constant
        default or none, which PostgreSQL adds without rewriting the rows."""
        statements = [self._added_column(*column) for column in missing]
        if not (self.create_table or self._upgrade_in_place):
            names = ", ".join(name for name, _ in missing)
            plural = len(missing) > 1
            raise StoreError(
                f"the session table {self.table!r} predates the {names} column"
                f"{'s; add them' if plural else '; add it'} with your migrations: "
                + "; ".join(statements)
            )
        async with db.transaction():
            lock = "SELECT pg_advisory_xact_lock(hashtext(%s))"
            await db.execute(lock, (f"coatcheck:{self.table}",))
            for statement in statements:
                await db.execute(statement)

    async def _table_exists(self, db: Connection) -> bool:
        found = await db.execute("SELECT to_regclass(%s) IS NOT NULL", (self._sql_table,))
        return bool((await _one(found))[0])

    def schema_sql(self) -> str:
        """The DDL the store runs on first use, for apps that manage their schema with
        migrations (then pass ``create_table=False``)."""
        return "".join(f"{statement};\n" for statement in self._schema_statements())

    def schema_statements(self) -> list[str]:
        """:meth:`schema_sql`, one statement each: what a migration runs with a driver
        that takes one at a time (asyncpg, which SQLAlchemy's async apps often use)."""
        return list(self._schema_statements())

    def _schema_statements(self) -> Sequence[str]:
        name = self._sql_table
        return (
            f"CREATE TABLE IF NOT EXISTS {name} ("
            ' key text COLLATE "C" PRIMARY KEY, public_id text NOT NULL,'
            " data bytea NOT NULL, user_id text, created_at double precision NOT NULL,"
            " last_seen_at double precision NOT NULL, expires_at double precision NOT NULL,"
            " remember boolean NOT NULL DEFAULT false, user_agent text NOT NULL DEFAULT '',"
            " version bigint NOT NULL DEFAULT 1, ip_address text NOT NULL DEFAULT '',"
            " authenticated_at double precision, idle_timeout integer NOT NULL DEFAULT 0,"
            " absolute_timeout integer NOT NULL DEFAULT 0)",
            f'CREATE INDEX IF NOT EXISTS "{self._index_prefix}_user" ON {name} (user_id)'
            " WHERE user_id IS NOT NULL",
            f'CREATE INDEX IF NOT EXISTS "{self._index_prefix}_expires" ON {name} (expires_at)',
            *(self._added_column(*column) for column in _ADDED_COLUMNS),
        )

    def _added_column(self, name: str, declaration: str) -> str:
        """For a table made by an earlier coatcheck, which had no such column."""
        return f"ALTER TABLE {self._sql_table} ADD COLUMN IF NOT EXISTS {name} {declaration}"


class _ClosedWhileIdle(Exception):
    """A pooled connection that sat idle no longer answers; nothing was sent on it."""


class _Write:
    """A save under way: where it runs, so that a timeout can stop it there."""

    __slots__ = ("connection", "given_up", "landed", "stopping")

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.given_up = False
        self.landed = False
        self.stopping: asyncio.Future[None] | None = None


def _forget(tasks: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    """A done callback that drops a finished abandoned task, retrieving its outcome so
    that asyncio does not log an exception nobody was left to see."""

    def forget(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return forget


def _recording(store: PostgresStore) -> type[Connection]:
    """Connections that leave ``store`` the cause of the last attempt that failed."""

    class Recorded(psycopg.AsyncConnection[TupleRow]):
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                connection = await super().connect(conninfo, **kwargs)
            except psycopg.Error as exc:
                # "connection is bad" without a server named is libpq refusing an
                # option's value (``sslmode=bogus``): the same every time. With one, it
                # is a unix socket that is not there (yet): an outage. A server (or
                # PgBouncer) that refuses these credentials will go on refusing them.
                told = _describe(exc)
                permanent = bool(
                    told.startswith("connection is bad:") and "server" not in told
                ) or bool(_REFUSED_FOR_GOOD.search(str(exc)))
                store._refused = (told, permanent)
                raise
            store._refused = None
            store._used[connection] = time.monotonic()
            return connection

    return Recorded


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


async def _one(cursor: psycopg.AsyncCursor[TupleRow]) -> TupleRow:
    """The one row an aggregate query returns."""
    row = await cursor.fetchone()
    if row is None:  # pragma: no cover - an aggregate always gives a row
        raise StoreError("PostgreSQL returned no row for an aggregate query")
    return row


def _record(key: str, row: Sequence[Any]) -> SessionRecord:
    *fields, idle, absolute = row
    public_id, data, user_id, created, seen, expires, remember, agent, version, ip, auth = fields
    if None in (public_id, data, created, seen, expires, remember, agent, version, ip):
        raise StoreError("a row of the PostgreSQL session table holds NULL where none may be")
    if not isinstance(remember, bool):  # a column altered to text: 'false' is no True
        remember = str(remember).strip().lower() in ("t", "true", "1", "y", "yes", "on")
    try:
        # Converted, as SQLite's are: a column altered to another type (numeric for
        # double precision) must not hand the middleware a Decimal to add a float to.
        created, seen = float(created), float(seen)
        return SessionRecord(
            key,
            str(public_id),
            bytes(data),
            None if user_id is None else str(user_id),
            created,
            seen,
            float(expires),
            bool(remember),
            str(agent),
            int(version),
            str(ip),
            legacy_login_time(auth, created, user_id),
            int(idle),
            int(absolute),
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(f"a row of the PostgreSQL session table is malformed: {exc}") from None


def _told(exc: psycopg.ProgrammingError) -> str:
    """libpq's complaint about a connection string, without quoting a value that may be
    the password.

    libpq quotes what it choked on: a bad percent-escape by the whole token that holds
    it, a malformed URI whole, a word without ``=`` as it is. An option's name or a
    single character stays; a URI is shown with its password masked; anything else is
    masked.
    """
    message = str(exc)
    if "percent-encoded" in message:
        return "a value holds a % that is not followed by two hexadecimal digits"
    if message.startswith('missing "=" after'):
        return "a word has no '=' after it (a value with spaces must be quoted)"
    return _QUOTED.sub(_shown, message)


# A double-quoted stretch of a libpq message, and what may be shown of one as it is.
_QUOTED = re.compile(r'"([^"]*)"')
_OPTION_NAME = re.compile(r"[a-z_]+|.")


def _shown(match: re.Match[str]) -> str:
    quoted = match.group(1)
    if _OPTION_NAME.fullmatch(quoted):
        return match.group(0)
    if "://" in quoted:
        return f'"{redact(quoted)}"'
    return '"***"'
