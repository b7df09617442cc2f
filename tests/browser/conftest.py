"""A real Chromium, driven by Playwright, against the reference app served by uvicorn.

The browser is Debian's ``chromium`` package (``make test`` installs it through
``scripts/system-deps.sh``), never Playwright's own download: every launch passes
``executable_path``. Nothing here skips: without the browser or the Playwright package,
every test fails with the command that fixes it.

Playwright and Chromium start once for this folder. The fixture is package-scoped rather
than session-scoped on purpose: between calls, Playwright's sync API leaves its event loop
marked as running in the main thread, so every anyio test that pytest ran after this
folder in the same session would fail ("Cannot run the event loop while another loop is
running"). Package scope stops Playwright as soon as the last browser test is done.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..e2e.conftest import USERS, DemoServer, StartServer, start_server  # noqa: F401 - a fixture

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the `playwright` fixture fails every test with advice instead
    expect = None  # type: ignore[assignment]
    sync_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright

__all__ = ["USERS", "DemoServer", "StartServer", "expect"]

CHROMIUM = Path("/usr/bin/chromium")
#: Host names under this reserved suffix (RFC 2606: never a real site) lead to the loopback
#: servers. For an IP address or ``localhost`` Chromium files even a cookie that carries a
#: ``Domain`` attribute as host-only, so only a name like ``app.coatcheck.test`` shows
#: whether the app's cookie is host-only.
TEST_DOMAIN = "coatcheck.test"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
    # Test names go to loopback; any other name fails at once, so a page that loads from
    # a CDN (Swagger's /docs) does not wait seconds on a DNS server it cannot reach.
    f"--host-resolver-rules=MAP *.{TEST_DOMAIN} 127.0.0.1, MAP * ~NOTFOUND,"
    " EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
VIEWPORT = {"width": 1100, "height": 900}
TIMEOUT_MS = 10_000
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"

#: A second device for the devices list: Chromium underneath, a phone by its user agent.
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)

_INSTALL_HINT = "run `make test`, which installs everything the suite needs"


# -- Playwright and Chromium -------------------------------------------------------------


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    if sync_playwright is None:
        pytest.fail(
            "the browser tests need Playwright for Python (`playwright` in the `dev` extra),"
            f" which is not installed: {_INSTALL_HINT}",
            pytrace=False,
        )
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"the browser tests drive Debian's Chromium at {CHROMIUM}, which is missing:"
            f" {_INSTALL_HINT} (scripts/system-deps.sh installs the `chromium` package)",
            pytrace=False,
        )
    with sync_playwright() as driver:
        yield driver


def launch_options() -> dict[str, Any]:
    return {"executable_path": str(CHROMIUM), "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="package")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(**launch_options())
    yield browser
    browser.close()


class _ServerErrors:
    """Fails the test when the app answered any request of a context with a 5xx."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def watch(self, context: BrowserContext) -> None:
        context.on(
            "response",
            lambda response: (
                self.seen.append(f"{response.request.method} {response.url} -> {response.status}")
                if response.status >= 500
                else None
            ),
        )

    def check(self) -> None:
        assert not self.seen, f"the server failed: {self.seen}"


NewContext = Callable[..., "BrowserContext"]


@pytest.fixture
def new_context(chromium: Browser) -> Iterator[NewContext]:
    """Fresh browser contexts: separate cookie jars, as separate browsers have.

    Options go to ``Browser.new_context``; the viewport is the screenshots' 1100 x 900.
    """
    contexts: list[BrowserContext] = []
    errors = _ServerErrors()

    def make(**options: Any) -> BrowserContext:
        options.setdefault("viewport", VIEWPORT)
        context = chromium.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        errors.watch(context)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    errors.check()


def new_profile(directory: Path) -> Path:
    """A Chromium user-data directory whose start-up setting is pinned.

    Chromium keeps session cookies (no ``Max-Age``) across a restart when the profile is
    set to "Continue where you left off" (``restore_on_startup`` 1), as session restore
    needs them. A fresh profile does not do that today, but defaults, policies and
    versions vary: pinning "Open the New Tab page" (5) makes a restart end every session
    cookie, as closing a browser normally does, so the non-remembered case is deterministic.
    """
    preferences = directory / "Default" / "Preferences"
    preferences.parent.mkdir(parents=True)
    preferences.write_text(json.dumps({"session": {"restore_on_startup": 5}}))
    return directory


LaunchProfile = Callable[[Path], "BrowserContext"]


@pytest.fixture
def launch_profile(playwright: Playwright) -> Iterator[LaunchProfile]:
    """Start Chromium on a user-data directory (see :func:`new_profile`).

    ``close()`` on the context quits that browser; a second launch on the same directory
    is the browser restarted, with whatever it kept on disk.
    """
    launched: list[BrowserContext] = []
    errors = _ServerErrors()

    def launch(profile: Path) -> BrowserContext:
        context = playwright.chromium.launch_persistent_context(
            profile, viewport=VIEWPORT, **launch_options()
        )
        context.set_default_timeout(TIMEOUT_MS)
        errors.watch(context)
        launched.append(context)
        return context

    yield launch
    for context in launched:
        context.close()  # a no-op for those the test closed already
    errors.check()


# -- another site ------------------------------------------------------------------------


class OtherSite:
    """Static pages served from ``http://localhost:PORT``, a different *site* from the app.

    SameSite compares sites (scheme and registrable domain, or the host for an IP
    address), not origins: ``127.0.0.1:A`` and ``127.0.0.1:B`` are the same site, while
    ``localhost`` and ``127.0.0.1`` are not.
    """

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://localhost:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def other_site() -> Iterator[OtherSite]:
    site = OtherSite()
    try:
        yield site
    finally:
        site.close()


# -- what a user does on the page --------------------------------------------------------


def named_url(server: DemoServer, host: str) -> str:
    """The server under a host name of :data:`TEST_DOMAIN`, e.g. ``http://app.coatcheck.test:PORT``."""
    return f"http://{host}.{TEST_DOMAIN}:{server.port}"


def submit(page: Page, button: Locator) -> None:
    """Click a form's button and wait for the page the post leads to."""
    with page.expect_navigation():
        button.click()


def sign_in(
    page: Page, user: str = "alice", *, password: str | None = None, remember: bool = False
) -> None:
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(USERS[user] if password is None else password)
    if remember:
        page.get_by_label("Remember me on this device").check()
    submit(page, page.get_by_role("button", name="Sign in", exact=True))


def sign_out(page: Page) -> None:
    submit(page, page.get_by_role("button", name="Log out").first)


def add_item(page: Page, item: str) -> None:
    page.get_by_label("Item").fill(item)
    submit(page, page.get_by_role("button", name="Add item"))


def cart_items(page: Page) -> Locator:
    return page.get_by_role("region", name="Your cart").get_by_role("listitem")


def expect_signed_in(page: Page, user: str) -> None:
    expect(page.get_by_role("heading", name=f"Signed in as {user}", exact=True)).to_be_visible()
    expect(page.get_by_label("Password")).to_have_count(0)


def expect_login_form(page: Page) -> None:
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    expect(page.get_by_label("Password")).to_be_visible()
    expect(page.get_by_role("heading", name="Signed in as", exact=False)).to_have_count(0)


def jar(context: BrowserContext, url: str) -> list[dict[str, Any]]:
    """The cookies Chromium would send to ``url``, as Chromium itself files them.

    Straight from the DevTools protocol rather than ``context.cookies()``, which reports
    ``sameSite: "Lax"`` also for a cookie that set no SameSite attribute at all (Chromium's
    default); here ``sameSite`` is absent then, and ``session`` tells a browser-session
    cookie from a persistent one.
    """
    page = context.pages[0] if context.pages else context.new_page()
    cdp = context.new_cdp_session(page)
    try:
        cookies: list[dict[str, Any]] = cdp.send("Network.getCookies", {"urls": [url]})["cookies"]
    finally:
        cdp.detach()
    return cookies


def session_cookies(context: BrowserContext, server: DemoServer, url: str = "") -> list[Any]:
    return [c for c in jar(context, url or server.url) if c["name"] == server.cookie_name]


def screenshot(page: Page, name: str) -> Path:
    """Save ``docs/images/<name>.png``, the whole page at the 1100 px wide viewport."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    page.screenshot(path=path, full_page=True, animations="disabled", caret="hide")
    return path
