"""Rendering the demo's one HTML page: templates, friendly times and device names."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..middleware import _refusal as refusal
from ..middleware import _unavailable_response as unavailable_response
from ..session import Session
from .inputs import wants_json
from .settings import RECENT_LOGIN
from .users import DEMO_CREDENTIALS

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

#: The page shows private data and may be framed by nobody: no caching, nothing external.
HTML_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def friendly_utc(moment: datetime) -> str:
    """``Wed 26 Nov 2025, 10:03 UTC``: readable, and the same for every visitor."""
    return moment.astimezone(timezone.utc).strftime("%a %d %b %Y, %H:%M UTC")


_UNITS = ((86_400, "day"), (3_600, "h"), (60, "min"))


def relative(moment: datetime, now: float | None = None) -> str:
    """``3 min ago`` or ``in 2 h``, rounded down; anything under a minute is ``just now``."""
    delta = moment.timestamp() - (time.time() if now is None else now)
    seconds = abs(delta)
    if seconds < 60:
        return "just now"
    size, unit = next((size, unit) for size, unit in _UNITS if seconds >= size)
    count = int(seconds // size)
    amount = f"{count} {unit}{'s' if unit == 'day' and count != 1 else ''}"
    return f"in {amount}" if delta > 0 else f"{amount} ago"


_BROWSERS = (  # first match wins: each browser's token comes before those it copies
    ("Edg/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("EdgA/", "Edge"),
    ("Edge/", "Edge"),  # the one before Chromium
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
    ("python-httpx/", "HTTPX"),
)
_SYSTEMS = (
    ("Windows Phone", "Windows Phone"),
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)
_PRODUCT = re.compile(r"^[\w.-]+")


def device_name(user_agent: str) -> str:
    """A short label such as ``Firefox on Linux``; the full string goes in a tooltip."""
    if not user_agent:
        return "Unknown device"
    browser = next((name for token, name in _BROWSERS if token in user_agent), None)
    system = next((name for token, name in _SYSTEMS if token in user_agent), None)
    if browser is None:
        match = _PRODUCT.match(user_agent)
        browser = match.group(0) if match else "Unknown browser"
    return f"{browser} on {system}" if system else browser


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = friendly_utc
    env.filters["relative"] = relative
    env.filters["device_name"] = device_name
    return env


templates = Jinja2Templates(env=_environment())
_TRUSTED_HOSTS = ("localhost", "127.0.0.1", "::1")  # where browsers take Secure cookies over HTTP


async def render_home(
    request: Request,
    session: Session,
    *,
    error: str | None = None,
    status_code: int = 200,
    username: str = "",
    error_field: str | None = None,
    ticked: frozenset[str] = frozenset(),
) -> Response:
    """The whole page for this visitor: sign-in form or account, devices and cart."""
    user = session.user_id
    stateless = request.app.state.stateless
    context: dict[str, Any] = {
        "user": user,
        "session": session,
        "devices": await session.devices() if user is not None and not stateless else [],
        # Signing out everywhere asks for the password again past this.
        "recent": user is not None and session.authenticated_within(RECENT_LOGIN),
        "recent_minutes": int(RECENT_LOGIN.total_seconds() // 60),
        "shared_idle": _span(request.app.state.shared_idle),
        "stateless": stateless,
        "cart": list(session.get("cart", [])),
        "error": error,
        "error_field": error_field,  # the input the error is about: marked, and focused
        "ticked": ticked,
        # Messages left by the form that redirected here; shown once.
        "flashes": session.pop_flashes(),
        # A ticket whose session ended (idle, signed out elsewhere): said, not silent.
        "ended": user is None and session.ticket_ended,
        # When an unused page's session ends: it then reloads, rather than show a
        # signed-in page (a shared computer's) that no longer is.
        "idle_seconds": int(session.idle_timeout.total_seconds()) if user is not None else 0,
        "username": username,
        "credentials": DEMO_CREDENTIALS,
        "cookie_name": request.app.state.cookie_name,
        "store_label": request.app.state.store_label,
        # One masked token per page; the forms send it for clients without Fetch Metadata.
        "csrf_token": session.csrf_token(),
        # Secure cookies over plain HTTP: browsers drop them (localhost aside, which they
        # trust), and the sign-in would fail without a word.
        "cookies_dropped": request.app.state.secure_cookies
        and request.url.scheme == "http"
        and request.url.hostname not in _TRUSTED_HOSTS,
    }
    return templates.TemplateResponse(
        request, "index.html", context, status_code=status_code, headers=HTML_HEADERS
    )


def _span(seconds: int) -> str:
    """``300`` as "5 minutes", ``3`` as "3 seconds"."""
    count, unit = (seconds // 60, "minute") if seconds % 60 == 0 else (seconds, "second")
    return f"{count} {unit}{'' if count == 1 else 's'}"


def unavailable_page(store_label: str) -> Callable[[int], ASGIApp]:
    """The middleware's ``unavailable=``: the store is down. Browsers get a page that
    says so in words; API callers the library's JSON; both with ``Retry-After``."""

    def answer(retry_after: int) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive)
            if wants_json(request) or "text/html" not in request.headers.get("accept", ""):
                await unavailable_response(retry_after)(scope, receive, send)
                return
            context = {
                "user": None,
                "store_label": store_label,
                "retry_after": retry_after,
                # What a form sent was not stored: the page must not say nothing was lost.
                "posted": request.method not in ("GET", "HEAD"),
            }
            headers = {**HTML_HEADERS, "Retry-After": str(retry_after)}
            page = templates.TemplateResponse(
                request, "unavailable.html", context, status_code=503, headers=headers
            )
            await page(scope, receive, send)

        return app

    return answer


# What each refusal of the middleware means to a person at the page.
_REFUSALS = {
    409: (
        "Something changed in another tab",
        "You signed in or out in another tab or window while this page was sending, so "
        "nothing was saved. Go back to the page, which shows where you are now, and try "
        "again.",
    ),
    413: ("That was too much", "Your session cannot hold more; nothing was saved."),
    403: (
        "That was refused",
        "This request could not be accepted (it may come from another site, or from a "
        "page open too long). Go back to the page and try again.",
    ),
}


def refused_page(status: int, detail: str) -> ASGIApp:
    """The middleware's ``refused=``: a 409, 413 or 403 of its own. Browsers get a page
    in words; API callers the library's JSON, with the same status and reason."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        known = _REFUSALS.get(status)
        if (
            known is None
            or wants_json(request)
            or "text/html" not in request.headers.get("accept", "")
        ):
            await refusal(status, detail)(scope, receive, send)
            return
        heading, explanation = known
        context = {"user": None, "heading": heading, "explanation": explanation}
        page = templates.TemplateResponse(
            request, "refused.html", context, status_code=status, headers=HTML_HEADERS
        )
        await page(scope, receive, send)

    return app
