"""The cookie name as the current app configured it, for OpenAPI documents.

FastAPI builds its schema while serving ``/openapi.json``, inside the middleware,
so the security scheme can name the cookie each app really uses.
"""

from __future__ import annotations

from contextvars import ContextVar

DEFAULT_COOKIE_NAME = "__Host-session"
cookie_name_var: ContextVar[str] = ContextVar("coatcheck_cookie_name", default=DEFAULT_COOKIE_NAME)
