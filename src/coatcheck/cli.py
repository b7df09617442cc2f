"""The ``coatcheck`` command: run the demo, and inspect or revoke stored sessions.

Operators need "how many sessions are live?" and "log this user out everywhere"
without writing code. Every command goes through the same store API the middleware
uses, and none ever prints a session ID or a store key: only public ids.
"""

from __future__ import annotations

import copy
import errno
import io
import json
import logging
import os
import secrets
import socket
import sys
import time
from datetime import datetime, timezone
from typing import Annotated, Any

from . import __version__
from ._devices import end_device, utc
from ._ids import is_public_id
from ._persist import Persistence
from ._printable import printable
from .exceptions import ConfigurationError, MissingDependencyError
from .stores import MemoryStore, SessionRecord, SQLiteStore, Store
from .stores._redact import redact

try:
    import typer
    from rich.cells import cell_len, set_cell_size
    from rich.console import Console
    from rich.markup import escape
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("typer", "cli") from exc

from ._cli_stores import fail as _fail
from ._cli_stores import hint_if_elsewhere, parse_store, try_store, with_store
from .demo.settings import DEFAULT_STORE, ENV_SECRET, DemoSettings

# A traceback of a bug must not print its locals: a store URL holds a password, and a
# record holds session data.
app = typer.Typer(
    name="coatcheck",
    help="Server-side sessions for FastAPI and ASGI apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
sessions_app = typer.Typer(
    help="Count, list, purge and revoke the sessions in a store.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(sessions_app, name="sessions")

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="COATCHECK_STORE",
        metavar="URL",
        help="Store URL, e.g. sqlite:///sessions.db (four slashes for an absolute path).",
        show_default=False,
    ),
]


def _user_id(value: str) -> str:
    """A user id a store can look up: argv hands bytes that are not UTF-8 over as lone
    surrogates, which no store can encode, and no login could have stored."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise typer.BadParameter("not valid UTF-8 text: no user id can hold it") from None
    if not value:
        raise typer.BadParameter("empty: no login has an empty user id")
    return value


UserOption = Annotated[
    str,
    typer.Option(
        "--user", metavar="USER", help="The user id the app logged in.", callback=_user_id
    ),
]


def _out() -> Console:
    # Piped output (scripts, grep) gets room for a whole table row per line.
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def _when(timestamp: float, wide: bool = True) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M" if wide else "%d %b %H:%M")


def _as_json(record: SessionRecord) -> dict[str, Any]:
    """What ``list --json`` says of one session: what a device list shows, no secret."""
    return {
        "id": record.public_id,
        "user": record.user_id,
        "created_at": utc(record.created_at).isoformat(),
        "last_seen_at": utc(record.last_seen_at).isoformat(),
        "expires_at": utc(record.expires_at).isoformat(),
        "remember": record.remember,
        # Shorter limits its login chose, in seconds; null: the app's configured ones.
        "idle_timeout": record.idle_timeout or None,
        "absolute_timeout": record.absolute_timeout or None,
        "user_agent": record.user_agent,
        "ip_address": record.ip_address,
    }


def _shown(text: str) -> str:
    """Stored text for the terminal: a user agent is the client's to choose, and may
    carry escape sequences or Rich markup."""
    return escape(printable(text))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coatcheck {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Server-side sessions for FastAPI and ASGI apps."""


# -- sessions ---------------------------------------------------------------------------


@sessions_app.command("count")
def count(store: StoreOption) -> None:
    """Print how many live (unexpired) sessions the store holds."""
    live = with_store(store, lambda s: s.count(time.time()))
    _out().print(_plural(live, "live session"))
    if not live:
        hint_if_elsewhere(store)


@sessions_app.command("purge")
def purge(store: StoreOption) -> None:
    """Delete expired sessions now (stores also do this by themselves, in batches)."""
    removed = with_store(store, lambda s: s.purge_expired(time.time()))
    _out().print(f"Purged {_plural(removed, 'expired session')}.")


@sessions_app.command("list")
def list_sessions(
    store: StoreOption,
    user: UserOption,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON array, for scripts (times in ISO 8601).")
    ] = False,
) -> None:
    """Show a user's live sessions, oldest first, by public id."""
    records = with_store(store, lambda s: s.list_user(user, time.time()))
    if as_json:
        typer.echo(json.dumps([_as_json(record) for record in records], indent=2))
        return
    out = _out()
    if not records:
        out.print(f"No live sessions for {_shown(user)}.")
        hint_if_elsewhere(store)
        return
    # One line per session, IDs never cut: narrow terminals get shorter dates and a
    # truncated user agent instead of a table folded into confetti.
    wide = out.width >= 110
    headings = ["Public ID", "Created", "Last seen", "Expires"]
    # Addresses are kept only under SessionConfig(record_ip=True): no empty column else.
    addresses = any(record.ip_address for record in records)
    if addresses:
        headings.append("Address")
    rows = [
        [
            record.public_id,
            _when(record.created_at, wide),
            _when(record.last_seen_at, wide),
            _when(record.expires_at, wide),
            *([printable(record.ip_address) or "-"] if addresses else []),
            printable(record.user_agent) or "-",
        ]
        for record in records
    ]
    unicode = out.encoding.lower().startswith("utf")
    lines = _columns([*headings, "User agent"], rows, out.width, unicode)
    title = f"Live sessions of {printable(user)} (times in UTC)"
    # Through the console's own stream, where text it cannot encode is replaced.
    print("\n".join([title, "", *lines]), file=out.file)


def _columns(headings: list[str], rows: list[list[str]], width: int, unicode: bool) -> list[str]:
    """``rows`` under ``headings``, each column as wide as its longest cell, the last
    one cut with an ellipsis to keep each row within ``width``; on a terminal too
    narrow for that, one block of lines per row (:func:`_stacked`).

    Drawn here rather than by Rich's table, which takes seconds per thousand rows:
    a user with 10,000 devices is listed in well under a second.
    """
    gap = "   "
    cut, rule = ("…", "─") if unicode else ("...", "-")  # ASCII where it cannot show more
    widths = [cell_len(heading) for heading in headings[:-1]]
    for row in rows:
        widths = [max(w, cell_len(cell)) for w, cell in zip(widths, row[:-1], strict=True)]
    room = width - sum(widths) - len(gap) * len(widths) - 1
    if room < len(headings[-1]):
        return _stacked(headings, rows, width, cut)

    def line(cells: list[str]) -> str:
        *fixed, last = cells
        if cell_len(last) > room:
            last = _fit(last, room, cut)
        padded = [cell + " " * (w - cell_len(cell)) for cell, w in zip(fixed, widths, strict=True)]
        return " " + gap.join([*padded, last]).rstrip()

    longest = max(cell_len(row[-1]) for row in [headings, *rows])
    under = " " + rule * (sum(widths) + len(gap) * len(widths) + min(longest, room))
    return [line(headings), under, *(line(row) for row in rows)]


def _stacked(headings: list[str], rows: list[list[str]], width: int, cut: str) -> list[str]:
    """Each row as its first cell, then one indented line per other cell under its
    heading: what fits a narrow terminal (a phone's SSH client) without wrapping.

    The first cell (the public ID) is never cut; the others are, with ``cut``, where
    even this is too wide.
    """
    label = max(cell_len(heading) for heading in headings[1:]) + 2
    room = max(width - 3 - label - 1, len(cut) + 1)
    lines: list[str] = []
    for row in rows:
        if lines:
            lines.append("")
        lines.append(" " + row[0])
        for heading, cell in zip(headings[1:], row[1:], strict=True):
            shown = cell if cell_len(cell) <= room else _fit(cell, room, cut)
            lines.append("   " + heading + " " * (label - cell_len(heading)) + shown)
    return lines


def _fit(text: str, room: int, cut: str) -> str:
    """``text`` cut to ``room`` cells, ``cut`` included."""
    return set_cell_size(text, room - len(cut)) + cut


@sessions_app.command("revoke")
def revoke(
    store: StoreOption,
    user: UserOption,
    public_id: Annotated[
        str | None,
        typer.Option(
            "--id", metavar="PUBLIC_ID", help="One session's public id; omit it to revoke them all."
        ),
    ] = None,
) -> None:
    """Log a user out: one session by public id, or every session they have."""

    async def work(s: Store) -> int:
        if public_id is None:
            return await s.delete_user(user, now=time.time())
        ended, _ = await end_device(
            s, lambda: s.list_user(user, time.time()), public_id, now=time.time
        )
        return int(ended)

    if public_id is not None and not is_public_id(public_id):
        # Quoted back, a session ID pasted from a cookie would land in logs and scrollback.
        raise typer.BadParameter(
            "not a public id (16 letters, digits, - or _, as `sessions list` shows; a "
            "cookie's value is not one)",
            param_hint="--id",
        )
    removed = with_store(store, work)
    if not removed:
        hint_if_elsewhere(store)
    if public_id is not None and not removed:
        _fail(f"{user!r} has no live session with public id {public_id!r}")
    _out().print(f"Revoked {_plural(removed, 'session')} of {_shown(user)}.")


@sessions_app.command("revoke-all")
def revoke_all(
    store: StoreOption,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Log every user out, when no session can be trusted (after a breach, say).

    Everyone must sign in again; sessions begun while it runs may survive it.
    """
    question = None if yes else f"End every session in {redact(store)}?"
    removed = with_store(store, lambda s: s.delete_all(time.time()), confirm=question)
    _out().print(f"Revoked {_plural(removed, 'live session')}; everyone must sign in again.")
    if not removed:
        hint_if_elsewhere(store)


# -- demo -------------------------------------------------------------------------------


@app.command()
def demo(
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, metavar="PORT", help="Port to listen on.")
    ] = 8000,
    store: Annotated[str, typer.Option(metavar="URL", help="Session store URL.")] = DEFAULT_STORE,
    workers: Annotated[int, typer.Option(min=1, max=64, metavar="N", help="Worker processes.")] = 1,
    secure_cookies: Annotated[
        bool,
        typer.Option(
            "--secure-cookies",
            help="Secure __Host- cookies, for running behind an HTTPS proxy.",
        ),
    ] = False,
    idle_timeout: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="SECONDS",
            help="Log out after this long idle [30 min]; remember-me sessions too [14 days].",
        ),
    ] = None,
    absolute_timeout: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="SECONDS",
            help="Log out this long after login [12 h]; remember-me sessions too [30 days].",
        ),
    ] = None,
    max_sessions: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Refuse a login that would give its user more than N sessions \\[no limit].",
        ),
    ] = None,
) -> None:
    """Run the reference app: log in, fill a cart, and watch your devices."""
    # One CSRF signing key for all workers of this run (or the one the caller set).
    secret = os.environ.get(ENV_SECRET) or secrets.token_urlsafe(32)
    if len(secret.encode()) < 16:
        _fail(f"{ENV_SECRET} must be at least 16 bytes long")
    settings = DemoSettings(
        store, secure_cookies, idle_timeout, absolute_timeout, secret, max_sessions
    )
    try:
        config = settings.session_config()
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--idle-timeout/--absolute-timeout") from None
    chosen = parse_store(store)
    if isinstance(chosen, MemoryStore) and workers > 1:
        raise typer.BadParameter(
            "memory:// keeps sessions inside one process; use sqlite:/// with --workers",
            param_hint="--store",
        )
    try:
        Persistence(chosen, config, None)  # what each worker's middleware checks, checked now
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--store/--max-sessions") from None
    _check_listen(host, port)  # before anything is made or shown: uvicorn would say it late
    try_store(chosen, store)  # stores connect on first use: a bad one would only show as 503s
    try:
        import uvicorn

        from .demo import app as _demo_app  # noqa: F401 - fail here, not in every worker
        from .demo.users import DEMO_CREDENTIALS
    except ImportError as exc:
        _fail(f"the demo needs extra packages ({exc}); run: pip install 'coatcheck[demo]'")

    out = _out()
    shown_host = "127.0.0.1" if host in ("", "0.0.0.0") else host  # noqa: S104
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    where = f" ({chosen.path.resolve()})" if isinstance(chosen, SQLiteStore) else ""
    out.print(f"[bold]coatcheck demo[/] on [link]http://{shown_host}:{port}/[/link]")
    out.print(f"  store    {escape(redact(store))}{escape(where)}")
    if secure_cookies:
        cookie = f"{config.cookie.name} (Secure: open it through your HTTPS proxy)"
    else:
        cookie = f"{config.cookie.name} (not Secure: plain HTTP, for local development only)"
    out.print(f"  cookie   {cookie}")
    normal, remember = config.normal, config.remember
    out.print(f"  timeouts {normal.idle}s idle, {normal.absolute}s after login")
    out.print(f"           remember me: {remember.idle}s idle, {remember.absolute}s after login")
    if max_sessions is not None:
        out.print(f"  limit    {max_sessions} sessions per user; further logins are refused")
    logins = ", ".join(f"{name} / {password}" for name, password in DEMO_CREDENTIALS)
    out.print(f"  users    {logins}")
    # Each worker logs a WARNING about plain-HTTP cookies as it starts (see create_app).

    os.environ.update(settings.to_env())  # worker processes read their settings from here
    uvicorn.run(
        "coatcheck.demo.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=_log_config(uvicorn),
    )


def _check_listen(host: str, port: int) -> None:
    """Fail now, in one line, if the demo could not listen where it was asked to."""
    if not host:
        raise typer.BadParameter(
            "give an address (0.0.0.0 for every interface)", param_hint="--host"
        )
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise typer.BadParameter(f"{host}: {exc.strerror}", param_hint="--host") from None
    family, kind, protocol, _, address = found[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            busy = " (another server is using it)" if exc.errno == errno.EADDRINUSE else ""
            _fail(f"cannot listen on {host} port {port}: {exc.strerror}{busy}")


def _log_config(uvicorn: Any) -> dict[str, Any]:
    """uvicorn's logging, extended so coatcheck's own warnings show up the same way."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["coatcheck"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    # The PostgreSQL pool's own complaints (a refused connection) in the same format.
    config["loggers"]["psycopg.pool"] = {
        "handlers": ["default"],
        "level": "WARNING",
        "propagate": False,
    }
    return config


def main() -> None:
    """Entry point of the ``coatcheck`` script and ``python -m coatcheck``."""
    # A command's own error names the cause once; the PostgreSQL pool would first log
    # each attempt to connect through Python's last-resort handler.
    pool_log = logging.getLogger("psycopg.pool")
    pool_log.addHandler(logging.NullHandler())
    pool_log.propagate = False
    for stream in (sys.stdout, sys.stderr):
        # A user id or user agent that the terminal's encoding cannot show (an ASCII
        # locale, PYTHONIOENCODING) is shown with a replacement, not as a traceback.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    app(prog_name="coatcheck")
