"""The pure ASGI middleware that gives every request a lazy session.

A request whose handler never asks for the session costs one small object and no
store I/O. The session is committed when the response starts, so the new cookie and
any store failure can still shape the response; what changes after that is stored
before the last part of a streamed body goes out, and what changes later still (in a
background task, a websocket) once the app returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from starlette.websockets import WebSocketDisconnect

from ._asgi import (
    ASGIApp,
    Headers,
    Message,
    PathPrefixes,
    Receive,
    Scope,
    Send,
    header,
    response,
)
from ._audit import once, security_event
from ._context import ASYNCIO_ONLY, cookie_taken, current_session, shadowed
from ._cookies import cookie_needle
from ._late import commit_late
from ._persist import Persistence, outgoing
from ._printable import printable
from ._websocket import SocketClosed, SocketWatch, close_socket
from .config import SessionConfig
from .csrf import SAFE_METHODS, overrides_method
from .events import EventHook
from .exceptions import (
    CoatcheckError,
    ConfigurationError,
    SessionConflictError,
    SessionEndedError,
    SessionLimitError,
    SessionTooLargeError,
    StoreError,
    StoreUnavailableError,
)
from .serializers import Serializer
from .session import Session
from .stores.base import Store

logger = logging.getLogger("coatcheck")

UnavailableApp = Callable[[int], ASGIApp]
RefusedApp = Callable[[int, str], ASGIApp]

# The message that starts a response: the session is committed just before it goes out.
# A WebSocket refused with an HTTP response (``send_denial_response``) starts one too.
_RESPONSE_START = ("http.response.start", "websocket.accept", "websocket.http.response.start")
# What the app sends on an open socket: a refusal's HTTP answer is none, and a socket
# closed in its middle would cut it short.
_SOCKET_SENDS = ("websocket.send", "websocket.close")
# What a save can fail with, answered for the client rather than left to become a 500.
_SAVE_FAILURES = (
    StoreError,
    SessionTooLargeError,
    SessionEndedError,
    SessionConflictError,
    SessionLimitError,
)
# Schemes over which a Secure cookie is set but, by most clients, never sent back.
_PLAIN = ("http", "ws")
_JSON = b"application/json"
_PLAIN_HTTP_WARNING = (
    "a Secure session cookie went out in reply to a plain-HTTP request; most clients will "
    "not send it back over plain HTTP. In tests, give the client "
    "base_url=coatcheck.testing.TEST_BASE_URL; behind a TLS proxy, let the server trust the "
    "proxy's forwarded headers (uvicorn --proxy-headers); for local development over HTTP, "
    "use CookieConfig(secure=False)."
)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _refuse_start(receive: Receive, send: Send) -> None:
    """Fail the start-up of a server that runs the app on another event loop (trio).

    Told by ``lifespan.startup.failed``, the server stops; an error raised here instead
    would only make it go on without a lifespan, as ASGI asks, and answer 500 to every
    request that needs a session.
    """
    logger.error("coatcheck cannot start: %s", ASYNCIO_ONLY)
    if (await receive())["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.failed", "message": ASYNCIO_ONLY})


def _check_answer(answer: Callable[..., ASGIApp], arguments: tuple[Any, ...], usage: str) -> None:
    """Refuse at start-up what would fail only at the first outage or refusal, as a 500."""
    try:
        inspect.signature(answer).bind(*arguments)
    except TypeError:
        raise ConfigurationError(usage) from None
    except ValueError:  # no signature to check (a builtin): left to the first call
        pass


_UNAVAILABLE_USAGE = (
    "unavailable= takes the Retry-After seconds and returns the ASGI app that "
    "answers, such as lambda retry_after: JSONResponse({...}, 503, "
    'headers={"Retry-After": str(retry_after)}); it is not the response itself'
)
_REFUSED_USAGE = (
    "refused= takes the status (403, 409 or 413) and the reason, and returns the ASGI app "
    "that answers, such as lambda status, detail: JSONResponse({'detail': detail}, status)"
)


class SessionMiddleware:
    """Server-side sessions for ``http`` and ``websocket`` scopes.

    ``scope["session"]`` (``request.session``) holds a :class:`Session`. It is loaded on
    first ``await`` (the FastAPI dependency does that), or before the handler runs for
    paths under ``config.eager_paths``, where synchronous ``request.session`` code
    written for Starlette's SessionMiddleware works unchanged.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        config: SessionConfig | None = None,
        *,
        serializer: Serializer | None = None,
        unavailable: UnavailableApp | None = None,
        refused: RefusedApp | None = None,
        events: Sequence[EventHook] = (),
    ) -> None:
        self.app = app
        self.store = store
        self.config = config or SessionConfig()
        try:
            self._persistence = Persistence(store, self.config, serializer, events)
            if unavailable is not None:
                _check_answer(unavailable, (5,), _UNAVAILABLE_USAGE)
            if refused is not None:
                _check_answer(refused, (409, "why"), _REFUSED_USAGE)
        except ConfigurationError as exc:
            # Starlette builds middleware at the app's first call, the lifespan start-up,
            # where uvicorn's default ``--lifespan auto`` swallows the error and serves
            # on: logged, it shows at start-up rather than at the first request.
            logger.error("coatcheck cannot start: %s", exc)
            raise
        self._eager = PathPrefixes(self.config.eager_paths) if self.config.eager_paths else None
        self._unavailable = unavailable or _unavailable_response
        self._refused = refused or _refusal
        self._csrf = self._persistence.csrf
        self._plain_http_warned = not self.config.cookie.secure
        self._shadow_warned = self._cookie_taken_warned = False
        self._set_our_cookie = b"set-cookie", cookie_needle(self.config.cookie.name)
        self._recheck: int | None = self.config.websocket_recheck  # type: ignore[assignment]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                if not _on_asyncio():
                    await _refuse_start(receive, send)
                    return
                send = self._lifespan_send(send)
            await self.app(scope, receive, send)
            return
        # Every request takes this path: it is kept short, since a route that never
        # touches its session should cost what a bare endpoint does.
        session = Session(self._persistence, scope)
        scope["session"] = session
        token = current_session.set(session)
        started = failed = streamed = ended = False
        status = 200
        left: int | None = None  # of a streamed body's declared Content-Length
        head: Message = {}
        watch = None
        if kind == "websocket" and self._recheck is not None:
            watch = SocketWatch(self._persistence, session, self._recheck, send, scope)
            receive = watch.receive(receive)

        async def send_wrapper(message: Message) -> None:
            nonlocal started, failed, status, streamed, ended, left, head
            if failed:
                if kind == "websocket":  # refused for it: a feed that only sends stops
                    raise SocketClosed(1013, "coatcheck refused this websocket: see the log")
                return  # the app's response, replaced by the error that went out
            if message["type"] in _RESPONSE_START:
                started = session._cookie_final = True
                status = message.get("status", 200)
                head = message
                if scope.get("session") is not session:
                    if not self._shadow_warned:
                        self._warn_if_shadowed(scope)
                    if not self._cookie_taken_warned:
                        self._warn_if_cookie_taken(message)
                if session._loaded:
                    if self._persistence.settled(session) and not session._outgoing:
                        _merge_headers(message, [], self._persistence.vary)
                    elif not await self._commit(session, message, scope, receive, send):
                        failed = True
                        return
            elif message["type"] == "websocket.close" and not started:
                # Refused before accept(): the handshake's answer, a 403. What the app
                # changed first (a logout above all) must not be dropped with it.
                started = session._cookie_final = True
                status = 403
                if session._loaded and (
                    session._outgoing or not self._persistence.settled(session)
                ):
                    # Nothing more is stored unless the refusal carried the session.
                    failed = not await self._refuse_socket(session, message, scope, receive, send)
                    return
            elif message["type"] == "http.response.body":
                complete = True
                if message.get("more_body", False):
                    if not streamed:
                        streamed = True  # loaded or not yet: the body may load it later
                        left = _declared_length(head)
                    # With a Content-Length, the client has it all at its last byte,
                    # before the empty part that ends a stream: stored before that byte.
                    if left is not None:
                        left -= len(message.get("body", b""))
                    complete = left is not None and left <= 0
                if (
                    complete
                    and not ended
                    and session._loaded
                    and (session._modified or (streamed and (session._exposed or session._models)))
                    and not self._persistence.stateless
                ):
                    ended = True
                    await self._store_before_end(session, status, streamed, scope)
            elif (
                watch is not None
                and message["type"] in _SOCKET_SENDS
                and await watch.ended(use=False)
            ):
                if message["type"] == "websocket.close" or watch.quiet():
                    # Closed for it, this message with it. An app waiting in receive()
                    # learns from there, as when a client goes away: frameworks that push
                    # from a task of their own (Strawberry) then stop quietly.
                    return
                raise SocketClosed(1008, "the session ended; coatcheck closed this websocket")
            await send(message)

        try:
            # Safe methods skip the CSRF guard unless a ``_method`` override could make
            # them unsafe inside the app (see CSRFGuard.needs_check, which decides).
            if kind == "http" and (
                scope["method"] not in SAFE_METHODS
                or ((query := scope.get("query_string")) and overrides_method(query))
            ):
                checked = await self._check_forgery(scope, receive, send, session)
                if checked is None:
                    return
                receive = checked
            elif kind == "websocket" and (refusal := self._csrf.check_handshake(scope)):
                await self._reject_forgery(scope, receive, send, session, refusal)
                return
            if self._eager is not None and self._eager.match(scope):
                await session.load()
            await self.app(scope, receive, send_wrapper)
            # Changed since the response started, or may have been (a value handed out
            # can be changed in place); the usual read skips this without a coroutine.
            if started and not failed and session._loaded:
                if session._models:
                    session._sync_models()  # a typed value changed in place counts
                if (session._modified or session._exposed) and not (
                    watch is not None and watch.closed
                ):
                    await commit_late(self._persistence, session, status, _route(scope))
        except _SAVE_FAILURES as exc:
            # From the store, or from a save() or reload() the app did not catch.
            if not started:
                await self._answer_failure(scope, receive, send, exc, session)
            elif kind != "websocket":
                raise
            elif not (watch is not None and watch.closed):
                # An accepted socket is closed with the code it would get before being
                # accepted, where the server would drop it with a traceback.
                await self._answer_failure(scope, receive, send, exc, session, accepted=True)
        except (SocketClosed, WebSocketDisconnect):
            if not (failed or (watch is not None and watch.closed)):
                raise
            # The app stopped at a send after its socket was closed for it: done.
        except Exception:
            if not started and session._loaded and not self._persistence.ended_by_cookie(session):
                # The error page goes out past this middleware, without its headers,
                # but a logout made before the error still ends a server-side session
                # (at status 500 nothing else is stored). Where the cookie is the
                # session, or an old library's cookie must go, it cannot.
                with contextlib.suppress(*_SAVE_FAILURES):
                    await self._persistence.commit(session, 500)
            raise
        finally:
            # In-process callers (tests, mounted apps) share one context across requests.
            current_session.reset(token)
            session._finished = True  # a task that changes it later must save it

    def _warn_if_shadowed(self, scope: Scope) -> None:
        """Say once that another session middleware inside this one replaced
        ``request.session``: the app's data would go into that one's cookie, unnoticed.
        A mounted app's own coatcheck session is not such a replacement."""
        found = scope.get("session")
        if found is not None and not isinstance(found, Session):
            self._shadow_warned = True
            logger.warning(shadowed(found))

    def _warn_if_cookie_taken(self, message: Message) -> None:
        """Say once that the response carries a cookie of coatcheck's name set inside
        it, by the session middleware that replaced ``request.session`` (Starlette's
        default name is coatcheck's development one): the browser keeps one of the two,
        and its user is signed out on every page of that other part of the app."""
        kind, needle = self._set_our_cookie
        for name, value in message.get("headers", ()):
            if name.lower() == kind and value.startswith(needle):
                self._cookie_taken_warned = True
                logger.error(cookie_taken(self.config.cookie.name))
                return

    async def _commit(
        self, session: Session, message: Message, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Apply the session's changes before ``message`` starts the response.

        Returns False when the save failed and an error response went out instead.
        """
        starting = session._stored is None
        try:
            extra = await self._persistence.commit(session, message.get("status", 200))
        except _SAVE_FAILURES as exc:
            await self._answer_failure(scope, receive, send, exc, session)
            return False
        if (
            starting
            and extra
            and session._stored is not None
            and session._user_id is None
            and self._persistence.config.cookie.samesite != "none"  # else it came along
        ):
            _warn_if_cross_site_start(scope)
        if session._outgoing:  # an early save() set the cookie, or this commit resets it
            extra = outgoing(session._outgoing, extra)
        if (
            extra
            and not session._by_header
            and not self._plain_http_warned
            and scope.get("scheme") in _PLAIN
        ):
            self._plain_http_warned = True
            logger.warning(_PLAIN_HTTP_WARNING)
        _merge_headers(message, extra, self._persistence.vary)
        return True

    async def _refuse_socket(
        self, session: Session, close: Message, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Commit a session changed by a handshake the app refused with ``close``, and
        say whether it was: if not, nothing the app changes later may be stored.

        A server that can answer the handshake over HTTP gets the 403 it would have
        sent, with the session's headers (a new or cleared cookie). Elsewhere no cookie
        can go out: only changes that need none are stored, as a logout's delete is.
        """
        if "websocket.http.response" in (scope.get("extensions") or {}):
            start = {"type": "websocket.http.response.start", "status": 403, "headers": []}
            if not await self._commit(session, start, scope, receive, send):
                return False  # answered with the failure instead
            await send(start)
            await send({"type": "websocket.http.response.body", "body": b""})
            return True
        persistence = self._persistence
        if (
            session._fresh
            and session._user_id is None
            and session._stored is not None
            and not persistence.ended_by_cookie(session)
        ):
            # A logout stands; what the app added after it needs a cookie that cannot go.
            session.destroy()
        stored = False
        if not session._outgoing and not persistence.needs_new_cookie(session):
            try:
                await persistence.commit(session, 403)
                stored = True
            except _SAVE_FAILURES as exc:
                logger.warning("a refused websocket's session change was not stored: %s", exc)
        await send(close)
        return stored

    async def _store_before_end(
        self, session: Session, status: int, streamed: bool, scope: Scope
    ) -> None:
        """Store what changed while the body went out, before its last part does: a
        client that has read the whole response then finds the change in its next
        request. A failure now leaves the response unfinished rather than complete."""
        if streamed and session._models:
            session._sync_models()
        if session._modified or streamed:
            await commit_late(self._persistence, session, status, _route(scope))

    async def _answer_failure(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exc: CoatcheckError,
        session: Session,
        *,
        accepted: bool = False,
    ) -> None:
        """The response to a save that failed or timed out: not known to be stored.

        An earlier ``save()`` of this request did store its change, and may have moved
        the session to a new ID: its cookie goes out with this answer too, or the
        browser would be left holding the old ID, which that save deleted.
        """
        websocket = scope["type"] == "websocket"
        if websocket and not accepted and "websocket.http.response" in scope.get("extensions", {}):
            # Refused before it was accepted, by a server that can say why over HTTP:
            # a 503 with Retry-After, as a request gets, rather than a bare 403.
            send, websocket = _as_denial(send), False
        if not websocket:  # it read the session: Vary, and any earlier save's cookie
            early = session._outgoing if session._loaded else []
            send = _adding(send, early, self._persistence.vary)
        if isinstance(exc, StoreError):
            await self._answer_unavailable(scope, receive, send, exc, websocket)
        elif isinstance(exc, (SessionEndedError, SessionConflictError)):
            await self._answer_conflict(scope, receive, send, exc, websocket)
        elif isinstance(exc, SessionTooLargeError):
            if websocket:
                await close_socket(send, 1009, "session too large")
                return
            await self._refuse(413, str(exc).capitalize(), scope, receive, send)
        else:  # SessionLimitError: a login past the user's limit
            if websocket:
                await close_socket(send, 1008, "too many sessions")
                return
            await self._refuse(403, str(exc).capitalize() + ".", scope, receive, send)

    async def _check_forgery(
        self, scope: Scope, receive: Receive, send: Send, session: Session
    ) -> Receive | None:
        """The ``receive`` the app must use, or None once a forged request got its 403."""
        if not self._csrf.needs_check(scope):
            return receive
        failure, receive = await self._csrf.check(scope, receive, session)
        if failure is None:
            return receive
        if not await self._csrf.relay(scope, receive, send):
            await self._reject_forgery(scope, receive, send, session, failure)
        return None

    async def _reject_forgery(
        self, scope: Scope, receive: Receive, send: Send, session: Session, reason: str
    ) -> None:
        """403, with nothing in the session changed and no cookie touched."""
        method = printable(scope.get("method", "websocket handshake"))
        path = printable(scope["path"])  # the client's: no forged line, no escape codes
        security_event("forgery", f"CSRF check failed on {method} {path}: {reason}")
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with a 403.
            await send({"type": "websocket.close", "code": 1008, "reason": "cross-site"})
        else:
            await self._refuse(403, f"CSRF check failed: {reason}", scope, receive, send)
        # Whose session it targeted, where the token check loaded it: an audit log of
        # forged requests names the user they were aimed at.
        loaded = session._loaded
        user_id = session._user_id if loaded else None
        public_id = (session._public_id or "") if loaded and session._stored else ""
        await self._persistence.emit(session, "csrf_rejected", user_id, public_id)

    async def _refuse(
        self, status: int, detail: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """coatcheck's own 403, 409 or 413: the app's ``refused=`` answers requests; a
        WebSocket handshake refused over HTTP gets the JSON, as no page is shown there."""
        answer = self._refused if scope["type"] == "http" else _refusal
        await answer(status, detail)(scope, receive, send)

    async def _answer_unavailable(
        self, scope: Scope, receive: Receive, send: Send, exc: StoreError, websocket: bool
    ) -> None:
        """A 503 with Retry-After. An outage passes by itself; any other store failure (a
        file that is not a database, a damaged record) is logged as an error for the
        operator, but the client still gets a clear answer rather than a 500."""
        retry_after = self.config.retry_after
        if isinstance(exc, StoreUnavailableError):
            retry_after = exc.retry_after or retry_after
        self._persistence.unavailable(exc)  # logged there, a line a minute at most
        if websocket:
            await close_socket(send, 1013, "try again later")
            return
        await self._unavailable(retry_after)(scope, receive, send)

    async def _answer_conflict(
        self, scope: Scope, receive: Receive, send: Send, exc: CoatcheckError, websocket: bool
    ) -> None:
        """A 409 that says nothing was saved. The cookie is left alone: after a parallel
        login the browser already holds a newer one, which clearing would log out."""
        ended = isinstance(exc, SessionEndedError)
        if websocket:
            reason = "session ended" if ended else "session busy, try again"
            await close_socket(send, 1008 if ended else 1013, reason)
            return
        if ended:
            detail = (
                "This session was ended or moved by another request (a sign-in or sign-out "
                "elsewhere); nothing was saved."
            )
        else:
            # Parallel saves kept winning, or one wrote what this process cannot read
            # (sealed under a key it does not hold yet, mid-deploy): the log says which.
            logger.warning("session save gave up: %s", exc)
            detail = (
                "This session was changed by another request meanwhile; nothing was saved, "
                "please retry."
            )
        await self._refuse(409, detail, scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        """Close the store once the app's own shutdown handlers have run."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self._persistence.aclose()
            await send(message)

        return wrapped


def _warn_if_cross_site_start(scope: Scope) -> None:
    """Point out, once per route, a session started by a form another site posted: the
    browser sent no ``SameSite`` cookie with it, so the new cookie replaces the one it
    holds, and its user is signed out (see CSRFConfig.relay_paths)."""
    if scope.get("method") in SAFE_METHODS or scope["type"] != "http":
        return
    if header(scope["headers"], b"sec-fetch-site") != b"cross-site":
        return
    key, name = _route(scope)
    once(
        logger,
        ("cross-site start", key),
        f"a post from another site to {name} started a new session: the browser sent no "
        "session cookie with it (SameSite), and the new cookie replaces the one it holds, "
        "signing its user out. For a provider's answer posted back (OpenID Connect "
        "form_post, SAML), list the path in CSRFConfig(relay_paths=[...]) instead of "
        "exempt_paths.",
    )


def _route(scope: Scope) -> tuple[Hashable, str]:
    """What a line said once for each route is keyed by, and how it names the request:
    the route the app matched (one for every path of ``/items/{item_id}``), else the
    path. Named by path and pattern, since a pattern alone leaves out the prefix of a
    router or a mount."""
    path = str(scope.get("path", ""))
    route = scope.get("route")
    pattern = getattr(route, "path", None)
    if route is None or not isinstance(pattern, str):
        return path, repr(path)
    return ("route", id(route)), f"{path!r} (route {pattern!r})"


def _merge_headers(message: Message, extra: Headers, vary: tuple[bytes, ...]) -> None:
    """Add the session's headers, and ``Vary: Cookie`` (and the token header, when
    there is one) since the response read the session."""
    headers: Headers = message.get("headers", [])
    if type(headers) is not list:  # ASGI allows any iterable, read twice below
        headers = list(headers)
    if extra:
        if any(name == b"cache-control" for name, _ in extra):
            headers = [pair for pair in headers if pair[0].lower() != b"cache-control"]
        headers = [*headers, *extra]
    # Every response that read the session comes here: its usual headers are told
    # apart from ``Vary`` by length, without lowering each name.
    for name, _ in headers:
        if len(name) == 4 and name.lower() == b"vary":
            break
    else:  # the usual response: no Vary of the app's own
        message["headers"] = [*headers, (b"vary", b", ".join(vary))]
        return
    present: set[bytes] = set()
    first = -1
    for at, (name, value) in enumerate(headers):
        if len(name) == 4 and name.lower() == b"vary":
            # Whole field names: ``Vary: X-Cookie-Consent`` does not cover ``Cookie``.
            if first == -1:
                first = at
            present.update(field.strip().lower() for field in value.split(b","))
    if b"*" not in present:
        missing = [field for field in vary if field.lower() not in present]
        if missing:
            # Added to the app's own line, not as a second one: Starlette before 1.0
            # reads only the first Vary line, and GZip or CORS middleware outside
            # this one would then drop ``Cookie`` as it rewrote the header.
            name, value = headers[first]
            headers = list(headers)
            headers[first] = (name, b", ".join([value, *missing] if value.strip() else missing))
    message["headers"] = headers


def _declared_length(start: Message) -> int | None:
    """The Content-Length a response start declares, if any."""
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _as_denial(send: Send) -> Send:
    """``send`` for an HTTP response that refuses a WebSocket handshake (ASGI's
    ``websocket.http.response`` extension); Starlette's responses name it so already."""

    async def wrapped(message: Message) -> None:
        kind = message["type"]
        if kind.startswith("http.response."):
            message = {**message, "type": "websocket." + kind}
        await send(message)

    return wrapped


def _adding(send: Send, extra: Headers, vary: tuple[bytes, ...]) -> Send:
    """``send``, with ``extra`` headers added to the response's start."""

    async def wrapped(message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.http.response.start"):
            _merge_headers(message, extra, vary)
        await send(message)

    return wrapped


def _unavailable_response(retry_after: int) -> ASGIApp:
    body = b'{"detail":"Session store unavailable, please retry shortly."}'
    return response(503, _JSON, body, [(b"retry-after", str(retry_after).encode())])


def _refusal(status: int, detail: str) -> ASGIApp:
    return response(status, _JSON, json.dumps({"detail": detail}).encode(), [])
