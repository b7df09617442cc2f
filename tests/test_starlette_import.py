"""Switching from Starlette's SessionMiddleware: its cookies start server-side sessions.

The old cookies are minted by Starlette's real middleware, with its real signer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from base64 import b64encode
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from itsdangerous import TimestampSigner
from starlette.middleware.sessions import SessionMiddleware as StarletteSessionMiddleware

from coatcheck import (
    ConfigurationError,
    CookieConfig,
    MemoryStore,
    MissingDependencyError,
    SessionConfig,
    SessionLimitError,
    SessionMiddleware,
    StarletteImport,
    Store,
    StoreError,
)
from coatcheck.events import SessionEvent
from coatcheck.fastapi import CSRFToken, SessionDep
from coatcheck.session import Session
from coatcheck.stores import SessionRecord
from coatcheck.stores.base import creator_of
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, FakeClock, create_session

from .conftest import CountingStore, DownStore, frames_showing

pytestmark = pytest.mark.anyio

SECRET = "the-secret-the-starlette-app-used"
NEW_COOKIE = "__Host-session"


def starlette_app() -> FastAPI:
    """The app before the switch: Starlette's signed-cookie sessions."""
    app = FastAPI()

    @app.post("/fill")
    async def fill(request: Request) -> dict[str, bool]:
        request.session.update(await request.json())
        return {"ok": True}

    app.add_middleware(StarletteSessionMiddleware, secret_key=SECRET, https_only=True)
    return app


class Site:
    """One host, redeployed: Starlette's sessions first, then coatcheck's."""

    def __init__(self) -> None:
        self.app: Any = starlette_app()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@asynccontextmanager
async def browser(site: Site) -> AsyncIterator[httpx.AsyncClient]:
    """A browser on the site, sending what browsers send with the app's own requests."""
    transport = httpx.ASGITransport(app=site)
    async with httpx.AsyncClient(
        transport=transport, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}
    ) as client:
        yield client


async def visit_before_the_switch(client: httpx.AsyncClient, data: dict[str, Any]) -> str:
    """Get Starlette's cookie for ``data`` the way a browser did; return its value."""
    response = await client.post("/fill", json=data)
    assert response.status_code == 200
    return client.cookies["session"]


def replace_cookie(client: httpx.AsyncClient, name: str, value: str) -> None:
    """Put ``value`` in the browser's jar as if the site had set it."""
    domain = next(cookie.domain for cookie in client.cookies.jar)
    client.cookies.set(name, value, domain=domain, path="/")


def coatcheck_app(store: Store, settings: StarletteImport, **config: Any) -> FastAPI:
    """The app after the switch, with the same endpoints reading the same keys."""
    app = FastAPI()

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, Any]:
        return {"user": session.user_id, "data": dict(session), "remember": session.remember}

    @app.get("/ended")
    async def ended(session: SessionDep) -> dict[str, Any]:
        return {"data": dict(session), "ended": session.ticket_ended}

    @app.post("/cart")
    async def add(session: SessionDep) -> dict[str, Any]:
        session["cart"] = [*session.get("cart", []), "pear"]
        return {"cart": session["cart"]}

    @app.post("/logout")
    async def logout(session: SessionDep) -> dict[str, bool]:
        session.logout()
        return {"ok": True}

    @app.post("/logout-fails")
    async def logout_fails(session: SessionDep) -> JSONResponse:
        session.logout()
        return JSONResponse({"detail": "the page after the logout broke"}, 500)

    @app.get("/token")
    async def token(value: CSRFToken) -> dict[str, str]:
        return {"token": value}

    events = config.pop("events", ())
    app.add_middleware(
        SessionMiddleware,
        store=store,
        config=SessionConfig(starlette_import=settings, **config),
        events=events,
    )
    return app


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


async def test_a_starlette_session_carries_over_and_its_cookie_goes() -> None:
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice", "cart": ["apple"]})
        site.app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"))

        first = await client.get("/state")
        assert first.json() == {
            "user": "alice",
            "data": {"user_id": "alice", "cart": ["apple"]},
            "remember": True,
        }
        new, cleared = set_cookies(first)
        assert new.startswith(f"{NEW_COOKIE}=")
        assert "Max-Age=" in new
        assert cleared == "session=null; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/; Secure"
        assert first.headers["cache-control"] == "no-store"
        # The browser dropped the old cookie; the new one carries the session on.
        assert "session" not in client.cookies
        added = await client.post("/cart")
        again = await client.get("/state")

    assert added.json() == {"cart": ["apple", "pear"]}
    assert again.json()["data"]["cart"] == ["apple", "pear"]
    assert set_cookies(again) == []
    # Logged in as alice: her device list has it.
    assert [record.user_id for record in await store.list_user("alice", time.time())] == ["alice"]


async def test_the_id_an_old_cookie_gives_stays_out_of_frames_that_ask_the_store() -> None:
    """The new session's ID is derived from the old cookie: it too waits on the session,
    not in a local an error tracker would send, while coatcheck asks the store."""
    store, site = DownStore(), Site()
    caught: list[tuple[StoreError, str | None]] = []
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"))

        @app.get("/down")
        async def down(request: Request) -> dict[str, bool]:
            session = Session.of(request)
            store.down = True
            try:
                await session.load()
            except StoreError as exc:
                importer = session._persistence._importer
                assert importer is not None
                caught.append((exc, importer.session_id(request.scope["headers"])))
            finally:
                store.down = False
            return {"ok": True}

        site.app = app
        assert (await client.get("/down")).status_code == 200
    assert len(caught) == 1
    error, derived = caught[0]
    assert derived is not None
    assert frames_showing(error, derived) == []


async def test_a_starlette_cookie_moves_into_an_encrypted_one_on_the_cookie_store() -> None:
    """The stateless app stays stateless: its readable signed cookie becomes a sealed one."""
    site = Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice", "cart": ["apple"]})
        keys = ["a-secret-key-of-at-least-16-bytes"]
        settings = StarletteImport(SECRET, user_key="user_id")
        site.app = coatcheck_app(CookieStore(), settings, secret_keys=keys)

        first = await client.get("/state")
        new, cleared = set_cookies(first)
        assert new.startswith(f"{NEW_COOKIE}=")
        assert cleared.startswith("session=null;")
        assert "apple" not in new
        added = await client.post("/cart")
        again = await client.get("/state")

    assert first.json()["user"] == "alice"
    assert added.json() == {"cart": ["apple", "pear"]}
    assert again.json()["data"]["cart"] == ["apple", "pear"]
    assert set_cookies(again) == []


@pytest.mark.parametrize("kind", ["cookie", "memory"])
async def test_an_imported_session_is_no_ended_ticket_under_a_shared_name(kind: str) -> None:
    """coatcheck's cookie may take the old one's name (``session``, the demo's on plain
    HTTP): the old cookie is then read as an import, not as the ticket of a session
    that ended, which a page would announce over the cart it shows."""
    site = Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"cart": ["apple"]})
        keys = ["a-secret-key-of-at-least-16-bytes"]
        store = CookieStore() if kind == "cookie" else MemoryStore()
        same_name = CookieConfig(name="session")
        site.app = coatcheck_app(store, StarletteImport(SECRET), secret_keys=keys, cookie=same_name)
        first = (await client.get("/ended")).json()
    assert first == {"data": {"cart": ["apple"]}, "ended": False}


@pytest.mark.parametrize("kind", ["cookie", "memory"])
async def test_an_old_session_too_big_to_store_keeps_its_login_not_its_data(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 413 would leave the old cookie in place, refused again on every request: the
    data goes, with a warning, and the user stays logged in."""
    site = Site()
    async with browser(site) as client:
        # Fits Starlette's 4 KB cookie, but not a sealed one, nor max_session_bytes.
        await visit_before_the_switch(client, {"user_id": "alice", "notes": "n" * 2900})
        settings = StarletteImport(SECRET, user_key="user_id")
        keys = ["a-secret-key-of-at-least-16-bytes"]
        store = CookieStore() if kind == "cookie" else MemoryStore()
        site.app = coatcheck_app(store, settings, secret_keys=keys, max_session_bytes=2048)

        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            first = await client.post("/cart")  # the handler's own change is kept
        new, cleared = set_cookies(first)
        again = await client.get("/state")

    assert first.status_code == 200
    assert new.startswith(f"{NEW_COOKIE}=")
    assert cleared.startswith("session=null;")
    assert again.json()["user"] == "alice"
    assert again.json()["data"] == {"cart": ["pear"]}
    assert "the 2 values it brought were dropped, its login kept" in caplog.text


async def test_a_handlers_own_change_too_big_is_a_413_as_without_an_import() -> None:
    site = Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice", "theme": "dark"})
        settings = StarletteImport(SECRET, user_key="user_id")
        app = coatcheck_app(MemoryStore(), settings, max_session_bytes=2048)

        @app.post("/notes")
        async def notes(session: SessionDep) -> dict[str, bool]:
            session["notes"] = "n" * 2500
            return {"ok": True}

        site.app = app
        refused = await client.post("/notes")
        state = await client.get("/state")
    assert refused.status_code == 413
    assert state.json()["data"] == {"user_id": "alice", "theme": "dark"}  # adopted anew


async def test_without_a_user_key_only_the_data_carries_over() -> None:
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice", "theme": "dark"})
        site.app = coatcheck_app(store, StarletteImport(SECRET, remember=False))
        response = await client.get("/state")

    assert response.json() == {
        "user": None,
        "data": {"user_id": "alice", "theme": "dark"},
        "remember": False,
    }
    assert "Max-Age" not in set_cookies(response)[0]  # a browser session, as asked
    assert await store.list_user("alice", time.time()) == []
    assert await store.count(time.time()) == 1


@pytest.mark.parametrize(
    "forge",
    [
        lambda value: TimestampSigner("another-secret").sign(value.rsplit(".", 2)[0]).decode(),
        lambda value: "e30" + value[3:],  # the data changed under the signature
        lambda value: value.rsplit(".", 1)[0],  # no signature
        lambda value: "not-starlettes",
        lambda value: "",
    ],
    ids=["other-key", "tampered", "unsigned", "junk", "empty"],
)
async def test_a_cookie_starlette_did_not_sign_is_no_session(forge: Any) -> None:
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        old = await visit_before_the_switch(client, {"user_id": "alice"})
        site.app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"))
        replace_cookie(client, "session", forge(old))
        response = await client.get("/state")

    assert response.status_code == 200
    assert response.json() == {"user": None, "data": {}, "remember": False}
    assert set_cookies(response) == []  # nothing stored, nothing cleared
    assert await store.count(time.time()) == 0


class _SignedEarlier(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 3600


async def test_an_old_cookie_past_max_age_is_no_session() -> None:
    store, site = MemoryStore(), Site()
    settings = StarletteImport(SECRET, max_age=timedelta(minutes=30))
    async with browser(site) as client:
        fresh = await visit_before_the_switch(client, {"theme": "dark"})
        site.app = coatcheck_app(store, settings)
        replace_cookie(
            client, "session", _SignedEarlier(SECRET).sign(fresh.rsplit(".", 2)[0]).decode()
        )
        stale = await client.get("/state")
        replace_cookie(client, "session", fresh)
        adopted = await client.get("/state")

    assert stale.json()["data"] == {}
    assert adopted.json()["data"] == {"theme": "dark"}


async def test_nothing_is_adopted_from_until_on() -> None:
    clock, site = FakeClock(float(int(time.time()))), Site()  # whole seconds: exact datetimes
    until = datetime.fromtimestamp(clock.now + 60, tz=timezone.utc)
    async with browser(site) as late, browser(site) as early:
        await visit_before_the_switch(late, {"theme": "dark"})
        await visit_before_the_switch(early, {"theme": "light"})
        site.app = coatcheck_app(MemoryStore(), StarletteImport(SECRET, until=until), clock=clock)
        assert (await early.get("/state")).json()["data"] == {"theme": "light"}
        clock.advance(60)
        assert (await late.get("/state")).json()["data"] == {}


async def test_a_coatcheck_session_wins_over_an_old_cookie() -> None:
    store, site = MemoryStore(), Site()
    async with browser(site) as holder, browser(site) as other:
        await visit_before_the_switch(holder, {"cart": ["apple"]})
        site.app = coatcheck_app(store, StarletteImport(SECRET))
        await other.post("/cart")  # a coatcheck session, which the holder then gets
        replace_cookie(holder, NEW_COOKIE, other.cookies[NEW_COOKIE])
        response = await holder.get("/state")

    assert response.json()["data"] == {"cart": ["pear"]}
    assert set_cookies(response) == []


async def test_logging_out_at_once_ends_the_old_cookie_too() -> None:
    """Otherwise the next request would adopt it again and undo the logout."""
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        site.app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"))
        response = await client.post("/logout")
        assert [cookie.split(";")[0] for cookie in set_cookies(response)] == ["session=null"]
        assert "session" not in client.cookies
        after = await client.get("/state")

    assert after.json()["user"] is None
    assert await store.count(time.time()) == 0


async def test_a_logout_of_an_adopted_login_stands_through_a_5xx() -> None:
    """The old cookie goes with the failed answer: kept, it would sign alice in again."""
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        site.app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"))
        response = await client.post("/logout-fails")
        assert response.status_code == 500
        assert [cookie.split(";")[0] for cookie in set_cookies(response)] == ["session=null"]
        after = await client.get("/state")
    assert after.json()["user"] is None


async def test_a_login_again_after_a_lost_answer_replaces_the_unheard_one(
    any_store: Store,
) -> None:
    """The browser holds only Starlette's cookie, signs in, and the answer (coatcheck's
    cookie, the old one cleared) is lost. Signing in again with the old cookie replaces
    the session it never got, as with a coatcheck cookie, so one device at a limit of
    one is no lockout."""
    from coatcheck._persist import Persistence
    from coatcheck.session import Session

    clock = FakeClock()
    config = SessionConfig(
        clock=clock,
        starlette_import=StarletteImport(secret_key=SECRET),
        max_sessions_per_user=1,
        at_session_limit="refuse_login",
    )
    persistence = Persistence(any_store, config, None)
    signed = TimestampSigner(SECRET).sign(b64encode(json.dumps({"cart": ["apple"]}).encode()))
    old = [(b"cookie", b"session=" + signed)]
    lost = await Session(persistence, {"headers": old}).load()
    lost.login("alice")
    await persistence.commit(lost, 200)
    clock.advance(30)

    again = await Session(persistence, {"headers": old}).load()
    assert await again.can_login("alice")
    again.login("alice")
    await persistence.commit(again, 200)
    (device,) = await any_store.list_user("alice", clock())
    assert device.public_id == again.public_id


def _import_login(store: Store, clock: FakeClock) -> tuple[Any, list[tuple[bytes, bytes]]]:
    """A Persistence whose imports log in (at most one device, refused past it), and
    the header of an old cookie of alice's."""
    from coatcheck._persist import Persistence

    config = SessionConfig(
        clock=clock,
        starlette_import=StarletteImport(secret_key=SECRET, user_key="user_id"),
        max_sessions_per_user=1,
        at_session_limit="refuse_login",
    )
    signed = TimestampSigner(SECRET).sign(b64encode(json.dumps({"user_id": "alice"}).encode()))
    return Persistence(store, config, None), [(b"cookie", b"session=" + signed)]


async def test_an_import_that_logged_in_and_went_unheard_is_replaced_by_the_next(
    any_store: Store,
) -> None:
    """The import of the old cookie is the login. Its answer is lost, and the browser
    comes back with the old cookie after the window in which it would join that
    session: it is let in, in place of the session no browser took, rather than
    refused as a second device until that one idles out."""
    from coatcheck.session import Session

    clock = FakeClock()
    persistence, old = _import_login(any_store, clock)
    lost = await Session(persistence, {"headers": old}).load()
    await persistence.commit(lost, 200)
    clock.advance(120)

    again = await Session(persistence, {"headers": old}).load()
    assert again.user_id == "alice"
    assert await again.can_login("alice")
    await persistence.commit(again, 200)
    (device,) = await any_store.list_user("alice", clock())
    assert device.public_id == again.public_id != lost.public_id


@pytest.mark.parametrize("use", ["a read", "a write"])
async def test_a_copy_of_the_old_cookie_is_another_device_once_its_session_was_used(
    any_store: Store, use: str
) -> None:
    """Once a browser used the session the import started, even only to read it, it is
    held: a copy of the old cookie that comes later is a device of its own, refused
    at the limit, and the session stays with its holder."""
    from coatcheck.session import Session

    clock = FakeClock()
    persistence, old = _import_login(any_store, clock)
    first = await Session(persistence, {"headers": old}).load()
    await persistence.commit(first, 200)
    assert first._id is not None
    held = [(b"cookie", f"{NEW_COOKIE}={first._id}".encode())]
    clock.advance(600)
    used = await Session(persistence, {"headers": held}).load()
    assert used.user_id == "alice"
    if use == "a write":
        used["cart"] = ["pear"]
    await persistence.commit(used, 200)
    clock.advance(60)

    copy = await Session(persistence, {"headers": old}).load()
    with pytest.raises(SessionLimitError):
        await persistence.commit(copy, 200)
    (device,) = await any_store.list_user("alice", clock())
    assert device.public_id == first.public_id
    assert (await Session(persistence, {"headers": held}).load()).user_id == "alice"


async def test_the_old_cookie_counts_as_a_credential_for_csrf() -> None:
    """A client that sends neither Sec-Fetch-Site nor Origin needs a token to use it."""
    site = Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        site.app = coatcheck_app(MemoryStore(), StarletteImport(SECRET, user_key="user_id"))
        cross_site = await client.post("/cart", headers={"sec-fetch-site": "cross-site"})
        del client.headers["sec-fetch-site"]
        refused = await client.post("/cart")

    assert cross_site.status_code == 403
    assert refused.status_code == 403
    assert set_cookies(refused) == set_cookies(cross_site) == []


async def test_the_old_cookie_refuses_a_token_anyone_could_take() -> None:
    """The adopted session is logged in but has no store key yet, so it has never
    issued a bound token; the stateless kind is handed to any visitor."""
    site = Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        site.app = coatcheck_app(MemoryStore(), StarletteImport(SECRET, user_key="user_id"))
        transport = httpx.ASGITransport(app=site)
        async with httpx.AsyncClient(transport=transport, base_url=TEST_BASE_URL) as stranger:
            taken = (await stranger.get("/token")).json()["token"]
        del client.headers["sec-fetch-site"]
        forged = await client.post("/cart", headers={"x-csrf-token": taken})
        client.headers["sec-fetch-site"] = "same-origin"
        state = await client.get("/state")

    assert forged.status_code == 403
    assert state.json()["user"] == "alice"
    assert "cart" not in state.json()["data"]


async def test_one_cookie_name_for_both_is_replaced_not_cleared() -> None:
    """In development both may be called ``session``: the new cookie takes its place,
    since a response must not set one name twice."""
    site = Site()
    async with browser(site) as client:
        old = await visit_before_the_switch(client, {"theme": "dark"})
        site.app = coatcheck_app(
            MemoryStore(), StarletteImport(SECRET), cookie=CookieConfig(secure=False)
        )
        response = await client.get("/state")
        assert response.json()["data"] == {"theme": "dark"}
        (cookie,) = set_cookies(response)
        assert cookie.startswith("session=")
        assert not cookie.startswith("session=null")
        assert client.cookies["session"] != old
        again = await client.get("/state")

    assert again.json()["data"] == {"theme": "dark"}
    assert set_cookies(again) == []


async def test_one_cookie_name_for_both_and_a_logout_at_once_ends_it() -> None:
    site = Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        site.app = coatcheck_app(
            MemoryStore(),
            StarletteImport(SECRET, user_key="user_id"),
            cookie=CookieConfig(secure=False),
        )
        response = await client.post("/logout")
        assert [cookie.split(";")[0] for cookie in set_cookies(response)] == ["session=null"]
        assert "session" not in client.cookies
        after = await client.get("/state")

    assert after.json()["user"] is None


def gated(app: FastAPI, change: bool) -> tuple[asyncio.Event, asyncio.Event]:
    """A route that holds its request, session loaded, until the test lets it go on;
    with ``change``, it then adds "pear" to the cart."""
    loaded, go_on = asyncio.Event(), asyncio.Event()

    @app.post("/held")
    async def held(session: SessionDep) -> dict[str, Any]:
        loaded.set()
        await go_on.wait()
        if change:
            session["cart"] = [*session.get("cart", []), "pear"]
        return dict(session)

    return loaded, go_on


def new_cookie(response: httpx.Response) -> str:
    (value,) = [c for c in set_cookies(response) if c.startswith(f"{NEW_COOKIE}=")]
    return value.split(";")[0]


@pytest.mark.parametrize("held_changes", [True, False], ids=["held-adds", "other-adds"])
@pytest.mark.parametrize("limit", [None, 1])
async def test_a_pages_parallel_first_requests_share_one_session(
    held_changes: bool, limit: int | None
) -> None:
    """A page's first requests each bring the old cookie alone. One is held while the
    other imports and is stored: they end in one session, one device, no lost change,
    and at a limit of one device neither is refused as a second."""
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice", "cart": ["apple"]})
        extra: dict[str, Any] = {}
        if limit is not None:
            extra = {"max_sessions_per_user": limit, "at_session_limit": "refuse_login"}
        app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"), **extra)
        loaded, go_on = gated(app, held_changes)
        site.app = app
        first = asyncio.create_task(client.post("/held"))
        await loaded.wait()
        second = await (client.get("/state") if held_changes else client.post("/cart"))
        go_on.set()
        held = await first
        after = await client.get("/state")

    assert held.status_code == second.status_code == 200
    assert new_cookie(held) == new_cookie(second)
    assert after.json()["user"] == "alice"
    assert after.json()["data"]["cart"] == ["apple", "pear"]
    assert len(await store.list_user("alice", time.time())) == 1


class Slow(CountingStore):
    """A real store whose every call takes a while, as over a network: the parallel
    imports below each look for the other's session before either has stored it."""

    async def load(self, key: str, now: float) -> SessionRecord | None:
        await asyncio.sleep(0.01)
        return await super().load(key, now)

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        await asyncio.sleep(0.01)
        return await super().save(record, **options)

    async def create(self, record: SessionRecord) -> bool:
        await asyncio.sleep(0.01)
        create = creator_of(self.inner)
        assert create is not None
        return await create(record)


async def test_parallel_imports_stored_at_once_keep_both_changes_and_one_creation() -> None:
    """Both requests find nothing stored yet and store the session at the same time:
    the second must merge onto the first, not write over it, and only the first
    announces the session."""
    seen: list[tuple[str, str | None]] = []

    async def hook(event: SessionEvent) -> None:
        seen.append((event.kind, event.user_id))

    store, site = Slow(MemoryStore()), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice", "cart": ["apple"]})
        app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"), events=[hook])
        both_loaded, go_on, loaded = asyncio.Event(), asyncio.Event(), []

        @app.post("/mark/{name}")
        async def mark(name: str, session: SessionDep) -> dict[str, bool]:
            loaded.append(name)
            if len(loaded) == 2:
                both_loaded.set()
            await go_on.wait()
            session[name] = True
            return {"ok": True}

        site.app = app
        requests = [asyncio.create_task(client.post(f"/mark/{name}")) for name in ("a", "b")]
        await both_loaded.wait()
        go_on.set()
        responses = await asyncio.gather(*requests)
        after = await client.get("/state")

    assert [response.status_code for response in responses] == [200, 200]
    assert new_cookie(responses[0]) == new_cookie(responses[1])
    assert after.json()["data"] == {"user_id": "alice", "cart": ["apple"], "a": True, "b": True}
    assert seen.count(("created", "alice")) == 1
    assert seen.count(("logged_in", "alice")) == 1


@pytest.mark.parametrize("then", ["logout", "login-bob"])
async def test_ending_the_import_in_its_own_request_ends_a_parallel_ones_session(
    then: str,
) -> None:
    """A logout (followed by a flash, which keeps an anonymous session) in the request
    that imported: the session a parallel request of the same import stored must end
    too, or that request's cookie keeps alice signed in."""
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"))
        loaded, go_on = asyncio.Event(), asyncio.Event()

        @app.post("/end")
        async def end(session: SessionDep) -> dict[str, bool]:
            loaded.set()
            await go_on.wait()
            if then == "logout":
                session.logout()
                session.flash("Signed out.")
            else:
                session.login("bob")
            return {"ok": True}

        site.app = app
        ending = asyncio.create_task(client.post("/end"))
        await loaded.wait()
        parallel = await client.get("/state")
        go_on.set()
        await ending

    assert parallel.json()["user"] == "alice"
    assert await store.list_user("alice", time.time()) == []


def held_route(app: FastAPI, action: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """``POST /act``: loads the session, waits for the test, then runs ``action`` on it."""
    loaded, go_on = asyncio.Event(), asyncio.Event()

    @app.post("/act")
    async def act(session: SessionDep) -> dict[str, bool]:
        loaded.set()
        await go_on.wait()
        action(session)
        return {"ok": True}

    return loaded, go_on


async def act_beside(
    site: Site, client: httpx.AsyncClient, app: FastAPI, action: Any, **beside: str
) -> tuple[httpx.Response, httpx.Response]:
    """``POST /act`` (``action`` on its session, see ``held_route``), held after its load
    while another request of the same browser runs (``get="/path"`` or ``post=...``):
    the responses of both."""
    loaded, go_on = held_route(app, action)
    site.app = app
    acting = asyncio.create_task(client.post("/act"))
    await loaded.wait()
    ((method, path),) = beside.items()
    other = await client.request(method.upper(), path)
    go_on.set()
    return await acting, other


@pytest.mark.parametrize("action", ["regenerate", "login-again"])
async def test_a_new_id_in_the_importing_request_keeps_one_device_and_every_change(
    action: str,
) -> None:
    def rotate(session: Any) -> None:
        session["confirmed"] = True
        if action == "regenerate":
            session.regenerate()
        else:
            session.login("alice")

    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        settings = StarletteImport(SECRET, user_key="user_id")
        app = coatcheck_app(
            store, settings, max_sessions_per_user=1, at_session_limit="refuse_login"
        )
        rotated, added = await act_beside(site, client, app, rotate, post="/cart")
        after = await client.get("/state")

    assert (added.status_code, rotated.status_code) == (200, 200)
    assert after.json()["data"] == {"user_id": "alice", "cart": ["pear"], "confirmed": True}
    assert len(await store.list_user("alice", time.time())) == 1


async def test_a_regenerate_after_a_parallel_import_is_a_rotation_of_that_session() -> None:
    """The import's login was announced by the request that stored it: moving that
    session to a new ID is a rotation, under the same public id."""
    seen: list[tuple[str, str | None, str]] = []

    async def hook(event: SessionEvent) -> None:
        seen.append((event.kind, event.user_id, event.session))

    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        settings = StarletteImport(SECRET, user_key="user_id")
        app = coatcheck_app(store, settings, events=[hook])
        await act_beside(site, client, app, lambda session: session.regenerate(), get="/state")

    assert [(kind, user) for kind, user, _ in seen] == [
        ("created", "alice"),
        ("logged_in", "alice"),
        ("rotated", "alice"),
    ]
    assert len({public_id for *_, public_id in seen}) == 1
    (record,) = await store.list_user("alice", time.time())
    assert record.public_id == seen[0][2]


async def test_a_refused_login_as_someone_else_leaves_a_parallel_imports_session() -> None:
    """Under refuse_login, a login as bob refused at the limit must not end alice's
    session, which a parallel request of the import stored."""
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        settings = StarletteImport(SECRET, user_key="user_id")
        app = coatcheck_app(
            store, settings, max_sessions_per_user=1, at_session_limit="refuse_login"
        )
        await create_session(store, user_id="bob")
        refused, _ = await act_beside(
            site, client, app, lambda session: session.login("bob"), get="/state"
        )
        after = await client.get("/state")

    assert refused.status_code == 403
    assert after.json()["user"] == "alice"
    assert len(await store.list_user("alice", time.time())) == 1


async def test_emptying_an_imported_session_keeps_what_a_parallel_request_added() -> None:
    """Only a logout ends the session a parallel request of the import stored: data
    removed is no logout, and that request's cart stays (the removal, made on a
    session this request never stored, is what gives way)."""
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"theme": "dark"})
        app = coatcheck_app(store, StarletteImport(SECRET))
        await act_beside(site, client, app, lambda session: session.pop("theme"), post="/cart")
        after = await client.get("/state")

    assert after.json()["data"]["cart"] == ["pear"]


@pytest.mark.parametrize("then", ["logout", "login-bob"])
async def test_ending_an_import_in_its_own_request_is_announced(then: str) -> None:
    """The session a parallel request of the import stored, and announced, ends with
    this request's logout (or login as someone else): that is announced too."""
    seen: list[tuple[str, str | None]] = []

    async def hook(event: SessionEvent) -> None:
        seen.append((event.kind, event.user_id))

    def end(session: Any) -> None:
        if then == "logout":
            session.logout()
        else:
            session.login("bob")

    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        settings = StarletteImport(SECRET, user_key="user_id")
        app = coatcheck_app(store, settings, events=[hook])
        # The read beside it stores alice's session, and announces it.
        await act_beside(site, client, app, end, get="/state")

    assert seen.count(("created", "alice")) == 1
    assert seen.count(("logged_out", "alice")) == 1
    assert await store.list_user("alice", time.time()) == []


async def test_a_logout_also_clears_an_old_cookie_set_again_mid_deploy() -> None:
    """A process of the old app may set its cookie again beside the new one; a logout
    on the new side must end both, or the next request adopts the old one."""
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        old_app = site.app
        await visit_before_the_switch(client, {"user_id": "alice"})
        site.app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"))
        await client.get("/state")
        site.app = old_app
        await visit_before_the_switch(client, {"user_id": "alice"})  # an old process again
        site.app = coatcheck_app(store, StarletteImport(SECRET, user_key="user_id"))
        response = await client.post("/logout")
        after = await client.get("/state")

    assert sorted(cookie.split(";")[0] for cookie in set_cookies(response)) == [
        f"{NEW_COOKIE}=",
        "session=null",
    ]
    assert not client.cookies
    assert after.json()["user"] is None


async def test_values_coatcheck_cannot_store_are_dropped_from_an_import(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starlette's JSON took them; kept, every save would fail and the old cookie would
    bring them back at every request."""
    site = Site()
    big, long_user = 2**70, "u" * 600
    data = {"user_id": long_user, "big": big, "nan": float("nan"), "cart": ["apple"]}
    async with browser(site) as client:
        await visit_before_the_switch(client, {"theme": "dark"})
        # Signed as Starlette signs: its json.dumps writes NaN, which httpx would not send.
        signed = TimestampSigner(SECRET).sign(b64encode(json.dumps(data).encode()))
        replace_cookie(client, "session", signed.decode())
        site.app = coatcheck_app(MemoryStore(), StarletteImport(SECRET, user_key="user_id"))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            first = await client.get("/state")
        again = await client.get("/state")

    assert first.status_code == again.status_code == 200
    # A user id login() refuses logs nobody in; it stays a value like any other.
    assert again.json() == {
        "user": None,
        "data": {"user_id": long_user, "cart": ["apple"]},
        "remember": False,
    }
    assert "key 'big' dropped" in caplog.text
    assert "key 'nan' dropped" in caplog.text
    assert set_cookies(again) == []


async def test_a_partitioned_old_cookie_is_cleared_as_partitioned() -> None:
    site = Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"theme": "dark"})
        site.app = coatcheck_app(MemoryStore(), StarletteImport(SECRET, partitioned=True))
        response = await client.get("/state")

    assert response.json()["data"] == {"theme": "dark"}
    cleared = [c for c in set_cookies(response) if c.startswith("session=null")]
    assert cleared == [
        "session=null; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/; Secure; Partitioned"
    ]


@pytest.mark.parametrize("then", ["logout", "login"])
async def test_ending_an_adopted_login_clears_the_cache_as_any_logout(then: str) -> None:
    site = Site()
    async with browser(site) as client:
        await visit_before_the_switch(client, {"user_id": "alice"})
        app = coatcheck_app(MemoryStore(), StarletteImport(SECRET, user_key="user_id"))

        @app.post("/login-bob")
        async def login_bob(session: SessionDep) -> dict[str, bool]:
            session.login("bob")
            return {"ok": True}

        site.app = app
        response = await client.post("/logout" if then == "logout" else "/login-bob")

    assert response.status_code == 200
    assert response.headers["clear-site-data"] == '"cache"'


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"secret_key": ""}, "secret_key"),
        ({"secret_key": SECRET, "cookie_name": "bad name"}, "not a valid cookie name"),
        ({"secret_key": SECRET, "max_age": 0}, "max_age"),
        ({"secret_key": SECRET, "until": datetime(2027, 1, 1)}, "aware datetime"),
        ({"secret_key": SECRET, "path": "/a;b"}, "unsafe characters"),
    ],
)
def test_bad_settings_fail_at_start_up(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        StarletteImport(**settings)


def test_without_itsdangerous_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "itsdangerous", None)
    config = SessionConfig(starlette_import=StarletteImport(SECRET))
    with pytest.raises(MissingDependencyError, match=r"coatcheck\[starlette-import\]"):
        SessionMiddleware(FastAPI(), store=MemoryStore(), config=config)


def _with_login(store: Store) -> FastAPI:
    app = coatcheck_app(store, StarletteImport(SECRET))

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, bool]:
        session.login("alice")
        return {"ok": True}

    return app


async def _late_cart(site: Site, old: str) -> httpx.Response:
    """A request of the first page, sent with the old cookie alone before the browser
    had the new one."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=site),
        base_url=TEST_BASE_URL,
        headers={**SAME_ORIGIN, "cookie": f"session={old}"},
    ) as late_page:
        return await late_page.post("/cart")


@pytest.mark.parametrize("imported_by", ["a page", "the login"])
async def test_a_late_request_with_the_old_cookie_after_a_login_is_not_imported_again(
    imported_by: str,
) -> None:
    """The old cookie was imported (by a page's first request, or by the login request
    itself, when nothing was ever stored under the import's ID) and the user logged in.
    Another request of that page, sent with the old cookie before the login's answer,
    must not import it again: its session would take the ID the login retired, and its
    cookie would replace the login's. Its write is refused, as any late request's is."""
    store, site = MemoryStore(), Site()
    async with browser(site) as client:
        old = await visit_before_the_switch(client, {"cart": ["apple"]})
        site.app = _with_login(store)
        if imported_by == "a page":
            assert (await client.get("/state")).json()["data"] == {"cart": ["apple"]}
        assert (await client.post("/login")).status_code == 200
        late = await _late_cart(site, old)
        assert late.status_code == 409, late.text
        assert set_cookies(late) == []
        state = (await client.get("/state")).json()
    assert state["user"] == "alice"
    assert state["data"] == {"cart": ["apple"]}
    assert await store.count(time.time()) == 1
