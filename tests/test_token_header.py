"""The session carried in a header of its own, for clients that are not browsers."""

from __future__ import annotations

import asyncio
import functools
import json
import string

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from coatcheck import ConfigurationError, CSRFConfig, MemoryStore, SessionConfig, Store
from coatcheck._asgi import Headers, Message
from coatcheck._ids import store_key
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import TEST_WS_BASE_URL

from .apps import make_app
from .conftest import client_for

pytestmark = pytest.mark.anyio
NAME = "__Host-session"
HEADER = "x-session-token"
CONFIG = SessionConfig(token_header="X-Session-Token")
CROSS_SITE = {"sec-fetch-site": "cross-site", "origin": "https://evil.example"}
CROSS_SITE_BYTES = [(name.encode(), value.encode()) for name, value in CROSS_SITE.items()]


def token(response: httpx.Response) -> str:
    value = response.headers[HEADER]
    assert value
    return value


def carrying(value: str) -> dict[str, str]:
    return {HEADER: value}


async def test_a_client_without_cookies_keeps_its_session_in_the_header(any_store: Store) -> None:
    async with client_for(make_app(any_store, CONFIG)) as client:
        response = await client.post("/login", headers=carrying("new"))
        assert response.status_code == 200
        assert "set-cookie" not in response.headers
        assert response.headers["cache-control"] == "no-store"
        assert HEADER in response.headers["vary"].lower()
        ticket = token(response)
        assert len(ticket) == 43

        added = await client.post("/append?item=pear", headers=carrying(ticket))
        assert added.json() == {"data": {"cart": ["pear"]}, "user": "alice"}
        assert HEADER not in added.headers  # same ticket: nothing to hand back
        read = await client.get("/read", headers=carrying(ticket))
        assert read.json()["user"] == "alice"

        ended = await client.post("/logout", headers=carrying(ticket))
        assert ended.status_code == 204
        assert ended.headers[HEADER] == ""  # the client drops its ticket
        assert "clear-site-data" not in ended.headers  # no browser's cache to clear
        after = await client.get("/read", headers=carrying(ticket))
    assert after.json() == {"data": {}, "user": None}
    assert await any_store.list_user("alice", CONFIG.clock()) == []


async def test_login_rotates_the_header_token_and_keeps_the_data() -> None:
    store = MemoryStore()
    async with client_for(make_app(store, CONFIG)) as client:
        anonymous = token(await client.post("/append?item=pear", headers=carrying("new")))
        response = await client.post("/login", headers=carrying(anonymous))
        signed_in = token(response)
        assert signed_in != anonymous
        old = await client.get("/read", headers=carrying(anonymous))
        new = await client.get("/read", headers=carrying(signed_in))
    assert old.json() == {"data": {}, "user": None}
    assert new.json() == {"data": {"cart": ["pear"]}, "user": "alice"}
    assert await store.load(store_key(anonymous), CONFIG.clock()) is None


async def test_a_header_session_needs_no_csrf_token() -> None:
    """A page on another site cannot add the header without a CORS preflight."""
    async with client_for(make_app(MemoryStore(), CONFIG)) as client:
        ticket = token(await client.post("/login", headers=carrying("new")))
        response = await client.post(
            "/append?item=pear", headers={**CROSS_SITE, **carrying(ticket)}
        )
    assert response.status_code == 200
    assert response.json()["data"] == {"cart": ["pear"]}


async def test_the_cookie_is_ignored_when_the_header_is_sent() -> None:
    """So a forged request that adds the header rides on no one's cookie."""
    store = MemoryStore()
    async with client_for(make_app(store, CONFIG)) as client:
        login = await client.post("/login")
        cookie = login.headers["set-cookie"].split(";", 1)[0]
        forged = await client.post(
            "/append?item=bomb", headers={**CROSS_SITE, "cookie": cookie, **carrying("new")}
        )
        assert forged.json() == {"data": {"cart": ["bomb"]}, "user": None}
        assert "set-cookie" not in forged.headers
        victim = await client.get("/read", headers={"cookie": cookie})
        cookie_only = await client.post(
            "/append?item=bomb", headers={**CROSS_SITE, "cookie": cookie}
        )
    assert victim.json() == {"data": {}, "user": "alice"}
    assert cookie_only.status_code == 403  # the cookie alone is checked as ever


@pytest.mark.parametrize(
    "headers",
    [
        [(HEADER, "B" * 43)],  # well formed, unknown
        [(HEADER, "é" * 43)],
        [(HEADER, "x" * 10_000)],
        [(HEADER, "")],
    ],
)
async def test_a_bad_header_token_is_no_session(headers: list[tuple[str, str]]) -> None:
    async with client_for(make_app(MemoryStore(), CONFIG)) as client:
        response = await client.get("/read", headers=httpx.Headers(headers, encoding="utf-8"))
    assert response.status_code == 200
    assert response.json() == {"data": {}, "user": None}


async def test_a_token_sent_twice_counts_only_when_both_agree() -> None:
    async with client_for(make_app(MemoryStore(), CONFIG)) as client:
        ticket = token(await client.post("/login", headers=carrying("new")))
        same = await client.get("/read", headers=[(HEADER, ticket), (HEADER, ticket)])
        other = await client.get("/read", headers=[(HEADER, ticket), (HEADER, "B" * 43)])
    assert same.json()["user"] == "alice"
    assert other.json()["user"] is None


async def test_without_a_token_header_configured_the_header_means_nothing() -> None:
    async with client_for(make_app(MemoryStore(), SessionConfig())) as client:
        login = await client.post("/login")
        ticket = login.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        by_header = await client.get("/read", headers=carrying(ticket))
        by_cookie = await client.get(
            "/read", headers={"cookie": f"{NAME}={ticket}", **carrying("new")}
        )
        forged = await client.post("/write", headers={**CROSS_SITE, **carrying(ticket)})
    assert by_header.json()["user"] is None
    assert by_cookie.json()["user"] == "alice"
    assert by_cookie.headers["vary"] == "Cookie"
    assert forged.status_code == 403


async def test_the_cookie_store_seals_the_session_into_the_header() -> None:
    config = SessionConfig(token_header="X-Session-Token", secret_keys=["k" * 32])
    async with client_for(make_app(CookieStore(), config)) as client:
        first = token(await client.post("/login", headers=carrying("new")))
        second = token(await client.post("/append?item=pear", headers=carrying(first)))
        read = await client.get("/read", headers=carrying(second))
    assert len(first) > 43  # the whole record, sealed
    assert read.json() == {"data": {"cart": ["pear"]}, "user": "alice"}


def test_a_websocket_may_carry_its_session_in_the_header() -> None:
    """Browsers cannot add headers to a handshake, so such a handshake is not a page's."""
    app = make_app(MemoryStore(), CONFIG)
    with TestClient(app, base_url="https://testserver") as client:
        ticket = token(client.post("/login", headers=carrying("new")))
        with client.websocket_connect(
            f"{TEST_WS_BASE_URL}/ws", headers={"origin": "https://evil.example", HEADER: ticket}
        ) as socket:
            state = socket.receive_json()
    assert state["user"] == "alice"


@pytest.mark.parametrize(
    "name", ["Authorization", "cookie", "X-CSRF-Token", "Vary", "two words", ""]
)
def test_a_token_header_that_means_something_else_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="token_header"):
        SessionConfig(token_header=name)


def test_the_token_header_may_not_be_the_csrf_header_whatever_it_is_called() -> None:
    with pytest.raises(ConfigurationError, match="token_header"):
        SessionConfig(token_header="X-Token", csrf=CSRFConfig(header_name="x-token"))
    with pytest.raises(ConfigurationError, match="token_header"):
        SessionConfig(token_header="x-token", csrf=CSRFConfig(header_name="X-Token"))
    # The app's spelling is kept (OpenAPI shows it); requests match it in any case.
    assert SessionConfig(token_header="X-Session-Token").token_header == "X-Session-Token"


# -- junk in the header, with someone else's cookie alongside ------------------------------

JUNK_STORE = MemoryStore()
JUNK_APP = make_app(JUNK_STORE, CONFIG)


async def _call(method: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, Headers, bytes]:
    """One request straight into the ASGI app: nothing on the way normalises the header."""
    sent: list[Message] = []
    path = "/write" if method == "POST" else "/read"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await JUNK_APP(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], list(start.get("headers", [])), body


async def _victim() -> str:
    status, headers, _ = await _call("POST", [])
    assert status == 200
    cookie = dict(headers)[b"set-cookie"].split(b";", 1)[0]
    return cookie.decode().split("=", 1)[1]


@functools.cache
def victim_id() -> str:
    """A logged-out visitor's session, by cookie: the one junk must never reach."""
    return asyncio.run(_victim())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    value=st.binary(max_size=120)
    | st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=40, max_size=46).map(
        str.encode
    )
)
def test_no_header_value_fails_or_rides_on_the_cookie(value: bytes) -> None:
    """Any bytes in the header, beside a live cookie, from another site: a read finds no
    session, a write starts a new one under a fresh ticket, and the cookie's is untouched."""
    cookie = victim_id()
    assume(value.strip(b" \t") != cookie.encode())
    sent = [(HEADER.encode(), value), (b"cookie", f"{NAME}={cookie}".encode())]

    status, headers, body = asyncio.run(_call("GET", [*sent, *CROSS_SITE_BYTES]))
    assert status == 200
    assert json.loads(body) == {"data": {}, "user": None}
    assert [name for name, _ in headers if name in (b"set-cookie", HEADER.encode())] == []

    status, headers, body = asyncio.run(_call("POST", [*sent, *CROSS_SITE_BYTES]))
    assert status == 200  # no CSRF check: the cookie plays no part
    assert json.loads(body) == {"data": {"n": 1}, "user": None}
    names = dict(headers)
    assert b"set-cookie" not in names
    issued = names[HEADER.encode()].decode()
    assert len(issued) == 43
    assert issued not in (cookie, value.decode("latin-1").strip())
    stored = asyncio.run(JUNK_STORE.load(store_key(cookie), CONFIG.clock()))
    assert stored is not None
    assert stored.data == b'{"n":1}'
