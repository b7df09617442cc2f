"""Assembling the demo app: settings, store, middleware, routes and static files.

``create_app`` is for code and tests; ``create_app_from_env`` is the factory that
``coatcheck demo`` hands to uvicorn, which may start it in several processes.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response

from .. import __version__
from .._asgi import ASGIApp, Message, Receive, Scope, Send
from ..exceptions import NotSupportedError
from ..fastapi import not_authenticated
from ..middleware import SessionMiddleware
from ..session import Session
from ..stores import store_from_url
from ..stores.base import cookie_sealer_of
from .inputs import PageError, from_page
from .pages import STATIC_DIR, refused_page, render_home, unavailable_page
from .routes import CONFIRM_FIRST, TOO_LARGE, router
from .settings import DEFAULT_STORE, SHARED_COMPUTER_IDLE, DemoSettings

logger = logging.getLogger("coatcheck.demo")

INSECURE_WARNING = (
    "session cookies are NOT Secure (plain HTTP): this is for local development only;"
    " use --secure-cookies behind HTTPS"
)


def create_app(
    *,
    store_url: str = DEFAULT_STORE,
    secure_cookies: bool = False,
    idle_timeout: int | None = None,
    absolute_timeout: int | None = None,
    secret: str = "",
    max_sessions: int | None = None,
) -> FastAPI:
    """The demo app; raises ``ConfigurationError`` for a bad store URL or timeouts.

    ``secret`` signs CSRF tokens; processes serving one site must share it, or a
    token from one worker fails on the next. Empty: a random key for this process.
    ``max_sessions`` refuses a login that would give its user more sessions than that.
    """
    settings = DemoSettings(
        store_url, secure_cookies, idle_timeout, absolute_timeout, secret, max_sessions
    )
    config = settings.session_config()
    store = store_from_url(store_url)
    if not secure_cookies:
        logger.warning(INSECURE_WARNING)

    app = FastAPI(
        title="coatcheck demo",
        version=__version__,
        description="Server-side sessions: the cookie holds a ticket, the store keeps the data.",
    )
    app.state.store = store  # for tests and admin code; the middleware closes it at shutdown
    app.state.cookie_name = config.cookie.name
    app.state.secure_cookies = config.cookie.secure
    app.state.store_label = describe_store(store_url)
    app.state.stateless = cookie_sealer_of(store) is not None  # sessions live in cookies
    # What a sign-in on a shared computer asks for: never more than the configured limit.
    app.state.shared_idle = min(int(SHARED_COMPUTER_IDLE.total_seconds()), config.normal.idle)
    app.add_middleware(_JSONNotCached)
    app.add_middleware(
        SessionMiddleware,
        store=store,
        config=config,
        unavailable=unavailable_page(app.state.store_label),
        refused=refused_page,
    )
    app.add_exception_handler(PageError, _show_page_error)
    app.add_exception_handler(HTTPException, _page_for_form_posts)
    app.add_exception_handler(NotSupportedError, _not_supported)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class _JSONNotCached:
    """Every JSON answer here is one visitor's (a cart, devices and their addresses, or
    a refusal): no cache keeps it, nor shows it again on Back once the session ended
    elsewhere. The pages set their own headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower(): value for name, value in headers}
                json = names.get(b"content-type", b"").startswith(b"application/json")
                if json and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


def create_app_from_env() -> FastAPI:
    """The uvicorn factory: settings come from ``COATCHECK_DEMO_*`` variables."""
    settings = DemoSettings.from_env()
    return create_app(
        store_url=settings.store_url,
        secure_cookies=settings.secure_cookies,
        idle_timeout=settings.idle_timeout,
        absolute_timeout=settings.absolute_timeout,
        secret=settings.secret,
        max_sessions=settings.max_sessions,
    )


def describe_store(url: str) -> str:
    """How the page names the store: enough to find it, without query options."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return f"the SQLite file {parts.path[1:]}"
    if parts.scheme == "memory":
        return "this process's memory"
    if parts.scheme == "cookie":
        return "each browser's own cookie, encrypted"
    return f"a {parts.scheme} store"


async def _not_supported(request: Request, exc: Exception) -> Response:
    """The device routes, on a store that keeps no sessions to list or end."""
    return JSONResponse({"detail": str(exc)}, status_code=501)


async def _page_for_form_posts(request: Request, exc: Exception) -> Response:
    """A page's form refused for a stale sign-in gets the page, which asks for the
    password; everything else, and every API caller, gets FastAPI's JSON answer."""
    assert isinstance(exc, HTTPException)
    challenge = (exc.headers or {}).get("WWW-Authenticate", "")
    if exc.status_code == 401 and from_page(request):
        if "insufficient_user_authentication" not in challenge:
            # Signed out meanwhile (another tab, the idle limit): the page offers the
            # sign-in form.
            return RedirectResponse("/", status_code=303)
        asked = PageError(CONFIRM_FIRST, 401, field="confirm-password")
        page = await _show_page_error(request, asked)
        page.headers.update(exc.headers or {})  # the step-up challenge, not the plain one
        return page
    if exc.status_code == 413 and from_page(request):
        return await _show_page_error(request, PageError(TOO_LARGE, 413))
    return await http_exception_handler(request, exc)


async def _show_page_error(request: Request, exc: Exception) -> Response:
    """Browsers get the page back with the problem spelled out, not a JSON error."""
    session = request.scope["session"]
    assert isinstance(exc, PageError)
    assert isinstance(session, Session)
    response = await render_home(
        request,
        await session.load(),
        error=exc.message,
        status_code=exc.status_code,
        username=exc.username,
        error_field=exc.field,
        ticked=exc.ticked,
    )
    if exc.status_code == 401:  # a 401 names its scheme, HTML page or not
        response.headers.update(not_authenticated().headers or {})
    return response
