"""A provider's page on another site posts its answer back to the app (OpenID Connect
``form_post``, SAML's POST binding), in Chromium: at a relay path, the answer reaches the
handler with the user's session, and the user stays signed in."""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from coatcheck import CookieConfig, CSRFConfig, MemoryStore, SessionConfig, SessionMiddleware
from coatcheck.fastapi import SessionDep

from ..e2e.conftest import free_port
from .conftest import NewContext, OtherSite

COOKIE = "session"  # not Secure: the app is served over plain HTTP here


def make_app(relay_paths: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/start", response_class=HTMLResponse)
    async def start(session: SessionDep) -> str:
        """Signs in, and sends the user to the provider with a state bound to the session."""
        session.login("alice")
        session["state"] = "s1"
        return "<p>signed in</p>"

    @app.post("/sso/callback", response_class=HTMLResponse)
    async def callback(request: Request, session: SessionDep) -> str:
        async with request.form() as form:
            state, code = form.get("state"), form.get("code")
        if session.user_id is None or state != session.get("state"):
            session["flash"] = "Sign-in failed: state mismatch"  # as an app would
            return "<p id=outcome>state mismatch</p>"
        session["linked"] = str(code)
        return f"<p id=outcome>linked {html.escape(str(code))} for {session.user_id}</p>"

    @app.get("/checkout", response_class=HTMLResponse)
    async def checkout(challenge: str) -> str:
        """The card issuer's challenge, framed in the app's own page (3-D Secure 2)."""
        return f'<iframe name=issuer src="{html.escape(challenge)}"></iframe>'

    @app.post("/pay/return", response_class=HTMLResponse)
    async def paid(request: Request, session: SessionDep) -> str:
        async with request.form() as form:
            answer = form.get("cres")
        return f"<p id=outcome>{html.escape(str(answer))} for {session.user_id}</p>"

    @app.get("/me")
    async def me(session: SessionDep) -> dict[str, Any]:
        return {"user": session.user_id, "linked": session.get("linked")}

    config = SessionConfig(
        cookie=CookieConfig(secure=False), csrf=CSRFConfig(relay_paths=relay_paths)
    )
    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=config)
    return app


def served(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn in a thread of its own (Playwright's sync API holds this
    one), at ``http://127.0.0.1:PORT``."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def relaying() -> Iterator[str]:
    yield from served(make_app(["/sso/callback", "/pay/return"]))


@pytest.fixture
def not_relaying() -> Iterator[str]:
    yield from served(make_app([]))


_PROVIDER = """<!doctype html>
<title>Provider</title>
<form method="post" action="{action}">
<input type="hidden" name="code" value="c-42"><input type="hidden" name="state" value="s1">
<input type="hidden" name="submit" value="Continue to the shop">
</form>
<script>HTMLFormElement.prototype.submit.call(document.forms[0])</script>
"""


def _round_trip(context: Any, app_url: str, other_site: OtherSite) -> tuple[Any, list[Any]]:
    """Sign in, go through the provider's page; return the page and the callback's posts."""
    page = context.new_page()
    page.goto(app_url + "/start")
    other_site.pages["/authorize"] = _PROVIDER.format(action=app_url + "/sso/callback")
    posts: list[Any] = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
    page.goto(other_site.url("/authorize"))
    page.wait_for_selector("#outcome, pre, body:has-text('CSRF')")
    return page, posts


def test_a_provider_posting_back_from_another_site_reaches_the_session(
    new_context: NewContext, other_site: OtherSite, relaying: str
) -> None:
    context = new_context()
    page, posts = _round_trip(context, relaying, other_site)
    (before,) = [c for c in context.cookies() if c["name"] == COOKIE]

    assert page.locator("#outcome").inner_text() == "linked c-42 for alice"
    # The provider's post came without the cookie (SameSite=Lax); the relay page's post,
    # from the app's own origin, with it.
    first, second = posts
    assert first.all_headers()["sec-fetch-site"] == "cross-site"
    assert f"{COOKIE}=" not in first.all_headers().get("cookie", "")
    assert second.all_headers()["sec-fetch-site"] == "same-origin"
    assert f"{COOKIE}=" in second.all_headers()["cookie"]
    assert second.url == first.url
    assert second.post_data == first.post_data
    me = context.request.get(relaying + "/me").json()
    assert me == {"user": "alice", "linked": "c-42"}
    (after,) = [c for c in context.cookies() if c["name"] == COOKIE]
    assert after["value"] == before["value"]


def test_without_a_relay_path_the_post_is_refused_and_the_user_stays_signed_in(
    new_context: NewContext, other_site: OtherSite, not_relaying: str
) -> None:
    """The control: the same round trip without the relay is a CSRF refusal."""
    context = new_context()
    page, posts = _round_trip(context, not_relaying, other_site)
    assert "CSRF check failed" in page.content()
    assert len(posts) == 1
    assert context.request.get(not_relaying + "/me").json() == {"user": "alice", "linked": None}


_ISSUER = """<!doctype html>
<title>Card issuer</title>
<form method="post" action="{action}"><input type="hidden" name="cres" value="Y-abc"></form>
<script>document.forms[0].submit()</script>
"""


def test_a_card_issuers_answer_in_a_frame_of_the_checkout_reaches_the_session(
    new_context: NewContext, other_site: OtherSite, relaying: str
) -> None:
    """3-D Secure 2: the issuer's page, in a frame of the app's checkout, posts its answer
    to the app. The relay page, framed by the app's own page, posts it on with the
    session."""
    context = new_context()
    page = context.new_page()
    page.goto(relaying + "/start")
    other_site.pages["/challenge"] = _ISSUER.format(action=relaying + "/pay/return")
    page.goto(relaying + "/checkout?challenge=" + other_site.url("/challenge"))
    frame = page.frame_locator("iframe[name=issuer]")
    assert frame.locator("#outcome").inner_text() == "Y-abc for alice"
