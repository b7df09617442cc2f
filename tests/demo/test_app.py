"""The reference app's HTTP contract, exercised in-process through httpx."""

from __future__ import annotations

import asyncio
import html
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coatcheck import ConfigurationError, MemoryStore, SessionRecord, Store
from coatcheck.demo import routes, users
from coatcheck.demo.app import create_app, create_app_from_env
from coatcheck.demo.pages import device_name, friendly_utc, relative
from coatcheck.demo.routes import TOO_MANY_SESSIONS
from coatcheck.demo.settings import DemoSettings

JSON = {"accept": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}  # what browsers send, body or not
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    application = create_app(store_url=f"sqlite:///{tmp_path / 'demo.db'}")
    yield application
    store: Store = application.state.store
    await store.aclose()


def browser(
    app: FastAPI, agent: str = FIREFOX, address: str = "127.0.0.1", **kwargs: Any
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 49152)),
        base_url=kwargs.pop("base_url", "http://demo.test"),
        headers={"user-agent": agent, "sec-fetch-site": "same-origin"},
        **kwargs,
    )


async def login(client: httpx.AsyncClient, user: str = "alice", **extra: Any) -> httpx.Response:
    password = {"alice": "wonderland", "bob": "builder"}[user]
    response = await client.post("/login", json={"username": user, "password": password, **extra})
    assert response.status_code == 200, response.text
    return response


# -- the page ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_anonymous_page_offers_login_and_cart_without_creating_a_session(
    app: FastAPI,
) -> None:
    async with browser(app) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for field in ('name="username"', 'name="password"', 'name="remember"', 'name="shared"'):
        assert field in response.text
    assert "Shared computer: sign me out after 5 minutes unused" in response.text
    for field in ('name="item"',):
        assert field in response.text
    assert 'action="/login"' in response.text
    assert 'action="/cart/items"' in response.text
    assert "only a ticket" in response.text
    assert "set-cookie" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


@pytest.mark.anyio
async def test_form_login_redirects_and_page_shows_account_devices_and_cart(
    app: FastAPI,
) -> None:
    async with browser(app) as client:
        added = await client.post("/cart/items", data={"item": "scarf"})
        assert added.status_code == 303
        assert added.headers["location"] == "/"
        response = await client.post(
            "/login", data={"username": "bob", "password": "builder", "remember": "on"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("session=")
        assert "Max-Age=" in cookie  # remember me: a persistent cookie
        assert "Secure" not in cookie  # development cookies
        session_id = client.cookies["session"]
        async with browser(app) as phone:
            await login(phone, "bob")
        page = await client.get("/")
    assert page.status_code == 200
    text = page.text
    # Brought back by Back after the session ended elsewhere, the page asks again.
    assert '<script src="/static/restore.js" defer></script>' in text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # A screen reader hears which device each button signs out, not "Sign out" twice.
    assert 'aria-label="Sign out here"' in text
    assert re.search(r'aria-label="Sign out Firefox on Linux, session [\w-]{16}"', text)
    assert "Signed in as bob" in text
    assert "This device" in text
    assert "Signed in since" in text
    assert "Last active" in text
    assert "Remembered" in text
    assert "Firefox on Linux" in text
    assert 'action="/logout"' in text
    assert "<li>scarf</li>" in text
    assert 'name="password"' not in text
    assert session_id not in text


@pytest.mark.anyio
async def test_page_escapes_cart_items(app: FastAPI) -> None:
    async with browser(app) as client:
        await client.post("/cart/items", json={"item": "<script>alert(1)</script>"})
        page = await client.get("/")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


@pytest.mark.anyio
async def test_stylesheet_is_served_locally(app: FastAPI) -> None:
    async with browser(app) as client:
        response = await client.get("/static/style.css")
        page = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert ".device" in response.text
    assert 'href="/static/style.css"' in page.text
    assert "http://" not in page.text.split("<main", 1)[0]  # nothing loaded from elsewhere


@pytest.mark.anyio
async def test_openapi_documents_the_json_api(app: FastAPI) -> None:
    async with browser(app) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/login", "/logout", "/me", "/cart", "/cart/items", "/sessions"} <= set(paths)
    body = paths["/login"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"username", "password"}
    assert "/" not in paths  # the HTML page is not part of the API


@pytest.mark.anyio
async def test_every_answer_the_api_gives_is_in_its_schema(app: FastAPI) -> None:
    """A client generated from /openapi.json parses what it is answered: the bodies
    read by hand answer FastAPI's 422 (and 413, 415); routes that change things may get
    the CSRF guard's 403; coatcheck's 409, 413 and 503 may replace any of them."""
    async with browser(app) as client:
        spec = (await client.get("/openapi.json")).json()
        await login(client)
        invalid = await client.post("/confirm", json={})
        transport = httpx.ASGITransport(app=app)  # a script: no Sec-Fetch-Site, no Origin
        base, cookies = client.base_url, client.cookies
        async with httpx.AsyncClient(
            transport=transport, base_url=base, cookies=cookies
        ) as scripted:
            forged = await scripted.post("/cart/items", json={"item": "pear"})
    assert (invalid.status_code, forged.status_code) == (422, 403)
    assert isinstance(invalid.json()["detail"], list)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            assert {"409", "413", "503"} <= declared, (method, path)
            if method != "get":
                assert "403" in declared, (method, path)
            if "requestBody" in operation and path != "/sessions/{session_id}":
                assert {"413", "415", "422"} <= declared, (method, path)
    unavailable = spec["paths"]["/cart"]["get"]["responses"]["503"]
    assert "Retry-After" in unavailable["headers"]


# -- logging in -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_cart_holds_at_most_a_hundred_items(app: FastAPI) -> None:
    """A session grows only so far, however many requests add to it, even in parallel."""
    async with browser(app) as client:
        for n in range(99):
            assert (await client.post("/cart/items", json={"item": f"i{n}"})).status_code == 201
        # Parallel adds to the 99-item cart: those that saw room before another saved
        # are re-run on the stored cart, which is then full.
        racing = await asyncio.gather(
            *(client.post("/cart/items", json={"item": f"late{n}"}) for n in range(20))
        )
        assert {r.status_code for r in racing} <= {201, 422}
        assert sum(r.status_code == 201 for r in racing) == 1  # only one found room
        full = await client.post("/cart/items", json={"item": "one more"})
        form = await client.post("/cart/items", data={"item": "by form"}, headers=FORM)
        cart = (await client.get("/cart")).json()["items"]
    assert full.status_code == 422
    # In FastAPI's shape, as every other 422 of the API: one parser serves them all.
    assert full.json() == {
        "detail": [{"type": "value_error", "loc": ["item"], "msg": "The cart is full (100 items)."}]
    }
    assert form.status_code == 422
    assert "full" in form.text
    assert len(cart) == 100
    assert cart[:99] == [f"i{n}" for n in range(99)]


@pytest.mark.anyio
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_past_what_any_input_needs_is_refused_unread(
    app: FastAPI, declared: bool
) -> None:
    """A 100 MB JSON list once kept 400 MB of memory after its 422."""
    read = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(1_000):
            read += 1
            yield b"x" * 10_000

    body: Any = b"x" * 10_000_000 if declared else chunks()
    async with browser(app) as client:
        for path in ("/cart/items", "/login"):
            response = await client.post(
                path, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 413, path
            big_form = {"item": "x" * 20_000}
            page = await client.post(path, data=big_form, headers=FORM)
            assert page.status_code == 413
            assert "more than this page takes" in page.text  # a page, for a person
        fig = await client.post("/cart/items", data={"item": "fig"}, headers=FORM)
        assert fig.status_code == 303
        assert (await client.get("/cart")).json()["items"] == ["fig"]
    assert read < 10


@pytest.mark.anyio
async def test_a_refusal_of_a_form_post_is_a_page_and_of_an_api_call_json(app: FastAPI) -> None:
    """coatcheck's own 403 (here a cross-site form post) showed its JSON to a person."""
    forged = {**FORM, "sec-fetch-site": "cross-site", "accept": "text/html"}
    async with browser(app) as client:
        await login(client)
        page = await client.post("/cart/items", data={"item": "fig"}, headers=forged)
        api = await client.post(
            "/cart/items", json={"item": "fig"}, headers={"sec-fetch-site": "cross-site"}
        )
    assert page.status_code == 403
    assert page.headers["content-type"].startswith("text/html")
    assert "That was refused" in page.text
    assert api.status_code == 403
    assert api.json() == {"detail": "CSRF check failed: cross-site request"}


class _HoldingStore(MemoryStore):
    """A real store that, once given ``parties``, holds every load until that many
    requests have loaded: each then sees the session as it was before any of them saved."""

    def __init__(self) -> None:
        super().__init__()
        self.parties = 0
        self.arrived = 0
        self.all_loaded = asyncio.Event()

    async def load(self, key: str, now: float) -> SessionRecord | None:
        record = await super().load(key, now)
        if self.parties:
            self.arrived += 1
            if self.arrived == self.parties:
                self.all_loaded.set()
            await self.all_loaded.wait()
        return record


@pytest.mark.anyio
async def test_two_adds_that_both_saw_room_for_one_more_item_stop_at_a_hundred(
    app: FastAPI,
) -> None:
    store = _HoldingStore()
    app.user_middleware[0].kwargs["store"] = store  # before the first request builds the stack
    async with browser(app) as client:
        for n in range(99):
            assert (await client.post("/cart/items", json={"item": f"i{n}"})).status_code == 201
        store.parties = 2
        racing = await asyncio.wait_for(  # a guard only: both loads arrive at once
            asyncio.gather(
                *(client.post("/cart/items", json={"item": f"late{n}"}) for n in range(2))
            ),
            timeout=10,
        )
        store.parties = 0
        cart = (await client.get("/cart")).json()["items"]
    # The second save re-runs its add on the stored, now full, cart: it adds nothing,
    # and says so rather than answer 201 for an item the cart does not hold.
    assert sorted(r.status_code for r in racing) == [201, 422]
    added = next(r for r in racing if r.status_code == 201).json()["items"]
    assert added == cart
    assert len(cart) == 100


@pytest.mark.anyio
async def test_json_login_rotates_the_id_and_keeps_the_cart(app: FastAPI) -> None:
    async with browser(app) as client:
        added = await client.post("/cart/items", json={"item": "apple"})
        assert added.status_code == 201
        assert added.json() == {"items": ["apple"]}
        anonymous_id = client.cookies["session"]

        response = await login(client)
        assert response.json() == {"user": "alice"}
        assert "Max-Age" not in response.headers["set-cookie"]  # a browser-session cookie
        assert client.cookies["session"] != anonymous_id
        cart = await client.get("/cart")
    assert cart.json() == {"items": ["apple"]}

    async with browser(app, cookies={"session": anonymous_id}) as replay:
        assert (await replay.get("/me")).status_code == 401
        assert (await replay.get("/cart")).json() == {"items": []}


@pytest.mark.anyio
async def test_no_answer_of_the_json_api_is_kept_by_a_cache(app: FastAPI) -> None:
    """Not even one that sets no cookie: Back must not show a cart, devices and their
    addresses once the session has ended elsewhere."""
    async with browser(app) as client:
        await client.post("/cart/items", json={"item": "apple"})
        await login(client)
        for path in ("/me", "/cart", "/sessions"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert "set-cookie" not in response.headers, path
            assert response.headers["cache-control"] == "no-store", path
        refusals = [
            await client.post("/cart/items", json={"item": ""}),  # 422
            await client.post("/login", json={"username": "alice", "password": "no"}),  # 401
        ]
    for refusal in refusals:
        assert refusal.headers["cache-control"] == "no-store", refusal.status_code


@pytest.mark.anyio
async def test_a_flood_of_logins_checks_only_as_many_passwords_at_once_as_there_are_cores(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each argon2 check holds 64 MiB: unbounded, eight parallel logins held half a GiB."""
    lock, running, most = threading.Lock(), [0], [0]
    real = routes.authenticate

    def counted(username: str, password: str) -> str | None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return real(username, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(routes, "authenticate", counted)
    async with browser(app) as client:
        attempts = [
            client.post("/login", json={"username": "mallory", "password": "guess"})
            for _ in range(3 * (os.cpu_count() or 1) + 2)
        ]
        answers = await asyncio.gather(*attempts)
    assert {answer.status_code for answer in answers} == {401}
    assert 1 <= most[0] <= (os.cpu_count() or 1)


@pytest.mark.anyio
async def test_switching_users_starts_with_empty_data(app: FastAPI) -> None:
    async with browser(app) as client:
        await login(client, "alice")
        await client.post("/cart/items", json={"item": "alice's secret"})
        await login(client, "bob")
        cart = await client.get("/cart")
        again = await login(client, "bob")
        kept = await client.get("/cart")
    assert cart.json() == {"items": []}
    assert again.json() == {"user": "bob"}
    assert kept.json() == {"items": []}


@pytest.mark.anyio
async def test_logging_in_again_as_the_same_user_keeps_the_cart(app: FastAPI) -> None:
    async with browser(app) as client:
        await login(client, "alice")
        await client.post("/cart/items", json={"item": "tea"})
        await login(client, "alice", remember=True)
        cart = await client.get("/cart")
    assert cart.json() == {"items": ["tea"]}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "builder"), ("alice", ""), ("carol", "wonderland"), ("ALICE", "wonderland")],
    ids=["wrong-password", "empty-password", "unknown-user", "case-matters"],
)
async def test_json_login_with_bad_credentials_is_401_or_422(
    app: FastAPI, username: str, password: str
) -> None:
    async with browser(app) as client:
        response = await client.post("/login", json={"username": username, "password": password})
        me = await client.get("/me")
    if password:
        assert response.status_code == 401
        assert response.json() == {"detail": "Invalid username or password"}
    else:
        assert response.status_code == 422
    assert "set-cookie" not in response.headers
    assert me.status_code == 401


@pytest.mark.anyio
async def test_form_login_with_wrong_password_shows_the_page_with_an_error(
    app: FastAPI,
) -> None:
    async with browser(app) as client:
        response = await client.post("/login", data={"username": "alice", "password": "nope"})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in response.text
    assert "Invalid username or password" in response.text
    assert 'value="alice"' in response.text  # the username is kept, the password is not
    assert "nope" not in response.text
    assert "set-cookie" not in response.headers
    # Said where a screen reader looks: the title, and the field, which has the focus.
    assert "<title>Error: Invalid username or password" in response.text
    assert _invalid_input(response.text) == "password"


def _invalid_input(page: str) -> str:
    """The id of the one input the page marks invalid, tied to its error and focused."""
    [found] = re.findall(r'<input id="([\w-]+)"[^>]*aria-invalid="true"[^>]*>', page)
    tag = re.search(rf'<input id="{found}"[^>]*>', page)
    assert tag is not None
    assert 'aria-describedby="form-error"' in tag[0]
    assert "autofocus" in tag[0]
    return found


@pytest.mark.anyio
@pytest.mark.parametrize("ticked", [{"shared": "on"}, {"remember": "on"}, {}])
async def test_a_wrong_password_keeps_what_the_form_had_ticked(
    app: FastAPI, ticked: dict[str, str]
) -> None:
    """A typo lost "Shared computer": the next try made an ordinary session."""
    async with browser(app) as client:
        form = {"username": "alice", "password": "nope", **ticked}
        page = (await client.post("/login", data=form)).text
    for name in ("remember", "shared"):
        box = f'<input type="checkbox" name="{name}" value="on" checked>'
        assert (box in page) == (name in ticked), name


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://192.168.1.20:8000", True),  # the demo on a LAN address
        ("http://demo.local:8000", True),
        ("http://127.0.0.1:8000", False),  # browsers take Secure cookies from these
        ("http://localhost:8000", False),
        ("https://demo.test", False),
    ],
)
async def test_secure_cookies_over_plain_http_say_why_signing_in_cannot_work(
    url: str, warned: bool
) -> None:
    """The browser drops the cookie, so the right password showed the form again."""
    app = create_app(store_url="memory://", secure_cookies=True)
    async with browser(app, base_url=url) as client:
        page = (await client.get("/")).text
    assert ("restart the demo without <code>--secure-cookies</code>" in page) == warned


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'"alice"',
        b'{"username": "alice"}',
        b'{"password": "wonderland"}',
        b'{"username": 7, "password": "wonderland"}',
        b'{"username": "alice", "password": "wonderland", "remember": "maybe"}',
        b"\xff\xfe",
    ],
)
async def test_malformed_json_login_is_422(app: FastAPI, body: bytes) -> None:
    async with browser(app) as client:
        response = await client.post(
            "/login", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/cart/items", b'{"item": "\\ud800"}'),
        ("/login", b'{"username": "\\ud800", "password": "wonderland"}'),
        ("/login", b"[" * 5_000),
        ("/cart/items", b'{"item": ' * 1_500),  # deep enough, within MAX_BODY
    ],
    ids=["surrogate-item", "surrogate-username", "deep-array", "deep-object"],
)
async def test_hostile_json_is_422_not_500(app: FastAPI, path: str, body: bytes) -> None:
    async with browser(app) as client:
        response = await client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert "set-cookie" not in response.headers


@pytest.mark.anyio
async def test_validation_errors_never_echo_the_password(app: FastAPI) -> None:
    password = "hunter2-" + "x" * 2_000
    async with browser(app) as client:
        response = await client.post("/login", json={"username": "alice", "password": password})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["password"]
    assert "hunter2" not in response.text


@pytest.mark.anyio
async def test_a_refused_login_form_keeps_at_most_150_characters_of_the_username(
    app: FastAPI,
) -> None:
    async with browser(app) as client:
        response = await client.post(
            "/login", data={"username": "u" * 150 + "TAIL", "password": "x"}
        )
    assert response.status_code == 422
    assert f'value="{"u" * 150}"' in response.text
    assert "TAIL" not in response.text


@pytest.mark.anyio
async def test_form_login_with_missing_fields_is_422_page(app: FastAPI) -> None:
    async with browser(app) as client:
        response = await client.post("/login", data={"username": "alice"})
        empty = await client.post("/login")
    assert response.status_code == 422
    assert 'role="alert"' in response.text
    assert "password" in response.text
    assert empty.status_code == 422


def test_unknown_users_cost_one_password_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def verify(password: str, hashed: str) -> bool:
        calls.append(hashed)
        return True  # even a "match" against the dummy hash must not log anyone in

    monkeypatch.setattr(users._hasher, "verify", verify)
    assert users.authenticate("mallory", "anything") is None
    assert users.authenticate("alice", "anything") == "alice"
    assert len(calls) == 2
    assert calls[0] != calls[1]


def test_demo_passwords_match_their_hashes() -> None:
    for name, password in users.DEMO_CREDENTIALS:
        assert users.authenticate(name, password) == name
    assert users.authenticate("alice", "builder") is None


# -- who am I ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_me(app: FastAPI) -> None:
    async with browser(app) as client:
        anonymous = await client.get("/me")
        await login(client)
        response = await client.get("/me")
        sessions = await client.get("/sessions")
    assert anonymous.status_code == 401
    assert "detail" in anonymous.json()
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"user", "session"}
    assert body["user"] == "alice"
    assert set(body["session"]) == {"id", "created_at", "expires_at"}
    assert body["session"]["id"] == sessions.json()["sessions"][0]["id"]
    created = datetime.fromisoformat(body["session"]["created_at"])
    expires = datetime.fromisoformat(body["session"]["expires_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=1)
    assert timedelta(minutes=29) < expires - created <= timedelta(minutes=31)


# -- the cart ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "payload",
    [{"item": ""}, {"item": "   "}, {"item": "x" * 201}, {"item": 5}, {"item": None}, {}],
    ids=["empty", "blank", "too-long", "number", "null", "missing"],
)
async def test_invalid_cart_items_are_422(app: FastAPI, payload: dict[str, Any]) -> None:
    async with browser(app) as client:
        response = await client.post("/cart/items", json=payload)
        cart = await client.get("/cart")
    assert response.status_code == 422
    assert cart.json() == {"items": []}


@pytest.mark.anyio
async def test_cart_accepts_items_up_to_200_characters(app: FastAPI) -> None:
    async with browser(app) as client:
        first = await client.post("/cart/items", json={"item": "x" * 200})
        second = await client.post("/cart/items", json={"item": "pear"})
        cart = await client.get("/cart")
    assert first.status_code == 201
    assert second.json() == {"items": ["x" * 200, "pear"]}
    assert cart.json() == {"items": ["x" * 200, "pear"]}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "media_type", ["application/vnd.api+json", "Application/JSON; charset=utf-8"]
)
async def test_any_json_media_type_is_read_and_answered_as_json(
    app: FastAPI, media_type: str
) -> None:
    async with browser(app) as client:
        response = await client.post(
            "/cart/items", content=b'{"item": "pear"}', headers={"content-type": media_type}
        )
    assert response.status_code == 201
    assert response.json() == {"items": ["pear"]}


@pytest.mark.anyio
async def test_invalid_cart_item_from_the_page_shows_an_error(app: FastAPI) -> None:
    async with browser(app) as client:
        response = await client.post("/cart/items", data={"item": "y" * 201})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in response.text
    assert _invalid_input(response.text) == "item"


# -- devices ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sessions_lists_every_device_and_marks_the_current_one(app: FastAPI) -> None:
    async with (
        browser(app, FIREFOX, "198.51.100.7") as laptop,
        browser(app, PHONE, "2001:db8::5") as phone,
    ):
        await login(laptop)
        await login(phone, remember=True)
        seen_by_laptop = (await laptop.get("/sessions")).json()["sessions"]
        seen_by_phone = (await phone.get("/sessions")).json()["sessions"]
        secrets = {laptop.cookies["session"], phone.cookies["session"]}
        page = await phone.get("/")
    assert len(seen_by_laptop) == 2
    for entry in seen_by_laptop:
        keys = {"id", "created_at", "last_seen_at", "user_agent", "ip_address", "current"}
        assert set(entry) == keys
        assert entry["id"] not in secrets
    assert [entry["user_agent"] for entry in seen_by_laptop] == [FIREFOX, PHONE]
    assert [entry["ip_address"] for entry in seen_by_laptop] == ["198.51.100.7", "2001:db8::5"]
    assert [entry["current"] for entry in seen_by_laptop] == [True, False]
    assert [entry["current"] for entry in seen_by_phone] == [False, True]
    assert "Safari on iOS" in page.text
    assert "Firefox on Linux" in page.text
    assert "&middot; From 198.51.100.7" in page.text
    assert page.text.count("This device") == 1


@pytest.mark.anyio
async def test_revoking_another_device_logs_it_out(app: FastAPI) -> None:
    async with browser(app) as laptop, browser(app, PHONE) as phone, browser(app) as bobs:
        await login(laptop)
        await login(phone)
        await login(bobs, "bob")
        phone_id = (await phone.get("/me")).json()["session"]["id"]
        bobs_id = (await bobs.get("/me")).json()["session"]["id"]

        assert (await laptop.delete(f"/sessions/{bobs_id}")).status_code == 404
        assert (await laptop.delete("/sessions/no-such-session")).status_code == 404
        response = await laptop.delete(f"/sessions/{phone_id}")
        assert response.status_code == 204
        assert (await phone.get("/me")).status_code == 401
        assert (await laptop.delete(f"/sessions/{phone_id}")).status_code == 404
        assert (await laptop.get("/me")).status_code == 200
        assert (await bobs.get("/me")).status_code == 200


@pytest.mark.anyio
async def test_revoking_the_current_device_ends_it(app: FastAPI) -> None:
    async with browser(app) as client:
        await login(client)
        own_id = (await client.get("/me")).json()["session"]["id"]
        response = await client.delete(f"/sessions/{own_id}")
        assert response.status_code == 204
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert (await client.get("/me")).status_code == 401


@pytest.mark.anyio
async def test_revoke_others_keeps_only_this_device(app: FastAPI) -> None:
    async with browser(app) as one, browser(app) as two, browser(app) as three:
        for client in (one, two, three):
            await login(client)
        response = await three.post("/sessions/revoke-others")
        again = await three.post("/sessions/revoke-others", headers=JSON)
        assert response.status_code == 200
        assert response.json() == {"revoked": 2}
        assert again.json() == {"revoked": 0}
        assert (await one.get("/me")).status_code == 401
        assert (await two.get("/me")).status_code == 401
        assert len((await three.get("/sessions")).json()["sessions"]) == 1


@pytest.mark.anyio
async def test_revoke_others_does_not_count_an_expired_device(app: FastAPI) -> None:
    store: Store = app.state.store
    async with browser(app) as old, browser(app, PHONE) as current:
        await login(old)
        [record] = await store.list_user("alice", time.time())
        await store.save(record._replace(expires_at=time.time() - 60))  # idled out long ago
        await login(current)
        response = await current.post("/sessions/revoke-others", headers=JSON)
        assert response.json() == {"revoked": 0}
        own_id = (await current.get("/me")).json()["session"]["id"]
    # The dead record was removed all the same: even a clock at 1970 sees only this device.
    assert [r.public_id for r in await store.list_user("alice", 0.0)] == [own_id]


async def age_logins(app: FastAPI, seconds: float, user: str = "alice") -> None:
    """Move the user's sign-ins ``seconds`` into the past, as time passing would."""
    store: Store = app.state.store
    for record in await store.list_user(user, time.time()):
        await store.save(record._replace(authenticated_at=record.authenticated_at - seconds))


@pytest.mark.anyio
async def test_signing_out_everywhere_right_after_signing_in(app: FastAPI) -> None:
    async with browser(app) as laptop, browser(app, PHONE) as phone:
        await login(laptop)
        await login(phone)
        response = await laptop.post("/sessions/revoke-all", headers=JSON)
        assert response.status_code == 200
        assert response.json() == {"revoked": 2}
        assert "session=;" in response.headers["set-cookie"]  # this device's cookie goes too
        assert (await laptop.get("/me")).status_code == 401
        assert (await phone.get("/me")).status_code == 401
    assert await app.state.store.list_user("alice", time.time()) == []


@pytest.mark.anyio
async def test_an_old_sign_in_confirms_the_password_before_signing_out_everywhere(
    app: FastAPI,
) -> None:
    async with browser(app) as laptop, browser(app, PHONE) as phone:
        await laptop.post("/cart/items", json={"item": "scarf"})
        await login(laptop)
        await login(phone)
        await age_logins(app, 301)
        refused = await laptop.post("/sessions/revoke-all", headers=JSON)
        assert refused.status_code == 401
        assert refused.json() == {"detail": "Recent sign-in required"}
        assert refused.headers["www-authenticate"] == (
            'APIKey error="insufficient_user_authentication", max_age=300'
        )
        assert (await laptop.get("/me")).status_code == 200  # still signed in
        assert (await phone.get("/me")).status_code == 200  # nobody signed out

        wrong = await laptop.post("/confirm", json={"password": "builder"})
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "Wrong password"}
        before = laptop.cookies["session"]
        confirmed = await laptop.post("/confirm", json={"password": "wonderland"})
        assert confirmed.status_code == 200
        assert confirmed.json() == {"user": "alice"}
        assert laptop.cookies["session"] != before  # a new proof, a new ID
        assert (await laptop.get("/cart")).json() == {"items": ["scarf"]}

        response = await laptop.post("/sessions/revoke-all", headers=JSON)
        assert response.json() == {"revoked": 2}
        assert (await phone.get("/me")).status_code == 401


def session_span(body: dict[str, Any]) -> timedelta:
    """How long after its login the session in ``GET /me``'s ``body`` ends if unused, to
    the second (its last use came a moment after the login)."""
    session = body["session"]
    span = datetime.fromisoformat(session["expires_at"]) - datetime.fromisoformat(
        session["created_at"]
    )
    return timedelta(seconds=round(span.total_seconds()))


@pytest.mark.anyio
async def test_a_sign_in_on_a_shared_computer_ends_after_five_idle_minutes(app: FastAPI) -> None:
    """Asked for in JSON or by the form, a shared computer's sign-in is never remembered,
    and keeps its short limit when the password is confirmed again."""
    async with browser(app) as api, browser(app) as page, browser(app) as usual:
        response = await login(api, shared=True, remember=True)
        assert "Max-Age=" not in response.headers["set-cookie"]
        assert session_span((await api.get("/me")).json()) == timedelta(minutes=5)

        form = {"username": "bob", "password": "builder", "shared": "on", "remember": "on"}
        response = await page.post("/login", data=form)
        assert response.status_code == 303
        assert "Max-Age=" not in response.headers["set-cookie"]
        assert session_span((await page.get("/me")).json()) == timedelta(minutes=5)
        assert "in 4 min if unused" in (await page.get("/")).text  # 5 min, rounded down

        await login(usual)
        assert session_span((await usual.get("/me")).json()) == timedelta(minutes=30)

        confirmed = await api.post("/confirm", json={"password": "wonderland"})
        assert confirmed.status_code == 200
        assert session_span((await api.get("/me")).json()) == timedelta(minutes=5)


@pytest.mark.anyio
async def test_a_shared_computer_never_outlives_a_shorter_configured_limit() -> None:
    app = create_app(store_url="memory://", idle_timeout=90)
    async with browser(app) as client:
        page = (await client.get("/")).text
        assert "sign me out after 90 seconds unused" in page
        await login(client, shared=True)
        assert session_span((await client.get("/me")).json()) == timedelta(seconds=90)


@pytest.mark.anyio
async def test_confirming_needs_a_signed_in_user(app: FastAPI) -> None:
    async with browser(app) as client:
        api = await client.post("/confirm", json={"password": "wonderland"})
        page = await client.post("/confirm", data={"password": "wonderland"})
        everywhere = await client.post("/sessions/revoke-all", headers=JSON)
    assert (api.status_code, api.json()) == (401, {"detail": "Not authenticated"})
    assert (page.status_code, page.headers["location"]) == (303, "/")
    assert (everywhere.status_code, everywhere.json()) == (401, {"detail": "Not authenticated"})


@pytest.mark.anyio
async def test_the_page_asks_for_the_password_once_the_sign_in_is_old(app: FastAPI) -> None:
    async with browser(app) as laptop, browser(app, PHONE) as phone:
        await login(laptop)
        await login(phone)
        page = (await laptop.get("/")).text
        assert 'action="/sessions/revoke-all"' in page
        assert 'action="/confirm"' not in page

        await age_logins(app, 301)
        page = (await laptop.get("/")).text
        assert 'action="/sessions/revoke-all"' not in page
        assert 'action="/confirm"' in page
        # A page left open from before: its button is refused with the page, not JSON.
        stale = await laptop.post("/sessions/revoke-all", headers=FORM)
        assert stale.status_code == 401
        assert stale.headers["content-type"].startswith("text/html")
        assert "confirm your password first" in stale.text
        assert "insufficient_user_authentication" in stale.headers["www-authenticate"]
        assert (await phone.get("/me")).status_code == 200

        wrong = await laptop.post("/confirm", data={"password": "nope"})
        assert wrong.status_code == 401
        assert '<p class="alert" role="alert" id="form-error">Wrong password</p>' in wrong.text
        assert _invalid_input(wrong.text) == "confirm-password"
        confirmed = await laptop.post("/confirm", data={"password": "wonderland"})
        assert (confirmed.status_code, confirmed.headers["location"]) == (303, "/")
        page = (await laptop.get("/")).text
        assert "Password confirmed." in page
        assert 'action="/sessions/revoke-all"' in page

        everywhere = await laptop.post("/sessions/revoke-all", headers=FORM)
        assert (everywhere.status_code, everywhere.headers["location"]) == (303, "/")
        assert 'action="/login"' in (await laptop.get("/")).text
        assert (await phone.get("/me")).status_code == 401


@pytest.mark.anyio
async def test_page_buttons_revoke_with_plain_forms(app: FastAPI) -> None:
    async with browser(app) as laptop, browser(app, PHONE) as phone, browser(app) as third:
        for client in (laptop, phone, third):
            await login(client)
        phone_id = (await phone.get("/me")).json()["session"]["id"]
        page = (await laptop.get("/")).text
        assert f'action="/sessions/{phone_id}/revoke"' in page
        assert 'action="/sessions/revoke-others"' in page

        revoked = await laptop.post(f"/sessions/{phone_id}/revoke")
        assert revoked.status_code == 303
        assert revoked.headers["location"] == "/"
        assert (await phone.get("/me")).status_code == 401
        # The page it leads to says so, once.
        notice = '<p class="notice" role="status">Signed out that device.</p>'
        assert notice in (await laptop.get("/")).text
        assert 'class="notice"' not in (await laptop.get("/")).text

        missing = await laptop.post(f"/sessions/{phone_id}/revoke")
        assert missing.status_code == 404
        assert 'role="alert"' in missing.text

        others = await laptop.post("/sessions/revoke-others", headers=FORM)
        assert others.status_code == 303
        assert (await third.get("/me")).status_code == 401
        assert (await laptop.get("/me")).status_code == 200
        assert "Signed out 1 other device." in (await laptop.get("/")).text
        await laptop.post("/sessions/revoke-others", headers=FORM)
        assert "No other device was signed in." in (await laptop.get("/")).text


@pytest.mark.anyio
async def test_signing_this_device_out_from_the_page_leaves_no_session(app: FastAPI) -> None:
    async with browser(app) as laptop:
        await login(laptop)
        own_id = (await laptop.get("/me")).json()["session"]["id"]
        response = await laptop.post(f"/sessions/{own_id}/revoke", headers=FORM)
        assert (response.status_code, response.headers["location"]) == (303, "/")
        # No message is left behind, so no new session is started to carry one.
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert not laptop.cookies
        page = (await laptop.get("/")).text
    assert 'id="signin"' in page
    assert 'class="notice"' not in page


@pytest.mark.anyio
async def test_device_endpoints_need_a_login(app: FastAPI) -> None:
    async with browser(app) as client:
        responses = [
            await client.get("/sessions"),
            await client.post("/sessions/revoke-others"),
            await client.delete("/sessions/whatever"),
        ]
    assert [response.status_code for response in responses] == [401, 401, 401]
    assert all("detail" in response.json() for response in responses)
    assert all(response.headers["www-authenticate"] == "APIKey" for response in responses)


@pytest.mark.anyio
async def test_page_forms_of_a_signed_out_visitor_lead_back_to_the_page(app: FastAPI) -> None:
    async with browser(app) as client:
        others = await client.post("/sessions/revoke-others", headers=FORM)
        revoke = await client.post("/sessions/whatever/revoke", headers=FORM)
    assert (others.status_code, others.headers["location"]) == (303, "/")
    assert (revoke.status_code, revoke.headers["location"]) == (303, "/")


# -- logging out ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "status"),
    [({"headers": JSON}, 204), ({"json": {}}, 204), ({"headers": FORM}, 303), ({}, 303)],
    ids=["accept-json", "json-body", "form", "bare"],
)
async def test_logout_destroys_the_session(
    app: FastAPI, kwargs: dict[str, Any], status: int
) -> None:
    async with browser(app) as client:
        await login(client)
        session_id = client.cookies["session"]
        response = await client.post("/logout", **kwargs)
        assert response.status_code == status
        if status == 303:
            assert response.headers["location"] == "/"
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert (await client.get("/me")).status_code == 401
    async with browser(app, cookies={"session": session_id}) as replay:
        assert (await replay.get("/me")).status_code == 401  # gone server-side too


# -- configuration ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_secure_cookies_use_the_host_prefix() -> None:
    app = create_app(store_url="memory://", secure_cookies=True)
    async with browser(app, base_url="https://demo.test") as client:
        response = await login(client)
        me = await client.get("/me")
        page = await client.get("/")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-session=")
    assert "; Secure" in cookie
    assert me.json()["user"] == "alice"
    assert "<code>__Host-session</code>" in page.text
    # HTML's datetime takes at most three digits of a second.
    stamps = re.findall(r'datetime="([^"]+)"', page.text)
    assert stamps
    assert all(re.fullmatch(r"[\d-]{10}T[\d:]{8}\.\d{3}\+00:00", stamp) for stamp in stamps)


@pytest.mark.parametrize("secure", [False, True])
def test_plain_http_cookies_log_a_warning(caplog: pytest.LogCaptureFixture, secure: bool) -> None:
    with caplog.at_level(logging.WARNING, logger="coatcheck.demo"):
        create_app(store_url="memory://", secure_cookies=secure)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if secure:
        assert warnings == []
    else:
        [message] = warnings
        assert "NOT Secure" in message
        assert "local development only" in message


@pytest.mark.anyio
async def test_app_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COATCHECK_DEMO_STORE", "memory://")
    monkeypatch.setenv("COATCHECK_DEMO_SECURE", "1")
    monkeypatch.setenv("COATCHECK_DEMO_IDLE", "60")
    monkeypatch.delenv("COATCHECK_DEMO_ABSOLUTE", raising=False)
    app = create_app_from_env()
    assert app.state.cookie_name == "__Host-session"
    async with browser(app, base_url="https://demo.test") as client:
        await login(client)
        body = (await client.get("/me")).json()
    created = datetime.fromisoformat(body["session"]["created_at"])
    expires = datetime.fromisoformat(body["session"]["expires_at"])
    assert timedelta(seconds=59) < expires - created <= timedelta(seconds=61)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COATCHECK_DEMO_IDLE", "soon"),
        ("COATCHECK_DEMO_ABSOLUTE", "0"),
        ("COATCHECK_DEMO_SECURE", "perhaps"),
        ("COATCHECK_DEMO_STORE", "mongodb://localhost"),
    ],
)
def test_bad_environment_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("COATCHECK_DEMO_STORE", "memory://")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError):
        create_app_from_env()


def test_a_lone_timeout_adjusts_the_other_default() -> None:
    long_idle = DemoSettings(idle_timeout=86_400).session_config()
    assert (long_idle.idle_timeout, long_idle.absolute_timeout) == (86_400, 86_400)
    short_absolute = DemoSettings(absolute_timeout=600).session_config()
    assert (short_absolute.idle_timeout, short_absolute.absolute_timeout) == (600, 600)
    default = DemoSettings().session_config()
    assert (default.idle_timeout, default.absolute_timeout) == (1800, 43_200)
    assert not default.cookie.secure
    with pytest.raises(ConfigurationError):
        DemoSettings(idle_timeout=3_600, absolute_timeout=60).session_config()


def test_given_timeouts_also_cap_remember_me_sessions() -> None:
    default = DemoSettings().session_config()
    assert (default.remember.idle, default.remember.absolute) == (14 * 86_400, 30 * 86_400)
    short = DemoSettings(absolute_timeout=3).session_config()
    assert (short.remember.idle, short.remember.absolute) == (3, 3)
    idle_only = DemoSettings(idle_timeout=60).session_config()
    assert (idle_only.remember.idle, idle_only.remember.absolute) == (60, 30 * 86_400)
    long_idle = DemoSettings(idle_timeout=30 * 86_400).session_config()
    assert (long_idle.remember.idle, long_idle.remember.absolute) == (14 * 86_400, 30 * 86_400)


@pytest.mark.anyio
async def test_a_remembered_login_ends_at_the_demos_absolute_timeout() -> None:
    app = create_app(store_url="memory://", absolute_timeout=3)
    async with browser(app) as client:
        response = await login(client, remember=True)
        body = (await client.get("/me")).json()
    max_age = int(response.headers["set-cookie"].split("Max-Age=")[1].split(";")[0])
    assert 0 < max_age <= 3  # not the default 30 days
    created = datetime.fromisoformat(body["session"]["created_at"])
    expires = datetime.fromisoformat(body["session"]["expires_at"])
    assert expires - created <= timedelta(seconds=3)


@pytest.mark.anyio
async def test_with_a_session_limit_a_login_past_it_is_refused_in_either_format() -> None:
    app = create_app(store_url="memory://", max_sessions=1)
    async with browser(app) as first, browser(app) as second:
        await login(first)
        refused = await second.post("/login", json={"username": "alice", "password": "wonderland"})
        page = await second.post("/login", data={"username": "alice", "password": "wonderland"})
        other = await login(second, "bob")
        still = await first.get("/me")
    assert refused.status_code == 403
    assert refused.json() == {"detail": TOO_MANY_SESSIONS}
    assert "set-cookie" not in refused.headers
    assert page.status_code == 403
    assert html.escape(TOO_MANY_SESSIONS) in page.text
    assert other.json() == {"user": "bob"}  # the limit is per user
    assert still.json()["user"] == "alice"  # the first login stands


def test_settings_survive_the_trip_through_the_environment() -> None:
    settings = DemoSettings("memory://", True, 60, 120, max_sessions=3)
    assert DemoSettings.from_env(settings.to_env()) == settings
    assert DemoSettings.from_env({}) == DemoSettings()


# -- presentation helpers ---------------------------------------------------------------


def test_friendly_times() -> None:
    moment = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    assert friendly_utc(moment) == "Tue 04 Mar 2025, 05:06 UTC"
    now = moment.timestamp()
    assert relative(moment, now) == "just now"
    assert relative(moment - timedelta(minutes=3, seconds=5), now) == "3 min ago"
    assert relative(moment + timedelta(hours=2, minutes=1), now) == "in 2 h"
    assert relative(moment - timedelta(days=1, hours=1), now) == "1 day ago"
    assert relative(moment - timedelta(days=3), now) == "3 days ago"


@pytest.mark.parametrize(
    ("agent", "name"),
    [
        (FIREFOX, "Firefox on Linux"),
        (PHONE, "Safari on iOS"),
        ("curl/8.5.0", "curl"),
        ("", "Unknown device"),
        ("SomeBot/1.0 (+https://example.com)", "SomeBot"),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1",
            "Chrome on iOS",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) FxiOS/127.0 Mobile/15E148 Safari/605.1.15",
            "Firefox on iOS",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
            "Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19582",
            "Edge on Windows",
        ),
        (
            "Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) "
            "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/52.0.2743.116 Mobile "
            "Safari/537.36 Edge/15.15063",
            "Edge on Windows Phone",
        ),
    ],
)
def test_device_names(agent: str, name: str) -> None:
    assert device_name(agent) == name


@pytest.fixture
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STORE", "SECURE", "IDLE", "ABSOLUTE"):
        monkeypatch.delenv(f"COATCHECK_DEMO_{name}", raising=False)


@pytest.mark.usefixtures("_no_env")
def test_environment_defaults_to_the_sqlite_file_and_plain_http_cookies() -> None:
    settings = DemoSettings.from_env()
    assert settings.store_url == "sqlite:///coatcheck-demo.db"
    assert settings.secure_cookies is False
    assert settings.session_config().cookie.name == "session"


# -- answers a browser can read, whatever went wrong -------------------------------------


@pytest.mark.anyio
async def test_a_page_signed_out_meanwhile_gets_the_page_back_from_sign_out_everywhere(
    app: FastAPI,
) -> None:
    """Its form posts for a user who is gone: the page, with the sign-in form, not JSON."""
    async with browser(app) as client:
        await login(client)
        await client.post("/logout", headers=JSON)  # another tab signed out
        stale = await client.post("/sessions/revoke-all", headers=FORM)
        assert stale.status_code == 303
        assert stale.headers["location"] == "/"
        api = await client.post("/sessions/revoke-all", headers=JSON)
    assert api.status_code == 401  # an API caller still gets the 401


@pytest.mark.anyio
async def test_a_cart_past_what_the_cookie_holds_gets_a_readable_page() -> None:
    app = create_app(store_url="cookie://", secret="s" * 32)
    item = "x" * 190
    async with browser(app, base_url="http://demo.test") as client:
        added = 0
        while added < 100:
            response = await client.post("/cart/items", data={"item": item}, headers=FORM)
            if response.status_code != 303:
                break
            added += 1
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("text/html")
        assert "no more fits in the session" in response.text
        cart = await client.get("/cart", headers=JSON)
        api = await client.post("/cart/items", json={"item": item})
    assert 0 < added < 100
    assert len(cart.json()["items"]) == added  # the cart as it was
    assert api.status_code == 413
    assert "no more fits" in api.json()["detail"]


@pytest.mark.anyio
async def test_a_store_that_is_down_gets_browsers_a_page_and_api_callers_json() -> None:
    from ..redis_servers import free_port

    app = create_app(store_url=f"redis://127.0.0.1:{free_port()}/0?timeout=0.5")
    try:
        async with browser(app) as client:
            ticket = {"cookie": f"session={'A' * 43}"}  # the session must be looked up
            page = await client.get("/", headers={"accept": "text/html,*/*;q=0.8", **ticket})
            api = await client.get("/me", headers={**JSON, **ticket})
    finally:
        await app.state.store.aclose()
    assert page.status_code == 503
    assert page.headers["retry-after"]
    assert page.headers["content-type"].startswith("text/html")
    assert "Try again in a few seconds" in page.text
    assert api.status_code == 503
    assert api.headers["retry-after"]
    assert api.json() == {"detail": "Session store unavailable, please retry shortly."}


@pytest.mark.anyio
@pytest.mark.parametrize("action", ["revoke-all", "revoke-others"])
async def test_a_tab_left_open_for_alice_cannot_sign_bob_out(app: FastAPI, action: str) -> None:
    """alice's page stays open in one tab; in another, she signs out and bob signs in.
    Her "Sign out everywhere" then signed out bob's phone, without a word."""
    async with browser(app) as shared, browser(app, PHONE) as phone:
        await login(shared)
        page = (await shared.get("/")).text
        assert '<input type="hidden" name="account" value="alice">' in page
        await shared.post("/logout", headers=JSON)
        await login(shared, "bob")
        await login(phone, "bob")
        stale = await shared.post(f"/sessions/{action}", data={"account": "alice"})
        assert stale.status_code == 409
        assert "nothing was changed" in stale.text
        assert "Signed in as <strong>bob</strong>" in stale.text
        assert (await phone.get("/me")).json()["user"] == "bob"
        assert (await shared.get("/me")).json()["user"] == "bob"
        # bob's own page works as before.
        mine = await shared.post(f"/sessions/{action}", data={"account": "bob"})
        assert mine.status_code == 303
        assert (await phone.get("/me")).status_code == 401


@pytest.mark.anyio
async def test_a_ticket_whose_session_ended_is_told_on_the_page(app: FastAPI) -> None:
    """Signed out elsewhere (or idle past the limit): the page says the session ended,
    rather than show the sign-in form without a word, and an item added then says it
    starts a new cart."""
    async with browser(app) as client:
        await login(client)
        assert (await client.post("/cart/items", json={"item": "apple"})).status_code == 201
        assert await app.state.store.delete_user("alice") == 1  # ended elsewhere
        page = await client.get("/")
        assert "Your session has ended" in page.text
        assert "<title>Session ended · coatcheck demo</title>" in page.text
        added = await client.post("/cart/items", data={"item": "pear"}, headers=FORM)
        assert added.status_code == 303
        page = await client.get("/")
    assert "Your session had ended, so this item starts a new cart." in page.text
    assert "<title>Your session had ended" in page.text  # announced, as errors are
    assert "Your session has ended" not in page.text  # the new cart's session lives


@pytest.mark.anyio
async def test_a_tab_left_open_for_alice_cannot_claim_to_sign_out_her_phone(
    app: FastAPI,
) -> None:
    """Its device button, once bob signed in on the browser, found no such device of
    his and said "already ended": alice would think her lost phone signed out."""
    async with browser(app) as shared, browser(app, PHONE) as phone:
        await login(shared)
        await login(phone)
        (_, phone_id) = [d["id"] for d in (await shared.get("/sessions")).json()["sessions"]]
        await shared.post("/logout", headers=JSON)
        await login(shared, "bob")
        stale = await shared.post(f"/sessions/{phone_id}/revoke", data={"account": "alice"})
        assert stale.status_code == 409
        assert "nothing was changed" in stale.text
        assert (await phone.get("/me")).json()["user"] == "alice"


@pytest.mark.anyio
async def test_a_form_posted_while_the_store_is_down_is_told_it_was_not_saved() -> None:
    from ..redis_servers import free_port

    app = create_app(store_url=f"redis://127.0.0.1:{free_port()}/0?timeout=0.5")
    try:
        async with browser(app) as client:
            ticket = {"cookie": f"session={'A' * 43}", "accept": "text/html"}
            posted = await client.post("/cart/items", data={"item": "scarf"}, headers=ticket)
    finally:
        await app.state.store.aclose()
    assert posted.status_code == 503
    assert "What you just sent was not saved" in posted.text
    assert "Nothing you did was lost" not in posted.text
