"""The current request's session, reachable without the request object.

The middleware sets it once per request. FastAPI dependencies read it instead of
asking for ``Request`` (which costs FastAPI a parameter to resolve on every call),
and the OpenAPI schema, built while serving ``/openapi.json``, reads the cookie
name each app really uses from it (or, built outside a request, from ``described``).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .config import SessionConfig
    from .session import Session

T = TypeVar("T")

DEFAULT_COOKIE_NAME = "__Host-session"
NOT_INSTALLED = "coatcheck.SessionMiddleware is not installed on this app"
_INSIDE = (
    "coatcheck.SessionMiddleware is installed, but runs inside the code that asks for the "
    "session here: put it outside any middleware that reads the session (Starlette's "
    "AuthenticationMiddleware, say), that is after it in add_middleware() calls, whose "
    "last runs first, or before it in a middleware=[...] list, whose first runs first"
)
_SHADOWED = (
    "request.session holds a {kind}, not coatcheck's session: another session middleware "
    "inside coatcheck's replaced it (Starlette's SessionMiddleware, which SQLAdmin, "
    "NiceGUI and FastHTML's fast_app() add). Remove it if nothing needs it (see the "
    "README's eager_paths section); where its framework does, keep it under a cookie "
    "name of its own, and reach coatcheck's session with "
    "`await coatcheck.fastapi.get_session()`"
)
_COOKIE_TAKEN = (
    "a response set a cookie named {name!r}, coatcheck's own cookie, from inside "
    "coatcheck: the browser keeps only one of the two, so its user is signed out. Give "
    "the other a name of its own: Starlette's SessionMiddleware(session_cookie=...), "
    "which NiceGUI, SQLAdmin and FastHTML add with the name 'session', or coatcheck's "
    "CookieConfig(name=...)"
)


def not_installed(scope: Mapping[str, Any]) -> str:
    """Why a request has no coatcheck session: no middleware, or one added in an order
    that runs it inside the code asking (an app's ``add_middleware`` calls, reversed)."""
    from .middleware import SessionMiddleware

    stack = getattr(scope.get("app"), "user_middleware", ())
    classes = [getattr(entry, "cls", None) for entry in stack]
    if any(isinstance(cls, type) and issubclass(cls, SessionMiddleware) for cls in classes):
        return _INSIDE
    return NOT_INSTALLED


def shadowed(found: object) -> str:
    """Why ``request.session`` holds ``found``, which is not a coatcheck session."""
    kind = type(found)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return _SHADOWED.format(kind=name)


def cookie_taken(name: str) -> str:
    """Why a cookie set inside coatcheck under its own name signs its users out."""
    return _COOKIE_TAKEN.format(name=name)


ASYNCIO_ONLY = (
    "coatcheck runs on asyncio (uvicorn, hypercorn's asyncio or uvloop worker, granian), "
    "not on trio: its stores' drivers (redis-py, psycopg) are asyncio-only"
)
current_session: ContextVar[Session | None] = ContextVar("coatcheck_session", default=None)
# The configuration a schema is built for outside any request (coatcheck.fastapi.openapi).
described: ContextVar[SessionConfig | None] = ContextVar("coatcheck_described", default=None)


async def apart(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` run as a task of its own, in an empty context.

    A socket, a pool's worker or a task keeps a copy of the context it was made in for
    as long as it lives. Made while serving a request (stores connect lazily), it would
    keep alive what the request's context holds: coatcheck's session (its data, its ID,
    its cookie), and whatever the app or its tools keep there (Sentry keeps the request).
    Cancelling the caller cancels ``work`` too.
    """
    return await contextvars.Context().run(asyncio.ensure_future, work)


def _config() -> SessionConfig | None:
    session = current_session.get()
    return described.get() if session is None else session._persistence.config


def current_cookie_name() -> str:
    config = _config()
    return DEFAULT_COOKIE_NAME if config is None else config.cookie.name


def current_token_header() -> str | None:
    config = _config()
    return None if config is None else config.token_header
