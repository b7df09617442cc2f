from __future__ import annotations

import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from coatcheck import (
    ConfigurationError,
    CookieConfig,
    MemoryStore,
    Session,
    SessionConfig,
    SessionConflictError,
    SessionEvent,
    SessionMiddleware,
    SessionNotLoadedError,
    SessionRecord,
    SQLiteStore,
    Store,
    StoreUnavailableError,
)
from coatcheck._context import ASYNCIO_ONLY, cookie_taken
from coatcheck._ids import store_key
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, TEST_WS_BASE_URL, FakeClock

from .apps import make_app
from .conftest import SHORTENED, CountingStore, client_for, shut_down, without_denial_responses

pytestmark = pytest.mark.anyio

NAME = "__Host-session"


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def ticket(response: httpx.Response) -> str:
    """The session ID the response hands to the browser."""
    (header,) = set_cookies(response)
    name, _, rest = header.partition("=")
    assert name == NAME
    return rest.split(";", 1)[0]


def cookie(value: str) -> dict[str, str]:
    return {"cookie": f"{NAME}={value}"}


@pytest.fixture
def store() -> CountingStore:
    return CountingStore(MemoryStore())


@pytest.fixture
def config(clock: FakeClock) -> SessionConfig:
    return SessionConfig(idle_timeout=1000, absolute_timeout=10_000, clock=clock)


@pytest.fixture
async def client(store: CountingStore, config: SessionConfig) -> httpx.AsyncClient:
    async with client_for(make_app(store, config)) as client:
        yield client  # type: ignore[misc]


async def start_session(client: httpx.AsyncClient) -> str:
    response = await client.post("/write")
    assert response.status_code == 200
    return ticket(response)


# -- laziness ------------------------------------------------------------------------------


async def test_untouched_route_costs_no_store_io_even_with_a_cookie(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    sid = await start_session(client)
    store.calls.clear()
    response = await client.get("/untouched", headers=cookie(sid))
    assert response.text == "hello"
    assert not store.calls
    assert "set-cookie" not in response.headers
    assert "vary" not in response.headers


async def test_anonymous_read_creates_nothing(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    response = await client.get("/read")
    assert response.json() == {"data": {}, "user": None}
    assert "set-cookie" not in response.headers
    assert store.calls == {}
    assert await store.inner.count(0) == 0


async def test_malformed_cookie_never_reaches_the_store(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    for junk in ["x", "a" * 42, "a" * 44, "é" * 43, "a" * 5000, '"' + "a" * 41 + '"', ""]:
        response = await client.get("/read", headers={"cookie": f"{NAME}={junk}".encode()})
        assert response.status_code == 200
        assert response.json()["user"] is None
    assert store.calls["load"] == 0


# -- writing -------------------------------------------------------------------------------


async def test_first_write_sets_a_hardened_cookie(client: httpx.AsyncClient) -> None:
    response = await client.post("/write")
    (header,) = set_cookies(response)
    attributes = [part.strip() for part in header.split(";")][1:]
    assert attributes == ["Path=/", "HttpOnly", "Secure", "SameSite=Lax"]
    assert len(ticket(response)) == 43
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["vary"] == "Cookie"


async def test_store_holds_only_the_hash_of_the_id(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    sid = await start_session(client)
    assert await store.inner.load(sid, 0) is None
    record = await store.inner.load(store_key(sid), 0)
    assert record is not None
    # The public id shown in device lists is not cut from the secret either.
    assert not any(sid[at : at + 8] in record.public_id for at in range(len(sid) - 7))


async def test_read_after_write_loads_once_and_writes_nothing(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    sid = await start_session(client)
    store.calls.clear()
    response = await client.get("/read", headers=cookie(sid))
    assert response.json() == {"data": {"n": 1}, "user": None}
    assert store.calls == {"load": 1}
    assert "set-cookie" not in response.headers
    assert response.headers["vary"] == "Cookie"


async def test_a_change_is_saved_once_without_a_new_cookie(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    sid = await start_session(client)
    store.calls.clear()
    response = await client.post("/write", headers=cookie(sid))
    assert response.json()["data"] == {"n": 2}
    assert store.calls == {"load": 1, "save": 1}
    assert "set-cookie" not in response.headers


async def test_nested_mutation_is_saved(client: httpx.AsyncClient) -> None:
    sid = ticket(await client.post("/append?item=apple"))
    await client.post("/append?item=pear", headers=cookie(sid))
    response = await client.get("/read", headers=cookie(sid))
    assert response.json()["data"] == {"cart": ["apple", "pear"]}


async def test_cache_control_of_the_app_is_replaced_when_a_cookie_is_set(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/cached")
    assert response.headers.get_list("cache-control") == ["no-store"]


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        ("Accept-Encoding", ["accept-encoding", "cookie"]),
        # Names that merely contain "cookie" do not cover it.
        ("X-Cookie-Consent", ["cookie", "x-cookie-consent"]),
        ("Origin, Set-Cookie", ["cookie", "origin", "set-cookie"]),
        ("Origin, cookie", ["cookie", "origin"]),  # already there: not repeated
        ("*", ["*"]),  # varies on everything already
        ("", ["cookie"]),  # an empty line of the app's own
    ],
)
async def test_a_vary_header_of_the_app_gains_cookie(
    store: CountingStore, config: SessionConfig, own: str, expected: list[str]
) -> None:
    """A cache keyed on Accept-Encoding alone would hand one visitor's page to the next."""

    async def negotiated(request: Request) -> Response:
        session = await request.scope["session"].load()
        return PlainTextResponse(str(session.get("n")), headers={"Vary": own})

    app = Starlette(routes=[Route("/negotiated", negotiated)])
    app.add_middleware(SessionMiddleware, store=store, config=config)
    async with client_for(app) as client:
        response = await client.get("/negotiated")
    (line,) = response.headers.get_list("vary")  # one line: see the test below
    assert sorted(value.strip().lower() for value in line.split(",")) == expected


async def test_headers_an_app_gives_as_any_iterable_are_kept(
    store: CountingStore, config: SessionConfig
) -> None:
    """ASGI lets an app send its headers as any iterable, a generator included."""

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        session = scope["session"]
        await session.load()
        session.setdefault("n", 1)  # stored by the first request, only read after
        pairs = [(b"content-type", b"text/plain"), (b"x-kept", b"yes")]
        await send({"type": "http.response.start", "status": 200, "headers": iter(pairs)})
        await send({"type": "http.response.body", "body": b"ok"})

    async with client_for(SessionMiddleware(raw, store=store, config=config)) as client:
        first = await client.get("/")
        read = await client.get("/", headers=cookie(ticket(first)))
    for response in (first, read):
        assert response.headers["x-kept"] == "yes"
        assert response.headers["content-type"] == "text/plain"
        assert response.headers["vary"] == "Cookie"
    assert "set-cookie" not in read.headers


async def test_vary_cookie_survives_middleware_that_reads_only_the_first_vary_line(
    store: CountingStore, config: SessionConfig
) -> None:
    """Starlette before 1.0 (GZipMiddleware, CORSMiddleware) rewrites ``Vary`` from its
    first line alone, so ``Cookie`` must join the app's own line."""
    from starlette.datastructures import MutableHeaders

    async def negotiated(request: Request) -> Response:
        await request.scope["session"].load()
        return PlainTextResponse("hi", headers={"Vary": "Accept-Language"})

    def first_line_only(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            async def rewrite(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = MutableHeaders(raw=message["headers"])
                    first = headers.get("vary")  # what old Starlette's add_vary_header read
                    headers["vary"] = f"{first}, Accept-Encoding"
                await send(message)

            await app(scope, receive, rewrite)

        return wrapped

    inner = Starlette(routes=[Route("/negotiated", negotiated)])
    app = first_line_only(SessionMiddleware(inner, store=store, config=config))
    async with client_for(app) as client:
        response = await client.get("/negotiated")
    assert response.headers.get_list("vary") == ["Accept-Language, Cookie, Accept-Encoding"]


async def test_unknown_well_formed_id_is_never_adopted(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    forged = "A" * 43
    response = await client.post("/write", headers=cookie(forged))
    issued = ticket(response)
    assert issued != forged
    assert await store.inner.load(store_key(forged), 0) is None


async def test_a_cookie_that_matches_nothing_is_left_alone(client: httpx.AsyncClient) -> None:
    """Clearing it could log out a newer cookie that a parallel login just set."""
    response = await client.get("/read", headers=cookie("B" * 43))
    assert response.json() == {"data": {}, "user": None}
    assert "set-cookie" not in response.headers


async def test_a_slow_read_does_not_clobber_the_cookie_of_a_parallel_login(
    any_store: Store, config: SessionConfig, clock: FakeClock
) -> None:
    """The read is due to refresh the sliding expiry, so it really tries to save, finds
    its record replaced by the login, and must then leave the browser's cookie alone."""
    app = make_app(any_store, config)
    app.state.gate = Gate()
    async with client_for(app) as client:
        anonymous = await start_session(client)
        clock.advance(500)  # within the idle timeout, past the refresh threshold
        results: list[httpx.Response] = []

        async def slow_read() -> None:
            results.append(await client.get("/slow", headers=cookie(anonymous)))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(slow_read)
            await app.state.gate.loaded.wait()
            login = await client.post("/login", headers=cookie(anonymous))
            app.state.gate.release.set()
        assert ticket(login) != anonymous
        (late,) = results
        assert late.status_code == 200
        assert "set-cookie" not in late.headers
        state = (await client.get("/read", headers=cookie(ticket(login)))).json()
        assert state == {"data": {"n": 1}, "user": "alice"}


async def test_two_different_session_cookies_mean_no_session(client: httpx.AsyncClient) -> None:
    alice = ticket(await client.post("/login"))
    other = await start_session(client)
    for header in (f"{NAME}={alice}; {NAME}={other}", f"{NAME}={other}; {NAME}={alice}"):
        response = await client.get("/read", headers={"cookie": header})
        assert response.json() == {"data": {}, "user": None}
    same_twice = await client.get("/read", headers={"cookie": f"{NAME}={alice}; {NAME}={alice}"})
    assert same_twice.json()["user"] == "alice"


async def test_cookie_name_match_is_exact(client: httpx.AsyncClient) -> None:
    alice = ticket(await client.post("/login"))
    for name in ("__host-session", "__Host-Session", "x__Host-session", "__Host-session2"):
        response = await client.get("/read", headers={"cookie": f"{name}={alice}"})
        assert response.json()["user"] is None, name
    spread = await client.get(
        "/read", headers=[("cookie", "a=1; b=2"), ("cookie", f"theme=dark; {NAME}={alice}")]
    )
    assert spread.json()["user"] == "alice"


async def test_unstorable_value_fails_at_save_naming_the_key(
    store: CountingStore, config: SessionConfig
) -> None:
    app = make_app(store, config)
    async with client_for(app) as client:
        sid = await start_session(client)
        before = await store.inner.load(store_key(sid), 0)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://testserver", headers={**SAME_ORIGIN}
        ) as raw:
            with pytest.raises(TypeError, match="'when'"):
                await raw.post("/bad-value", headers=cookie(sid))
        assert await store.inner.load(store_key(sid), 0) == before


async def test_server_errors_do_not_save(client: httpx.AsyncClient, store: CountingStore) -> None:
    sid = await start_session(client)
    response = await client.post("/crash", headers=cookie(sid))
    assert response.status_code == 500
    assert (await client.get("/read", headers=cookie(sid))).json()["data"] == {"n": 1}


async def _logout_then_fail(request: Request) -> Response:
    session = await request.scope["session"].load()
    session.logout()
    session["flash"] = "bye"  # part of the page that failed: not kept
    if request.query_params.get("how") == "raise":
        raise RuntimeError("the page after the logout broke")
    return PlainTextResponse("failed", status_code=503)


def _failing_after_logout(app: Starlette) -> httpx.AsyncClient:
    """A client of ``app`` with ``/logout-fails``, given the server's 500 for an error."""
    app.routes.append(Route("/logout-fails", _logout_then_fail, methods=["POST"]))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN})


@pytest.mark.parametrize("how", ["answer", "raise"])
async def test_a_logout_stands_when_the_response_after_it_fails(
    store: CountingStore, config: SessionConfig, how: str
) -> None:
    """Django's logout deletes at once; here the user stayed signed in after a 5xx."""
    async with _failing_after_logout(make_app(store, config)) as client:
        alice = ticket(await client.post("/login"))
        response = await client.post(f"/logout-fails?how={how}", headers=cookie(alice))
        assert response.status_code == (503 if how == "answer" else 500)
        if how == "answer":  # a response the middleware sees: the cookie goes too
            assert response.headers["set-cookie"].startswith(f"{NAME}=;")
        after = (await client.get("/read", headers=cookie(alice))).json()
    assert after == {"data": {}, "user": None}
    assert await store.inner.count(0) == 0  # no record left, live or not


@pytest.mark.parametrize("how", ["answer", "raise"])
async def test_a_logout_in_the_cookie_store_needs_its_response(how: str) -> None:
    """There the cookie is the session: a 5xx the middleware sees clears it; an error
    that passes it by sends no cookie, so nothing is announced as ended."""
    from coatcheck.stores.cookie import CookieStore

    seen: list[str] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event.kind)

    config = SessionConfig(secret_keys=["k" * 40])
    async with _failing_after_logout(make_app(CookieStore(), config, events=[hook])) as client:
        alice = ticket(await client.post("/login"))
        seen.clear()
        response = await client.post(f"/logout-fails?how={how}", headers=cookie(alice))
    if how == "answer":
        assert response.headers["set-cookie"].startswith(f"{NAME}=;")
        assert seen == ["logged_out"]
    else:
        assert "set-cookie" not in response.headers
        assert seen == []


# -- the life cycle ------------------------------------------------------------------------


async def test_login_rotates_the_id_keeps_data_and_kills_the_old_id(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    anonymous = ticket(await client.post("/append?item=apple"))
    response = await client.post("/login", headers=cookie(anonymous))
    logged_in = ticket(response)
    assert logged_in != anonymous
    assert response.headers["cache-control"] == "no-store"
    assert await store.inner.load(store_key(anonymous), 0) is None
    state = (await client.get("/read", headers=cookie(logged_in))).json()
    assert state == {"data": {"cart": ["apple"]}, "user": "alice"}
    replay = (await client.get("/read", headers=cookie(anonymous))).json()
    assert replay == {"data": {}, "user": None}


async def test_regenerate_keeps_data_under_a_new_id(client: httpx.AsyncClient) -> None:
    old = await start_session(client)
    new = ticket(await client.post("/regenerate", headers=cookie(old)))
    assert new != old
    assert (await client.get("/read", headers=cookie(new))).json()["data"] == {"n": 1}
    assert (await client.get("/read", headers=cookie(old))).json()["data"] == {}


async def test_logout_deletes_server_side_and_clears_the_cookie(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    sid = ticket(await client.post("/login"))
    response = await client.post("/logout", headers=cookie(sid))
    (header,) = set_cookies(response)
    assert header.startswith(f"{NAME}=;")
    assert "Max-Age=0" in header
    assert "Secure" in header
    assert response.headers["cache-control"] == "no-store"
    # The pages the browser keeps for Back (its back/forward cache ignores no-store).
    assert response.headers["clear-site-data"] == '"cache"'
    assert await store.inner.count(0) == 0
    assert (await client.get("/read", headers=cookie(sid))).json()["user"] is None


async def test_a_login_as_someone_else_clears_the_previous_users_pages(
    client: httpx.AsyncClient,
) -> None:
    alice = ticket(await client.post("/login"))
    switched = await client.post("/login?user=bob", headers=cookie(alice))
    assert switched.headers["clear-site-data"] == '"cache"'
    again = await client.post("/login?user=bob", headers=cookie(ticket(switched)))
    assert "clear-site-data" not in again.headers  # the same user: nothing of anyone else


async def test_clearing_every_key_of_an_anonymous_session_deletes_it(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    sid = await start_session(client)
    response = await client.post("/clear", headers=cookie(sid))
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert "clear-site-data" not in response.headers  # no one signed out: a cart emptied
    assert await store.inner.count(0) == 0


async def test_clearing_the_data_of_a_logged_in_session_is_saved(
    client: httpx.AsyncClient,
) -> None:
    sid = ticket(await client.post("/login"))
    await client.post("/write", headers=cookie(sid))
    response = await client.post("/clear", headers=cookie(sid))
    assert "set-cookie" not in response.headers  # still logged in, under the same ID
    state = (await client.get("/read", headers=cookie(sid))).json()
    assert state == {"data": {}, "user": "alice"}


async def test_switching_user_is_stored_with_one_write(
    client: httpx.AsyncClient, store: CountingStore
) -> None:
    alice = ticket(await client.post("/login"))
    store.calls.clear()
    response = await client.post("/login?user=bob", headers=cookie(alice))
    assert response.json() == {"data": {}, "user": "bob"}
    assert store.calls == {"load": 1, "save": 1}


class Gate:
    def __init__(self) -> None:
        self.loaded = anyio.Event()
        self.release = anyio.Event()


@pytest.mark.parametrize("end", ["/logout", "/regenerate"])
async def test_a_session_ended_mid_request_is_not_resurrected(
    any_store: Store, config: SessionConfig, end: str
) -> None:
    app = make_app(any_store, config)
    app.state.gate = Gate()
    async with client_for(app) as client:
        sid = ticket(await client.post("/login"))
        results: list[httpx.Response] = []

        async def slow_write() -> None:
            results.append(await client.post("/slow", headers=cookie(sid)))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(slow_write)
            await app.state.gate.loaded.wait()
            ended = await client.post(end, headers=cookie(sid))
            assert ended.status_code in (200, 204)
            app.state.gate.release.set()
        (late,) = results
        assert late.status_code == 409
        assert "ended" in late.json()["detail"]
        assert "set-cookie" not in late.headers  # the browser may hold a newer cookie
        assert (await client.get("/read", headers=cookie(sid))).json()["user"] is None
        survivors = await any_store.list_user("alice", config.clock())
        # Logout leaves nothing; regenerate leaves only the rotated record, without the write.
        assert len(survivors) == (0 if end == "/logout" else 1)
        assert all(record.key != store_key(sid) for record in survivors)
        assert all(b"late" not in record.data for record in survivors)


async def test_an_expiry_refresh_does_not_resurrect_an_ended_session(
    any_store: Store, config: SessionConfig, clock: FakeClock
) -> None:
    app = make_app(any_store, config)
    app.state.gate = Gate()
    async with client_for(app) as client:
        sid = ticket(await client.post("/login"))
        clock.advance(500)  # the read below is due to refresh the sliding expiry
        results: list[httpx.Response] = []

        async def slow_read() -> None:
            results.append(await client.get("/slow", headers=cookie(sid)))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(slow_read)
            await app.state.gate.loaded.wait()
            await client.post("/logout", headers=cookie(sid))
            app.state.gate.release.set()
        (late,) = results
        assert late.status_code == 200
        assert "set-cookie" not in late.headers
        assert await any_store.count(clock()) == 0


# -- expiry --------------------------------------------------------------------------------


async def test_idle_timeout(client: httpx.AsyncClient, clock: FakeClock) -> None:
    sid = ticket(await client.post("/login"))
    clock.advance(999)
    assert (await client.get("/read", headers=cookie(sid))).json()["user"] == "alice"
    clock.advance(1000)
    assert (await client.get("/read", headers=cookie(sid))).json()["user"] is None


async def test_sliding_refresh_is_throttled_and_never_grows_the_window(
    client: httpx.AsyncClient, store: CountingStore, clock: FakeClock
) -> None:
    sid = ticket(await client.post("/login"))
    record = await store.inner.load(store_key(sid), clock())
    assert record is not None
    assert record.expires_at == clock() + 1000
    store.calls.clear()
    clock.advance(99)  # under 10% of the idle window: no write
    await client.get("/read", headers=cookie(sid))
    assert store.calls["save"] == 0
    clock.advance(1)  # 10% reached: one write moves the deadline
    await client.get("/read", headers=cookie(sid))
    assert store.calls["save"] == 1
    refreshed = await store.inner.load(store_key(sid), clock())
    assert refreshed is not None
    assert refreshed.expires_at == clock() + 1000
    assert refreshed.version == record.version + 1
    # Reads every 90 s never write, so the deadline set 900 s ago still holds and ends it.
    for _ in range(11):
        clock.advance(90)
        response = await client.get("/read", headers=cookie(sid))
        if response.json()["user"] is None:
            break
    assert clock() <= refreshed.expires_at + 1000 * 0.1


async def test_the_refresh_follows_the_configured_fraction(
    store: CountingStore, clock: FakeClock
) -> None:
    config = SessionConfig(
        idle_timeout=1000, absolute_timeout=10_000, refresh_fraction=0.05, clock=clock
    )
    async with client_for(make_app(store, config)) as client:
        sid = ticket(await client.post("/login"))
        store.calls.clear()
        clock.advance(49)
        await client.get("/read", headers=cookie(sid))
        assert store.calls["save"] == 0
        clock.advance(1)
        await client.get("/read", headers=cookie(sid))
        assert store.calls["save"] == 1


async def test_the_stored_deadline_never_passes_the_absolute_limit(
    store: CountingStore, clock: FakeClock
) -> None:
    """Device lists, counts and revocations go by the stored deadline, not by load's
    checks: sliding it past the absolute limit would count a dead session as live."""
    config = SessionConfig(idle_timeout=1000, absolute_timeout=1500, clock=clock)
    async with client_for(make_app(store, config)) as client:
        sid = ticket(await client.post("/login"))
        created = clock()
        clock.advance(900)
        assert (await client.post("/write", headers=cookie(sid))).json()["user"] == "alice"
    record = await store.inner.load(store_key(sid), clock())
    assert record is not None
    assert record.expires_at == created + 1500


async def test_absolute_timeout_ends_an_active_session(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    sid = ticket(await client.post("/login"))
    alive = 0
    for _ in range(30):
        clock.advance(500)
        if (await client.get("/read", headers=cookie(sid))).json()["user"] != "alice":
            break
        alive += 500
    assert 9_000 <= alive < 10_000


def remembering(clock: FakeClock) -> SessionConfig:
    """Short browser sessions, long remembered ones."""
    return SessionConfig(
        idle_timeout=100,
        absolute_timeout=1000,
        remember_idle_timeout=10_000,
        remember_absolute_timeout=100_000,
        clock=clock,
    )


async def test_remember_me_gets_max_age_and_the_longer_lifetime(
    store: CountingStore, clock: FakeClock
) -> None:
    config = remembering(clock)
    async with client_for(make_app(store, config)) as client:
        response = await client.post("/login?remember=1")
        assert "Max-Age=100000" in response.headers["set-cookie"]
        sid = ticket(response)
        clock.advance(5000)
        assert (await client.get("/read", headers=cookie(sid))).json()["user"] == "alice"
        browser_session = ticket(await client.post("/login?user=bob"))
        assert "Max-Age" not in (await client.post("/login?user=bob")).headers["set-cookie"]
        clock.advance(101)
        assert (await client.get("/read", headers=cookie(browser_session))).json()["user"] is None


async def test_a_new_id_for_a_remembered_session_keeps_its_cookie_to_the_absolute_limit(
    store: CountingStore, clock: FakeClock
) -> None:
    """A later regenerate() must not restart the cookie's lifetime: a cookie that outlived
    the server session would be sent for nothing, and look like a login that still holds."""
    config = remembering(clock)
    async with client_for(make_app(store, config)) as client:
        sid = ticket(await client.post("/login?remember=1"))
        clock.advance(5000)
        response = await client.post("/regenerate", headers=cookie(sid))
        record = await store.inner.load(store_key(ticket(response)), clock())
        assert record is not None
        assert record.created_at == clock() - 5000  # the server session ends 95 000 s on
        (header,) = set_cookies(response)
        assert "Max-Age=95000" in [part.strip() for part in header.split(";")]


async def test_a_remembered_session_refreshes_by_its_own_idle_window(
    store: CountingStore, clock: FakeClock
) -> None:
    """Reads of a remembered session write no more often than its long window calls for."""
    async with client_for(make_app(store, remembering(clock))) as client:
        sid = ticket(await client.post("/login?remember=1"))
        store.calls.clear()
        clock.advance(999)  # far past 10% of a browser session's window, short of its own
        await client.get("/read", headers=cookie(sid))
        assert store.calls["save"] == 0
        clock.advance(1)
        await client.get("/read", headers=cookie(sid))
        assert store.calls["save"] == 1


@pytest.mark.parametrize(("limits", "active", "then"), SHORTENED)
async def test_expired_record_is_not_served_even_if_the_store_still_has_it(
    store: CountingStore,
    clock: FakeClock,
    limits: tuple[int, int],
    active: list[int],
    then: int,
) -> None:
    long = SessionConfig(idle_timeout=1000, absolute_timeout=10_000, clock=clock)
    idle, absolute = limits
    short = SessionConfig(idle_timeout=idle, absolute_timeout=absolute, clock=clock)
    async with client_for(make_app(store, long)) as client:
        anonymous = ticket(await client.post("/append?item=apple"))
        sid = ticket(await client.post("/login", headers=cookie(anonymous)))
        for seconds in active:
            clock.advance(seconds)
            state = (await client.get("/read", headers=cookie(sid))).json()
            assert state == {"data": {"cart": ["apple"]}, "user": "alice"}
    clock.advance(then)
    assert await store.inner.load(store_key(sid), clock()) is not None
    async with client_for(make_app(store, short)) as client:
        state = (await client.get("/read", headers=cookie(sid))).json()
    assert state == {"data": {}, "user": None}


class _LenientStore(MemoryStore):
    """Serves records past their deadline, as a store whose expiry runs late might."""

    async def load(self, key: str, now: float) -> SessionRecord | None:
        return await super().load(key, 0.0)


async def test_the_stored_deadline_holds_even_under_longer_limits(clock: FakeClock) -> None:
    """Device lists and counts went by that deadline: a deploy that lengthens the limits
    must not bring back a session that was already over."""
    store = _LenientStore()
    short = SessionConfig(idle_timeout=100, absolute_timeout=10_000, clock=clock)
    long = SessionConfig(idle_timeout=1000, absolute_timeout=10_000, clock=clock)
    async with client_for(make_app(store, short)) as client:
        sid = ticket(await client.post("/login"))
    clock.advance(100)  # the very instant of the stored deadline
    async with client_for(make_app(store, long)) as client:
        state = (await client.get("/read", headers=cookie(sid))).json()
    assert state == {"data": {}, "user": None}


# -- request.session for Starlette-style code ----------------------------------------------


async def test_eager_paths_make_request_session_work_synchronously(
    store: CountingStore, clock: FakeClock
) -> None:
    config = SessionConfig(eager_paths=["/legacy"], clock=clock)
    async with client_for(make_app(store, config)) as client:
        first = await client.get("/legacy/visits")
        assert first.json() == {"visits": 1}
        second = await client.get("/legacy/visits", headers=cookie(ticket(first)))
        assert second.json() == {"visits": 2}
        store.calls.clear()
        await client.get("/untouched")
        assert not store.calls


async def test_eager_paths_match_the_route_path_by_whole_segments(
    store: CountingStore, clock: FakeClock
) -> None:
    # Behind uvicorn --root-path /api (or in a Mount) the scope's path keeps the prefix.
    app = make_app(store, SessionConfig(eager_paths=["/legacy"], clock=clock))
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        assert (await client.get("/api/legacy/visits")).json() == {"visits": 1}
    prefix_only = make_app(store, SessionConfig(eager_paths=["/leg"], clock=clock))
    async with client_for(prefix_only) as client:
        with pytest.raises(SessionNotLoadedError):
            await client.get("/legacy/visits")


async def test_sync_access_outside_eager_paths_explains_itself(store: CountingStore) -> None:
    transport = httpx.ASGITransport(app=make_app(store), raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        with pytest.raises(RuntimeError, match="eager_paths"):
            await client.get("/legacy/visits")


# -- store outages -------------------------------------------------------------------------


@pytest.mark.parametrize("lock", ["EXCLUSIVE", "IMMEDIATE"])
async def test_locked_sqlite_gives_503_with_retry_after_and_recovers(
    tmp_path: Path, lock: str
) -> None:
    """EXCLUSIVE blocks the load; IMMEDIATE lets the load through and blocks the save."""
    path = tmp_path / "locked.db"
    store = SQLiteStore(path, busy_timeout=0.1)
    app = make_app(store, SessionConfig(retry_after=7))
    try:
        async with client_for(app) as client:
            sid = await start_session(client)
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute(f"BEGIN {lock}")
            try:
                response = await client.post("/write", headers=cookie(sid))
                assert response.status_code == 503
                assert response.headers["retry-after"] == "7"
                assert "retry" in response.json()["detail"]
                assert "set-cookie" not in response.headers
                assert (await client.get("/untouched")).status_code == 200
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            response = await client.post("/write", headers=cookie(sid))
            assert response.status_code == 200
            assert response.json()["data"] == {"n": 2}
    finally:
        await store.aclose()


async def test_a_read_due_a_refresh_is_served_while_the_store_refuses_writes(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock held past the busy timeout (or a server that is read-only for a while)
    lets reads through: a read that only had to move the sliding expiry is served, and
    the session ends no later than stored; a write still gets its 503."""
    path = tmp_path / "locked.db"
    store = SQLiteStore(path, busy_timeout=0.1)
    config = SessionConfig(idle_timeout=1000, absolute_timeout=10_000, clock=clock)
    try:
        async with client_for(make_app(store, config)) as client:
            sid = await start_session(client)
            stored = await store.load(store_key(sid), clock())
            assert stored is not None
            clock.advance(500)  # past the refresh threshold, within the idle timeout
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                read = await client.get("/read", headers=cookie(sid))
                write = await client.post("/write", headers=cookie(sid))
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert read.status_code == 200
            assert read.json()["data"] == {"n": 1}
            assert "set-cookie" not in read.headers
            assert write.status_code == 503
            assert await store.load(store_key(sid), clock()) == stored  # not moved
            assert "served without moving its session's expiry" in caplog.text
            # The store writes again: the next read moves the expiry.
            assert (await client.get("/read", headers=cookie(sid))).status_code == 200
            refreshed = await store.load(store_key(sid), clock())
            assert refreshed is not None
            assert refreshed.expires_at == clock() + 1000
    finally:
        await store.aclose()


async def test_a_store_that_fails_outright_gives_503_not_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"these bytes are no SQLite header" * 64)
    store = SQLiteStore(path)
    try:
        async with client_for(make_app(store)) as client:
            response = await client.post("/write")
            untouched = await client.get("/untouched")
    finally:
        await store.aclose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert untouched.status_code == 200
    assert any(
        record.levelname == "ERROR" and "not a database" in record.getMessage()
        for record in caplog.records
    )


class _DownStore(MemoryStore):
    """Fails every load, naming when to retry, as a Redis server that is restarting."""

    async def load(self, key: str, now: float) -> SessionRecord | None:
        raise StoreUnavailableError("the store is restarting", retry_after=30)


async def test_the_stores_own_retry_hint_reaches_the_client() -> None:
    async with client_for(make_app(_DownStore(), SessionConfig(retry_after=7))) as client:
        response = await client.get("/read", headers=cookie("B" * 43))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"


class _OutageStore(MemoryStore):
    """Fails loads while ``down`` names why, and saves while ``full`` (a Redis server
    out of memory, which serves reads and refuses writes)."""

    down = ""
    full = False

    async def load(self, key: str, now: float) -> SessionRecord | None:
        if self.down:
            raise StoreUnavailableError(self.down, retry_after=3)
        return await super().load(key, now)

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        if self.full:
            raise StoreUnavailableError("the store is out of memory", retry_after=3)
        return await super().save(record, **options)


def _store_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "store" in r.getMessage()]


async def test_an_outage_is_logged_once_a_minute_and_its_end_when_the_store_answers(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request that needs the store fails in an outage: a line each would flood
    the log, at a thousand requests a second. Its first line comes at once, the rest
    are counted, and the store's first answer after it says how long it lasted. A
    failure of another kind is logged at once too."""
    from coatcheck import _persist

    monkeypatch.setattr(_persist, "_QUIET_AFTER_OUTAGE", 0.0)  # no wait for the next read
    store = _OutageStore()
    async with client_for(make_app(store)) as client:
        sid = ticket(await client.post("/write"))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            store.down = "the store is restarting"
            statuses = [(await client.get("/read", headers=cookie(sid))).status_code]
            store.down = "the store refuses the password"  # another failure, at once
            statuses += [(await client.get("/read", headers=cookie(sid))).status_code]
            statuses += [(await client.get("/read", headers=cookie(sid))).status_code]
            store.down = ""
            statuses += [(await client.get("/read", headers=cookie(sid))).status_code]
            await client.get("/read", headers=cookie(sid))
            store.down = "the store is restarting"  # the next outage, within the minute
            statuses += [(await client.get("/read", headers=cookie(sid))).status_code]
            store.down = ""
            statuses += [(await client.get("/read", headers=cookie(sid))).status_code]
    assert statuses == [503, 503, 503, 200, 503, 200]
    counted = " (more like this within a minute are counted, not logged)"
    assert _store_lines(caplog) == [
        f"the store is restarting; answering 503{counted}",
        f"the store refuses the password; answering 503{counted}",
        "the session store answers again, after 0 s; 3 requests were answered 503",
        f"the store is restarting; answering 503{counted}",
        # Its end waits for the next minute's line, with the count since the last one.
    ]


async def test_a_save_that_failed_without_a_503_holds_back_no_later_outages_end(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler caught its save's failure and answered 200. A later outage of reads
    still ends in the log at the first read the store answers."""
    from coatcheck import _persist
    from coatcheck.session import Session

    monkeypatch.setattr(_persist, "_QUIET_AFTER_OUTAGE", 0.0)

    async def careful(request: Request) -> Response:
        session = await Session.of(request).load()
        session["n"] = 2
        try:
            await session.save()
        except StoreUnavailableError:
            session["n"] = 1  # given up: back to what is stored, nothing to store
            return PlainTextResponse("not saved")
        return PlainTextResponse("saved")

    store = _OutageStore()
    app = make_app(store)
    app.router.routes.append(Route("/careful", careful, methods=["POST"]))
    async with client_for(app) as client:
        sid = ticket(await client.post("/write"))
        store.full = True
        assert (await client.post("/careful", headers=cookie(sid))).text == "not saved"
        store.full = False
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            store.down = "the store is restarting"
            assert (await client.get("/read", headers=cookie(sid))).status_code == 503
            store.down = ""
            assert (await client.get("/read", headers=cookie(sid))).status_code == 200
    lines = _store_lines(caplog)
    assert lines[0].startswith("the store is restarting; answering 503")
    assert lines[1].startswith("the session store answers again, after 0 s; 1 requests")
    assert len(lines) == 2


class _OneKeyDown(MemoryStore):
    """Fails the loads of one key: the sessions that a Redis Cluster shard that is down
    holds, while the others' answer."""

    down_key = ""

    async def load(self, key: str, now: float) -> SessionRecord | None:
        if key == self.down_key:
            raise StoreUnavailableError("a store shard is down", retry_after=3)
        return await super().load(key, now)


async def test_a_store_half_down_is_not_said_to_answer_again_at_each_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _OneKeyDown()
    async with client_for(make_app(store)) as client:
        down, up = ticket(await client.post("/write")), ticket(await client.post("/write"))
        store.down_key = store_key(down)
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            for _ in range(10):
                assert (await client.get("/read", headers=cookie(down))).status_code == 503
                assert (await client.get("/read", headers=cookie(up))).status_code == 200
                assert (await client.post("/write", headers=cookie(up))).status_code == 200
    assert _store_lines(caplog) == [
        "a store shard is down; answering 503"
        " (more like this within a minute are counted, not logged)"
    ]


async def test_a_store_that_serves_reads_and_refuses_writes_is_still_down(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads that pass between failed writes, however far apart, do not end the outage
    in the log: the first write that lands does."""
    from coatcheck import _persist

    monkeypatch.setattr(_persist, "_QUIET_AFTER_OUTAGE", 0.0)
    store = _OutageStore()
    async with client_for(make_app(store)) as client:
        sid = ticket(await client.post("/write"))
        store.full = True
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            for _ in range(5):
                assert (await client.get("/read", headers=cookie(sid))).status_code == 200
                assert (await client.post("/write", headers=cookie(sid))).status_code == 503
            store.full = False
            assert (await client.get("/read", headers=cookie(sid))).status_code == 200
            assert (await client.post("/write", headers=cookie(sid))).status_code == 200
    lines = _store_lines(caplog)
    assert lines[0] == (
        "the store is out of memory; answering 503"
        " (more like this within a minute are counted, not logged)"
    )
    assert re.fullmatch(
        r"the session store answers again, after \d+ s; 5 requests were answered 503", lines[1]
    ), lines[1]
    assert len(lines) == 2


async def test_each_apps_store_has_its_own_outage_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stores = [_OutageStore(), _OutageStore()]
    with caplog.at_level(logging.WARNING, logger="coatcheck"):
        for number, store in enumerate(stores, 1):
            store.down = f"store {number} is restarting"
            async with client_for(make_app(store)) as client:
                assert (await client.get("/read", headers=cookie("B" * 43))).status_code == 503
    assert [line.split(";")[0] for line in _store_lines(caplog)] == [
        "store 1 is restarting",
        "store 2 is restarting",
    ]


async def test_an_apps_own_outage_response_is_served_with_the_retry_hint() -> None:
    def maintenance(retry_after: int) -> Response:
        return PlainTextResponse(
            f"Back in {retry_after} s.", 503, headers={"Retry-After": str(retry_after)}
        )

    app = make_app(_DownStore(), SessionConfig(), unavailable=maintenance)
    async with client_for(app) as client:
        response = await client.get("/read", headers=cookie("B" * 43))
        untouched = await client.get("/untouched")
    assert (response.status_code, response.text) == (503, "Back in 30 s.")
    assert response.headers["retry-after"] == "30"
    assert untouched.status_code == 200


@pytest.mark.parametrize(
    "unavailable",
    [PlainTextResponse("Down for maintenance.", 503), lambda scope, receive, send: None],
    ids=["a response", "an ASGI app"],
)
def test_an_outage_response_of_the_wrong_shape_fails_at_start_up(unavailable: Any) -> None:
    """Either would fail only at the first outage, as a 500."""
    with pytest.raises(ConfigurationError, match="takes the Retry-After seconds"):
        SessionMiddleware(PlainTextResponse("hi"), MemoryStore(), unavailable=unavailable)


async def test_an_apps_own_refusal_page_answers_409_413_and_403() -> None:
    """A form post refused by coatcheck showed its JSON to a person: the app may answer
    in words instead, with the same status and the reason."""
    seen: list[tuple[int, str]] = []

    def refused(status: int, detail: str) -> Response:
        seen.append((status, detail))
        return PlainTextResponse(f"Sorry ({status}). Please try again.", status)

    store = MemoryStore()

    async def overtaken(request: Request) -> Response:
        """A write that a logout elsewhere overtook."""
        session = await request.scope["session"].load()
        await store.delete_user("alice")
        session["late"] = True
        return PlainTextResponse("kept")

    async def hoard(request: Request) -> Response:
        session = await request.scope["session"].load()
        session["blob"] = "x" * 2000
        return PlainTextResponse("kept")

    app = make_app(store, SessionConfig(max_session_bytes=1024), refused=refused)
    app.routes.extend(
        [Route("/overtaken", overtaken, methods=["POST"]), Route("/hoard", hoard, methods=["POST"])]
    )
    async with client_for(app) as client:
        answers = [
            await client.post("/overtaken", headers=cookie(ticket(await client.post("/login")))),
            await client.post("/hoard"),
            await client.post(
                "/write", headers={"sec-fetch-site": "cross-site", **cookie("B" * 43)}
            ),
        ]
    assert [(answer.status_code, answer.text) for answer in answers] == [
        (status, f"Sorry ({status}). Please try again.") for status in (409, 413, 403)
    ]
    assert [status for status, _ in seen] == [409, 413, 403]
    assert "another request" in seen[0][1]
    assert seen[2][1] == "CSRF check failed: cross-site request"


def test_a_refusal_page_of_the_wrong_shape_fails_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="refused= takes the status"):
        SessionMiddleware(PlainTextResponse("hi"), MemoryStore(), refused=lambda status: None)


class _HalfStore(CountingStore):
    """A store that forgot one method and took the protocol's, which does nothing."""

    delete_user = Store.delete_user


def test_a_store_that_leaves_out_a_method_fails_at_start_up() -> None:
    """Inherited from the protocol, ``delete_user`` would return None and end nothing:
    "log out everywhere" would say it worked."""
    with pytest.raises(ConfigurationError, match=r"_HalfStore .* does not implement delete_user"):
        SessionMiddleware(PlainTextResponse("hi"), _HalfStore(MemoryStore()))


class _BoundPerInstance(Store):
    """A store whose methods are another's, bound as it is made: nothing is left out."""

    def __init__(self) -> None:
        inner = MemoryStore()
        self.load, self.save, self.delete = inner.load, inner.save, inner.delete  # type: ignore[method-assign]
        self.list_user, self.delete_user = inner.list_user, inner.delete_user  # type: ignore[method-assign]
        self.delete_all, self.purge_expired = inner.delete_all, inner.purge_expired  # type: ignore[method-assign]
        self.count, self.aclose = inner.count, inner.aclose  # type: ignore[method-assign]


def test_a_store_whose_methods_are_bound_per_instance_is_taken() -> None:
    SessionMiddleware(PlainTextResponse("hi"), _BoundPerInstance())


def test_a_store_url_in_place_of_a_store_fails_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="store_from_url"):
        SessionMiddleware(PlainTextResponse("hi"), "sqlite:///sessions.db")  # type: ignore[arg-type]


def test_a_server_on_trio_is_told_at_start_up_and_at_each_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starlette runs on trio, coatcheck's stores do not: said plainly, not as asyncio's
    "no running event loop" in a 500."""
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        try:
            await scope["session"].load()
        except RuntimeError as exc:
            events.append(str(exc))

    middleware = SessionMiddleware(app, MemoryStore())

    async def serve() -> None:
        async def receive() -> Message:
            return {"type": "lifespan.startup"}

        async def send(message: Message) -> None:
            events.append(message["type"])
            assert message.get("message", ASYNCIO_ONLY) == ASYNCIO_ONLY

        # The server is told its start-up failed, and stops (a raised error would make
        # it go on without a lifespan): see tests/e2e/test_servers.py.
        await middleware({"type": "lifespan"}, receive, send)
        request = {"type": "http", "method": "GET", "path": "/", "headers": []}
        await middleware(request, receive, send)

    anyio.run(serve, backend="trio")
    assert events == ["lifespan.startup.failed", ASYNCIO_ONLY]
    assert ASYNCIO_ONLY == (
        "coatcheck runs on asyncio (uvicorn, hypercorn's asyncio or uvloop worker, granian), "
        "not on trio: its stores' drivers (redis-py, psycopg) are asyncio-only"
    )
    assert "coatcheck cannot start: coatcheck runs on asyncio" in caplog.text


def test_a_websocket_whose_store_is_down_is_told_to_try_again() -> None:
    """Over HTTP where the server can (a 503 with Retry-After), else by a close code."""
    app = make_app(_DownStore(), SessionConfig())
    with TestClient(app) as client:
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers=cookie("B" * 43)),
        ):
            pass  # pragma: no cover - refused before this
        assert refused.value.status_code == 503
        assert refused.value.headers["retry-after"] == "30"  # what the store asks
    with (
        TestClient(without_denial_responses(app)) as client,
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers=cookie("B" * 43)),
    ):
        pass
    assert closed.value.code == 1013


async def test_lifespan_shutdown_closes_the_store(store: CountingStore) -> None:
    await shut_down(make_app(store))
    assert store.calls["aclose"] == 1


def test_a_websocket_session_too_large_to_store_is_closed_with_1009(
    store: CountingStore,
) -> None:
    async def hoard(websocket: WebSocket) -> None:
        session = await websocket.scope["session"].load()
        session["blob"] = "x" * 2000
        await websocket.accept()

    app = Starlette(routes=[WebSocketRoute("/ws", hoard)])
    app.add_middleware(SessionMiddleware, store=store, config=SessionConfig(max_session_bytes=1024))
    with TestClient(app) as client:
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect(f"{TEST_WS_BASE_URL}/ws"),
        ):
            pass  # pragma: no cover - refused before this
        assert refused.value.status_code == 413
    with (
        TestClient(without_denial_responses(app)) as client,
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect(f"{TEST_WS_BASE_URL}/ws"),
    ):
        pass
    assert closed.value.code == 1009
    assert not store.calls["save"]


async def _kick(websocket: WebSocket) -> None:
    """Refuses the socket, as an app does for a user it just signed out."""
    session = await websocket.scope["session"].load()
    action = websocket.query_params["then"]
    if action == "logout":
        session.logout()
    elif action == "login":
        session["via"] = "socket"  # a change too, which a late commit would store
        session.login("mallory")
    elif action == "logout-flash":
        session.logout()
        session.flash("Signed out.")  # needs a new cookie, which a refusal may not carry
    elif action == "saved-login":
        session.login("mallory")
        await session.save()  # stored already: its cookie must reach the browser
    else:
        session["refused"] = True
    await websocket.close(code=1008)


@pytest.mark.parametrize("denial", [True, False], ids=["http-refusal", "close-code"])
async def test_a_websocket_refused_before_accept_keeps_its_logout(denial: bool) -> None:
    """A logout before the refusal was dropped with the handshake: the user stayed in."""
    store = MemoryStore()
    app = make_app(store)
    app.routes.append(WebSocketRoute("/kick", _kick))
    async with client_for(app) as client:
        alice, bob = (
            ticket(await client.post("/login")),
            ticket(await client.post("/login?user=bob")),
        )
        marked, rotated = ticket(await client.post("/write")), ticket(await client.post("/write"))
    served = app if denial else without_denial_responses(app)
    answers = []
    for value, then in (
        (marked, "mark"),
        (rotated, "login"),
        (alice, "logout"),
        (bob, "logout-flash"),
    ):
        url = f"{TEST_WS_BASE_URL}/kick?then={then}"
        with (
            TestClient(served) as tc,
            pytest.raises((WebSocketDenialResponse, WebSocketDisconnect)) as refused,
            tc.websocket_connect(url, headers=cookie(value)),
        ):
            pass  # pragma: no cover - refused before this
        answers.append(refused.value)
    if denial:  # the 403 a server sends for it, now with the session's headers
        assert [answer.status_code for answer in answers] == [403] * 4  # type: ignore[union-attr]
        assert "set-cookie" not in answers[0].headers  # type: ignore[union-attr]
        assert answers[1].headers["set-cookie"].startswith(f"{NAME}=")  # type: ignore[union-attr]
        assert answers[2].headers["set-cookie"].startswith(f"{NAME}=;")  # type: ignore[union-attr]
    else:
        assert [answer.code for answer in answers] == [1008] * 4  # type: ignore[union-attr]
    async with client_for(app) as client:
        assert (await client.get("/read", headers=cookie(alice))).json()["user"] is None
        assert (await client.get("/read", headers=cookie(bob))).json()["user"] is None
        mark = (await client.get("/read", headers=cookie(marked))).json()["data"]
        left = (await client.get("/read", headers=cookie(rotated))).json()["data"]
    assert mark == {"n": 1, "refused": True}  # no new cookie needed: stored either way
    # A login needs its new cookie to reach the browser: stored only where it can.
    mallory = await store.list_user("mallory", time.time())
    assert (len(mallory), left) == ((1, {}) if denial else (0, {"n": 1}))


def test_a_refused_handshake_carries_the_cookie_of_a_save_made_before() -> None:
    store = MemoryStore()
    app = make_app(store)
    app.routes.append(WebSocketRoute("/kick", _kick))
    with TestClient(app, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}) as tc:
        visitor = ticket(tc.post("/write"))
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            tc.websocket_connect(
                f"{TEST_WS_BASE_URL}/kick?then=saved-login", headers=cookie(visitor)
            ),
        ):
            pass  # pragma: no cover - refused before this
    issued = refused.value.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    [record] = anyio.run(store.list_user, "mallory", time.time())
    assert record.key == store_key(issued)


@pytest.mark.parametrize("denial", [True, False], ids=["http-refusal", "close-code"])
def test_a_feed_whose_socket_was_refused_stops_at_its_next_send(
    store: CountingStore, denial: bool
) -> None:
    """A handler that only sends learns that its socket is gone, as when a client
    leaves, rather than push into the void for ever."""
    sent: list[int] = []

    async def feed(websocket: WebSocket) -> None:
        session = await websocket.scope["session"].load()
        session["blob"] = "x" * 2000  # too big: refused at the accept
        await websocket.accept()
        for n in range(100):
            try:
                await websocket.send_text(str(n))
            except WebSocketDisconnect:
                return
            sent.append(n)

    app = Starlette(routes=[WebSocketRoute("/ws", feed)])
    app.add_middleware(SessionMiddleware, store=store, config=SessionConfig(max_session_bytes=1024))
    served = app if denial else without_denial_responses(app)
    refusal = WebSocketDenialResponse if denial else WebSocketDisconnect
    with (
        TestClient(served) as client,
        pytest.raises(refusal),
        client.websocket_connect(f"{TEST_WS_BASE_URL}/ws"),
    ):
        pass  # pragma: no cover - refused before this
    assert sent == []


async def test_websocket_reads_and_writes_the_session(
    store: CountingStore, config: SessionConfig
) -> None:
    app = make_app(store, config)
    async with client_for(app) as client:
        sid = await start_session(client)
    # Starlette's TestClient is the in-process WebSocket client.
    with (
        TestClient(app, base_url="https://testserver") as tc,
        tc.websocket_connect("/ws", headers=cookie(sid)) as socket,
    ):
        state = socket.receive_json()
    assert state == {"data": {"n": 1, "ws": 1}, "user": None}
    async with client_for(app) as client:
        data = (await client.get("/read", headers=cookie(sid))).json()["data"]
    assert data == {"n": 1, "ws": 1, "after_accept": True}


class _BarringStore(MemoryStore):
    """Refuses every new record, as Redis Cluster does for a login that "log out
    everywhere" barred while it was in flight."""

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        if options.get("expected_version") is None and options.get("replaces") is None:
            return False
        return await super().save(record, **options)


async def test_a_refused_new_session_gets_409_and_no_cookie() -> None:
    store = _BarringStore()
    async with client_for(make_app(store, SessionConfig())) as client:
        response = await client.post("/login")
    assert response.status_code == 409
    assert "ended or moved by another request" in response.json()["detail"]
    assert "set-cookie" not in response.headers
    assert await store.count(0) == 0


class _ContendedStore(MemoryStore):
    """Loses every save over a stored version, as under a flood of parallel writers."""

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        if options.get("expected_version") is not None:
            raise SessionConflictError("still contended")
        return await super().save(record, **options)


@pytest.mark.parametrize(
    ("kind", "code"), [(_BarringStore, 1008), (_ContendedStore, 1013)], ids=["ended", "busy"]
)
def test_a_websocket_whose_session_cannot_be_saved_is_closed_saying_why(
    kind: type[MemoryStore], code: int
) -> None:
    """An ended session is final (1008, policy); a busy one is worth another try (1013).
    A server that can refuse over HTTP gives the 409 a request would get."""
    app = make_app(kind(), SessionConfig())
    with TestClient(app, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}) as client:
        client.post("/write")  # stored by the busy store; the barring one refuses it
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers={**SAME_ORIGIN}),
        ):
            pass  # pragma: no cover - refused before this
        assert refused.value.status_code == 409
    served = without_denial_responses(app)
    with TestClient(served, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}) as client:
        client.post("/write")
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers={**SAME_ORIGIN}),
        ):
            pass
    assert closed.value.code == code


class _MisfilingStore(MemoryStore):
    """Answers every load with the record filed under ``answer``, as a store with a
    broken index or a colliding key scheme might."""

    answer: str | None = None

    async def load(self, key: str, now: float) -> SessionRecord | None:
        return await super().load(self.answer or key, now)


async def test_a_record_filed_under_another_key_is_never_served(config: SessionConfig) -> None:
    store = _MisfilingStore()
    async with client_for(make_app(store, config)) as client:
        anonymous = ticket(await client.post("/append?item=apple"))
        alice = ticket(await client.post("/login", headers=cookie(anonymous)))
        store.answer = store_key(alice)

        stranger = await client.get("/read", headers=cookie("B" * 43))
        written = await client.post("/write", headers=cookie("C" * 43))

        assert stranger.json() == {"data": {}, "user": None}
        assert written.json() == {"data": {"n": 1}, "user": None}
        assert ticket(written) not in (alice, "C" * 43)
        store.answer = None
        state = (await client.get("/read", headers=cookie(alice))).json()
        assert state == {"data": {"cart": ["apple"]}, "user": "alice"}


async def test_session_of_a_request_without_the_middleware_says_so() -> None:
    async def handler(request: Request) -> Response:
        Session.of(request)
        return PlainTextResponse("unreachable")

    app = Starlette(routes=[Route("/", handler)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=TEST_BASE_URL) as client:
        with pytest.raises(RuntimeError, match="SessionMiddleware is not installed"):
            await client.get("/")


async def test_session_of_under_a_middleware_that_runs_first_says_to_add_coatcheck_last() -> None:
    """``add_middleware`` runs the last one added first: coatcheck added before
    Starlette's AuthenticationMiddleware runs inside it, and its backend finds no session."""
    from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
    from starlette.middleware.authentication import AuthenticationMiddleware

    class FromSession(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> tuple[AuthCredentials, SimpleUser] | None:
            session = await Session.of(conn).load()
            user = session.user_id
            return None if user is None else (AuthCredentials(["authenticated"]), SimpleUser(user))

    async def home(request: Request) -> Response:
        return PlainTextResponse(request.user.display_name)

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(SessionMiddleware, store=MemoryStore())
    app.add_middleware(AuthenticationMiddleware, backend=FromSession())
    async with client_for(app) as client:
        with pytest.raises(
            RuntimeError,
            match=r"is installed, but runs inside .* after it in add_middleware\(\) calls",
        ):
            await client.get("/")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(AuthenticationMiddleware, backend=FromSession())
    app.add_middleware(SessionMiddleware, store=MemoryStore())  # last: it runs first
    async with client_for(app) as client:
        assert (await client.get("/")).text == ""  # nobody signed in


async def test_a_session_middleware_inside_coatcheck_that_hides_it_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starlette's cookie session added inside coatcheck's (FastHTML's fast_app() and
    SQLAdmin add one) replaces ``request.session``: the app's data would go into its
    readable cookie, so coatcheck says so, once, and ``Session.of`` names the cause."""
    from starlette.middleware.sessions import SessionMiddleware as StarletteSessions

    async def cart(request: Request) -> Response:
        request.session["cart"] = ["apple"]
        return PlainTextResponse("ok")

    async def login(request: Request) -> Response:
        Session.of(request).login("alice")
        return PlainTextResponse("unreachable")

    app = Starlette(routes=[Route("/cart", cart), Route("/login", login)])
    app.add_middleware(StarletteSessions, secret_key="x" * 32)
    app.add_middleware(SessionMiddleware, store=MemoryStore())
    caplog.set_level(logging.WARNING, logger="coatcheck")
    async with client_for(app) as client:
        for _ in range(2):
            assert (await client.get("/cart")).status_code == 200
        with pytest.raises(RuntimeError, match="another session middleware inside coatcheck's"):
            await client.get("/login")
    lines = [
        r.getMessage() for r in caplog.records if "another session middleware" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    # A dict before Starlette 1.0, its own Session class since.
    assert re.match(
        r"request.session holds a (dict|starlette\.middleware\.sessions\.\w+), ", lines[0]
    )


@pytest.mark.parametrize("secure", [False, True], ids=["session", "__Host-session"])
async def test_a_session_middleware_inside_that_takes_coatchecks_cookie_name_is_named(
    caplog: pytest.LogCaptureFixture, secure: bool
) -> None:
    """NiceGUI keeps Starlette's cookie session, named ``session`` as coatcheck's is in
    development, under its mounted UI: each of its pages replaces coatcheck's ticket in
    the browser, which then signs its user out. Said once, with the cure; a cookie of
    another name is no clash."""
    from starlette.middleware.sessions import SessionMiddleware as StarletteSessions

    async def page(request: Request) -> Response:
        request.session.setdefault("id", "browser-1")  # NiceGUI's own storage
        return PlainTextResponse("ok")

    ui = Starlette(routes=[Route("/page", page)])
    ui.add_middleware(StarletteSessions, secret_key="x" * 32)
    app = Starlette(routes=[Mount("/ui", ui)])
    config = SessionConfig(cookie=CookieConfig(secure=secure))
    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=config)
    caplog.set_level(logging.WARNING, logger="coatcheck")
    async with client_for(app) as client:
        for _ in range(2):
            assert (await client.get("/ui/page")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if "coatcheck's own cookie" in r.getMessage()]
    if secure:
        assert lines == []
    else:
        assert lines == [cookie_taken("session")]
        assert "SessionMiddleware(session_cookie=...)" in lines[0]
    (shadowed,) = [r.getMessage() for r in caplog.records if "session middleware" in r.getMessage()]
    assert "await coatcheck.fastapi.get_session()" in shadowed


async def test_a_mounted_app_with_its_own_coatcheck_is_not_taken_for_a_rival(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def inner(request: Request) -> Response:
        session = await Session.of(request).load()
        session["n"] = 1
        return PlainTextResponse("ok")

    admin = Starlette(routes=[Route("/", inner)])
    admin.add_middleware(
        SessionMiddleware,
        store=MemoryStore(),
        config=SessionConfig(cookie=CookieConfig(name="__Host-admin")),
    )
    app = Starlette(routes=[Mount("/admin", admin)])
    app.add_middleware(SessionMiddleware, store=MemoryStore())
    caplog.set_level(logging.WARNING, logger="coatcheck")
    async with client_for(app) as client:
        answer = await client.get("/admin/")
    assert answer.status_code == 200
    assert "__Host-admin" in answer.headers["set-cookie"]
    assert not [r for r in caplog.records if "another session middleware" in r.getMessage()]


def _scoped_app(store: Store) -> Starlette:
    async def write(request: Request) -> Response:
        session = await Session.of(request).load()
        session["n"] = 1
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{path:path}", write, methods=["POST"])])
    cookie = CookieConfig(name="__Secure-sid", path="/app")
    app.add_middleware(SessionMiddleware, store=store, config=SessionConfig(cookie=cookie))
    return app


def _path_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "outside the cookie's Path" in r.getMessage()]


@pytest.mark.parametrize(
    ("path", "root_path"),
    [
        ("/app", ""),
        ("/app/", ""),
        ("/app/cart/items", ""),
        ("/app/cart", "/app"),  # uvicorn --root-path: the path holds the mount point
        ("/cart", "/app"),  # Hypercorn, Daphne: it does not
    ],
)
async def test_a_session_changed_under_the_cookie_path_is_stored_quietly(
    path: str, root_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    transport = httpx.ASGITransport(app=_scoped_app(store), root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url=TEST_BASE_URL) as client:
        response = await client.post(path)
    assert response.status_code == 200
    assert "Path=/app;" in response.headers["set-cookie"]
    assert await store.count(0) == 1
    assert _path_warnings(caplog) == []


async def test_a_session_changed_outside_the_cookie_path_is_pointed_out_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The browser sends no cookie there, and the cookie that a save sets has the same
    name and path as the one it holds: it replaces a login with nothing. Only a warning,
    since behind a proxy that strips a prefix the app cannot see the browser's path."""
    async with client_for(_scoped_app(MemoryStore())) as client:
        for path in ("/public", "/apple", "/"):
            assert (await client.post(path)).status_code == 200
    (warning,) = _path_warnings(caplog)
    assert "the session changed at '/public', outside the cookie's Path=/app" in warning
