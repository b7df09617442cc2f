"""The store contract: what every backend promises the middleware.

Stores move records; they never serialise, sign or see cookies (the cookie store only
hands the middleware the sealer that puts its records in the cookie). Every record is
filed under ``key``, the SHA-256 of the session ID, so a store never holds a
usable credential. Expiry is a deadline carried by the record (``expires_at``,
seconds since the epoch); the caller passes ``now`` so that a single clock rules.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from ..config import check_count
from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from .._sealing import CookieSealer


# Batches a save's own purge (SQL stores) runs at most while each comes back full: with
# the defaults, 2,000 rows per 1,000 saves, twice what those saves can create.
PURGE_ROUNDS = 4


def purge_start(every: int) -> int:
    """Where a process starts counting saves towards its next purge: anywhere in the
    cycle, so that workers recycled before ``every`` saves (gunicorn's --max-requests,
    short-lived pods, each forked worker) purge too."""
    return random.randrange(every) if every > 0 else 0


def checked_retry_after(value: int | None) -> int | None:
    """A store's own ``retry_after``: None (the middleware's), or whole seconds, as
    ``SessionConfig.retry_after`` is."""
    if value is not None:
        check_count("retry_after", value, 1)
    return value


class SessionRecord(NamedTuple):
    """One stored session; immutable (``record._replace(...)`` makes a changed copy).

    ``expires_at`` is the earlier of the idle and the absolute deadline; a record is
    dead from that instant. ``version`` grows by one with every save of the same
    session, so stores can refuse a stale write. A named tuple rather than a frozen
    dataclass because stores build one on every load, and a tuple is built in a fifth
    of the time.
    """

    key: str
    public_id: str
    data: bytes
    user_id: str | None
    created_at: float
    last_seen_at: float
    expires_at: float
    remember: bool = False
    user_agent: str = ""
    version: int = 1
    ip_address: str = ""
    # When the user last proved who they are (``Session.login``); 0.0 when coatcheck
    # cannot tell, as for a login adopted from another library's session.
    authenticated_at: float = 0.0
    # Shorter limits, in seconds, that the login chose (``Session.login``); 0 for the
    # configured ones of the session's kind.
    idle_timeout: int = 0
    absolute_timeout: int = 0


def implied_login_time(created_at: float, logged_in: bool) -> float:
    """``authenticated_at`` of a record that does not say, written by a release that did
    not keep it. Every login of those was coatcheck's own, which starts the session
    anew: a logged-in session was authenticated when it was made. Stores that can
    write such records still do whenever this holds, for those releases to read."""
    return created_at if logged_in else 0.0


def legacy_login_time(stored: Any, created_at: Any, user_id: Any) -> float:
    """``authenticated_at`` of a SQL row, whose NULL marks a row of an earlier release."""
    if stored is not None:
        return float(stored)
    return implied_login_time(float(created_at), user_id is not None)


# The columns of every release's SQL table; those added since are added in place. A
# table without them is another app's, which must not gain coatcheck's columns.
CORE_COLUMNS = frozenset(
    {"key", "public_id", "data", "user_id", "created_at", "last_seen_at", "expires_at"}
    | {"remember", "user_agent", "version"}
)


def not_ours(table: str, missing: set[str] | frozenset[str]) -> str:
    """Why a store refuses a table of that name that lacks ``missing`` core columns."""
    names = ", ".join(sorted(missing))
    return (
        f"the table {table!r} is not a coatcheck session table (it has no {names} "
        "column); check the store URL and its ?table="
    )


Merge = Callable[[SessionRecord], SessionRecord]
"""Given the stored record that won a race, return the record to write on top of it."""


@runtime_checkable
class Store(Protocol):
    """An async session store.

    Any method raises ``StoreUnavailableError`` (``retry_after`` in seconds, if the
    store can tell) when the backend cannot be reached or does not answer in time, so
    the app answers 503 and tries again later. Map every such error of the driver to
    it: drivers often let the builtins through (``ConnectionRefusedError``,
    ``TimeoutError``, ``OSError``), and anything else is the app's 500.
    """

    async def load(self, key: str, now: float) -> SessionRecord | None:
        """Return the live record under ``key``; missing or expired records return ``None``."""
        ...

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        """Write ``record``; when ``replaces`` is given, delete that key in the same step
        (a store with ``moved_at()`` remembers when it moved: see :func:`mover_of`).

        Without ``expected_version`` the write is unconditional (a brand-new session).
        With it, the write continues a stored session, the *base*: the record under
        ``replaces``, or else under ``record.key``. Then, atomically:

        - the base is missing or dead at ``record.last_seen_at``: nothing is written and
          the result is False, so a logout or revocation wins over a slower request;
        - the base has ``expected_version``: ``record`` is written;
        - another save got there first (a different version): ``merge(base)`` builds the
          record to write instead, with no other save of the base in between. Stores
          without transactions may call ``merge`` more than once; without ``merge`` the
          result is False. An error ``merge`` raises (a change the app refuses) goes to
          the caller as it is, with nothing written.

        Raises ``StoreUnavailableError`` when the write could not be made durable, and
        ``SessionConflictError`` when a store gives up retrying a contended merge.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove the record; a missing key is not an error."""
        ...

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        """The user's live sessions, oldest first."""
        ...

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        """Delete all of a user's sessions except ``keep``; return how many were live.

        Expired records go too, but only those live at ``now`` (default: the current
        time) are counted, so "revoked 2 sessions" means two devices really lost access.
        A session that a parallel save moves to a new key meanwhile (``replaces``: a
        login at that moment) must end too: where that save can commit the new record
        after this delete looked (SQL under row locks), look again, until a pass after
        the first finds none of the user's records left.
        """
        ...

    async def delete_all(self, now: float) -> int:
        """End every session, everyone's; return how many were live at ``now``.

        For incidents where no session can be trusted any more (a breach of the app's
        servers, a bug that leaked cookies): everyone must sign in again. A session
        created while it runs may survive it.
        """
        ...

    async def purge_expired(self, now: float) -> int:
        """Drop records whose deadline has passed; return how many."""
        ...

    async def count(self, now: float) -> int:
        """How many live records the store holds."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads; the store may be reopened by using it."""
        ...


Create = Callable[[SessionRecord], Awaitable[bool]]
MovedAt = Callable[[str, float], Awaitable[float | None]]
MovedTo = Callable[[str, float], Awaitable[str | None]]

MOVED_FOR = 600.0
"""Seconds a store that tracks moves remembers the key a save ``replaces`` (see
:func:`mover_of`): as long as a request the browser sent before a login's answer
reached it may take to load its session (one still receiving a slow upload).

The SQL stores keep a moved key as a row of its own (the old one emptied, or a new one
where there was none): version -1, no user and no data, ``expires_at`` at the move, so
that every query of live rows passes it by, and ``last_seen_at`` ``MOVED_FOR`` seconds
later, before which no purge drops it. Its ``data`` holds the key the session moved to."""
MOVED_VERSION = -1


def mark_of(old: str, record: SessionRecord) -> tuple[str, bytes, float, float, float]:
    """The SQL stores' row for ``old``, moved to ``record``: the key, the key it moved
    to, and as created_at, expires_at and last_seen_at the move's time, twice, and the
    end of its mark (see :data:`MOVED_FOR`)."""
    at = record.last_seen_at
    return old, record.key.encode(), at, at, at + MOVED_FOR


def creator_of(store: Store) -> Create | None:
    """The store's ``create(record) -> bool``, if it has one: write ``record`` only if no
    live record holds its key, else write nothing and return False, in one atomic step.

    Optional: the requests of one browser that bring the old cookie of a library the
    app switched from derive one session ID from it, and the first of them to store
    the session must not be overwritten by the others. A store without it is written
    to as by a plain save, and such a race can lose one request's changes.
    """
    create: Create | None = getattr(store, "create", None)
    return create


def mover_of(store: Store) -> MovedAt | None:
    """The store's ``moved_at(key, now) -> float | None``, if it has one: when a save
    that ``replaces`` the session under ``key`` (a login, ``regenerate()``) wrote it
    under a new key, if that was less than :data:`MOVED_FOR` seconds before ``now``.

    Optional: a request the browser sent before a login's response arrived, and that
    first loads its session after the login was stored, finds no session under its
    old cookie. Told that the session moved after the request arrived, it refuses to
    write (409) rather than start an anonymous session whose cookie would replace the
    login's. A store without it lets that request sign the user out.
    """
    moved_at: MovedAt | None = getattr(store, "moved_at", None)
    return moved_at


def follower_of(store: Store) -> MovedTo | None:
    """The store's ``moved_to(key, now) -> str | None``, if it has one: the key that a
    save which ``replaces`` ``key`` wrote the session under, while :func:`mover_of`'s
    ``moved_at`` still remembers that move.

    Optional: a browser whose login's answer never reached it logs in again with its
    old cookie. The login it never heard of is then found and replaced by the new
    one, rather than left to count against ``max_sessions_per_user`` (a refused login,
    under ``"refuse_login"``) and to show as a device nobody holds. A store without it
    leaves that session until it idles out.
    """
    moved_to: MovedTo | None = getattr(store, "moved_to", None)
    return moved_to


def cookie_sealer_of(store: Store) -> Callable[[Sequence[bytes], str], CookieSealer] | None:
    """How ``store`` seals records into cookies if it keeps them there (the cookie store),
    else None. Found by its method, so that telling needs no ``cryptography``."""
    sealer: Callable[[Sequence[bytes], str], CookieSealer] | None = getattr(
        store, "cookie_sealer", None
    )
    return sealer


_PROTOCOL = tuple(name for name, value in vars(Store).items() if not name.startswith("_"))


def check_store(store: object) -> None:
    """Refuse at start-up what is not a store, rather than fail in the first request.

    A method left out of a subclass of :class:`Store` is Store's own, which does nothing
    and returns None: "log out everywhere" would then end no session, and say nothing.
    """
    if isinstance(store, str):
        raise ConfigurationError(
            "store= takes a store, not its URL: store=store_from_url(...) builds one"
        )
    # Looked up on the store itself: a method may be bound per instance, or delegated.
    missing = [
        name
        for name in _PROTOCOL
        if not callable(method := getattr(store, name, None))
        or getattr(method, "__func__", None) is getattr(Store, name)
    ]
    if missing:
        raise ConfigurationError(
            f"{type(store).__name__} is not a session store: it does not implement "
            f"{', '.join(missing)} (see coatcheck.Store)"
        )
