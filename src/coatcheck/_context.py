"""The current request's session, reachable without the request object.

The middleware sets it once per request. FastAPI dependencies read it instead of
asking for ``Request`` (which costs FastAPI a parameter to resolve on every call),
and the OpenAPI schema, built while serving ``/openapi.json``, reads the cookie
name each app really uses from it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

DEFAULT_COOKIE_NAME = "__Host-session"
current_session: ContextVar[Session | None] = ContextVar("coatcheck_session", default=None)


def current_cookie_name() -> str:
    session = current_session.get()
    return DEFAULT_COOKIE_NAME if session is None else session._persistence.config.cookie.name


def current_token_header() -> str | None:
    session = current_session.get()
    return None if session is None else session._persistence.config.token_header
