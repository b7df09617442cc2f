from __future__ import annotations

import logging
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coatcheck import CookieConfig, MemoryStore, SessionConfig, SessionMiddleware
from coatcheck.fastapi import CurrentUser, SessionDep
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, FakeClock


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
    with TestClient(app, base_url=TEST_BASE_URL, headers=SAME_ORIGIN) as client:
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
    assert FakeClock(0.0)() == 0.0  # the epoch is a start like any other
    clock.advance(0)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
