"""Shorter limits chosen at login: ``session.login(user, idle_timeout=..., absolute_timeout=...)``.

An administrator's session, or one on a shared computer, may end sooner than the
configured limits say. The chosen limits are kept with the session on every store,
through every save, and only the next login (or a logout) changes them; the sliding
refresh is throttled by the shorter window, so it never shrinks by more than a tenth.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from coatcheck import MemoryStore, SessionConfig, SessionMiddleware, Store
from coatcheck.fastapi import SessionDep
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import FakeClock, create_session

from .conftest import client_for
from .store_kinds import STORE_KINDS, build_store

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
IDLE = 1800  # the configured limits (SessionConfig's defaults)
ABSOLUTE = 12 * 3600
REMEMBER_IDLE = 14 * 86400
REMEMBER_ABSOLUTE = 30 * 86400


@pytest.fixture(params=[*STORE_KINDS, "cookie"])
async def every_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each server-side store in turn, and the cookie store, which seals the limits."""
    store = CookieStore() if request.param == "cookie" else build_store(request.param, tmp_path)
    yield store
    await store.aclose()


class LoginIn(BaseModel):
    user: str = "alice"
    remember: bool = False
    idle: int | None = None
    absolute: int | None = None


def make_app(store: Store, clock: FakeClock, **config: Any) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep, body: LoginIn) -> dict[str, Any]:
        session.login(
            body.user,
            remember=body.remember,
            idle_timeout=body.idle,
            absolute_timeout=body.absolute,
        )
        return {"user": body.user}

    @app.post("/cart")
    async def add(session: SessionDep) -> dict[str, Any]:
        session["cart"] = [*session.get("cart", []), "pear"]
        return {"cart": session["cart"]}

    @app.post("/confirm")
    async def confirm(session: SessionDep) -> dict[str, bool]:
        """A step-up login (the password checked again) that keeps what the session had."""
        assert session.user_id is not None
        session.login(
            session.user_id,
            remember=session.remember,
            idle_timeout=session.idle_timeout,
            absolute_timeout=session.absolute_timeout,
        )
        return {"ok": True}

    @app.post("/step-up")
    async def step_up(session: SessionDep) -> dict[str, bool]:
        """The same, written as briefly as the README writes it."""
        assert session.user_id is not None
        session.login(session.user_id)
        return {"ok": True}

    @app.post("/remember")
    async def remember(session: SessionDep, on: bool = True) -> dict[str, bool]:
        session.remember = on
        return {"remember": session.remember}

    @app.post("/regenerate")
    async def regenerate(session: SessionDep) -> dict[str, bool]:
        session.regenerate()
        return {"ok": True}

    @app.post("/logout")
    async def logout(session: SessionDep) -> dict[str, bool]:
        session.logout()
        session["cart"] = ["kept after logout"]  # an anonymous session goes on
        return {"ok": True}

    @app.get("/devices")
    async def devices(session: SessionDep) -> dict[str, Any]:
        return {
            "devices": [device.expires_at.timestamp() for device in await session.devices()],
            "can_login": await session.can_login("alice"),
        }

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, Any]:
        return {
            "user": session.user_id,
            "cart": session.get("cart"),
            "remember": session.remember,
            "idle": session.idle_timeout.total_seconds(),
            "absolute": session.absolute_timeout.total_seconds(),
            "expires_at": session.expires_at.timestamp(),
        }

    app.add_middleware(
        SessionMiddleware,
        store=store,
        config=SessionConfig(clock=clock, secret_keys=["k" * 32], **config),
    )
    return app


class Visitor:
    """One browser: it sends the latest cookie it was given, as a real one would."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.cookie = ""

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"cookie": f"{NAME}={self.cookie}"} if self.cookie else {}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        assert response.status_code < 400, response.text
        for header in response.headers.get_list("set-cookie"):
            if header.startswith(f"{NAME}="):
                self.cookie = header.split(";", 1)[0].split("=", 1)[1]
        return response

    async def state(self) -> dict[str, Any]:
        return (await self.send("GET", "/state")).json()  # type: ignore[no-any-return]


def start_clock() -> FakeClock:
    return FakeClock(float(int(time.time())))


async def test_a_shorter_idle_limit_ends_the_session_sooner(every_store: Store) -> None:
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        short, usual = Visitor(client), Visitor(client)
        signed_in_at = clock()
        await short.send("POST", "/login", json={"idle": 600})
        await usual.send("POST", "/login", json={"user": "bob"})
        assert await short.state() == {
            "user": "alice",
            "cart": None,
            "remember": False,
            "idle": 600,
            "absolute": ABSOLUTE,
            "expires_at": signed_in_at + 600,
        }
        assert (await usual.state())["expires_at"] == signed_in_at + IDLE

        clock.advance(601)
        assert (await short.state())["user"] is None
        assert (await usual.state())["user"] == "bob"


async def test_the_refresh_follows_the_shorter_window(every_store: Store) -> None:
    """A read a tenth of the chosen idle window after the last save writes the sliding
    expiry back; the configured window's tenth (three minutes) would come too late
    for a ten-minute limit, which would then be cut by almost a third."""
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json={"idle": 600})
        clock.advance(59)
        assert (await visitor.state())["expires_at"] == clock() - 59 + 600  # not yet due
        clock.advance(2)
        refreshed_at = clock()
        await visitor.state()  # due: written back
        clock.advance(50)  # not due again yet: the refreshed deadline is what stands
        assert (await visitor.state())["expires_at"] == refreshed_at + 600
        clock.advance(540)  # past the first deadline, within the refreshed one
        state = await visitor.state()
        assert state["user"] == "alice"
        assert state["expires_at"] == clock() + 600  # due again: counted from this read


async def test_a_shorter_absolute_limit_ends_an_active_session(every_store: Store) -> None:
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        signed_in_at = clock()
        await visitor.send("POST", "/login", json={"absolute": 3600})
        for _ in range(5):
            clock.advance(700)
            await visitor.send("POST", "/cart")  # busy all along
            state = await visitor.state()
            assert state["user"] == "alice"
            assert state["expires_at"] == min(clock() + IDLE, signed_in_at + 3600)
        clock.advance(101)  # an hour after the login
        assert (await visitor.state())["user"] is None


async def test_the_limits_last_until_the_next_login(every_store: Store) -> None:
    """Saves, a new ID and the user's changes keep them; a login without them brings
    back the configured ones, a logout ends them with the session."""
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json={"idle": 300, "absolute": 3000})
        await visitor.send("POST", "/cart")
        await visitor.send("POST", "/regenerate")
        clock.advance(250)
        await visitor.send("POST", "/cart")
        state = await visitor.state()
        assert (state["idle"], state["absolute"]) == (300, 3000)

        await visitor.send("POST", "/login", json={"user": "alice"})
        state = await visitor.state()
        assert (state["idle"], state["absolute"]) == (IDLE, ABSOLUTE)

        await visitor.send("POST", "/login", json={"idle": 300})
        await visitor.send("POST", "/logout")
        state = await visitor.state()
        assert (state["user"], state["idle"], state["absolute"]) == (None, IDLE, ABSOLUTE)


@pytest.mark.parametrize(
    ("login", "limits"),
    [
        ({"idle": 300, "absolute": 3000}, (300, 3000)),
        ({"remember": True, "idle": 3600}, (3600, REMEMBER_ABSOLUTE)),
        ({}, (IDLE, ABSOLUTE)),
    ],
    ids=["shortened", "remembered", "configured"],
)
async def test_a_step_up_login_can_keep_what_the_session_had(
    login: dict[str, Any], limits: tuple[int, int], tmp_path: Path
) -> None:
    """Passing the session's own limits again keeps them. A limit that was the
    configured one stays the configured one: a configuration loosened later applies."""
    store = build_store("sqlite", tmp_path)
    clock = start_clock()
    try:
        async with client_for(make_app(store, clock)) as client:
            visitor = Visitor(client)
            await visitor.send("POST", "/login", json=login)
            clock.advance(200)
            await visitor.send("POST", "/confirm")
            state = await visitor.state()
            assert (state["idle"], state["absolute"]) == limits
            assert state["expires_at"] == clock() + limits[0]
        looser = {"idle_timeout": 7200, "absolute_timeout": 86400}
        async with client_for(make_app(store, clock, **looser)) as client:
            visitor.client = client
            state = await visitor.state()
        # Chosen limits stay; the remember-me kind was not loosened; the configured follow.
        assert (state["idle"], state["absolute"]) == (limits if login else (7200, 86400))
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("login", "limits"),
    [
        ({"idle": 300, "absolute": 3000}, (300, 3000)),
        ({"remember": True, "idle": 3600}, (3600, REMEMBER_ABSOLUTE)),
        ({"remember": True}, (REMEMBER_IDLE, REMEMBER_ABSOLUTE)),
        ({}, (IDLE, ABSOLUTE)),
    ],
    ids=["shortened", "remembered and shortened", "remembered", "configured"],
)
async def test_a_login_again_as_the_same_user_with_no_arguments_keeps_what_it_had(
    login: dict[str, Any], limits: tuple[int, int], every_store: Store
) -> None:
    """A step-up must not turn a remembered session into one that ends with the
    browser, nor give a shared computer's session the usual limits back."""
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json=login)
        clock.advance(200)
        answer = await visitor.send("POST", "/step-up")
        assert ("Max-Age=" in answer.headers["set-cookie"]) is bool(login.get("remember"))
        state = await visitor.state()
        assert (state["remember"], state["idle"], state["absolute"]) == (
            bool(login.get("remember")),
            *limits,
        )


async def test_a_step_up_after_remember_me_was_switched_off_starts_a_full_lifetime(
    every_store: Store,
) -> None:
    """Switched off, a remembered session keeps no more than its remaining deadline; a
    new proof of the password starts the browser session's own lifetime."""
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json={"remember": True})
        for _ in range(3):  # used every nine days: idle for less than its limit
            clock.advance(9 * 86400)
            await visitor.state()
        clock.advance(REMEMBER_ABSOLUTE - 27 * 86400 - 3600)
        await visitor.send("POST", "/remember", params={"on": False})
        assert (await visitor.state())["absolute"] == 3600  # what was left
        await visitor.send("POST", "/step-up")
        state = await visitor.state()
        assert (state["remember"], state["idle"], state["absolute"]) == (False, IDLE, ABSOLUTE)


async def test_a_remembered_login_with_a_shorter_lifetime_gets_a_shorter_cookie(
    every_store: Store,
) -> None:
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        response = await client.post(
            "/login", json={"remember": True, "absolute": 7 * 86400, "idle": 86400}
        )
        assert "Max-Age=604800;" in response.headers["set-cookie"]
        usual = await client.post("/login", json={"remember": True})
        assert f"Max-Age={REMEMBER_ABSOLUTE};" in usual.headers["set-cookie"]


async def test_a_stricter_configuration_still_holds_for_earlier_logins(tmp_path: Path) -> None:
    """The limits a login chose are kept as given, and the configured ones stay an upper
    bound: made stricter after that login, the configuration wins."""
    store = build_store("sqlite", tmp_path)
    clock = start_clock()
    try:
        async with client_for(make_app(store, clock)) as client:
            visitor = Visitor(client)
            await visitor.send("POST", "/login", json={"idle": 900})
        async with client_for(make_app(store, clock, idle_timeout=600)) as client:
            visitor.client = client
            assert (await visitor.state())["idle"] == 600
            clock.advance(601)
            assert (await visitor.state())["user"] is None
    finally:
        await store.aclose()


async def test_sessions_a_stricter_configuration_ended_count_nowhere(tmp_path: Path) -> None:
    """Ended by a configuration made stricter since, a session's record may outlive it
    in the store until its stored deadline: it must not be listed, nor take a place
    under the session limit, which would lock its user out with nothing to sign out."""
    store = build_store("sqlite", tmp_path)
    clock = start_clock()
    limited = {"max_sessions_per_user": 2, "at_session_limit": "refuse_login"}
    try:
        async with client_for(make_app(store, clock, **limited)) as client:
            phone, laptop = Visitor(client), Visitor(client)
            await phone.send("POST", "/login", json={"remember": True})
            clock.advance(3600)
            await laptop.send("POST", "/login", json={"remember": True})
        stricter = make_app(store, clock, remember_idle_timeout=2 * 3600, **limited)
        async with client_for(stricter) as client:
            laptop.client = client
            signed_in_at = clock()
            clock.advance(100)  # no refresh due yet: the stored deadline is what stands...
            state = await laptop.state()
            # ...14 days away as stored, cut to the new idle limit.
            assert state["expires_at"] == signed_in_at + 2 * 3600
            clock.advance(5300)  # the phone is past the new limit, the laptop is not
            listed = (await laptop.send("GET", "/devices")).json()  # as stored, cut
            assert listed == {"devices": [signed_in_at + 2 * 3600], "can_login": True}
            await Visitor(client).send("POST", "/login", json={"remember": True})
            assert len((await laptop.send("GET", "/devices")).json()["devices"]) == 2
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"idle_timeout": IDLE + 1}, r"idle_timeout \(1801s\) exceeds the configured idle_timeout"),
        (
            {"absolute_timeout": timedelta(days=31), "remember": True},
            r"exceeds the configured remember_absolute_timeout \(2592000s\)",
        ),
        ({"idle_timeout": 0}, "idle_timeout must be a positive whole number of seconds"),
        ({"absolute_timeout": -5}, "absolute_timeout must be a positive"),
        ({"idle_timeout": 1.5}, "idle_timeout must be a positive"),
        ({"idle_timeout": True}, "idle_timeout must be a positive"),
        ({"idle_timeout": float("inf")}, "idle_timeout must be a positive"),
        ({"absolute_timeout": "600"}, "absolute_timeout must be a positive"),
        ({"idle_timeout": timedelta(milliseconds=1)}, "idle_timeout must be a positive"),
    ],
)
async def test_limits_a_login_cannot_have_are_refused(
    keywords: dict[str, Any], message: str
) -> None:
    app = FastAPI()
    refused: list[str] = []

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, Any]:
        with pytest.raises(ValueError, match=message) as caught:
            session.login("alice", **keywords)
        refused.append(str(caught.value))
        return {"user": session.user_id}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        response = await client.post("/login")
    assert refused
    assert response.json() == {"user": None}  # nothing of the refused login happened
    assert "set-cookie" not in response.headers


async def test_the_limits_of_a_session_that_chose_none_are_the_configured_ones() -> None:
    clock = start_clock()
    async with client_for(make_app(MemoryStore(), clock)) as client:
        anonymous = await client.get("/state")
        assert (anonymous.json()["idle"], anonymous.json()["absolute"]) == (IDLE, ABSOLUTE)
        remembered = Visitor(client)
        await remembered.send("POST", "/login", json={"remember": True, "idle": 3600})
        state = await remembered.state()
        assert (state["idle"], state["absolute"]) == (3600, REMEMBER_ABSOLUTE)
        # An idle limit longer than the absolute one ends with the absolute one.
        await remembered.send("POST", "/login", json={"idle": 1800, "absolute": 900})
        state = await remembered.state()
        assert (state["idle"], state["absolute"]) == (900, 900)


async def test_create_session_shortens_the_limits_as_a_login_does(every_store: Store) -> None:
    clock = start_clock()
    config = SessionConfig(clock=clock, secret_keys=["k" * 32])
    ticket = await create_session(
        every_store, user_id="alice", idle_timeout=300, absolute_timeout=900, config=config
    )
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        visitor.cookie = ticket
        state = await visitor.state()
        assert (state["user"], state["idle"], state["absolute"]) == ("alice", 300, 900)
        assert state["expires_at"] == clock() + 300
    with pytest.raises(ValueError, match="exceeds the configured idle_timeout"):
        await create_session(every_store, user_id="alice", idle_timeout=IDLE + 60, config=config)


async def test_an_anonymous_cart_can_be_remembered_past_the_browsers_close(
    every_store: Store,
) -> None:
    """Django's set_expiry, express's cookie.maxAge: a shop keeps its visitors' carts."""
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/cart")
        before = visitor.cookie
        remembered = await visitor.send("POST", "/remember")
        assert f"Max-Age={30 * 24 * 3600}" in remembered.headers["set-cookie"]
        assert visitor.cookie != before  # a new cookie, under a new ID
        clock.advance(3 * 24 * 3600)  # far past the 30-minute idle limit of browser sessions
        state = await visitor.state()
        assert (state["cart"], state["remember"], state["user"]) == (["pear"], True, None)
        assert state["idle"] == 14 * 24 * 3600
        # The ID it had before is dead: only the new cookie holds the cart.
        if not isinstance(every_store, CookieStore):
            old = await client.get("/state", headers={"cookie": f"{NAME}={before}"})
            assert old.json()["cart"] is None


async def test_remember_can_be_turned_on_and_off_after_login(every_store: Store) -> None:
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json={})
        on = await visitor.send("POST", "/remember")
        assert "Max-Age=" in on.headers["set-cookie"]
        assert (await visitor.state())["remember"] is True
        off = await visitor.send("POST", "/remember", params={"on": False})
        assert "Max-Age=" not in off.headers["set-cookie"]
        state = await visitor.state()
        assert (state["user"], state["remember"], state["idle"]) == ("alice", False, 30 * 60)
        # Unchanged: nothing to send.
        same = await visitor.send("POST", "/remember", params={"on": False})
        assert "set-cookie" not in same.headers


async def test_remember_turned_off_late_keeps_the_session_within_both_limits(
    every_store: Store,
) -> None:
    """Thirteen hours after a remembered login, past the 12-hour limit of a browser
    session counted from it: the session goes on, under the browser-session limits
    from now, and never past the deadline it had."""
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json={"remember": True})
        clock.advance(13 * 3600)
        off = await visitor.send("POST", "/remember", params={"on": False})
        assert "Max-Age=" not in off.headers["set-cookie"]
        state = await visitor.state()
        assert (state["user"], state["remember"]) == ("alice", False)
        assert state["expires_at"] == clock() + IDLE
        assert state["absolute"] == ABSOLUTE
        elapsed = 0
        while elapsed < ABSOLUTE - 60:  # in use, in steps shorter than the idle limit
            step = min(IDLE - 300, ABSOLUTE - 60 - elapsed)
            clock.advance(step)
            elapsed += step
            assert (await visitor.state())["user"] == "alice"
        clock.advance(120)  # used two minutes ago, but 12 hours after the switch
        assert (await visitor.state())["user"] is None


async def test_remember_switched_off_and_on_again_keeps_the_deadline_it_had(
    every_store: Store,
) -> None:
    """A switch off starts the browser-session limits from then; switched on again, the
    session keeps that deadline. Its limits counted anew at each switch would let it (or
    a stolen cookie) live for ever by switching off and on."""
    clock = start_clock()
    day = 24 * 3600
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json={"remember": True})
        for _ in range(29):
            clock.advance(day)  # in daily use, far within the 14-day idle limit
            assert (await visitor.state())["user"] == "alice"
        clock.advance(60)
        await visitor.send("POST", "/remember", params={"on": False})
        clock.advance(60)
        on = await visitor.send("POST", "/remember")
        assert f"Max-Age={ABSOLUTE - 60}" in on.headers["set-cookie"]  # not a new 30 days
        state = await visitor.state()
        assert (state["user"], state["remember"]) == ("alice", True)
        clock.advance(ABSOLUTE - 120)
        assert (await visitor.state())["user"] == "alice"
        clock.advance(61)  # 12 hours after the switch off
        assert (await visitor.state())["user"] is None


@pytest.mark.parametrize("remember_at_login", [True, False])
async def test_a_short_login_stays_short_through_remember_switches(
    every_store: Store, remember_at_login: bool
) -> None:
    """A shorter limit a login chose holds whatever the user switches afterwards."""
    clock = start_clock()
    signed_in_at = clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json={"remember": remember_at_login, "absolute": 3600})
        for on in [False, True] if remember_at_login else [True, False, True]:
            clock.advance(60)
            await visitor.send("POST", "/remember", params={"on": on})
        state = await visitor.state()
        assert state["expires_at"] <= signed_in_at + 3600, state
        clock.advance(3600)
        assert (await visitor.state())["user"] is None  # an hour after the login: over


async def test_a_shorter_idle_limit_the_login_chose_holds_after_remember_switches(
    every_store: Store,
) -> None:
    clock = start_clock()
    async with client_for(make_app(every_store, clock)) as client:
        visitor = Visitor(client)
        await visitor.send("POST", "/login", json={"remember": True, "idle": 3600})
        for on in (False, True):
            clock.advance(60)
            await visitor.send("POST", "/remember", params={"on": on})
        assert (await visitor.state())["idle"] == 3600
        clock.advance(3600 - 60)
        assert (await visitor.state())["user"] == "alice"
        clock.advance(3601)  # an idle hour
        assert (await visitor.state())["user"] is None
