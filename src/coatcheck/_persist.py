"""Loading a session from its cookie and applying its changes to the store.

This is the one place that decides when to write: only when the data changed, the
ID was rotated, the session was destroyed, or the sliding expiry is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
import weakref
from collections.abc import Coroutine, Sequence
from hmac import compare_digest
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio

from ._asgi import Header, Headers
from ._audit import limited, security_event
from ._cookies import CookieWriter, cookie_needle, read_cookie, read_header_token
from ._devices import end_device, end_record
from ._ids import key_of, new_public_id, new_session_id, store_key
from ._imports import JOIN_WINDOW, importer_for
from ._keys import Keyring
from ._limits import at_limit, evict_oldest, undo_past_limit
from ._merging import adopt_merged, merger
from .config import Lifetime, SessionConfig
from .csrf import CSRFGuard
from .events import EventBus, EventHook, EventKind, SessionEvent
from .exceptions import (
    ConfigurationError,
    MissingDependencyError,
    NotSupportedError,
    ResponseStartedError,
    SessionEndedError,
    SessionLimitError,
    SessionTooLargeError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
)
from .serializers import JSONSerializer, Serializer
from .session import Session
from .stores.base import (
    SessionRecord,
    Store,
    check_store,
    cookie_sealer_of,
    creator_of,
    follower_of,
    mover_of,
)

if TYPE_CHECKING:
    from ._data_sealing import DataSealingStore  # needs the cookie extra, as below
    from ._sealing import CookieSealer  # needs the cookie extra: imported by the store

logger = logging.getLogger("coatcheck")


class _SaveCancelled(StoreUnavailableError):
    """Why a request stores nothing more once one of its saves was cancelled."""


# Characters below which a value cannot be a sealed ticket (``ticket_ended``).
_SEALED_AT_LEAST = 40
# Seconds after a login moved a session within which a request bringing the old cookie
# counts as sent before the login's answer reached the browser: the answer's way back,
# and the clocks of two app servers that differ, take that long at most.
ARRIVAL_SLACK = 10.0
# Seconds that what follows a stored login may still take once its request is cancelled.
_FINISH_WITHIN = 10.0
# Seconds without a 503 after which a store call that succeeds ends an outage.
_QUIET_AFTER_OUTAGE = 5.0
# How many moves a login after a lost answer follows to the session it never heard of:
# each earlier login whose answer was lost too moved it once more.
_FOLLOWED_MOVES = 4

_NO_STORE = (b"cache-control", b"no-store")
# On a logout: browsers drop the origin's cached pages, the back/forward cache included,
# which keeps signed-in pages even when they were sent ``no-store``.
_CLEAR_CACHE = (b"clear-site-data", b'"cache"')
_MAX_USER_AGENT = 256
_MAX_IP_ADDRESS = 64  # an IPv6 address with a zone index fits; anything longer is not one


# The deadline of a record written only to end a session: long past for any clock.
_DEAD = 1.0


class Persistence:
    """Shared by all requests of one middleware; keeps no per-request state."""

    def __init__(
        self,
        store: Store,
        config: SessionConfig,
        serializer: Serializer | None,
        events: Sequence[EventHook] = (),
    ) -> None:
        check_store(store)
        self.events = EventBus(events)
        self.store = store
        self.config = config
        # A store that lives in the cookie says so by how it seals; it is then the
        # cookie's value, not a lookup, that gives the record. Its keys are checked
        # first: a keyring made without keys would warn of a random one it never uses.
        sealer = cookie_sealer_of(store)
        self._sealer: CookieSealer | None = None
        if sealer is not None:
            self._sealer = sealer(cookie_keys(config), config.cookie.name)
        keyring = Keyring(config.secret_keys)
        self._importer = importer_for(config, keyring)
        # The old cookie is a credential too while it can still be adopted.
        credentials = [config.cookie.name]
        if self._importer is not None:
            credentials.append(self._importer.cookie_name)
        # Clients that are not browsers may carry the session in a header of their own,
        # matched as ASGI spells names (the config keeps the app's spelling, for OpenAPI).
        header = config.token_header
        self.token_header = header.lower().encode("latin-1") if header else None
        self.csrf = CSRFGuard(
            config.csrf, keyring, credentials, config.clock, token_header=self.token_header
        )
        self.stateless = self._sealer is not None
        self._unsealer: DataSealingStore | None = None  # made when sealed data turns up
        if config.encrypt_data:
            if self.stateless:
                raise ConfigurationError(
                    "encrypt_data is for server-side stores: the cookie store seals whole "
                    "sessions already"
                )
            from ._data_sealing import sealing_data

            self.store = sealing_data(store, config.secret_keys)
        # The limit a login is refused at, under at_session_limit="refuse_login".
        self._refuse_at = (
            config.max_sessions_per_user if config.at_session_limit == "refuse_login" else None
        )
        self.now = config.clock
        self._moved = mover_of(self.store)
        self._follow = follower_of(self.store)
        # Since when requests have been answered 503 for want of the store, how many, and
        # when the last one was; whether a save failed in that outage; how many outages
        # ended before (each outage's lines have a budget of their own).
        self._down_since: float | None = None
        self._answered_503 = 0
        self._last_503 = 0.0
        self._writes_failing = False
        self._outages = 0
        # Errors of saves that failed: held weakly, as their tracebacks hold connections.
        self._failed_saves: weakref.WeakSet[StoreError] = weakref.WeakSet()
        self.serializer: Serializer = serializer or JSONSerializer()
        self._empty = self.serializer.dumps({})
        self._cookie_needle = cookie_needle(config.cookie.name)
        self._cookies = CookieWriter(config.cookie)
        self.clear_cookie = self._cookies.clear()
        # A cookie scoped below "/" and set from outside its path is pointed out, once:
        # the browser sends no cookie there, and the new one replaces the one it holds.
        self._cookie_path = None if config.cookie.path == "/" else config.cookie.path
        self._path_warned = False
        # What a response that read the session varies on, for caches: the request's
        # cookie, and its token header when clients may send one instead.
        self.vary = (b"Cookie",) if self.token_header is None else (b"Cookie", self.token_header)
        # Seconds after the last save when a read must refresh the sliding expiry.
        self._refresh_after = {
            remember: config.lifetime(remember).idle * config.refresh_fraction
            for remember in (False, True)
        }

    async def load(self, session: Session) -> None:
        now = self.now()
        session_id = None
        if self.token_header is not None:
            session_id = read_header_token(session._headers, self.token_header)
        # The header, when sent, is the only ticket looked at: the cookie is ignored.
        session._by_header = session_id is not None
        if not session._by_header:
            session_id = read_cookie(session._headers, self._cookie_needle)
        if self._sealer is None:
            key = None if session_id is None else key_of(session_id)
            sent = key is not None  # a ticket's shape: not `new`, not junk
            # The ID waits on the session, not in this frame, while the store is asked:
            # error trackers (Sentry) show the locals of a frame an error passed through,
            # and a Session only as its data. _adopt() keeps it or drops it.
            session._id, session_id = session_id, None
            record = None if key is None else await self.store.load(key, now)
            if self._down_since is not None and key is not None:
                self._store_answers(wrote=False)
        else:
            # A sealed ticket is long (nonce, tag, record); `new` or a stray value is not.
            sent = session_id is not None and len(session_id) >= _SEALED_AT_LEAST
            opened = None if session_id is None else self._sealer.open(session_id)
            session._id, record = (None, None) if opened is None else opened
            session_id = None
            key = None if record is None else record.key
        data: dict[str, Any] = {}
        orphan = None
        unserved = None  # the record the cookie named, when this process does not serve it
        if record is not None and key is not None:
            # Written out rather than split into helpers: every read runs this.
            # The stored deadline, or an earlier one if the configuration became stricter
            # (as min() would pick it, without the call).
            if record.idle_timeout or record.absolute_timeout:
                lifetime = self.lifetime_of(record)
            else:  # config.lifetime() of a session with its kind's own limits
                lifetime = self.config.remember if record.remember else self.config.normal
            deadline = record.expires_at
            configured = record.created_at + lifetime.absolute
            limit = record.last_seen_at + lifetime.idle
            if limit < configured:
                configured = limit
            if configured < deadline:
                deadline = configured
            if not (compare_digest(record.key, key) and now < deadline):
                await self.emit(session, "expired", record.user_id, record.public_id)
                unserved, record = record, None
            else:
                try:
                    record, data = self._readable(record)
                except ValueError:
                    orphan = self._undecodable(record)
                    unserved, record = record, None
        imported = session._import_id = None
        importer = self._importer
        spent = None  # the key of an import that a login moved since this request came
        earlier = None  # the live session an import of the same old cookie started long ago
        if (
            record is None
            and importer is not None
            and not session._by_header
            and importer.open(now)
            and importer.carried(session._headers)
        ):
            if self._sealer is None:
                # The ID derived from the old cookie waits on the session too.
                session._import_id = importer.session_id(session._headers)
                assert session._import_id is not None
                joined, takes_id, earlier = await self._join_import(session, now)
                if joined:
                    session._orphan = orphan
                    return
                if not takes_id:
                    session._import_id = None
                elif await self._moved_since(session, store_key(session._import_id), now):
                    # Another request of the page imported the old cookie, and the user
                    # logged in since: imported again, its session would take the ID
                    # the login retired, and its cookie would replace the login's.
                    spent, session._import_id = store_key(session._import_id), None
            if spent is None:
                imported = await importer.read(session._headers, now)
                if imported is not None:
                    imported = self._storable(imported) or None
        import_id = session._import_id  # from here on no await: _adopt() clears it
        session._adopt(session._id, record, imported or data, now, self.config.normal.idle)
        session._ticket_ended = sent and record is None and imported is None
        session._orphan = orphan
        session._earlier_import = earlier
        session._unserved = unserved
        if spent is not None:
            session._missed = spent
        elif key is not None and record is None and unserved is None:
            session._missed = key  # ended, or moved by a login: see _refuse_if_moved()
        if record is not None:
            session._expires_at = deadline
            # Limits loosened since the last save (a longer idle timeout): the stored
            # deadline, which Redis also keeps as a TTL, must move out now, not only
            # once the throttle's window has passed, or a busy session dies at the old one.
            if configured - deadline > lifetime.idle * self.config.refresh_fraction:
                session._refresh_now = True
            elif (
                not record.authenticated_at
                and record.user_id is not None
                and record.last_seen_at < record.created_at + JOIN_WINDOW <= now
            ):
                # A login adopted from an old cookie, brought by its new cookie for the
                # first time since: stored as seen, a copy of the old cookie cannot take
                # it for the session of a lost answer (see unheard_login).
                session._refresh_now = True
        if imported is not None and importer is not None:
            # A new session with the old data: stored (and the old cookie cleared) when
            # this response starts, as any change would be.
            session._imported = session._modified = True
            session._imported_values = copy.deepcopy(imported)
            session._id = session._import_id = import_id
            user = importer.user(imported)
            if user is not None:
                session._user_id = user
                session._meta_changed = session._signing_in = True
                session._remember = importer.remember

    async def _join_import(
        self, session: Session, now: float
    ) -> tuple[bool, bool, SessionRecord | None]:
        """Join the session that another request with the same old cookie started a
        moment ago, rather than start a second one: a page's parallel requests then
        share one session, whichever of them is stored first.

        Returns whether it joined, and else whether this request's import may take the
        ID derived from the old cookie (``session._import_id``): when no session holds
        it. A session this old cookie started long ago keeps it, and a copy of that
        cookie starts a session of its own, as before; that session comes third, for a
        login to replace if it went unheard (see unheard_login).
        """
        assert session._import_id is not None
        existing = await self.store.load(store_key(session._import_id), now)
        if existing is None:
            return False, True, None
        if now >= self.deadline(existing):
            return False, False, None
        if now - existing.created_at >= JOIN_WINDOW:
            return False, False, existing
        try:
            data = self.decode(existing)
        except ValueError:
            return False, False, None
        session._adopt(session._import_id, existing, data, now, self.config.normal.idle)
        session._expires_at = self.deadline(existing)
        # The browser holds only the old cookie: this response hands it the new one,
        # and clears the old one, as the import's first response does.
        session._imported = session._refresh_now = True
        return True, False, None

    def _storable(self, data: dict[str, Any]) -> dict[str, Any]:
        """The imported values this store can keep. The old library took values (a
        128-bit integer, NaN) that coatcheck refuses: kept, every save would fail, and
        the old cookie would bring them back at every request."""
        try:
            self.serializer.dumps(data)
            return data
        except (TypeError, ValueError):
            pass
        kept = {}
        for key, value in data.items():
            try:
                self.serializer.dumps({key: value})
            except (TypeError, ValueError) as exc:
                logger.warning(
                    "a value adopted from the old session cannot be stored here; key %r "
                    "dropped (%s)",
                    key,
                    exc,
                )
            else:
                kept[key] = value
        return kept

    def _undecodable(self, record: SessionRecord) -> str | None:
        """For a record whose data cannot be decoded (no session, then), the key to
        delete with the next save, if any.

        Damaged data goes: unreachable once the browser holds a new ID, it would take a
        place in its user's list. Data sealed under keys this process does not hold, or
        by a later release (both start with a NUL byte, as no serializer's output does),
        is left as it is: in a rolling deploy, the processes that can read it serve the
        session on.
        """
        if not record.data or record.data.startswith(b"\x00"):
            security_event(
                "sealed",
                f"session {record.public_id} holds data that none of this process's keys "
                "opens (sealed under a key missing from its secret_keys, by a later "
                "release, or copied from another session): no session here, and the "
                "record is left as it is. Every process needs a key in secret_keys before "
                "any process seals with it",
            )
            return None
        security_event(
            "sealed", f"undecodable data in session {record.public_id}; starting an empty session"
        )
        return record.key

    def settled(self, session: Session) -> bool:
        """True for a plain read, the common case: nothing to write, no cookie to send.

        Synchronous, so the middleware can tell without starting a commit. Typed values
        are brought up to date first: a changed one is a change like any other.
        """
        if session._models:
            session._sync_models()
        stored = session._stored
        return (
            stored is not None
            and not (session._modified or session._exposed or session._meta_changed)
            and session._key == stored.key
            and (bool(session._data) or session._user_id is not None)
            # (A save dated in this clock's future is left to _refresh_due.)
            and 0 <= self.now() - stored.last_seen_at < self._refresh_window(stored)
            and not session._refresh_now
        )

    def ended_by_cookie(self, session: Session) -> bool:
        """Whether ending ``session`` needs the response's cookie: where the cookie is
        the session (the cookie store), or an old library's adopted cookie must go."""
        return self._sealer is not None or session._imported

    def needs_new_cookie(self, session: Session) -> bool:
        """Whether committing ``session`` would hand the browser a new ID or sealed
        session (or clear its cookie, where the cookie is the session), which a
        response that cannot carry a cookie must not store."""
        if self.ended_by_cookie(session):
            return True
        stored = session._stored
        if not session._data and session._user_id is None:
            return False  # ended, or never stored: nothing the browser must learn
        return stored is None or session._key != stored.key

    def decode(self, record: SessionRecord) -> dict[str, Any]:
        """The data of ``record``; ``ValueError`` when it cannot be decoded."""
        try:
            return self.serializer.loads(record.data)
        except ValueError:
            return self._decode_sealed(record)

    def _readable(self, record: SessionRecord) -> tuple[SessionRecord, dict[str, Any]]:
        """``record`` as the session holds it, and its data; ``ValueError`` when it
        cannot be decoded. Data sealed where this process does not seal is held as
        this process would store it: compared with its sealed bytes, which no encoding
        matches, every read that handed out a list or a dict would write."""
        try:
            return record, self.serializer.loads(record.data)
        except ValueError:
            data = self._decode_sealed(record)
        return record._replace(data=self.serializer.dumps(data)), data

    def _decode_sealed(self, record: SessionRecord) -> dict[str, Any]:
        """Data that ``encrypt_data`` sealed, read where it is off: turned off since, or
        not on yet in this process of a rolling deploy. Its keys still open it, and the
        next save stores it in the clear (or ``ValueError``, when nothing opens it)."""
        if self._unsealer is None:
            if self.config.encrypt_data or not self.config.secret_keys or self.stateless:
                raise ValueError("undecodable session data")
            try:
                from ._data_sealing import sealing_data
            except MissingDependencyError:
                raise ValueError("sealed session data, and no cryptography to open it") from None
            self._unsealer = sealing_data(self.store, self.config.secret_keys)
        return self.serializer.loads(self._unsealer.opened(record))

    def refresh_at(self, record: SessionRecord) -> float:
        """When a read of ``record`` must write its sliding expiry back."""
        return record.last_seen_at + self._refresh_window(record)

    def _refresh_due(self, record: SessionRecord, now: float) -> bool:
        """Whether a read at ``now`` must write ``record``'s sliding expiry back: once per
        refresh window, and also when its last save is dated so far in this clock's
        future (another server's clock runs ahead, or this one was set back) that the
        window would pass only after Redis, whose TTL runs on its own clock, has ended a
        busy session. Less far ahead, that window still leaves a whole one to refresh
        in, and two servers a few minutes apart do not write on every request."""
        window = self._refresh_window(record)
        ago = now - record.last_seen_at
        if ago >= 0:
            return ago >= window
        return -ago >= self.lifetime_of(record).idle - 2 * window

    def _refresh_window(self, record: SessionRecord) -> float:
        """Seconds after the last save when a read must refresh the sliding expiry."""
        if record.idle_timeout or record.absolute_timeout:
            return self.lifetime_of(record).idle * self.config.refresh_fraction
        return self._refresh_after[record.remember]

    def lifetime_of(self, record: SessionRecord) -> Lifetime:
        return self.config.lifetime(record.remember, record.idle_timeout, record.absolute_timeout)

    async def live_records(self, user_id: str, now: float) -> list[SessionRecord]:
        """The user's sessions alive at ``now``. The store leaves out those past their
        stored deadline; a configuration made stricter since may have ended more."""
        return [r for r in await self.store.list_user(user_id, now) if self.deadline(r) > now]

    def deadline(self, record: SessionRecord) -> float:
        """When ``record`` dies: its stored deadline, or an earlier one that a stricter
        configuration gives it."""
        lifetime = self.lifetime_of(record)
        return min(record.expires_at, lifetime.deadline(record.last_seen_at, record.created_at))

    async def commit(self, session: Session, status: int) -> Headers:
        """Write what changed and return the headers the response must carry.

        One save of a session at a time: tasks of one request (a stream's producer and
        the response start, ``asyncio.gather``) that save at once would both start from
        the same stored version, and the second would apply the first's ``modify()``
        calls again when it merged onto it.
        """
        if not session._loaded:
            return []
        await self._turn_to_write(session)
        session._landed = False
        loaded = session._stored
        try:
            headers = await self._write(session, status)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and not session._landed:
                # Cut short (a client gone from a streamed response cancels its body),
                # its writes may or may not have landed: another would merge onto them
                # and apply this request's changes, a modify() among them, a second time.
                session._halted = _SaveCancelled(
                    "a save of this request was cancelled, so what it stored is not known"
                )
            elif isinstance(exc, (SessionEndedError, SessionLimitError)):
                session._halted = exc  # before the hooks: a hook's save must not retry it
            elif isinstance(exc, StoreError):
                self._failed_saves.add(exc)
            self._end_turn(session)
            await self._announce(session)  # what it did announce (a refused login)
            raise
        self._end_turn(session)
        if self._down_since is not None and session._stored is not loaded:
            self._store_answers(wrote=True)  # something was written (or deleted)
        if headers and not session._cookie_final:
            # Stored: its cookie goes out with the response, even if what follows (the
            # event hooks, the caller) is cut short.
            session._outgoing = outgoing(session._outgoing, headers)
        await self._announce(session)
        return headers

    def unavailable(self, exc: StoreError) -> None:
        """Count a request answered 503 because the store failed, and log why: each
        failure's first line at once, then a line a minute at most, since an outage
        fails every request that needs the store. Only its text is kept, not the error:
        a handler that keeps records (pytest, a buffer) would keep its traceback, and
        every connection in it, alive."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._answered_503 += 1
        self._last_503 = now
        if exc in self._failed_saves:  # a save failed: reads that pass prove nothing
            self._writes_failing = True
        text = str(exc)
        kind = ("store", id(self), self._outages, text)  # another failure: its own lines
        if isinstance(exc, StoreUnavailableError):
            limited(logger, kind, f"{text}; answering 503", per_minute=1)
        else:  # waiting will not cure it: the operator's to fix
            message = f"session store failed: {text}; answering 503"
            limited(logger, kind, message, per_minute=1, level=logging.ERROR)

    def _store_answers(self, *, wrote: bool) -> None:
        """Say that the store answers again, which the lines of its outage, a minute
        apart at most, would otherwise leave to be guessed from their end.

        Only once no request has been answered 503 for a few seconds, since one Redis
        Cluster shard down fails only the sessions it holds while the others answer;
        and, once a save failed in the outage, only when a save lands, since a Redis
        server out of memory serves reads and refuses writes. Said once a minute at
        most: a store that flaps keeps its outage open, and its count, until it may be
        said. Then the next outage is logged at once.
        """
        assert self._down_since is not None
        now = time.monotonic()
        if now - self._last_503 < _QUIET_AFTER_OUTAGE or (self._writes_failing and not wrote):
            return
        said = limited(
            logger,
            ("answers", id(self)),
            f"the session store answers again, after {now - self._down_since:.0f} s;"
            f" {self._answered_503} requests were answered 503",
            per_minute=1,
            counted=False,
        )
        if said:
            self._down_since, self._answered_503, self._writes_failing = None, 0, False
            self._outages += 1

    async def _turn_to_write(self, session: Session) -> None:
        """Wait until no other task of the request is saving ``session``, then take the
        turn. No lock is made unless a second task comes: the usual save pays nothing."""
        task = asyncio.current_task()
        while session._writer is not None:
            if session._writer is task:
                raise RuntimeError(
                    "the session is being saved: code that runs during a save cannot save it again"
                )
            if session._written is None:
                session._written = asyncio.Event()
            await session._written.wait()
        session._writer = task

    def _end_turn(self, session: Session) -> None:
        """Give up the turn; the events of the save stay queued for :meth:`_announce`,
        which runs the hooks after it: a hook that waits for another task saving the
        session would otherwise wait for ever."""
        session._writer = None
        written, session._written = session._written, None
        if written is not None:
            written.set()

    async def _announce(self, session: Session) -> None:
        """Run the hooks of the queued events, in order, unless another task of the
        request is at it already (it takes these too). Shielded: a request cut short
        meanwhile still has each event announced."""
        if session._deferred and not session._announcing:
            session._announcing = True
            await asyncio.shield(self._drain(session))

    async def _drain(self, session: Session) -> None:
        try:
            while session._deferred:
                await self.events.emit(session._deferred.pop(0))
        finally:
            session._announcing = False

    async def _write(self, session: Session, status: int) -> Headers:
        if session._halted is not None:
            if isinstance(session._halted, _SaveCancelled) and self._unsaved(session):
                # The app went on after its save was cancelled (its own timeout): what
                # it changed since cannot be stored, and must not be answered as stored.
                raise session._halted
            return []
        if self.settled(session):  # commit() saw to it that the session is loaded
            return []
        stored = session._stored
        if status >= 500:
            # Nothing a failed response changed is stored, except a logout: a user who
            # signed out must not stay signed in because the page after it failed.
            signed_in = session._imported or (stored is not None and stored.user_id is not None)
            if not (session._fresh and session._user_id is None and signed_in):
                return []
            session.destroy()  # what it added since (a flash) went with the failure
        old_key = stored.key if stored is not None else None
        if not session._data and session._user_id is None:
            return await self._write_nothing(session, stored, old_key)

        if self._cookie_path is not None and not session._by_header and not self._path_warned:
            self._path_warned = _outside_cookie_path(session, self._cookie_path)
        if session._id is None:
            session._id = new_session_id()
        if not session._public_id:
            session._public_id = new_public_id()
        key = session._key or store_key(session._id)
        rotated = key != old_key
        data = session._raw
        if data is None or session._modified or session._exposed:
            data = self.serializer.dumps(session._data)
            if len(data) > self.config.max_session_bytes:
                if not session._imported:
                    raise SessionTooLargeError(len(data), self.config.max_session_bytes)
                data = self._shed_import(session, len(data))
                if len(data) > self.config.max_session_bytes:  # the handler's own
                    raise SessionTooLargeError(len(data), self.config.max_session_bytes)
        # What this save sends. Another task of the request may change the session while
        # the save awaits the store: those changes stay unsaved, for the next save.
        edits, fresh = session._edits, session._fresh
        updates = list(session._updates)
        pending = {id(update) for update in updates}
        now = self.now()
        twin = import_key = ending = None
        if stored is None and session._import_id is not None and self._sealer is None:
            import_key = store_key(session._import_id)
        importing = key == import_key
        if importing:
            # A parallel request with the same old cookie may have stored its import
            # since this one looked: this request's changes then go on top of it.
            twin = await self._import_twin(session, key, now)
        elif import_key is not None and session._fresh:
            # Logged out, or in as someone else, in the import's own request: the
            # session a parallel request of the import stored ends too, once this
            # request's own session is stored (a refused login ends nothing).
            ending, import_key = import_key, None
        elif import_key is not None:
            # A new ID (regenerate(), a login again): the session a parallel request
            # of the import stored moves to it, with its changes, as any session would,
            # keeping its public id (and its age, unless this request logged in).
            twin = await self._import_twin(session, import_key, now, adopt=False)
            if twin is not None:
                session._public_id = twin.public_id
                if not session._authenticated_at:
                    session._created_at = twin.created_at
        lifetime = session._lifetime()
        refresh_due = stored is not None and (
            session._refresh_now or self._refresh_due(stored, now)
        )
        if not (rotated or refresh_due or session._meta_changed or data != session._raw):
            return []

        logged_in = rotated and session._signing_in and session._user_id is not None
        if stored is None and session._missed is not None and not logged_in:
            await self._refuse_if_moved(session, session._missed, now)
        unheard = None  # the session of an earlier login whose answer never came back
        if logged_in and stored is None and session._orphan is None and twin is None:
            assert session._user_id is not None
            unheard = await self.unheard_login(session, session._user_id, now)
        if logged_in and self._refuse_at is not None:
            assert session._user_id is not None
            replaced_key = old_key or session._orphan or import_key
            if unheard is not None:
                replaced_key = unheard.key
            if await at_limit(self, session._user_id, replaced_key, key):
                await self.emit(session, "login_refused", session._user_id, "")
                raise SessionLimitError(self._refuse_at)
        if rotated:
            # The store dates the move by this record: after the checks above, which
            # wait on the store, so that requests that came meanwhile count as before it.
            now = self.now()
        expires_at = lifetime.deadline(now, session._created_at)
        record = _record(session, key, data, now, expires_at, stored, self._address(session))
        # Sealed before anything is written: a session too big for its cookie fails here.
        sealed = None
        if self._sealer is not None:
            try:
                sealed = self._sealer.seal(session._id, record)
            except SessionTooLargeError:
                if not (session._imported and session._data):
                    raise
                record = record._replace(data=self._shed_import(session, len(data)))
                data = record.data
                sealed = self._sealer.seal(session._id, record)
        written = [record]
        winners: list[SessionRecord] = []  # parallel saves this one merged onto
        ended_here = True  # False: a parallel request ended the session this one ends
        created = False
        if importing and twin is None and (create := creator_of(self.store)) is not None:
            # Only if no parallel request stored it first; if one did, merged onto it.
            created = await create(record)
            if not created:
                twin = await self._import_twin(session, key, now)
                if twin is None:
                    raise SessionEndedError("the session was ended by another request")
                expires_at = lifetime.deadline(now, session._created_at)
                record = _record(session, key, data, now, expires_at, stored, record.ip_address)
                written = [record]
        if twin is not None:
            # Merged as onto a parallel save: what this request changed since the import.
            assert session._imported_values is not None
            loaded = twin._replace(data=self.serializer.dumps(session._imported_values))
            merge = merger(self, session, loaded, record, written, updates)
            first = merge(twin)
            moved_from = None if importing else import_key
            if not await self.store.save(
                first, replaces=moved_from, expected_version=twin.version, merge=merge
            ):
                raise SessionEndedError("the session was ended by another request")
        elif stored is None:
            # A login or regenerate() in the import's own request moves its ID on: the
            # old cookie of a late request of the same page must find it moved.
            replaces = session._orphan or (None if importing else import_key)
            # The session of a lost answer is replaced only as it was found: a parallel
            # request that wrote or ended it meanwhile (the other click of a double
            # click, a revocation) wins, and this login gets a 409.
            expected = None
            if unheard is not None:
                replaces, expected = unheard.key, unheard.version
            if created and replaces is not None:
                await self.store.delete(replaces)
            if not created and not await self.store.save(
                record, replaces=replaces, expected_version=expected
            ):
                # Only a revocation racing this very login refuses a new record (Redis
                # Cluster bars a key it found filed but not yet written).
                raise SessionEndedError("the session was ended by another request")
            if ending is not None:
                await self._end_import_twin(session, ending)
            if session._fresh:  # a logout, then new data (a flash): a new session
                await self._end_unserved(session)
        elif session._fresh:
            # Destroyed, or logged in as someone else: nothing of the old record carries
            # over, so it is replaced whatever was saved to it meanwhile. A login still
            # needs it alive, as any login does: of two parallel logins as bob from
            # alice's browser, the second finds it gone and gets a 409, rather than
            # storing a device no browser holds (one that may evict bob's phone).
            # Otherwise only a revocation racing this write refuses it (Redis Cluster).
            def overwrite(base: SessionRecord) -> SessionRecord:
                written.append(record._replace(version=base.version + 1))
                return written[-1]

            if session._signing_in and not session._announced:
                saved = await self.store.save(
                    record, replaces=old_key, expected_version=stored.version, merge=overwrite
                )
            else:
                if self._moved is not None and not session._announced:
                    # A logout that leaves something (a flash) ends the old session as
                    # a plain logout does, following a parallel login's move.
                    ended_here = await self._end_moved_too(session, stored)
                if not ended_here:
                    # Ended first by a parallel logout, or moved to another user's
                    # login: that request gave the browser its cookie, which a new
                    # visitor's session for this flash would replace (signing bob out).
                    self._settle_on_nothing(session, edits)
                    if not session._modified:
                        session._data.clear()
                    return []
                try:
                    saved = await self.store.save(record, replaces=old_key)
                except StoreFullError:
                    # No room for what the logout left (a flash): the logout, which
                    # freed room, stands as a plain one does, and that is dropped.
                    announced = self._settle_on_nothing(session, edits)
                    session._data.clear()
                    session._modified = False
                    if not announced:
                        await self.emit(session, "logged_out", stored.user_id, stored.public_id)
                    return await self._signed_out(session, stored)
            if not saved:
                session._stored = None
                raise SessionEndedError("the session was ended by another request")
        else:
            refresh = not (rotated or session._meta_changed or data != session._raw)
            try:
                saved = await self.store.save(
                    record,
                    replaces=old_key if rotated else None,
                    expected_version=stored.version,
                    merge=merger(self, session, stored, record, written, updates, winners),
                )
            except StoreUnavailableError as exc:
                if not refresh:
                    raise
                # Only the sliding expiry was due, and the store answers reads but not
                # writes (a lock held, a server read-only while it fails over, a full
                # Redis): the read is served, the session ends no later than stored.
                limited(
                    logger,
                    ("refresh", id(self), str(exc)),
                    f"{exc}; a read was served without moving its session's expiry",
                    per_minute=1,
                )
                return []
            if not saved:
                # Ended by another request (logout, revocation, a login's new ID) while
                # this one ran. No cookie is cleared: the browser may hold a newer one.
                session._stored = None
                ended = SessionEndedError("the session was ended by another request")
                if not refresh:
                    raise ended
                session._halted = ended  # a later save() must not store it anew
                return []
        record = written[-1]
        # Destroyed or logged in as someone else, then stored anew: the session the
        # browser held has ended, as a plain logout's would.
        replaced = stored if fresh and ended_here else None
        # Changed by another task while the save ran. A value changed in place is
        # found later by comparing with ``_raw``, the data sent; only a merge, which
        # replaces such values, must look now.
        meanwhile = session._edits != edits
        if record.data == data:
            session._stored = record
        elif not meanwhile and (
            not session._exposed or _encodes_to(self.serializer, session._data, data)
        ):  # merged with a parallel save: adopt what was stored
            data = record.data
            adopt_merged(self, session, self.serializer.loads(data))
            session._stored = record
        else:
            # Merged, and changed meanwhile: the session keeps the changes, and the next
            # save merges them onto the stored record, as if loaded before that merge
            # (a version the store no longer holds, with the data this save sent).
            session._stored = record._replace(data=data, version=record.version - 1)
            meanwhile = True
        # Not destroyed or given a new ID meanwhile (told by the key: the ID itself is
        # kept out of this frame's locals, which error trackers show).
        if session._id is not None and (session._key or store_key(session._id)) == key:
            session._key = key
            session._fresh = session._meta_changed = session._signing_in = False
        announced = bool(session._announced)
        session._announced = False  # for the next end
        session._updates = [u for u in session._updates if id(u) not in pending]
        session._raw = data
        session._modified = meanwhile
        session._refresh_now = False
        session._last_seen_at = now
        session._expires_at = record.expires_at
        moves = rotated and (twin is None or not importing)
        if not moves and sealed is None and not session._imported:
            return []  # stored under the ID the browser already holds

        async def finish() -> Headers:
            if moves and twin is None:
                # As stored when the move replaced it: with what a parallel save merged
                # (none, as new, when another request ended it first).
                moved = (winners[-1] if winners else stored) if ended_here else None
                ended = replaced or unheard
                await self._rotated(session, moved, ended, record, logged_in, now, announced)
            elif moves:  # moved on from the session a parallel import stored
                # A login only if this request made one: the import's was announced already.
                relogged = logged_in and bool(session._authenticated_at)
                await self._rotated(session, twin, None, record, relogged, now)
            if session._imported:
                gone = await self._end_imported(session, replaced=True)
            else:
                gone = await self._end_old_cookie(session) if replaced is not None else []
            cleared = [header for header in self._cleared(session, replaced) if header not in gone]
            # Made after the last await: a header holding the new ticket must not wait in
            # a local that an error tracker would send with a store's error.
            remember = session._remember
            max_age = int(session._created_at + lifetime.absolute - now) if remember else None
            return [
                self._ticket(session, sealed or session._id, max_age),
                *gone,
                _NO_STORE,
                *cleared,
            ]

        if moves or session._imported:  # awaits on the store, after the save landed
            return await self._to_the_end(session, finish())
        return await finish()

    async def _write_nothing(
        self, session: Session, stored: SessionRecord | None, old_key: str | None
    ) -> Headers:
        """The save of a session left with no data and no user: it ends, where it was
        stored (a logout, or a visitor's session that emptied), and else stays unstored."""
        if old_key is None:
            if session._fresh and session._missed is not None:
                # A logout from a page that left before a parallel login moved the
                # session: ending nothing here would leave that login signed in.
                await self._refuse_if_moved(session, session._missed, self.now())
            unserved = await self._end_unserved(session) if session._fresh else None
            # Never clear a cookie that matched nothing here, a record ended above
            # included: a parallel login may have just replaced it in the browser, and
            # this response would log it out. (Where the cookie is the session, it is.)
            # The old one, once adopted, goes: ended here, it must not come back.
            if session._import_id is not None and session._fresh and self._sealer is None:
                # Nor may the session a parallel request of this import started.
                await self._end_import_twin(session, store_key(session._import_id))
            cleared = await self._end_imported(session, replaced=False)
            if unserved is not None and self.stateless:
                ticket = self._ticket(session, None, None)
                return [ticket, *cleared, _NO_STORE, *self._cleared(session, unserved)]
            return [*cleared, _NO_STORE] if cleared else []
        assert stored is not None
        if session._announced is None:
            # A revocation that a parallel logout or login overtook: that request
            # ended the record, announced it, and answered with the browser's cookie.
            session._stored, session._raw = None, self._empty
            session._modified = session._exposed = session._meta_changed = False
            session._announced = False
            return []
        fresh = session._fresh  # destroy() or logout(), which the event names
        edits = session._edits
        ours = True
        if fresh and self._moved is not None and not session._announced:
            # (Not one this request's revocation ended already.)
            ours = await self._end_moved_too(session, stored)
        elif fresh or session._key != old_key:
            await self.store.delete(old_key)  # a logout wins over any parallel save
        elif not await self._end_emptied(session, stored):
            return []
        announced = self._settle_on_nothing(session, edits)
        if not ours:
            # A parallel logout or revocation ended it first, announced it and gave
            # the browser its cookie: both are left alone, as after a revocation.
            return []
        if (fresh or stored.user_id is not None) and not announced:
            # Not a visitor's session that merely emptied (its flash was shown), nor
            # one a revocation of this request has announced.
            await self.emit(session, "logged_out", stored.user_id, stored.public_id)
        return await self._signed_out(session, stored)

    async def _to_the_end(self, session: Session, work: Coroutine[Any, Any, Headers]) -> Headers:
        """Run what follows a save the store took (the per-user limit, the events, the end
        of the old library's cookie) to its end, even if the request is cancelled
        meanwhile: a login stored but answered without its cookie, and never announced,
        would sign the user out. Its cookie is then kept for the response, as commit()
        keeps a stored save's, and the cancellation goes on. That waits for the store,
        whose own timeout bounds it, or at most ``_FINISH_WITHIN`` for one that hangs."""
        task = asyncio.ensure_future(work)
        writer, session._writer = session._writer, task  # its events are this save's
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # anyio cancels again at every await of a cancelled scope (Starlette's
            # stream of a client gone): shielded from that as from asyncio's, for as
            # long as a store that answers at all takes.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _FINISH_WITHIN
            while not task.done() and (left := deadline - loop.time()) > 0:
                with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((task,), timeout=left)
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                headers = task.result()
                session._landed = True  # known to be stored: nothing left to halt
                if headers and not session._cookie_final:
                    session._outgoing = outgoing(session._outgoing, headers)
            raise
        finally:
            session._writer = writer

    def _cleared(self, session: Session, ended: SessionRecord | None) -> Headers:
        """``Clear-Site-Data`` for a browser whose signed-in session just ended: the pages
        it showed that user must not come back with the Back button."""
        if ended is None or ended.user_id is None or session._by_header:
            return []
        return [_CLEAR_CACHE]

    def _address(self, session: Session) -> str:
        """The client address to keep with the record: only under ``record_ip``."""
        return _client_address(session) if self.config.record_ip else ""

    def _ticket(self, session: Session, value: str | None, max_age: int | None) -> Header:
        """The header that hands the client its session's new ticket (None ends it):
        ``Set-Cookie``, or the token header for a client that sent its ticket there."""
        if session._by_header:
            assert self.token_header is not None
            return (self.token_header, b"" if value is None else value.encode("ascii"))
        if value is None:
            return (b"set-cookie", self.clear_cookie)
        return (b"set-cookie", self._cookies.set(value, max_age))

    async def _end_unserved(self, session: Session) -> SessionRecord | None:
        """For a logout, end the record its cookie named where this process serves no
        session, and return it. Dead by this process's clock, which may run ahead of the
        other servers', or sealed under a key it does not hold yet (a rolling deploy),
        the record may be live to the servers that serve it: they would keep the user
        signed in."""
        record = session._unserved
        if record is None and session._missed is not None and not self.stateless:
            record = await self.store.load(session._missed, 0.0)  # whatever its deadline
        if record is None:
            return None
        session._unserved = None
        if not self.stateless:  # else the cleared cookie is the end of it
            await self.store.delete(record.key)
        if record.user_id is not None and self.now() < self.deadline(record):
            # Live here too, unserved only for its data: a logout. One dead by this
            # clock is not announced again (expired, or dropped with no event, as a
            # store drops any session at its deadline), even if others still served it.
            await self.emit(session, "logged_out", record.user_id, record.public_id)
        return record

    async def _refuse_if_moved(self, session: Session, key: str, now: float) -> None:
        """Refuse to start a session for a cookie whose session a parallel login (or
        ``regenerate()``) moved to a new ID after this request came.

        The browser sent this request before the login's response reached it, and
        holds the new cookie by now: a new anonymous session's cookie would replace
        it and sign the user out. A request that came later than that brings the old
        cookie because the login's response never reached the browser: it goes on as
        any request with an unknown cookie does, as a login always does.
        """
        if await self._moved_since(session, key, now):
            raise SessionEndedError("the session was moved to a new ID by another request")

    async def unheard_login(
        self, session: Session, user_id: str, now: float
    ) -> SessionRecord | None:
        """The session an earlier login as ``user_id`` stored for this browser, when that
        login's answer never reached it: the browser still sends the cookie the login
        moved, and logs in again. No browser holds that session; this login replaces it
        (and says it ended), rather than count it as another device, which under
        ``"refuse_login"`` would refuse the user until it idles out.

        Moves are followed a few steps, past the logins of earlier lost answers. This
        request must have come after each of them and its answer's way back
        (``ARRIVAL_SLACK``): one sent earlier, as the second click of a double click is,
        may be followed by the other login's answer, whose cookie the browser then
        holds. And the session found must be the same user's: the old cookie alone
        gives no hold on a session made from it. Whoever planted it in the user's
        browser gains nothing the password alone does not give: the session's data (a
        cart) ends with it, and the password lets anyone end the user's other sessions.
        """
        key = session._missed
        earlier = session._earlier_import
        if key is None and earlier is not None:
            # The old cookie's import was itself the login, long enough ago that this
            # request did not join it. Unseen since its first minute (the first request
            # with its new cookie after that stores it as seen: see load()), it is the
            # session of a lost answer; seen, someone holds it, and a copy of the old
            # cookie is another device, counted as one.
            unseen = earlier.last_seen_at < earlier.created_at + JOIN_WINDOW
            if earlier.user_id == user_id and unseen and now < self.deadline(earlier):
                return earlier
            return None
        if key is None and session._import_id is not None and self._sealer is None:
            key = store_key(session._import_id)  # a login moved the ID an import derived
        if key is None or self._moved is None or self._follow is None:
            return None
        for _ in range(_FOLLOWED_MOVES):
            at = await self._moved(key, now)
            if at is None or session._arrived < at + ARRIVAL_SLACK:
                return None
            followed = await self._follow(key, now)
            if followed is None:
                return None
            record = await self.store.load(followed, now)
            if record is not None:
                if record.user_id != user_id or self.deadline(record) <= now:
                    return None
                return record
            key = followed
        return None

    async def _moved_since(self, session: Session, key: str, now: float) -> bool:
        """Whether a login moved the session under ``key`` after this request came."""
        moved_at = self._moved
        if moved_at is None:
            return False
        at = await moved_at(key, now)
        return at is not None and session._arrived < at + ARRIVAL_SLACK

    async def _rotated(
        self,
        session: Session,
        stored: SessionRecord | None,
        ended: SessionRecord | None,
        record: SessionRecord,
        logged_in: bool,
        now: float,
        announced: bool = False,
    ) -> None:
        """Apply the per-user limit to a session stored under a new ID, and announce it
        (and the end of ``ended``, the session it replaced, if any, unless this request
        ``announced`` that end already: a revocation of its own session)."""
        if ended is not None and not announced:  # replaced already, whatever comes next
            await self.emit(session, "logged_out", ended.user_id, ended.public_id)
        user_id = session._user_id
        if user_id is not None and self.config.max_sessions_per_user is not None:
            try:
                if self._refuse_at is None:
                    await evict_oldest(self, session, user_id, stored, record.key, logged_in, now)
                elif logged_in and (stored is None or stored.user_id != user_id or announced):
                    # A login that replaced a session this request had ended is a new
                    # device, counted as one.
                    await undo_past_limit(self, session, user_id, stored, record.key, now)
            except StoreUnavailableError as exc:
                # The login itself is stored: answering 503 now would lose its cookie.
                logger.warning("could not count or end the sessions past the limit: %s", exc)
        if stored is None or ended is not None:
            await self.emit(session, "created", record.user_id, record.public_id)
        if logged_in:
            await self.emit(session, "logged_in", record.user_id, record.public_id)
        elif stored is not None and ended is None:
            await self.emit(session, "rotated", record.user_id, record.public_id)

    async def _signed_out(self, session: Session, stored: SessionRecord) -> Headers:
        """The headers of a response that ended ``stored`` and leaves nothing stored."""
        return [
            self._ticket(session, None, None),
            *await self._end_old_cookie(session),
            _NO_STORE,
            *self._cleared(session, stored),
        ]

    async def end_own(self, session: Session) -> bool:
        """End the record this request loaded, unless another request ended or moved it
        first: True when this request ended it (see end_record)."""
        stored = session._stored
        if stored is None:
            return False
        return await end_record(
            self.store,
            stored,
            self.now(),
            moved=lambda: self._moved_since(session, stored.key, self.now()),
        )

    def _settle_on_nothing(self, session: Session, edits: int) -> bool | None:
        """Nothing is stored for the session now: only what the app changes after this
        is a change, such as what another task of this request changed while the store
        was awaited. Returns the end it had announced, now reset for the next end."""
        session._stored, session._raw = None, self._empty
        session._modified = session._edits != edits
        session._exposed = session._meta_changed = False
        announced, session._announced = session._announced, False
        return announced

    async def _end_moved_too(self, session: Session, stored: SessionRecord) -> bool:
        """End the record a logout loaded, or the session a parallel login moved it to:
        whether this request ended it (not a parallel logout or revocation).

        A logout wins over whatever happened in parallel: a plain delete would only
        find the move's mark, and leave that login signed in. The moved session keeps
        its public id in its user's list; one no longer there has ended since, or
        belongs to another user now. A visitor's session moved to a login cannot be
        followed: a 409, and the browser, which holds the new cookie by then, tries again.
        """
        if await self.end_own(session):
            return True
        now = self.now()
        if not await self._moved_since(session, stored.key, now):
            return False  # ended by a parallel logout or revocation
        user_id = stored.user_id
        if user_id is None:
            raise SessionEndedError("the session was moved to a new ID by another request")
        ended, _ = await end_device(
            self.store, lambda: self.live_records(user_id, now), stored.public_id, now=self.now
        )
        return ended

    async def followed(self, session: Session, key: str, user_id: str) -> str:
        """The key that the session this request loaded under ``key`` has now: itself,
        or the one a parallel login of this browser moved it to (the same public id),
        which "sign out other devices" must keep."""
        now = self.now()
        if session._stored is None or not await self._moved_since(session, key, now):
            return key
        public_id = session._stored.public_id
        moved = [r.key for r in await self.live_records(user_id, now) if r.public_id == public_id]
        return moved[0] if moved else key

    async def refuse_if_moved_away(self, session: Session) -> None:
        """Refuse an action on all of a user's sessions (or one of them) from a page
        that left before a parallel login moved its session: it found no user, and
        doing nothing would leave that login's devices signed in."""
        if session._missed is not None and session._user_id is None:
            await self._refuse_if_moved(session, session._missed, self.now())

    async def _end_emptied(self, session: Session, stored: SessionRecord) -> bool:
        """End an anonymous session whose data was all removed (not destroyed), unless a
        parallel save added data meanwhile; True when it ended.

        A plain delete would drop what that save stored. Instead a record already dead
        is written over the version this request loaded, as any save is: a parallel
        save that got there first is merged, and the session lives on with its data.
        Only once the dead record stands is it deleted.
        """
        now = self.now()
        # Dead by every clock, not only by this request's: a parallel save that read the
        # time a moment earlier (or on a host whose clock is behind) would take a record
        # dead "now" for live, merge onto it, and be deleted with it below.
        record = _record(session, stored.key, self._empty, now, _DEAD, stored, "")
        written = [record]
        merge_live = merger(self, session, stored, record, written)
        edits, pending = session._edits, {id(update) for update in session._updates}

        def merge(base: SessionRecord) -> SessionRecord:
            merged = merge_live(base)
            if merged.data == self._empty and merged.user_id is None:
                merged = written[-1] = merged._replace(expires_at=_DEAD)
            return merged

        try:
            if not await self.store.save(record, expected_version=stored.version, merge=merge):
                session._stored = None  # ended by another request: its cookie is left alone
                return False
        except StoreFullError:
            if written[-1].expires_at > now:
                raise  # merged onto a parallel save's data, which needs the room
            await self.store.delete(stored.key)  # the dead record takes room; this frees it
            return True
        kept = written[-1]
        if kept.expires_at <= now:
            # Dead already, so no save can land on it any more: removing it is tidying.
            await self.store.delete(stored.key)
            return True
        session._updates = [u for u in session._updates if id(u) not in pending]
        if session._edits == edits:
            session._data = self.serializer.loads(kept.data)
            session._stored = kept
            session._modified = False
        else:
            # Changed by another task while the save ran: as in _write, the changes stay
            # for the next save, merged onto the stored record as if loaded before it.
            session._stored = kept._replace(data=self._empty, version=kept.version - 1)
            session._modified = True
        session._raw = session._stored.data
        session._last_seen_at, session._expires_at = now, kept.expires_at
        return False

    def _shed_import(self, session: Session, size: int) -> bytes:
        """Drop what a session adopted from the old library brought, when it is too big
        to store here: refused with a 413, the old cookie would stay, and every request
        after it would be refused again. The login stays (with ``user_key``), and so does
        what this request's handler set; what then still does not fit is a 413."""
        adopted = session._imported_values or {}
        kept = {
            key: value
            for key, value in session._data.items()
            if key not in adopted or adopted[key] != value
        }
        logger.warning(
            "a session adopted from the old cookie came to %d bytes, more than this store "
            "takes; the %d values it brought were dropped, its login kept",
            size,
            len(session._data) - len(kept),
        )
        session._data = kept
        session._models = None
        return self.serializer.dumps(kept)

    async def _end_imported(self, session: Session, *, replaced: bool) -> Headers:
        """End the old session once its data was adopted here (or ended at once), and
        return the header that clears its cookie; none when the new session's cookie,
        of the same name, ``replaced`` it. A user signed in by the old session who is
        no longer is signed out as any other, ``Clear-Site-Data`` included."""
        importer = self._importer
        if not session._imported or importer is None:
            return []
        session._imported = False
        await importer.consumed(session._headers)
        headers: Headers = []
        if not (replaced and importer.shares_name):
            headers.append((b"set-cookie", importer.clear_cookie))
        adopted = session._imported_values
        user = None if adopted is None else importer.user(adopted)
        if user is not None and user != session._user_id and not session._by_header:
            headers.append(_CLEAR_CACHE)
        return headers

    async def _end_old_cookie(self, session: Session) -> Headers:
        """Clear an old cookie that a request ending its session still brings (set
        again by a process of the old library, mid-deploy): the next request must not
        adopt it and bring the ended login back."""
        importer = self._importer
        if importer is None or importer.shares_name or not importer.carried(session._headers):
            return []
        await importer.consumed(session._headers)
        return [(b"set-cookie", importer.clear_cookie)]

    async def _import_twin(
        self, session: Session, key: str, now: float, *, adopt: bool = True
    ) -> SessionRecord | None:
        """The live session a parallel request with the same old cookie stored under
        this import's ``key`` meanwhile, if any; with ``adopt``, this session then takes
        its identity."""
        twin = await self.store.load(key, now)
        if twin is None or now >= self.deadline(twin):
            return None
        if adopt:
            session._public_id, session._created_at = twin.public_id, twin.created_at
        return twin

    async def _end_import_twin(self, session: Session, key: str) -> None:
        """End the session a parallel request of this import stored, if any, and say so."""
        twin = await self.store.load(key, self.now())
        await self.store.delete(key)
        if twin is not None:
            await self.emit(session, "logged_out", twin.user_id, twin.public_id)

    async def recheck(self, session: Session, *, refresh: bool = True) -> float | None:
        """Whether a long-lived connection's session is still stored and live: None once
        it has ended, else when its sliding expiry is next due for a refresh. While it
        lives, the refresh is written back when due, as a request's would be, unless
        the connection was not used (``refresh`` False: only the app sent).

        The refresh writes the record as it is stored now, over the version just read,
        not this connection's unsaved changes: another request's save (a tab's cart, its
        own refresh) must not leave the socket refreshing a copy that is out of date,
        refused each time until the idle limit ends a busy chat. The connection's own
        changes are left for its usual save, which merges them.
        """
        if isinstance(session._halted, SessionEndedError):
            return None  # a save of this connection found it ended
        stored = session._stored
        if stored is None:
            return math.inf  # nothing stored to end: an anonymous session that was only read
        now = self.now()
        if self._sealer is not None:
            # Nothing on the server can end it, and no cookie can refresh it: its
            # deadline, sealed in the cookie the handshake brought, is all there is.
            return math.inf if now < self.deadline(stored) else None
        current = await self.store.load(stored.key, now)
        if current is None or now >= self.deadline(current):
            return None  # ended, or past what a stricter configuration allows
        due = self.refresh_at(current)
        if now < due or not refresh:
            return due
        try:
            self.decode(current)
        except ValueError:
            # Sealed under a key this process lacks (mid-rotation): written back from
            # here, it would be sealed anew around nothing, lost to every process.
            return due
        touched = current._replace(
            last_seen_at=now,
            expires_at=self.lifetime_of(current).deadline(now, current.created_at),
            version=current.version + 1,
        )
        if not await self.store.save(touched, expected_version=current.version):
            return now  # saved meanwhile by another request: due again at the next message
        if session._stored is stored and stored.version == current.version:
            # Nothing else changed it: the connection's copy moves on with it.
            session._stored = touched
            session._last_seen_at, session._expires_at = now, touched.expires_at
        return self.refresh_at(touched)

    async def save_now(self, session: Session) -> None:
        """:meth:`Session.save`: commit now, keeping the headers for the response.

        A save that found the session ended, or its login refused, halts the request's
        writes: what the app does after catching it is not stored, so an ended session
        is not brought back, nor a refused login retried, when the response starts.
        """
        if session._halted is not None:
            raise session._halted
        if session._models:
            session._sync_models()
        if session._cookie_final:
            self._check_late(session)
        # commit() keeps the headers for the response itself, before the event hooks,
        # which may save again: their newer cookie must stand. A save found ended or
        # refused halts the request's writes (commit() sets _halted).
        await self.commit(session, 200)
        if session._halted is not None:
            # Found ended by a save with nothing but a refresh to store: what the
            # handler changes next would be dropped, so it must know now.
            raise session._halted

    async def reload(self, session: Session) -> None:
        """:meth:`Session.reload`: adopt what is stored now, keeping the request's headers."""
        # After a save another task of the request is making: what it stores is not
        # this request's unsaved change, and the reload must find it stored.
        await self._turn_to_write(session)
        try:
            await self._reload(session)
        finally:
            self._end_turn(session)

    async def _reload(self, session: Session) -> None:
        if session._halted is not None:
            raise session._halted
        if self._sealer is not None:
            raise NotSupportedError(
                "the cookie store keeps no session on the server: other requests' changes "
                "travel in their own cookies, which this request never sees"
            )
        if self._unsaved(session):
            raise RuntimeError(
                "this request changed the session: save() the changes before reload(), "
                "which would otherwise drop them"
            )
        stored = session._stored
        if stored is None:
            return  # nothing stored, nor anything to store: nothing newer can exist
        now = self.now()
        edits = session._edits
        record = await self.store.load(stored.key, now)
        if session._edits != edits or self._unsaved(session):
            raise RuntimeError(
                "another task of this request changed the session during reload(), which "
                "would have dropped that change: save() it, then reload() again"
            )
        deadline = 0.0 if record is None else self.deadline(record)
        if record is None or now >= deadline:
            # Ended elsewhere (a logout, a revocation, a login's new ID) or expired: like
            # a save that finds it so, nothing more of this request may bring it back.
            session._halted = SessionEndedError("the session was ended by another request")
            raise session._halted
        try:
            record, data = self._readable(record)
        except ValueError as exc:
            raise StoreError(
                f"session {record.public_id} holds data that cannot be decoded"
            ) from exc
        early = session._outgoing  # a save() made before: its cookie still goes out
        held, exposed = session._data, session._exposed
        session._adopt(session._id, record, data, now, self.config.normal.idle)
        session._outgoing = early
        session._expires_at = deadline
        # Values the handler holds (``history = session["history"]``) stay the session's
        # where the stored data kept them, as after a merge: later changes to them count.
        session._data = held
        adopt_merged(self, session, data)
        session._exposed = exposed

    def _unsaved(self, session: Session) -> bool:
        """Whether the session holds changes that no save has stored yet."""
        if session._models:
            session._sync_models()
        stored = session._stored
        if stored is None:
            return bool(session._data) or session._user_id is not None
        return (
            session._meta_changed
            or session._fresh
            or session._key != stored.key
            or (
                (session._modified or session._exposed)
                and self.serializer.dumps(session._data) != session._raw
            )
        )

    def _check_late(self, session: Session) -> None:
        """Refuse a save, once the response started, that a new cookie would have to carry."""
        nothing = not session._data and session._user_id is None
        if self._sealer is None:
            if nothing or (session._stored is not None and session._id is not None):
                return  # at most a record to delete, or one to write under the same ID
            where = "stored under a new cookie"
        elif nothing and session._stored is None:
            return
        elif not session._meta_changed and self.serializer.dumps(session._data) == session._raw:
            return  # unchanged: a due refresh of the sealed deadline is simply not sent
        else:
            where = "sealed in a new cookie"
        raise ResponseStartedError(
            f"the response has started, so this session cannot be saved: it would have "
            f"to be {where}, which can no longer be sent; save() before responding (or "
            f"before accepting a websocket)"
        )

    async def aclose(self) -> None:
        """Close the store, and what an importer holds open."""
        try:
            await self.store.aclose()
        finally:
            if self._importer is not None:
                await self._importer.aclose()

    async def emit(
        self,
        session: Session,
        kind: EventKind,
        user_id: str | None,
        public_id: str,
        count: int = 1,
    ) -> None:
        if self.events.hooks:
            event = SessionEvent(
                kind,
                self.now(),
                user_id,
                public_id,
                session._path,
                count,
                _client_address(session),
                _user_agent(session._headers),
            )
            if session._loaded:
                # In order, one at a time, whichever task emits them; during this task's
                # save, once the save is done (see _announce).
                if session._deferred is None:
                    session._deferred = []
                session._deferred.append(event)
                if session._writer is not asyncio.current_task():
                    await self._announce(session)
                return
            await self.events.emit(event)


def _encodes_to(serializer: Serializer, data: dict[str, Any], sent: bytes) -> bool:
    """Whether ``data`` still encodes to ``sent``: values handed out may have been
    changed in place since (one that no longer encodes at all has)."""
    try:
        return serializer.dumps(data) == sent
    except (TypeError, ValueError):
        return False


def outgoing(early: Headers, late: Headers) -> Headers:
    """The headers of an early :meth:`Session.save` and of a later commit together.

    Where both set the same header, or the same cookie, the later one stands.
    """
    if not early:
        return late
    later = {_slot(header) for header in late}
    return [header for header in early if _slot(header) not in later] + late


def _slot(header: Header) -> tuple[bytes, bytes]:
    name, value = header
    return name, value.split(b"=", 1)[0] if name == b"set-cookie" else b""


def _outside_cookie_path(session: Session, cookie_path: str) -> bool:
    """Warn, and say so, when the cookie a save sets is one the browser would not send
    back to this request's path (matched as browsers match, RFC 6265 5.1.4).

    A warning, not an error: behind a proxy that strips a prefix the app cannot see the
    path the browser used, and a wrong guess must not fail every login.
    """
    path, root = session._path, session._root_path
    if root and path != root and not path.startswith(root + "/"):
        path = root + path  # servers that keep the mount point out of the path
    for prefix in {cookie_path, unquote(cookie_path)}:
        if path.startswith(prefix) and (
            len(path) == len(prefix) or prefix[-1] == "/" or path[len(prefix)] == "/"
        ):
            return False
    logger.warning(
        "the session changed at %r, outside the cookie's Path=%s: the browser sends no "
        "session cookie there, and the one this response sets replaces the one it holds "
        "for %s, signing it out. Change the session only under that path, or widen "
        "CookieConfig.path (behind a proxy that strips a prefix, give the server its "
        "root path). Said once.",
        path,
        cookie_path,
        cookie_path,
    )
    return True


def _record(
    session: Session,
    key: str,
    data: bytes,
    now: float,
    expires_at: float,
    stored: SessionRecord | None,
    ip_address: str,
) -> SessionRecord:
    """What a save of ``session`` writes at ``now``: the version after ``stored``'s."""
    # By position, in SessionRecord's field order: fourteen keywords cost a named
    # tuple several times what one tuple does.
    return SessionRecord._make(
        (
            key,
            session._public_id,
            data,
            session._user_id,
            session._created_at,
            now,  # last_seen_at
            expires_at,
            session._remember,
            _user_agent(session._headers),
            1 if stored is None else stored.version + 1,
            ip_address,
            session._authenticated_at,
            session._idle_timeout,
            session._absolute_timeout,
        )
    )


def _client_address(session: Session) -> str:
    client = session._client
    return _text(str(client[0])[:_MAX_IP_ADDRESS]) if client and client[0] else ""


def _user_agent(headers: Headers) -> str:
    for name, value in headers:
        if name == b"user-agent":
            return _text(value[:_MAX_USER_AGENT].decode("latin-1"))
    return ""


def _text(value: str) -> str:
    """What the client sent, fit for every store: PostgreSQL's text holds no NUL."""
    return value.replace("\x00", "") if "\x00" in value else value


def cookie_keys(config: SessionConfig) -> list[bytes]:
    """The cookie store's keys: from the app's own secret keys, never a random one."""
    if not config.secret_keys:
        # A per-process key would log everyone out at each restart, and send each
        # worker's users to the others as strangers.
        raise ConfigurationError(
            "the cookie store needs SessionConfig(secret_keys=[...]) shared by every process"
        )
    if config.max_sessions_per_user is not None:
        raise ConfigurationError(
            "max_sessions_per_user needs a server-side store: the cookie store cannot find "
            "or end a user's other sessions"
        )
    return Keyring(config.secret_keys).derive("cookie-store")
