"""The reference app in a real Chromium: what a user sees, and what another site can do.

Every test starts its own ``coatcheck demo`` (uvicorn, SQLite store, loopback port) and
drives Chromium through the page's own forms, the way a person would. Three of them also
save the screenshots that the README shows (``docs/images/*.png``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .conftest import (
    PHONE,
    TEST_DOMAIN,
    VIEWPORT,
    DemoServer,
    LaunchProfile,
    NewContext,
    OtherSite,
    StartServer,
    add_item,
    cart_items,
    expect,
    expect_login_form,
    expect_signed_in,
    jar,
    launch_options,
    named_url,
    new_profile,
    screenshot,
    session_cookies,
    sign_in,
    sign_out,
    submit,
)

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Playwright

pytestmark = pytest.mark.e2e

THIRTY_DAYS = 30 * 24 * 3600


def _demo_as_shown(start_server: StartServer, name: str) -> DemoServer:
    """A server with the demo's default store, so screenshots name it as `make demo` does."""
    return start_server(name=name, pass_store=False)


def _open(context: BrowserContext, url: str) -> Page:
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(url)
    return page


# -- 1. the cookie -----------------------------------------------------------------------


def test_login_cookie_is_hidden_from_scripts_lax_host_only_and_ends_with_the_browser(
    start_server: StartServer, new_context: NewContext
) -> None:
    server = start_server(name="cookie")
    # Under a host name with a registrable domain: see TEST_DOMAIN in conftest.py.
    app = named_url(server, "app")
    context = new_context()
    page = _open(context, app)
    # A cookie scripts may read, so that an empty document.cookie proves nothing.
    page.evaluate("document.cookie = 'probe=visible; Path=/; SameSite=Lax'")

    sign_in(page, "alice")

    expect_signed_in(page, "alice")
    seen_by_scripts = page.evaluate("document.cookie")
    assert "probe=visible" in seen_by_scripts
    assert f"{server.cookie_name}=" not in seen_by_scripts, "the session cookie is not HttpOnly"

    (cookie,) = session_cookies(context, server, app)
    assert cookie["value"] not in seen_by_scripts
    assert cookie["httpOnly"] is True
    assert cookie.get("sameSite") == "Lax", "SameSite must be set, not left to the browser"
    assert cookie["path"] == "/"
    assert cookie["domain"] == f"app.{TEST_DOMAIN}", "a Domain attribute shows as a leading dot"
    assert cookie["session"] is True, "without remember me the cookie must end with the browser"
    assert cookie["expires"] == -1
    assert cookie["secure"] is False  # plain-HTTP development cookies, by the demo's choice

    # Host-only in practice: the same server under a sibling name gets no cookie.
    sibling = context.new_page()
    sibling.goto(named_url(server, "www"))
    expect_login_form(sibling)
    # ... while the app's own host still signs alice in with it.
    page.reload()
    expect_signed_in(page, "alice")


# -- 2. the cart -------------------------------------------------------------------------


def test_anonymous_cart_survives_login_and_ends_with_logout(
    start_server: StartServer, new_context: NewContext
) -> None:
    server = _demo_as_shown(start_server, "cart")
    context = new_context(java_script_enabled=False)  # the page works without scripts
    page = _open(context, server.url)
    expect_login_form(page)
    assert session_cookies(context, server) == [], "showing the page must not start a session"

    add_item(page, "apple")
    add_item(page, "wool scarf")

    expect(cart_items(page)).to_have_text(["apple", "wool scarf"])
    expect_login_form(page)
    screenshot(page, "anonymous")
    (anonymous,) = session_cookies(context, server)

    sign_in(page, "alice")

    expect_signed_in(page, "alice")
    expect(cart_items(page)).to_have_text(["apple", "wool scarf"])
    (signed_in,) = session_cookies(context, server)
    assert signed_in["value"] != anonymous["value"], "the ticket must change at login"

    sign_out(page)

    expect_login_form(page)
    expect(cart_items(page)).to_have_count(0)
    expect(page.get_by_role("region", name="Your cart")).to_contain_text("Empty.")
    assert session_cookies(context, server) == [], "logout must clear the cookie"


def test_on_the_cookie_store_the_whole_session_rides_in_the_browser_unreadable(
    start_server: StartServer, new_context: NewContext
) -> None:
    server = start_server("--store", "cookie://", name="cookie-store", pass_store=False)
    context = new_context(java_script_enabled=False)
    page = _open(context, server.url)
    expect_login_form(page)
    add_item(page, "apple")
    (anonymous,) = session_cookies(context, server)

    sign_in(page, "alice")

    expect_signed_in(page, "alice")
    expect(cart_items(page)).to_have_text(["apple"])
    devices = page.get_by_role("region", name="Your devices")
    expect(devices).to_contain_text("no list on the server")
    (signed_in,) = session_cookies(context, server)
    assert signed_in["value"] != anonymous["value"], "login must seal a new session"
    for n in range(8):  # each change is a new cookie, which Chromium keeps and sends back
        add_item(page, f"parcel {n}")
    expect(cart_items(page)).to_have_count(9)
    (full,) = session_cookies(context, server)
    assert "parcel" not in full["value"]
    assert full["httpOnly"]

    sign_out(page)

    expect_login_form(page)
    assert session_cookies(context, server) == [], "logout must clear the cookie"
    assert not list(server.workdir.glob("*.db")), "nothing may be stored on the server"


# -- 3. remember me ----------------------------------------------------------------------


@pytest.mark.parametrize("remember", [True, False], ids=["remembered", "not-remembered"])
def test_remember_me_decides_whether_login_survives_a_browser_restart(
    start_server: StartServer, launch_profile: LaunchProfile, tmp_path: Path, remember: bool
) -> None:
    server = start_server(name="remember")
    profile = new_profile(tmp_path / "profile")
    browser = launch_profile(profile)
    page = _open(browser, server.url)
    sign_in(page, "alice", remember=remember)
    expect_signed_in(page, "alice")
    (before,) = session_cookies(browser, server)
    signed_in_at = time.time()

    browser.close()  # quits Chromium; only the profile directory is left
    browser = launch_profile(profile)  # ... and starts it again on that directory
    page = _open(browser, server.url)

    if remember:
        expect_signed_in(page, "alice")
        assert before["session"] is False
        lifetime = before["expires"] - signed_in_at
        assert THIRTY_DAYS - 120 <= lifetime <= THIRTY_DAYS + 5, before
    else:
        expect_login_form(page)
        assert session_cookies(browser, server) == []
        assert before["session"] is True
        assert before["expires"] == -1


# -- 4. devices --------------------------------------------------------------------------


def _current_device(page: Page) -> str:
    """The public id of the device that the page marks "This device"."""
    devices = page.get_by_role("region", name="Your devices").get_by_role("listitem")
    current = devices.filter(has_text="This device")
    expect(current).to_have_count(1)
    return current.locator("code").inner_text()


def test_devices_list_marks_this_device_and_revokes_the_other(
    start_server: StartServer, new_context: NewContext
) -> None:
    server = _demo_as_shown(start_server, "devices")
    laptop = _open(new_context(), server.url)
    sign_in(laptop, "alice")
    phone = _open(new_context(user_agent=PHONE), server.url)
    sign_in(phone, "alice", remember=True)
    laptop.reload()

    devices = laptop.get_by_role("region", name="Your devices").get_by_role("listitem")
    expect(devices).to_have_count(2)
    laptop_id, phone_id = _current_device(laptop), _current_device(phone)
    assert laptop_id != phone_id, "each browser must see its own session as this device"
    this_device = devices.filter(has_text="This device")
    other_device = devices.filter(has_text=phone_id)
    expect(this_device).to_contain_text(laptop_id)
    expect(this_device).to_contain_text("Chrome on Linux")
    expect(other_device).to_contain_text("Safari on iOS")
    expect(other_device).not_to_contain_text("This device")
    expect(other_device).to_contain_text("Remembered")
    for device in (this_device, other_device):
        expect(device).to_contain_text("Signed in since")
        expect(device).to_contain_text("Last active")
    screenshot(laptop, "devices")

    # Named for a screen reader by the device it signs out, not "Sign out" alone.
    label = f"Sign out Safari on iOS, session {phone_id}"
    submit(laptop, other_device.get_by_role("button", name=label, exact=True))

    phone.reload()  # the phone's next navigation finds its session gone
    expect_login_form(phone)
    assert phone.context.request.get(f"{server.url}/me").status == 401  # its ticket is dead
    expect_signed_in(laptop, "alice")
    expect(devices).to_have_count(1)
    expect(devices).to_contain_text(laptop_id)
    # The page the form led to says what happened, once: a reload shows it no more.
    expect(laptop.get_by_role("status")).to_have_text("Signed out that device.")
    laptop.reload()
    expect(laptop.get_by_role("status")).to_have_count(0)


def test_signing_out_everywhere_asks_an_old_sign_in_for_the_password(
    start_server: StartServer, new_context: NewContext
) -> None:
    server = start_server(name="everywhere")
    laptop = _open(new_context(), server.url)
    sign_in(laptop, "alice")
    phone = _open(new_context(user_agent=PHONE), server.url)
    sign_in(phone, "alice")
    laptop.reload()
    region = laptop.get_by_role("region", name="Your devices")
    everywhere = region.get_by_role("button", name="Sign out everywhere")
    expect(everywhere).to_have_count(1)  # just signed in: no password asked

    # Ten minutes pass, as far as the sign-ins are concerned.
    with closing(sqlite3.connect(server.db)) as db, db:
        db.execute("UPDATE coatcheck_sessions SET authenticated_at = authenticated_at - 600")
    laptop.reload()
    expect(everywhere).to_have_count(0)
    password = region.get_by_label("To sign out everywhere, confirm your password")
    password.fill("wonderland")
    submit(laptop, region.get_by_role("button", name="Confirm"))
    expect(laptop.get_by_role("status")).to_have_text("Password confirmed.")

    submit(laptop, everywhere)
    expect_login_form(laptop)
    phone.reload()
    expect_login_form(phone)


# -- 5. another site ---------------------------------------------------------------------

_AUTO_SUBMIT = """<!doctype html>
<title>Win a prize</title>
<form method="post" action="{action}">{fields}</form>
<script>document.forms[0].submit()</script>
"""


@pytest.mark.parametrize(
    ("path", "fields"),
    [("/cart/items", '<input name="item" value="forged">'), ("/logout", "")],
    ids=["add-to-cart", "logout"],
)
def test_a_form_posted_from_another_site_changes_nothing(
    start_server: StartServer,
    new_context: NewContext,
    other_site: OtherSite,
    path: str,
    fields: str,
) -> None:
    server = start_server(name="cross-site")
    context = new_context()
    page = _open(context, server.url)
    sign_in(page, "alice")
    expect_signed_in(page, "alice")
    with page.expect_request(lambda r: r.method == "POST") as own:
        add_item(page, "apple")
    # The control: the app's own page does send the cookie with its posts.
    assert f"{server.cookie_name}=" in own.value.all_headers().get("cookie", "")
    (before,) = session_cookies(context, server)
    other_site.pages["/prize"] = _AUTO_SUBMIT.format(action=server.url + path, fields=fields)

    attack = context.new_page()
    with attack.expect_response(
        lambda r: r.request.method == "POST" and r.url == server.url + path
    ) as posted:
        attack.goto(other_site.url("/prize"))
    response = posted.value

    # SameSite=Lax: the browser did not attach the session cookie to the cross-site post...
    sent = response.request.all_headers().get("cookie", "")
    assert f"{server.cookie_name}=" not in sent, sent
    # ... and the app's CSRF defence refused it anyway, touching no cookie.
    assert response.status == 403, response.status
    assert "set-cookie" not in response.all_headers()
    (after,) = session_cookies(context, server)
    assert after["value"] == before["value"]
    page.reload()
    expect_signed_in(page, "alice")
    expect(cart_items(page)).to_have_text(["apple"])


# -- 6. idle timeout ---------------------------------------------------------------------


def test_idle_session_ends_and_the_page_asks_to_sign_in_again(
    start_server: StartServer, new_context: NewContext
) -> None:
    server = start_server("--idle-timeout", "2", "--absolute-timeout", "60", name="idle")
    # Without scripts: the page's own idle timer (tested below) would reload it at 3 s,
    # racing the reload here, and leave nothing for the server's expiry to show.
    page = _open(new_context(java_script_enabled=False), server.url)
    add_item(page, "apple")
    sign_in(page, "alice")
    expect_signed_in(page, "alice")

    time.sleep(3.0)  # idle for longer than the 2 s timeout
    page.reload()

    expect_login_form(page)
    expect(cart_items(page)).to_have_count(0)


@contextmanager
def _alices_page_in_the_back_forward_cache(
    playwright: Playwright, server: DemoServer
) -> Iterator[Page]:
    """A page of alice's with her cart, kept in Chromium's back/forward cache, which
    keeps pages even when they were sent ``no-store`` (Playwright turns that cache off
    by default; here it is on, as for users)."""
    browser = playwright.chromium.launch(
        **launch_options(), ignore_default_args=["--disable-back-forward-cache"]
    )
    try:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.goto(server.url)
        add_item(page, "secret gift")
        sign_in(page, "alice")
        expect_signed_in(page, "alice")
        submit(page, page.get_by_role("link", name="/docs"))  # away, so the page is kept
        page.goto(server.url)
        expect_signed_in(page, "alice")
        yield page
    finally:
        browser.close()


def _shows_nothing_of_alices(page: Page) -> None:
    body = page.inner_text("body")
    assert "Signed in as alice" not in body
    assert "secret gift" not in body


def test_back_after_logout_does_not_bring_the_signed_in_page_back(
    start_server: StartServer, playwright: Playwright
) -> None:
    """A shared computer: the next person presses Back. The logout's
    ``Clear-Site-Data`` drops the kept pages."""
    server = start_server(name="back-button")
    with _alices_page_in_the_back_forward_cache(playwright, server) as page:
        sign_out(page)
        expect_login_form(page)
        for _ in range(3):
            page.go_back(wait_until="commit")
            page.wait_for_load_state()
            _shows_nothing_of_alices(page)


def test_back_after_the_idle_limit_does_not_show_the_signed_in_page(
    start_server: StartServer, playwright: Playwright
) -> None:
    """The session ended by itself, so no response carried ``Clear-Site-Data``: the
    page, restored from the back/forward cache, asks the server again and shows the
    sign-in form the next person already saw."""
    server = start_server("--idle-timeout", "2", "--absolute-timeout", "60", name="idle-back")
    with _alices_page_in_the_back_forward_cache(playwright, server) as page:
        # Left before its own idle timer fires (a page kept in the cache runs none).
        submit(page, page.get_by_role("link", name="/docs"))
        time.sleep(3.0)  # idle past the limit; the next person comes to the browser
        page.go_back(wait_until="commit")  # to alice's page, kept in the browser's memory
        expect_login_form(page)  # asked again once shown: her session has ended
        _shows_nothing_of_alices(page)


def test_a_signed_in_page_left_open_past_the_idle_limit_shows_the_sign_in_form(
    start_server: StartServer, new_context: NewContext
) -> None:
    """On a shared computer, the next person must not find the last one's cart and
    devices on the screen because nobody clicked since the session ended."""
    server = start_server("--idle-timeout", "2", "--absolute-timeout", "60", name="idle-open")
    page = _open(new_context(), server.url)
    add_item(page, "secret gift")
    sign_in(page, "alice")
    expect_signed_in(page, "alice")
    expect_login_form(page)  # by itself, within expect()'s wait, once 3 s have passed
    _shows_nothing_of_alices(page)


# -- the sign-in form's error ------------------------------------------------------------


def test_wrong_password_shows_an_error_and_keeps_the_username(
    start_server: StartServer, new_context: NewContext
) -> None:
    server = _demo_as_shown(start_server, "wrong-password")
    context = new_context(java_script_enabled=False)
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    page = _open(context, server.url)

    sign_in(page, "alice", password="not-the-password")

    alert = page.get_by_role("alert")
    expect(alert).to_have_text("Invalid username or password")
    expect(alert).to_be_in_viewport()
    expect(page.get_by_label("Username")).to_have_value("alice")
    expect(page.get_by_label("Password")).to_have_value("")
    expect_login_form(page)
    screenshot(page, "wrong-password")
    assert jar(context, server.url) == [], "a failed login must not start a session"
    # One stylesheet of its own, nothing from another origin (no CDN, no web fonts).
    assert f"{server.url}/static/style.css" in requested
    assert all(url.startswith(server.url + "/") for url in requested), requested
