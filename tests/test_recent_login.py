"""Recent sign-in for sensitive actions: ``session.authenticated_at`` and ``recent_user``.

A login is dated when it is made and keeps that date through every later save, on
every store; signing in again renews it and rotates the ID. A login adopted from
Starlette's session has no date coatcheck saw, so it is never recent.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI

from coatcheck import (
    ConfigurationError,
    MemoryStore,
    SessionConfig,
    SessionMiddleware,
    StarletteImport,
    Store,
)
from coatcheck.fastapi import SessionDep, recent_user
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import FakeClock, create_session

from .conftest import client_for
from .store_kinds import STORE_KINDS, build_store
from .test_starlette_import import SECRET, Site, browser, starlette_app, visit_before_the_switch

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
WINDOW = 300
RecentUser = Annotated[str, recent_user(timedelta(seconds=WINDOW))]


@pytest.fixture(params=[*STORE_KINDS, "cookie"])
async def every_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each server-side store in turn, and the cookie store, which seals the login's time."""
    store = CookieStore() if request.param == "cookie" else build_store(request.param, tmp_path)
    yield store
    await store.aclose()


def make_app(store: Store, clock: FakeClock, **config: Any) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, bool]:
        session.login("alice")
        return {"ok": True}

    @app.post("/confirm")
    async def confirm(session: SessionDep) -> dict[str, bool]:
        """Where the app checks the password again; then the same user logs in anew."""
        assert session.user_id is not None
        session.login(session.user_id)
        return {"ok": True}

    @app.post("/cart")
    async def add(session: SessionDep) -> dict[str, Any]:
        session["cart"] = [*session.get("cart", []), "pear"]
        return {"cart": session["cart"]}

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, Any]:
        at = session.authenticated_at
        return {
            "user": session.user_id,
            "authenticated_at": None if at is None else at.timestamp(),
            "recent": session.authenticated_within(WINDOW),
            "cart": session.get("cart"),
        }

    @app.post("/email")
    async def change_email(user: RecentUser) -> dict[str, str]:
        return {"changed_for": user}

    app.add_middleware(
        SessionMiddleware,
        store=store,
        config=SessionConfig(clock=clock, secret_keys=["k" * 32], **config),
    )
    return app


def cookie_of(response: httpx.Response) -> dict[str, str]:
    value = response.cookies.get(NAME)
    assert value, response.headers.get_list("set-cookie")
    return {"cookie": f"{NAME}={value}"}


async def test_only_a_recent_login_reaches_a_sensitive_action(every_store: Store) -> None:
    clock = FakeClock(float(int(time.time())))
    async with client_for(make_app(every_store, clock)) as client:
        signed_in_at = clock()
        ticket = cookie_of(await client.post("/login"))
        assert (await client.post("/email", headers=ticket)).json() == {"changed_for": "alice"}

        # Using the session (and saving it) does not make its login any more recent.
        clock.advance(WINDOW - 100)
        changed = await client.post("/cart", headers=ticket)
        assert changed.status_code == 200
        if isinstance(every_store, CookieStore):  # the change travels in a new cookie
            ticket = cookie_of(changed)
        clock.advance(99)
        state = (await client.get("/state", headers=ticket)).json()
        assert state["authenticated_at"] == signed_in_at
        assert state["recent"] is True
        assert (await client.post("/email", headers=ticket)).status_code == 200

        clock.advance(2)
        refused = await client.post("/email", headers=ticket)
        assert refused.status_code == 401
        assert refused.json() == {"detail": "Recent sign-in required"}
        assert refused.headers["www-authenticate"] == (
            f'APIKey error="insufficient_user_authentication", max_age={WINDOW}'
        )
        state = (await client.get("/state", headers=ticket)).json()
        assert state == {
            "user": "alice",  # still signed in, only not recently
            "authenticated_at": signed_in_at,
            "recent": False,
            "cart": ["pear"],
        }

        confirmed = await client.post("/confirm", headers=ticket)
        fresh = cookie_of(confirmed)
        assert fresh != ticket  # a new ID for the new proof of identity
        assert (await client.post("/email", headers=fresh)).status_code == 200
        state = (await client.get("/state", headers=fresh)).json()
        assert state["authenticated_at"] == clock()
        assert state["cart"] == ["pear"]
        if not isinstance(every_store, CookieStore):  # which cannot end a cookie it sealed
            # The old ticket went with the rotation.
            assert (await client.get("/state", headers=ticket)).json()["user"] is None


async def test_nobody_signed_in_gets_the_plain_401(every_store: Store) -> None:
    async with client_for(make_app(every_store, FakeClock())) as client:
        refused = await client.post("/email")
        state = (await client.get("/state")).json()
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Not authenticated"}
    assert refused.headers["www-authenticate"] == "APIKey"
    assert state == {"user": None, "authenticated_at": None, "recent": False, "cart": None}


async def test_a_login_adopted_from_starlette_is_never_recent(every_store: Store) -> None:
    """Its login happened under the old library, at a time coatcheck never saw; stored
    and loaded again, on every store, it still has none."""
    clock = FakeClock(float(int(time.time())))
    site = Site()
    site.app = starlette_app()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice", "cart": ["apple"]})
        site.app = make_app(
            every_store, clock, starlette_import=StarletteImport(SECRET, user_key="user_id")
        )
        adopted = (await client.get("/state")).json()  # adopted and stored
        assert client.cookies.get(NAME)
        stored = (await client.get("/state")).json()  # loaded from the store
        refused = await client.post("/email")
        await client.post("/confirm")
        confirmed = (await client.get("/state")).json()
        allowed = await client.post("/email")
    expected = {"user": "alice", "authenticated_at": None, "recent": False, "cart": ["apple"]}
    assert adopted == stored == expected
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Recent sign-in required"}
    assert confirmed == {**expected, "authenticated_at": clock(), "recent": True}
    assert allowed.status_code == 200


async def test_logging_in_as_someone_else_dates_the_login_anew_and_logout_ends_it() -> None:
    clock = FakeClock(float(int(time.time())))
    app = FastAPI()

    @app.post("/run")
    async def run(session: SessionDep) -> list[Any]:
        seen: list[Any] = [session.authenticated_at]
        session.login("alice")
        seen.append(session.authenticated_at)
        clock.advance(10)
        session.login("bob")
        seen.append(session.authenticated_at)
        session.logout()
        seen += [session.authenticated_at, session.authenticated_within(timedelta(days=1))]
        return [at.timestamp() if isinstance(at, datetime) else at for at in seen]

    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=SessionConfig(clock=clock))
    async with client_for(app) as client:
        start = clock()
        seen = (await client.post("/run")).json()
    assert seen == [None, start, start + 10, None, False]


async def test_a_session_made_by_create_session_was_signed_in_then(every_store: Store) -> None:
    clock = FakeClock(float(int(time.time())))
    config = SessionConfig(clock=clock, secret_keys=["k" * 32])
    value = await create_session(every_store, user_id="alice", data={"cart": []}, config=config)
    clock.advance(WINDOW)
    async with client_for(make_app(every_store, clock)) as client:
        ticket = {"cookie": f"{NAME}={value}"}
        state = (await client.get("/state", headers=ticket)).json()
        allowed = await client.post("/email", headers=ticket)
        clock.advance(1)
        refused = await client.post("/email", headers=ticket)
    assert state["authenticated_at"] == clock() - WINDOW - 1
    assert (allowed.status_code, refused.status_code) == (200, 401)


async def test_the_window_is_inclusive_and_takes_seconds_or_a_timedelta() -> None:
    clock = FakeClock(1_800_000_000.0)
    app = FastAPI()

    @app.post("/check")
    async def check(session: SessionDep) -> list[Any]:
        session.login("alice")
        assert session.authenticated_at == datetime.fromtimestamp(1_800_000_000, timezone.utc)
        seen = [session.authenticated_within(0)]
        clock.advance(1)
        seen += [
            session.authenticated_within(0),
            session.authenticated_within(timedelta(seconds=1)),
        ]
        with pytest.raises(ValueError, match="negative"):
            session.authenticated_within(-1)
        return seen

    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=SessionConfig(clock=clock))
    async with client_for(app) as client:
        assert (await client.post("/check")).json() == [True, False, True]


@pytest.mark.parametrize("max_age", [0, -5, 1.5, timedelta(0), timedelta(milliseconds=500)])
def test_a_window_that_is_not_a_positive_whole_number_of_seconds_fails_at_import(
    max_age: Any,
) -> None:
    with pytest.raises(ConfigurationError, match="max_age"):
        recent_user(max_age)


def test_the_guarded_route_shows_the_session_scheme_in_openapi() -> None:
    schema = make_app(MemoryStore(), FakeClock()).openapi()
    assert schema["paths"]["/email"]["post"]["security"] == [{"coatcheck": []}]
    assert schema["components"]["securitySchemes"]["coatcheck"]["in"] == "cookie"
