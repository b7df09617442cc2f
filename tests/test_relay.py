"""Forms another site posts back to the app (OpenID Connect ``form_post``, SAML's POST
binding, 3-D Secure returns): at ``CSRFConfig.relay_paths`` they are posted again from a
page of the app's own, so that they arrive with the session cookie."""

from __future__ import annotations

import html
import logging
import re
from typing import Any

import pytest
from fastapi import FastAPI, Request

from coatcheck import (
    ConfigurationError,
    CookieConfig,
    CSRFConfig,
    MemoryStore,
    SessionConfig,
    SessionMiddleware,
    Store,
)
from coatcheck.fastapi import SessionDep

from .conftest import client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
FORM = "application/x-www-form-urlencoded"
#: What Chromium sends with a form that a provider's page posts to the app (SameSite=Lax:
#: no session cookie).
PROVIDER_POST = {
    "sec-fetch-site": "cross-site",
    "sec-fetch-mode": "navigate",
    "sec-fetch-dest": "document",
    "origin": "https://idp.example",
    "content-type": FORM,
}
#: What it sends with the form of the relay page, from the app's own origin.
RELAYED_POST = {**PROVIDER_POST, "sec-fetch-site": "same-origin", "origin": "https://testserver"}


def make_app(store: Store, **csrf: Any) -> FastAPI:
    app = FastAPI()

    @app.post("/begin")
    async def begin(session: SessionDep) -> dict[str, str]:
        session.login("alice")
        session["state"] = "s1"  # what the provider will hand back
        return {}

    @app.post("/sso/callback")
    async def callback(request: Request, session: SessionDep) -> dict[str, Any]:
        async with request.form() as form:
            fields = [(name, str(value)) for name, value in form.multi_items()]
        return {"user": session.user_id, "state": session.get("state"), "fields": fields}

    config = SessionConfig(csrf=CSRFConfig(relay_paths=["/sso"], **csrf))
    app.add_middleware(SessionMiddleware, store=store, config=config)
    return app


def hidden_fields(page: str) -> list[tuple[str, str]]:
    found = re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page)
    return [(html.unescape(name), html.unescape(value)) for name, value in found]


async def test_a_form_another_site_posts_comes_back_from_the_apps_page_with_the_session() -> None:
    store = MemoryStore()
    body = "code=abc&state=s1&note=%3Cb+title%3D%22x%22%3E%26&note=two&empty=&submit=Go"
    async with client_for(make_app(store)) as client:
        begun = await client.post("/begin")
        cookie = f"{NAME}={begun.cookies[NAME]}"

        relayed = await client.post("/sso/callback?from=idp", content=body, headers=PROVIDER_POST)
        assert relayed.status_code == 200
        assert relayed.headers["content-type"] == "text/html; charset=utf-8"
        assert relayed.headers["cache-control"] == "no-store"
        assert "set-cookie" not in relayed.headers
        page = relayed.text
        # To this page's own address (the one posted to, query included), every field
        # as it came, in order, escaped.
        assert '<form method="post">' in page
        assert hidden_fields(page) == [
            ("code", "abc"),
            ("state", "s1"),
            ("note", '<b title="x">&'),
            ("note", "two"),
            ("empty", ""),
            ("submit", "Go"),
        ]
        # The form's own submit(), which the field named "submit" hides on the form.
        assert "HTMLFormElement.prototype.submit.call(document.forms[0])" in page
        (nonce,) = re.findall(r"<script nonce=\"([^\"]+)\">", page)
        assert f"script-src 'nonce-{nonce}'" in relayed.headers["content-security-policy"]
        assert "frame-ancestors 'self'" in relayed.headers["content-security-policy"]
        assert await store.count(0.0) == 1  # the relay started no session

        again = await client.post(
            "/sso/callback?from=idp", content=body, headers={**RELAYED_POST, "cookie": cookie}
        )
    assert again.status_code == 200, again.text
    assert again.json() == {
        "user": "alice",
        "state": "s1",
        "fields": [
            ["code", "abc"],
            ["state", "s1"],
            ["note", '<b title="x">&'],
            ["note", "two"],
            ["empty", ""],
            ["submit", "Go"],
        ],
    }
    assert "set-cookie" not in again.headers


@pytest.mark.parametrize(
    ("path", "headers", "body", "csrf"),
    [
        ("/elsewhere", {}, "code=abc", {}),
        ("/sso/callback", {"sec-fetch-mode": "cors"}, "code=abc", {}),
        ("/sso/callback", {"content-type": "multipart/form-data; boundary=x"}, "--x--", {}),
        ("/sso/callback", {"content-type": "application/json"}, '{"code": "abc"}', {}),
        ("/sso/callback", {}, "code=" + "a" * 100, {"max_form_bytes": 64}),
        ("/sso/callback", {}, "code=%FF", {}),
        ("/sso/callback", {"sec-fetch-site": None}, "code=abc", {}),
    ],
    ids=[
        "not-a-relay-path",
        "a-scripts-fetch",
        "multipart",
        "json",
        "over-max-form-bytes",
        "not-utf-8",
        "no-fetch-metadata",
    ],
)
async def test_other_cross_site_posts_are_refused_as_before(
    path: str, headers: dict[str, str | None], body: str, csrf: dict[str, Any]
) -> None:
    """Only a form that the browser shows as a page can be posted again, and only one
    whose fields a page can post as they came."""
    app = make_app(MemoryStore(), **csrf)

    @app.post("/elsewhere")
    async def elsewhere() -> dict[str, bool]:
        return {"ran": True}

    sent = {**PROVIDER_POST, **headers}
    async with client_for(app) as client:
        for name in [name for name, value in sent.items() if value is None]:
            del client.headers[name]  # sent by default, as the app's own pages send it
        response = await client.post(
            path, content=body, headers={name: value for name, value in sent.items() if value}
        )
    assert response.status_code == 403, response.text
    assert response.json()["detail"].startswith("CSRF check failed")


def test_relay_paths_take_a_list_of_paths() -> None:
    with pytest.raises(ConfigurationError, match="relay_paths takes a list"):
        CSRFConfig(relay_paths="/sso")
    with pytest.raises(ConfigurationError, match="must start with '/'"):
        CSRFConfig(relay_paths=["sso"])


async def test_a_session_started_by_another_sites_post_is_pointed_out_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exempt callback that writes starts a session whose cookie replaces the user's:
    the log says so, once for the route, and points to relay_paths. A post from the
    app's own page, or one that signs the user in (a SAML login), is not pointed out."""
    app = make_app(MemoryStore(), exempt_paths=["/exempt", "/exempt-login"])

    @app.post("/exempt/{provider}")
    async def exempt(provider: str, session: SessionDep) -> dict[str, bool]:
        session["flash"] = f"Sign-in with {provider} failed"
        return {}

    @app.post("/exempt-login/acs")
    async def saml_login(session: SessionDep) -> dict[str, bool]:
        session.login("alice")
        return {}

    async with client_for(app) as client:
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            for provider in ("apple", "okta"):
                answer = await client.post(f"/exempt/{provider}", data={}, headers=PROVIDER_POST)
                assert answer.status_code == 200
            assert (await client.post("/exempt/apple", headers=RELAYED_POST)).status_code == 200
            signed_in = await client.post("/exempt-login/acs", headers=PROVIDER_POST)
            assert signed_in.status_code == 200
    lines = [r.getMessage() for r in caplog.records if "from another site" in r.getMessage()]
    assert lines == [
        "a post from another site to '/exempt/apple' (route '/exempt/{provider}') started a new "
        "session: the browser sent no session cookie with it (SameSite), and the new cookie "
        "replaces the one it holds, signing its user out. For a provider's answer posted back "
        "(OpenID Connect form_post, SAML), list the path in CSRFConfig(relay_paths=[...]) "
        "instead of exempt_paths."
    ]


async def test_under_samesite_none_a_cross_site_start_is_no_replacement(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ``SameSite=None`` the browser sends its cookie with such a post: a session
    started there is the browser's first, and nothing is pointed out."""
    app = FastAPI()

    @app.post("/widget")
    async def widget(session: SessionDep) -> dict[str, bool]:
        session["seen"] = True
        return {}

    config = SessionConfig(
        cookie=CookieConfig(samesite="none"), csrf=CSRFConfig(exempt_paths=["/widget"])
    )
    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=config)
    async with client_for(app) as client:
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            answer = await client.post("/widget", headers=PROVIDER_POST)
    assert answer.status_code == 200
    assert "set-cookie" in answer.headers
    assert not [r for r in caplog.records if "from another site" in r.getMessage()]
