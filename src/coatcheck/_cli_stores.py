"""How the ``coatcheck`` command finds a store, and refuses one it cannot use.

The ``sessions`` commands only inspect: a file that is not already a coatcheck store
is refused before anything opens it for writing. The demo uses its store once up
front, so a bad path or a refused password fails at start-up rather than as a 503 on
every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape

from .exceptions import (
    CoatcheckError,
    ConfigurationError,
    MissingDependencyError,
    StoreUnavailableError,
)
from .stores import POSTGRES_SCHEMES, MemoryStore, SQLiteStore, Store, store_from_url
from .stores._redact import redact
from .stores.base import CORE_COLUMNS, cookie_sealer_of, not_ours

T = TypeVar("T")


DECLINED = 3
"""The exit code when the operator answered no: nothing was changed."""


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    _stderr().print(f"[bold red]Error:[/] {escape(message)}")
    raise typer.Exit(1)


def masked(exc: Exception, url: str) -> str:
    """The error's text, with the store URL (should it appear) stripped of its password."""
    return str(exc).replace(url, redact(url))


def parse_store(url: str) -> Store:
    try:
        return store_from_url(url)
    except (ConfigurationError, MissingDependencyError) as exc:
        raise typer.BadParameter(masked(exc, url), param_hint="--store") from None


def open_store(url: str) -> Store:
    """The store a ``sessions`` command reads; one it would create or alter is refused."""
    store = parse_store(url)
    if isinstance(store, MemoryStore):
        raise typer.BadParameter(
            "memory:// lives inside one process, so a new command always finds it empty;"
            " give the URL of the store the app uses",
            param_hint="--store",
        )
    if cookie_sealer_of(store) is not None:
        raise typer.BadParameter(
            "cookie:// keeps each session in its browser's cookie, so the server has none"
            " to count, list, purge or revoke",
            param_hint="--store",
        )
    if isinstance(store, SQLiteStore):
        if not store.path.is_file():
            # Opening would create an empty database: a typo must not look like "0 sessions".
            raise typer.BadParameter(f"no SQLite file at {store.path}", param_hint="--store")
        _check_session_table(store)
    if urlsplit(url).scheme in POSTGRES_SCHEMES:
        from .stores.postgres import PostgresStore  # imported by store_from_url already

        assert isinstance(store, PostgresStore)
        # Inspect only: a wrong database or ?table= must fail, not gain an empty table.
        # A table of an earlier release gains its new columns, as SQLite's does.
        store.create_table = False
        store._upgrade_in_place = True
    return store


def _check_session_table(store: SQLiteStore) -> None:
    """Fail unless the file already holds coatcheck's table, reading it without writing.

    Opening the store itself would switch another app's database to WAL and add
    coatcheck's table to it.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"{store.path.as_uri()}?mode=ro", uri=True)) as db:
            columns = {
                row[1] for row in db.execute("SELECT * FROM pragma_table_info(?)", (store.table,))
            }
    except sqlite3.Error as exc:
        fail(f"cannot read the SQLite file {store.path}: {exc}")
    if not columns:
        fail(
            f"{store.path} is not a coatcheck session store (it has no {store.table!r} table);"
            " check --store"
        )
    # Another app's table of the same name (a "sessions" table, say) must not gain
    # coatcheck's newer columns, nor its file WAL mode.
    if missing := CORE_COLUMNS - columns:
        fail(f"{store.path}: {not_ours(store.table, missing)}")


def with_store(url: str, work: Callable[[Store], Awaitable[T]], *, confirm: str | None = None) -> T:
    """Run one async job against the store at ``url``, then close it.

    With ``confirm``, the question is asked once the store is known to be usable, so a
    wrong URL fails without one.
    """
    store = open_store(url)
    if confirm is not None:
        # The store answers first: an outage or a refused password fails before the
        # question, not after the operator said yes. The job then gets a store of its
        # own, since a Redis client's connections belong to the event loop that made them.
        async def reach() -> None:
            try:
                await store.count(time.time())
            finally:
                await store.aclose()

        try:
            asyncio.run(reach())
        except CoatcheckError as exc:
            fail(masked(exc, url))
        # A code of its own: a script can tell "declined" from "the store failed".
        try:
            if not typer.confirm(confirm):
                _stderr().print("Declined: nothing changed.")
                raise typer.Exit(DECLINED)
        except typer.Abort:  # no terminal to answer (cron, CI), or Ctrl-C
            _stderr().print("No answer: nothing changed. Without a terminal, pass --yes.")
            raise typer.Exit(DECLINED) from None
        store = open_store(url)

    async def run() -> T:
        try:
            return await work(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except CoatcheckError as exc:
        fail(masked(exc, url))


# How far the search for sessions under other Redis prefixes looks: the first few found.
_OTHER_PREFIXES = 5
_SEARCH_FOR = 2.0  # seconds


def hint_if_elsewhere(url: str) -> None:
    """After a Redis command found nothing, name the key prefixes that do hold sessions
    on that server: an app with ``?prefix=shop`` looked at without it otherwise reads
    as "0 sessions", and a revocation after a breach as done."""
    if not urlsplit(url).scheme.startswith(("redis", "rediss", "unix")):
        return

    async def others(store: Store) -> list[str]:
        from .stores.redis import RedisStore  # imported by store_from_url already

        assert isinstance(store, RedisStore)
        found: list[str] = []
        marker = ":s:{"

        async def search() -> None:
            async for raw in store.client.scan_iter(match=f"*{marker}*", count=1000):
                name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                prefix = name[: name.rfind(marker)]
                if prefix != store.prefix and prefix not in found:
                    found.append(prefix)
                    if len(found) >= _OTHER_PREFIXES:
                        return

        # A hint, after the answer: a server of millions of other keys is not swept.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(search(), _SEARCH_FOR)
        return found

    prefixes = with_store(url, others)
    if prefixes:
        named = ", ".join(repr(prefix) for prefix in prefixes)
        _stderr().print(
            f"[bold yellow]Note:[/] this server holds sessions under other key prefixes "
            f"({escape(named)}): if the app sets ?prefix=, give the same one here."
        )


def try_store(store: Store, url: str) -> None:
    """Use a server-side store once before any worker starts.

    A missing folder or a file that is not a database, a password Redis refuses or an
    option the client or server cannot use fails here, not as a 503 on every request. A
    server that is only unreachable is an outage: the app starts, answers 503 until it
    is back, and this says so now (with PostgreSQL's cause, a refused password included:
    an operator may be changing it).
    """
    if isinstance(store, MemoryStore) or cookie_sealer_of(store) is not None:
        return

    async def probe() -> None:
        try:
            await store.count(time.time())
        finally:
            await store.aclose()

    where = (
        f"SQLite store at {store.path}"
        if isinstance(store, SQLiteStore)
        else f"store at {redact(url)}"
    )
    try:
        asyncio.run(probe())
    except StoreUnavailableError as exc:
        if isinstance(store, SQLiteStore):  # a file that cannot be opened stays so
            fail(f"cannot use the {where}: {exc}")
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[bold yellow]Warning:[/] {escape(masked(exc, url).rstrip('.'))}; starting "
            "anyway: requests "
            "that need a session get 503 until the store answers"
        )
    except CoatcheckError as exc:
        fail(f"cannot use the {where}: {masked(exc, url)}")
