from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coatcheck import (
    CookieConfig,
    MemoryStore,
    SerializationError,
    SessionConfig,
    SessionMiddleware,
    Store,
)
from coatcheck.fastapi import CurrentUser, RequiredUser, SessionDep
from coatcheck.stores.cookie import CookieStore
from coatcheck.stores.redis import RedisStore
from coatcheck.testing import (
    SAME_ORIGIN,
    TEST_BASE_URL,
    FakeClock,
    create_session,
    read_session,
    set_session_cookie,
)

from .conftest import client_for
from .redis_servers import RedisServer
from .store_kinds import unique_prefix


def make_app(config: SessionConfig) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> None:
        session.login("alice")

    @app.post("/cart")
    async def add(session: SessionDep) -> list[str]:
        return session.modify("cart", lambda cart: [*cart, "apple"], [])

    @app.get("/me")
    async def me(user: CurrentUser) -> dict[str, str | None]:
        return {"user": user}

    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=config)
    return app


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_documented_test_client_keeps_the_session(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    app = make_app(SessionConfig(clock=clock, idle_timeout=600, secret_keys=["k" * 32]))
    with TestClient(app, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}) as client:
        assert client.post("/login").status_code == 200
        assert client.get("/me").json() == {"user": "alice"}
        # An unsafe request carrying the cookie passes the CSRF check, as a browser's does.
        assert client.post("/cart").json() == ["apple"]
        assert client.post("/cart").json() == ["apple", "apple"]
        clock.advance(601)
        assert client.get("/me").json() == {"user": None}
    assert warnings_of(caplog) == []


def test_a_secure_cookie_over_plain_http_is_pointed_out_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(SessionConfig(secret_keys=["k" * 32]))
    with TestClient(app) as client:  # http://testserver
        assert client.post("/login").status_code == 200
        # The cookie is Secure: the client keeps it from plain HTTP, so nobody is logged in.
        assert client.get("/me").json() == {"user": None}
        assert client.post("/login").status_code == 200
    (warning,) = warnings_of(caplog)
    assert "plain-HTTP" in warning
    assert "TEST_BASE_URL" in warning


def test_no_warning_for_cookies_meant_for_plain_http(caplog: pytest.LogCaptureFixture) -> None:
    config = SessionConfig(cookie=CookieConfig(secure=False), secret_keys=["k" * 32])
    with TestClient(make_app(config)) as client:
        assert client.post("/login").status_code == 200
        assert client.get("/me").json() == {"user": "alice"}
    assert warnings_of(caplog) == []


def test_fake_clock_starts_now_and_only_moves_forward() -> None:
    before = time.time()
    clock = FakeClock()
    assert before <= clock() <= time.time()
    clock.advance(30)
    assert clock() == clock.now
    assert FakeClock(100.0)() == 100.0
    # At the epoch, a login's time (0.0) would read as no login at all.
    with pytest.raises(ValueError, match="after the epoch"):
        FakeClock(0.0)
    clock.advance(0)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


# -- create_session ----------------------------------------------------------------------


def guarded_app(store: Store, config: SessionConfig) -> FastAPI:
    app = FastAPI()

    @app.get("/private")
    async def private(user: RequiredUser, session: SessionDep) -> dict[str, Any]:
        devices = await session.devices()
        return {
            "user": user,
            "data": dict(session),
            "remember": session.remember,
            "expires_at": session.expires_at.timestamp(),
            "devices": [device.current for device in devices],
        }

    @app.post("/confirm")
    async def confirm(user: RequiredUser, session: SessionDep) -> dict[str, str]:
        """A step-up login: a new ID, so a new cookie."""
        session.login(user)
        return {"user": user}

    app.add_middleware(SessionMiddleware, store=store, config=config)
    return app


@pytest.mark.parametrize("base_url", [TEST_BASE_URL, "https://app.example.com"])
def test_a_session_cookie_set_for_a_test_follows_the_apps_new_ids(base_url: str) -> None:
    """The cookie of a login that gives the session a new ID replaces the one the test
    set, rather than go beside it: two cookies would read as no session at all."""
    config = SessionConfig()
    store = MemoryStore()
    app = guarded_app(store, config)
    with TestClient(app, base_url=base_url, headers={**SAME_ORIGIN}) as client:
        session_id = client.portal.call(partial(create_session, store, user_id="bob"))
        set_session_cookie(client, session_id, config)
        assert client.post("/confirm").json() == {"user": "bob"}
        assert len(client.cookies.jar) == 1
        assert client.get("/private").json()["user"] == "bob"


@pytest.mark.parametrize(
    ("cookie", "base_url", "prefix"),
    [
        (CookieConfig(name="__Secure-session", path="/app"), TEST_BASE_URL, "/app"),
        (
            CookieConfig(name="__Secure-session", domain="example.com"),
            "https://app.example.com",
            "",
        ),
    ],
    ids=["path", "domain"],
)
def test_a_session_cookie_set_for_a_test_takes_the_cookies_path_and_domain(
    cookie: CookieConfig, base_url: str, prefix: str
) -> None:
    """Filed where the app's own cookie goes, the login's cookie replaces it."""
    config = SessionConfig(cookie=cookie)
    store = MemoryStore()
    app = FastAPI()

    @app.post(prefix + "/login")
    async def login(session: SessionDep) -> None:
        session.login("bob")

    @app.get(prefix + "/me")
    async def me(user: CurrentUser) -> dict[str, str | None]:
        return {"user": user}

    app.add_middleware(SessionMiddleware, store=store, config=config)
    with TestClient(app, base_url=base_url, headers={**SAME_ORIGIN}) as client:
        session_id = client.portal.call(partial(create_session, store, user_id="alice"))
        set_session_cookie(client, session_id, config)
        assert client.get(prefix + "/me").json() == {"user": "alice"}
        assert client.post(prefix + "/login").status_code == 200
        assert client.get(prefix + "/me").json() == {"user": "bob"}
        assert len(client.cookies.jar) == 1


def test_the_default_clock_follows_a_time_time_replaced_in_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As freezegun replaces it: the app's clock and coatcheck's move together."""
    clock = SessionConfig().clock
    monkeypatch.setattr(time, "time", lambda: 1_900_000_000.0)
    assert clock() == 1_900_000_000.0


def test_a_session_cookie_for_an_ipv6_host_is_filed_as_the_jar_names_that_host() -> None:
    """The standard library's jar keeps an IPv6 host in brackets: ``[::1].local``."""
    from types import SimpleNamespace

    client = SimpleNamespace(cookies=httpx.Cookies(), base_url=SimpleNamespace(host="::1"))
    set_session_cookie(client, "ticket")  # type: ignore[arg-type]
    (cookie,) = client.cookies.jar
    assert (cookie.name, cookie.value, cookie.domain) == ("__Host-session", "ticket", "[::1].local")


@pytest.mark.anyio
@pytest.mark.parametrize("remember", [False, True])
async def test_create_session_logs_a_test_client_in_without_a_login(remember: bool) -> None:
    clock = FakeClock(1_800_000_000.0)  # whole seconds: expires_at compares exactly
    config = SessionConfig(clock=clock, idle_timeout=600, remember_idle_timeout=6000)
    store = MemoryStore()
    session_id = await create_session(
        store, user_id="alice", data={"cart": ["apple"]}, remember=remember, config=config
    )
    async with client_for(guarded_app(store, config)) as client:
        client.headers["cookie"] = f"{config.cookie.name}={session_id}"
        body = (await client.get("/private")).json()
        assert body == {
            "user": "alice",
            "data": {"cart": ["apple"]},
            "remember": remember,
            "expires_at": clock.now + (6000 if remember else 600),
            "devices": [True],  # in alice's device list, as a real login is
        }
        clock.advance(6001 if remember else 601)  # the app's limits apply
        assert (await client.get("/private")).status_code == 401


def test_create_session_from_a_synchronous_test_on_redis(redis_server: RedisServer) -> None:
    config = SessionConfig()
    store = RedisStore.from_url(redis_server.url, prefix=unique_prefix())
    with TestClient(guarded_app(store, config), base_url=TEST_BASE_URL) as client:
        session_id = client.portal.call(partial(create_session, store, user_id="bob"))
        set_session_cookie(client, session_id, config)
        assert client.get("/private").json()["user"] == "bob"


@pytest.mark.anyio
async def test_create_session_refuses_what_would_not_work() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="non-empty string"):
        await create_session(store, user_id="")
    with pytest.raises(ValueError, match="would end at its first request"):
        await create_session(store)
    with pytest.raises(SerializationError, match="'when'"):
        await create_session(store, user_id="alice", data={"when": time})
    assert await store.count(0) == 0


async def _stored_and_read(store: Store, **options: Any) -> None:
    clock = FakeClock(1_800_000_000.0)
    keys = ["a-secret-key-of-at-least-16-bytes"]
    config = SessionConfig(clock=clock, idle_timeout=600, secret_keys=keys, **options)
    app = FastAPI()

    @app.post("/cart")
    async def add(session: SessionDep) -> None:
        session["cart"] = [*session.get("cart", []), "apple"]

    app.add_middleware(SessionMiddleware, store=store, config=config)
    async with client_for(app) as client:
        response = await client.post("/cart")
    value = response.cookies[config.cookie.name]
    assert await read_session(store, value, config=config) == {"cart": ["apple"]}
    assert await read_session(store, "not-a-session", config=config) is None
    clock.advance(601)  # past the idle limit: what the app would no longer serve
    assert await read_session(store, value, config=config) is None


@pytest.mark.anyio
@pytest.mark.parametrize("encrypt_data", [False, True])
async def test_read_session_shows_what_a_request_stored(
    any_store: Store, encrypt_data: bool
) -> None:
    await _stored_and_read(any_store, encrypt_data=encrypt_data)


@pytest.mark.anyio
async def test_read_session_opens_the_cookie_stores_cookie() -> None:
    await _stored_and_read(CookieStore())


@pytest.mark.anyio
async def test_read_session_with_other_settings_than_the_app_says_so() -> None:
    """Sealed data read without the app's ``encrypt_data`` is an error, not None:
    None would pass an ``is None`` check that the session ended."""
    store = MemoryStore()
    keys = ["a-secret-key-of-at-least-16-bytes"]
    config = SessionConfig(secret_keys=keys, encrypt_data=True)
    value = await create_session(store, data={"cart": ["apple"]}, config=config)
    assert await read_session(store, value, config=config) == {"cart": ["apple"]}
    with pytest.raises(ValueError, match="serializer= and config="):
        await read_session(store, value, config=SessionConfig(secret_keys=keys))
