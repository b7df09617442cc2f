"""The per-request session: a mutable mapping plus the login life cycle.

Changes are recorded here and applied once, by the middleware, when the response
starts: that is when the old ID dies, the record is written and the cookie is set.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import _devices, _flash
from ._audit import limited
from ._context import ASYNCIO_ONLY, current_session, not_installed, shadowed
from ._devices import Device, utc
from ._flash import Flash
from ._ids import new_public_id, new_session_id
from ._models import Binding, check_model
from ._user_ids import check_user_id
from .exceptions import (
    CoatcheckError,
    ResponseStartedError,
    SessionConflictError,
    SessionNotLoadedError,
)

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from ._persist import Persistence
    from .config import Lifetime
    from .events import SessionEvent
    from .stores.base import SessionRecord

_MUTABLE = (dict, list)  # what JSON reads back that can be changed in place
# What cannot change in place: any other value set may be kept by the handler and
# changed after a save, so the session must compare it again before it ends.
_SCALAR = (str, int, float, bool, type(None))
# What a modify() change returns to remove its key: flash queues, once emptied, go.
_REMOVE: Any = object()
M = TypeVar("M")
logger = logging.getLogger("coatcheck")
_FINISHED = (
    "the session of a request to {path!r} was changed after that request had finished, "
    "by a task that outlived it (a framework's event handler, a queued job), which "
    "ended without saving it: only `await session.save()` in that task stores it"
)
# A modify() call, kept to run again on a parallel save's value: key, change, default.
Update = tuple[str, Callable[[Any], Any], Any]


class _ChangeRefused(SessionConflictError):
    """A ``modify()`` change raised when run again on a parallel request's save.

    The change is withdrawn and nothing is saved: :meth:`Session.save` hands the
    change's own error to its caller, which may be how the app refuses a code used
    twice; a commit when the response starts answers 409, as for any conflict.
    """

    def __init__(self, key: str, error: Exception) -> None:
        super().__init__(
            f"the modify() change to {key!r} raised {type(error).__name__} when run again "
            "on what a parallel request saved: it was withdrawn and nothing was saved"
        )
        self.error = error


def _text(key: str) -> str:
    """A str Enum as its text, which JSON keeps: stored as the Enum, the save fails."""
    return key if type(key) is str or not isinstance(key, str) else str.__str__(key)


class Session(MutableMapping[str, Any]):
    """Session data (JSON values under string keys) and who it belongs to.

    Values are ``Any`` because they are whatever JSON can hold. Nested changes such
    as ``session["cart"].append(item)`` are saved: a value handed out by reading may
    be changed in place, so such reads make the save compare the encoded data.
    """

    __slots__ = (
        "_absolute_timeout",
        "_announced",
        "_announcing",
        "_arrived",
        "_authenticated_at",
        "_by_header",
        "_client",
        "_cookie_final",
        "_created_at",
        "_data",
        "_deferred",
        "_earlier_import",
        "_edits",
        "_expires_at",
        "_exposed",
        "_finished",
        "_flashed",
        "_fresh",
        "_halted",
        "_headers",
        "_id",
        "_idle_timeout",
        "_import_id",
        "_imported",
        "_imported_values",
        "_key",
        "_landed",
        "_last_seen_at",
        "_loaded",
        "_loading",
        "_meta_changed",
        "_missed",
        "_models",
        "_modified",
        "_orphan",
        "_outgoing",
        "_path",
        "_persistence",
        "_public_id",
        "_raw",
        "_refresh_now",
        "_remember",
        "_root_path",
        "_signing_in",
        "_stored",
        "_ticket_ended",
        "_unserved",
        "_updates",
        "_user_id",
        "_waiter",
        "_writer",
        "_written",
    )
    _persistence: Persistence
    _headers: list[tuple[bytes, bytes]]
    _client: tuple[str, int] | None  # scope["client"]: the address, for record_ip
    _path: str
    _root_path: str  # where a proxy or server mounted the app: a cookie's path includes it
    _loaded: bool
    _loading: asyncio.Task[Any] | None  # the task loading it now, if one is
    _waiter: asyncio.Event | None  # set when it ends, made once a second load waits
    _by_header: bool  # the client sent its token in SessionConfig.token_header, not a cookie
    _cookie_final: bool  # the response has started: the cookie can no longer change
    _ticket_ended: bool  # the request's ticket named no live session (see ticket_ended)
    # The request has finished, so nothing commits a change any more; while a late change
    # waits to be saved by the task that made it, the check that it was.
    _finished: bool | asyncio.Task[Any]
    _data: dict[str, Any]
    _raw: bytes | None
    _stored: SessionRecord | None
    _id: str | None
    _key: str | None  # store key of _id, kept so it is hashed once per request
    _public_id: str
    _user_id: str | None
    _remember: bool
    _created_at: float
    _authenticated_at: float  # 0.0: nobody logged in, or a login coatcheck did not see
    _idle_timeout: int  # seconds, shorter than configured, that the login chose; 0: none
    _absolute_timeout: int
    _last_seen_at: float
    _expires_at: float
    _modified: bool
    _edits: int  # changes made so far, so a save can tell those made while it ran
    _writer: asyncio.Task[Any] | None  # the task saving it now: one at a time
    _written: asyncio.Event | None  # set when that save ends, made once another waits
    _deferred: list[SessionEvent] | None  # events of that save, for after it
    _announcing: bool  # a task is running the hooks of those events
    _landed: bool  # the save was cancelled once the store took it, and finished anyway
    _arrived: float  # when the request came, on the configured clock
    _exposed: bool
    _meta_changed: bool
    _models: dict[str, Binding] | None  # typed values handed out by model()
    _fresh: bool  # the data no longer continues the stored record's (destroy, user switch)
    _imported: bool  # adopted from the old library's session, which the response ends
    _imported_values: dict[str, Any] | None  # the data adopted, as it came
    _import_id: str | None  # the ID derived from the old cookie, when the import took it
    _refresh_now: bool  # the stored deadline is earlier than the configured limits give
    _updates: list[Update]
    _outgoing: list[tuple[bytes, bytes]]  # headers of a save() made before the response
    _halted: CoatcheckError | None  # why save() stopped this request's writes, if it did
    _orphan: str | None  # key of a record the cookie named that could not be decoded
    _missed: str | None  # key the cookie named where the store had no record at all
    # The record the cookie named where this process serves no session: dead by its
    # clock, or data it cannot open. Another process may serve it; a logout ends it.
    _unserved: SessionRecord | None
    # The live session an import of this request's old cookie started, past the window
    # in which a request with that cookie joins it: the import's, if its answer was lost.
    _earlier_import: SessionRecord | None
    _flashed: list[str]  # ids of the messages this request flashed; unset until the first
    _signing_in: bool  # login() (or an adopted login) waits for its save
    # Its end was announced already (revoked), not again as logged_out; None: a parallel
    # request ended it first, and announced it and set the browser's cookie itself.
    _announced: bool | None

    def __init__(self, persistence: Persistence, scope: MutableMapping[str, Any]) -> None:
        self._persistence = persistence
        # Only the headers: a reference to the scope would make a cycle (scope["session"])
        # that only the garbage collector can free, on every request.
        self._headers = scope.get("headers", [])
        self._client = scope.get("client")
        self._path = scope.get("path", "")
        self._root_path = scope.get("root_path", "")
        self._arrived = persistence.now()
        # Everything else is set by _adopt() when the session loads: a request that never
        # touches its session pays for nine attributes, not all of them.
        self._loaded = False
        self._loading = self._waiter = None
        self._cookie_final = self._finished = False

    @staticmethod
    def of(connection: HTTPConnection) -> Session:
        """The session of a Starlette ``Request`` or ``WebSocket``, typed as such:
        ``await Session.of(request).load()``, or ``Session.of(request).login(user)`` on
        an eager path, where Starlette's ``request.session`` is typed as a plain dict."""
        session = connection.scope.get("session")
        if not isinstance(session, Session):
            if session is not None and current_session.get() is not None:
                raise RuntimeError(shadowed(session))
            raise RuntimeError(not_installed(connection.scope))
        return session

    # -- loading ------------------------------------------------------------------------

    async def load(self) -> Session:
        """Fetch the session from the store, once per request; later calls do nothing.

        Tasks of one request that load at once (``asyncio.gather``) share one load:
        a second would replace the data the first has changed meanwhile.
        """
        if self._loaded:
            return self
        if self._loading is not None:
            if self._loading is asyncio.current_task():
                raise RuntimeError(
                    "the session is still loading: code that runs during the load (an "
                    "event hook, a user loader) cannot load it again"
                )
            if self._waiter is None:
                self._waiter = asyncio.Event()
            await self._waiter.wait()
            return await self.load()  # loaded now, or that load failed: this one tries
        try:
            self._loading = asyncio.current_task()
        except RuntimeError:  # not on asyncio: said at start-up, when the server told
            raise RuntimeError(ASYNCIO_ONLY) from None
        try:
            await self._persistence.load(self)
        finally:
            self._loading = None
            if self._waiter is not None:
                self._waiter.set()
                self._waiter = None
        return self

    async def reload(self) -> None:
        """Read the session again from the store, with what other requests saved since
        this one loaded it.

        For a websocket or a streaming response that lives for minutes: a cart filled in
        another tab, or a login elsewhere that changed the data. Changes of this request
        must be stored first (:meth:`save`), or ``RuntimeError`` says so rather than drop
        them. A session ended meanwhile raises :class:`~coatcheck.SessionEndedError`, as
        :meth:`save` does, and nothing more of this request is stored. Typed values
        handed out before are not updated: ask :meth:`model` again. The cookie store
        keeps nothing on the server to read again (:class:`~coatcheck.NotSupportedError`).
        """
        self._require_loaded()
        await self._persistence.reload(self)

    @property
    def is_loaded(self) -> bool:
        """Whether the session was read from the store in this request."""
        return self._loaded

    async def save(self) -> None:
        """Store the changes made so far now, rather than when the response starts.

        For a websocket or a streaming response that lives long after it started, and
        for a handler that must know its changes are stored before it goes on: a
        failure is raised here (a :class:`~coatcheck.StoreError`, a
        :class:`~coatcheck.SerializationError` naming the key, a
        :class:`~coatcheck.SessionTooLargeError`, a
        :class:`~coatcheck.SessionEndedError` when another request ended the session, a
        :class:`~coatcheck.SessionConflictError` when parallel saves kept winning, or a
        :class:`~coatcheck.SessionLimitError` for a login past ``max_sessions_per_user``).
        The cookie of a new or rotated session still goes out with the response. Once
        the response has started, only a session that is already stored can be saved:
        a new one would need a cookie that can no longer be sent. Later changes are
        saved as usual, and a save with nothing to store writes nothing.
        """
        self._require_loaded()
        try:
            await self._persistence.save_now(self)
        except _ChangeRefused as exc:
            error = exc.error
        else:
            return
        raise error  # outside the except: the app's error, not one raised handling ours

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise SessionNotLoadedError(
                "the session is loaded lazily: use the FastAPI dependency "
                "(coatcheck.fastapi.SessionDep), `await session.load()`, or list this path "
                "in SessionConfig(eager_paths=[...]) so request.session works synchronously"
            )

    # -- the mapping --------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self._require_loaded()
        if self._models:
            self._sync_model(key)
        value = self._data[key]
        if type(value) in _MUTABLE:
            self._exposed = True
            if self._finished:
                self._changed_too_late()
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """``session[key]``, or ``default`` when it holds no such key."""
        # Not MutableMapping's, which goes through __getitem__ and KeyError: reads are
        # the commonest thing done with a session.
        if not self._loaded:
            self._require_loaded()
        if self._models:
            self._sync_model(key)
        try:
            value = self._data[key]
        except KeyError:
            return default
        if type(value) in _MUTABLE:
            self._exposed = True
            if self._finished:
                self._changed_too_late()
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._require_loaded()
        key = _text(key)
        self._data[key] = value
        self._changed()
        if type(value) not in _SCALAR:
            self._exposed = True
        if self._models:
            self._models.pop(key, None)  # what was set last wins
        if self._updates:
            self._forget_updates(key)

    def __delitem__(self, key: str) -> None:
        self._require_loaded()
        del self._data[key]
        self._changed()
        if self._models:
            self._models.pop(key, None)
        if self._updates:
            self._forget_updates(key)

    def _changed(self) -> None:
        """Count a change of the data, which the save looks for; one made by a task
        that outlived its request is watched (see :meth:`_changed_too_late`)."""
        self._modified = True
        self._edits += 1
        if self._finished:
            self._changed_too_late()

    def _changed_too_late(self) -> None:
        """A task that outlived its request changed the session, or was handed a value
        it may change in place (a socket framework's event handler, a job queue):
        nothing stores that unless the task saves, and a logout dropped without a word
        leaves the user signed in. Said if the task ends with the change unsaved, so a
        task that saves it, however slowly, is left in peace."""
        if self._finished is not True:
            return  # a task's end is awaited already
        try:
            task = asyncio.current_task()
        except RuntimeError:  # from a thread: no task to wait for
            task = None
        if task is None:
            self._check_saved()
        else:
            self._finished = task
            task.add_done_callback(self._check_saved)

    def _check_saved(self, _: object = None) -> None:
        self._finished = True
        try:
            if self._models:
                self._sync_models()  # a typed value changed in place counts
            unsaved = self._modified
            if not unsaved and self._exposed:  # a value handed out may have changed in place
                unsaved = self._persistence.serializer.dumps(self._data) != self._raw
        except (TypeError, ValueError):  # SerializationError too: a value no save could store
            unsaved = True
        if unsaved:
            # One budget for the app: a client can make up paths faster than anyone reads.
            limited(logger, ("finished", id(self._persistence)), _FINISHED.format(path=self._path))

    def _forget_updates(self, key: str) -> None:
        """A value set or deleted outright is no longer ``modify()``'s to recompute: a
        merge with a parallel save must keep it as the request left it."""
        self._updates = [update for update in self._updates if update[0] != key]

    def _withdraw(self, key: str, loaded: dict[str, Any]) -> None:
        """Take back the ``modify()`` calls on ``key``, one of which raised when run
        again: the key goes back to its loaded value, so that a merge keeps what the
        store holds for it."""
        self._forget_updates(key)
        if key in loaded:
            self._data[key] = loaded[key]
        else:
            self._data.pop(key, None)
        if self._models:
            self._models.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        self._require_loaded()
        if self._models:
            self._sync_models()
        return iter(list(self._data))

    def __len__(self) -> int:
        self._require_loaded()
        if self._models:
            self._sync_models()
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        self._require_loaded()
        if self._models and isinstance(key, str):
            self._sync_model(key)
        return key in self._data

    # What a dict has beyond MutableMapping, for code written for Starlette's session
    # (a dict): the newest key pops first, and "|" gives a plain dict.

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the newest key and its value, as ``dict.popitem`` does."""
        for key in reversed(self):  # the newest only
            return key, self.pop(key)
        raise KeyError("popitem(): session is empty")

    def __reversed__(self) -> Iterator[str]:
        return reversed(list(self))

    def __or__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return {**self, **other}

    def __ror__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return {**other, **self}

    def __ior__(self, other: Mapping[str, Any]) -> Session:
        self.update(other)
        return self

    def copy(self) -> dict[str, Any]:
        """A plain dict of the data, as Starlette's ``request.session.copy()`` gives."""
        return dict(self)

    def __copy__(self) -> dict[str, Any]:
        """The data, as :meth:`copy` gives it: a second live session would save apart."""
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(self.copy(), memo)

    def __reduce__(self) -> NoReturn:
        # Pickled, a session would carry its ID, the app's keys and its store: a task
        # queue's job or a cache would then hold a credential, or other users' data.
        raise TypeError(
            "a Session cannot be pickled: it holds its ID and the app's store; "
            "pickle session.copy(), a plain dict of its data"
        )

    def __repr__(self) -> str:
        if not self._loaded:
            return "<Session (not loaded)>"
        # The public id (no credential) tells two visitors' sessions apart: response
        # caches (fastapi-cache2, cashews) key a route's result by its arguments' text.
        return (
            f"<Session public_id={self._public_id!r} user={self._user_id!r} "
            f"keys={sorted(self._data)!r}>"
        )

    def modify(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """Replace ``session[key]`` with ``change(old)`` atomically; return the new value.

        Use it for read-modify-write of one value under parallel requests (append to a
        cart, bump a counter): if another request saved the session meanwhile, ``change``
        runs again on the value that request stored, so neither change is lost. It may
        therefore run more than once: make it a pure function of its argument, such as
        ``lambda cart: [*cart, item]``. A missing key starts from a copy of ``default``.
        Each call is kept, to be run again, until the session is saved: a WebSocket or a
        stream that keeps modifying should ``await session.save()`` now and then.
        ``change`` may refuse a parallel request's value by raising: the calls on ``key``
        are withdrawn, :meth:`save` raises that error, and a commit answers 409.
        """
        self._require_loaded()
        key = _text(key)
        if self._models:
            self._sync_model(key)  # a change made in place to its typed value counts
        value = change(self._data[key] if key in self._data else copy.deepcopy(default))
        if value is _REMOVE:
            self._data.pop(key, None)
        else:
            self._data[key] = value
            if type(value) not in _SCALAR:
                self._exposed = True
        self._changed()
        self._updates.append((key, change, default))
        if self._models:
            self._models.pop(key, None)
        return value

    def model(self, key: str, model: type[M]) -> M:
        """``session[key]`` as an instance of the Pydantic model ``model``.

        Change the instance in place: its new value is stored when the response starts
        (and again if it changes later, as any value handed out is). A missing value
        gives the model's defaults, stored only once changed, so reading creates no
        session; so does a stored value that no longer validates, with a warning. The
        same instance comes back for the same key within a request. Setting or
        deleting ``session[key]`` afterwards wins over the instance, and so do
        :meth:`clear`, :meth:`destroy` and a login as another user.
        """
        self._require_loaded()
        key = _text(key)
        if self._models is None:
            self._models = {}
        binding = self._models.get(key)
        if binding is None:
            check_model(model)
            binding = self._models[key] = Binding.of(key, model, self._data)
        elif binding.model is not model:
            raise TypeError(
                f"session value {key!r} is already in use as a {binding.model.__name__} "
                f"in this request, not a {model.__name__}"
            )
        if self._finished:
            self._changed_too_late()  # changed in place, it is stored only by a save
        return binding.instance  # type: ignore[no-any-return]

    def _sync_model(self, key: str) -> None:
        """Before the data is read under ``key``: what its typed value holds now, for a
        plain read or ``modify()`` in the same request after a change made in place."""
        assert self._models is not None
        binding = self._models.get(key)
        if binding is not None and binding.sync(key, self._data):
            self._modified = True
            self._edits += 1

    def _sync_models(self) -> None:
        """Write the typed values that changed back into the data, before a save.
        Callers check ``_models`` first, sparing the call on the usual request."""
        assert self._models is not None
        for key in self._models:
            self._sync_model(key)

    def clear(self) -> None:
        """Forget all data but keep the session, its ID and its user."""
        self._require_loaded()
        self._models = None
        self._updates = []
        if self._data:
            self._data.clear()
            self._changed()

    # -- messages for the next page ----------------------------------------------------

    def flash(self, message: str, category: str = "info") -> None:
        """Keep ``message`` for the next page that calls :meth:`pop_flashes`, typically
        the one a form's redirect leads to. It outlives a login, and a logout keeps the
        messages flashed after it (in a new anonymous session)."""
        self._require_loaded()
        _flash.add(self, message, category)

    def pop_flashes(self, category: str | None = None) -> list[Flash]:
        """The waiting messages, oldest first, now removed: each is shown once (a
        template that needs them twice keeps the list). ``category`` takes only those
        of one category and leaves the others waiting."""
        self._require_loaded()
        return _flash.take(self, category)

    # -- life cycle ---------------------------------------------------------------------

    def regenerate(self) -> None:
        """Give the session a new ID and keep its data; the old ID dies with this response.

        Call it whenever privileges change; :meth:`login` does it for you.
        """
        self._require_loaded()
        if self._cookie_final:
            raise ResponseStartedError(
                "the response has started, so the session can no longer get a new ID: "
                "call login() or regenerate() before responding (or before accepting a "
                "websocket)"
            )
        self._id = new_session_id()
        self._key = None
        self._edits += 1
        if not self._public_id:
            self._public_id = new_public_id()

    def login(
        self,
        user_id: str,
        *,
        remember: bool | None = None,
        idle_timeout: float | timedelta | None = None,
        absolute_timeout: float | timedelta | None = None,
    ) -> None:
        """Bind the session to ``user_id`` under a fresh ID, keeping its data (a cart).

        The absolute lifetime starts now, and so does :attr:`authenticated_at`: call it
        again for the same user once they confirm their password, before a sensitive
        action. Made so with no other argument, such a step-up keeps ``remember`` and
        the session's limits (the absolute one starts afresh once remember-me was
        switched off since); with any, the login chooses them again.
        ``remember=True`` gives a persistent cookie and the longer remember-me limits.
        ``idle_timeout`` and ``absolute_timeout`` shorten this session's limits below
        the configured ones (an administrator's, or one on a shared computer), until
        the next login that chooses. When another user was logged in on this session,
        their data is dropped: the next person at a shared computer must not inherit it.
        """
        self._require_loaded()
        if remember is None:
            if idle_timeout is None and absolute_timeout is None and self._user_id == user_id:
                # A step-up: a remembered session must not end with the browser for it,
                # nor one on a shared computer get the usual limits back.
                remember = self._remember
                idle_timeout = self.idle_timeout
                if self._created_at == self._authenticated_at:
                    # Chosen at the login (or the configured one); not what remains of a
                    # remembered session switched off since, which a new proof restarts.
                    absolute_timeout = self.absolute_timeout
            else:
                remember = False
        idle, absolute = self._persistence.config.login_limits(
            remember, idle_timeout, absolute_timeout
        )
        user_id = check_user_id(user_id)
        self.regenerate()
        if self._user_id is not None and self._user_id != user_id:
            # Messages this request flashed are for who signs in now ("Welcome, bob");
            # everything else was the previous user's.
            flashed = _flash.flashed_here(self)
            self._data.clear()
            self._models = None
            self._updates = []
            self._modified = self._fresh = True
            # Nor may audit logs and device lists link the new user's session to hers.
            self._public_id = new_public_id()
            _flash.queue_again(self, flashed)
        self._user_id = user_id
        self._remember = remember
        self._idle_timeout, self._absolute_timeout = idle, absolute
        self._created_at = self._authenticated_at = self._persistence.now()
        self._meta_changed = self._signing_in = True

    def logout(self) -> None:
        """End the session: delete it server-side and clear the cookie."""
        self.destroy()

    def destroy(self) -> None:
        """Delete the stored session and clear the cookie, unless new data is added after."""
        self._require_loaded()
        self._data.clear()
        self._models = None
        self._updates = []
        self._fresh = True
        self._changed()
        self._user_id = None
        self._remember = False
        self._authenticated_at = 0.0
        self._idle_timeout = self._absolute_timeout = 0
        self._id = None
        self._key = None
        self._public_id = ""
        # Data added after this starts a new session, with limits counted from now
        # rather than from the login that just ended.
        self._created_at = self._persistence.now()

    def csrf_token(self) -> str:
        """A token for forms (the ``csrf_token`` field) and API calls (``X-CSRF-Token``).

        Each call gives a differently masked copy of the same secret, so pages can be
        compressed safely. Browsers rarely need it (their requests carry
        ``Sec-Fetch-Site`` or ``Origin``); clients that send neither do.
        """
        self._require_loaded()
        return self._persistence.csrf.issue(self)

    # -- metadata -----------------------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        """Who logged in to this session (:meth:`login`), None when nobody has."""
        self._require_loaded()
        return self._user_id

    @property
    def public_id(self) -> str:
        """A stable, non-secret name for this session in device lists ("" until saved)."""
        self._require_loaded()
        return self._public_id

    @property
    def remember(self) -> bool:
        """Whether the session outlives the browser: a cookie with ``Max-Age`` and the
        remember-me limits. Set it to keep an anonymous cart across restarts, or when a
        user ticks "keep me signed in" after logging in; the session gets a new ID,
        since the browser must be sent a new cookie. An anonymous session is stored
        (and remembered) once it holds data."""
        self._require_loaded()
        return self._remember

    @remember.setter
    def remember(self, value: bool) -> None:
        self._require_loaded()
        if not isinstance(value, bool):
            raise TypeError(f"remember must be True or False, not {value!r}")
        if value is self._remember:
            return
        self.regenerate()
        if not value:
            # The browser-session limits, from now on, and never past the deadline the
            # remembered session had: counted from its login, an old one would be over.
            now = self._persistence.now()
            left = int(self._created_at + self._lifetime().absolute - now)
            usual = self._persistence.config.normal
            self._created_at = now
            self._absolute_timeout = max(left, 1) if left < usual.absolute else 0
            # A shorter idle limit the login chose is kept (capped by the browser
            # session's while it is one), and holds again if switched back on.
        elif self._user_id is not None and self._created_at != self._authenticated_at:
            # Switched off since its login (or adopted from another library, whose login
            # time is unknown): it keeps the deadline it has. Its limits counted anew
            # would let a session, or a stolen cookie, live for ever by switching off
            # and on; counted from the login, they would drop a shorter limit that the
            # login chose, which the switch off no longer holds.
            self._absolute_timeout = self._lifetime().absolute
        self._remember = value
        self._meta_changed = True

    @property
    def is_new(self) -> bool:
        """True when nothing is stored for this session yet."""
        self._require_loaded()
        return self._stored is None

    @property
    def ticket_ended(self) -> bool:
        """True when the request brought a ticket (its cookie, or the token header) for
        no live session: one that went unused past its limit, was signed out or
        revoked, or never was. A page can then say "your session ended, sign in again"
        rather than show the sign-in form without a word. The browser keeps sending
        that ticket, so it is true at each request until a new cookie replaces it (a
        sign-in, or anything stored)."""
        self._require_loaded()
        return self._ticket_ended

    @property
    def created_at(self) -> datetime:
        """When the session began (a login begins a new one), in UTC."""
        self._require_loaded()
        return utc(self._created_at)

    @property
    def authenticated_at(self) -> datetime | None:
        """When the user last proved who they are: the last :meth:`login`.

        ``None`` when nobody is logged in, and for a login adopted from Starlette's
        or starsessions' session, whose time coatcheck never saw.
        """
        self._require_loaded()
        if self._user_id is None or not self._authenticated_at:
            return None
        return utc(self._authenticated_at)

    def authenticated_within(self, max_age: float | timedelta) -> bool:
        """Whether the user logged in at most ``max_age`` (seconds or a timedelta) ago.

        For actions that must not ride on an old or stolen cookie (changing the
        password or the email address, revoking devices): when this is False, ask for
        the password again and call :meth:`login` with the same user, which keeps the
        data and rotates the ID. See also ``coatcheck.fastapi.recent_user``.
        """
        self._require_loaded()
        seconds = max_age.total_seconds() if isinstance(max_age, timedelta) else max_age
        if seconds < 0:
            raise ValueError(f"max_age must not be negative, got {max_age!r}")
        if self._user_id is None or not self._authenticated_at:
            return False
        return self._persistence.now() - self._authenticated_at <= seconds

    @property
    def last_seen_at(self) -> datetime:
        """When the store last recorded use of the session, in UTC: the sliding expiry
        is written back at most once per ``refresh_fraction`` of the idle limit."""
        self._require_loaded()
        return utc(self._last_seen_at)

    @property
    def expires_at(self) -> datetime:
        """When the session dies if unused: the earlier of the idle and absolute limits.

        Counted from this request when it writes the session (a change, a login, a due
        refresh of the sliding expiry), as the deadline it stores will be.
        """
        self._require_loaded()
        stored, persistence = self._stored, self._persistence
        now = persistence.now()
        if (
            stored is not None
            and self._key == stored.key
            and not (self._modified or self._fresh or self._meta_changed)
            and now < persistence.refresh_at(stored)
        ):
            return utc(self._expires_at)
        return utc(self._lifetime().deadline(now, self._created_at))

    @property
    def idle_timeout(self) -> timedelta:
        """How long this session may go unused: the configured limit of its kind, or the
        shorter one its login chose."""
        return timedelta(seconds=self._lifetime().idle)

    @property
    def absolute_timeout(self) -> timedelta:
        """How long after its login this session ends however active it is."""
        return timedelta(seconds=self._lifetime().absolute)

    def _lifetime(self) -> Lifetime:
        self._require_loaded()
        return self._persistence.config.lifetime(
            self._remember, self._idle_timeout, self._absolute_timeout
        )

    # -- the user's other sessions ------------------------------------------------------

    async def devices(self) -> list[Device]:
        """The logged-in user's live sessions, this one marked ``current``."""
        return await _devices.list_devices(self)

    async def can_login(self, user_id: str) -> bool:
        """Whether :meth:`login` as ``user_id`` would be let through now.

        False only with ``at_session_limit="refuse_login"`` while the user is at
        ``max_sessions_per_user``: ask before logging in to answer in the app's own
        words. A login refused anyway at save time becomes a 403.
        """
        return await _devices.can_login(self, user_id)

    async def revoke(self, public_id: str) -> bool:
        """End a session of this user (this one too) by its public id: False if there is
        none, or if a parallel request ended it first (that request announced it)."""
        return await _devices.revoke(self, public_id)

    async def revoke_others(self) -> int:
        """End every other session of this user ("log out my other devices")."""
        return await _devices.revoke_user(self, keep_current=True)

    async def revoke_all(self, user_id: str | None = None) -> int:
        """End every session of this user, this one included ("log out everywhere").

        With ``user_id``, every session of that user, from a request of anyone's: an
        administrator suspending an account, a password reset from an emailed link.
        This session ends too if it is one of them, and a :meth:`login` after it starts
        afresh. Returns how many were live; events name ``user_id``.
        """
        if user_id is not None:
            user_id = check_user_id(user_id)
        return await _devices.revoke_user(self, keep_current=False, user_id=user_id)

    # -- for the persistence layer ------------------------------------------------------

    def _adopt(
        self,
        session_id: str | None,
        record: SessionRecord | None,
        data: dict[str, Any],
        now: float,
        idle: int,
    ) -> None:
        self._data = data
        self._stored = record
        self._id = session_id if record is not None else None
        self._key = record.key if record is not None else None
        self._modified = self._exposed = self._meta_changed = self._fresh = False
        self._imported = False
        self._imported_values = None
        self._import_id = None
        self._refresh_now = False
        self._updates = []
        self._models = None
        self._outgoing = []
        self._halted = self._orphan = self._missed = self._earlier_import = None
        self._unserved = None
        if not self._loaded:  # a reload() goes on counting, and may wait for a save
            self._ticket_ended = False  # load() says otherwise, once it knows
            self._edits = 0
            self._writer = self._written = self._deferred = None
            self._announcing = self._landed = False
        self._signing_in = self._announced = False
        if record is None:
            self._raw = None
            self._public_id = ""
            self._user_id = None
            self._remember = False
            self._created_at = self._last_seen_at = now
            self._authenticated_at = 0.0
            self._idle_timeout = self._absolute_timeout = 0
            self._expires_at = now + idle
        else:
            self._raw = record.data
            self._public_id = record.public_id
            self._user_id = record.user_id
            self._remember = record.remember
            self._created_at = record.created_at
            self._authenticated_at = record.authenticated_at
            self._idle_timeout = record.idle_timeout
            self._absolute_timeout = record.absolute_timeout
            self._last_seen_at = record.last_seen_at
            self._expires_at = record.expires_at
        self._loaded = True
