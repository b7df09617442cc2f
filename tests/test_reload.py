"""``await session.reload()``: a request that lives long sees what others saved meanwhile.

"Others" are real requests to the same app, made from inside the handler while it holds
its session, on every store; and a websocket that stays open while a page fills the cart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from coatcheck import (
    NotSupportedError,
    SessionConfig,
    SessionEndedError,
    SessionMiddleware,
    SQLiteStore,
    Store,
)
from coatcheck.fastapi import SessionDep
from coatcheck.session import Session
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, TEST_WS_BASE_URL

from .conftest import client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
CONFIG = SessionConfig(secret_keys=["k" * 32])
OTHER_TAB = {"add-pear": "/add/pear", "login": "/login", "logout": "/logout"}


def make_app(store: Store, config: SessionConfig = CONFIG) -> FastAPI:
    app = FastAPI()

    def other_tab(cookie: str) -> httpx.AsyncClient:
        """Another request of the same browser, served by this app while a handler waits."""
        return client_for(app, headers={"cookie": cookie})

    @app.post("/add/{item}")
    async def add(item: str, session: SessionDep) -> dict[str, Any]:
        session["cart"] = [*session.get("cart", []), item]
        return {"cart": session["cart"]}

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, bool]:
        session.login("alice")
        return {"ok": True}

    @app.post("/logout")
    async def logout(session: SessionDep) -> dict[str, bool]:
        session.logout()
        return {"ok": True}

    @app.post("/meanwhile/{action}")
    async def meanwhile(action: str, session: SessionDep, cookie: str = "") -> dict[str, Any]:
        """Load, let another request do ``action`` meanwhile, then reload and change more."""
        before = session.get("cart")
        async with other_tab(f"{NAME}={cookie}") as tab:
            assert (await tab.post(OTHER_TAB[action])).status_code == 200
        await session.reload()
        session["seen"] = True  # saved on top of what was reloaded
        return {"before": before, "after": session.get("cart"), "user": session.user_id}

    @app.post("/caught/{action}")
    async def caught(action: str, session: SessionDep, cookie: str = "") -> dict[str, Any]:
        """As above, but the app catches the ended session and goes on changing it."""
        async with other_tab(f"{NAME}={cookie}") as tab:
            assert (await tab.post(OTHER_TAB[action])).status_code == 200
        with pytest.raises(SessionEndedError):
            await session.reload()
        # Even a change that needs no stored base (a login as someone else replaces the
        # record outright) is not stored: this request found its session ended.
        session["cart"] = ["resurrected?"]
        session.login("bob")
        with pytest.raises(SessionEndedError):
            await session.save()
        return {"ok": True}

    @app.post("/unsaved")
    async def unsaved(session: SessionDep) -> dict[str, Any]:
        session["cart"].append("fig")  # changed in place, not saved
        with pytest.raises(RuntimeError, match="save"):
            await session.reload()
        await session.save()
        await session.reload()  # saved: nothing to lose now
        return {"cart": session["cart"]}

    @app.post("/log/{count}")
    async def log(count: int, session: SessionDep, cookie: str = "") -> dict[str, Any]:
        """A long-lived loop: change the list it holds, save, and reload, as a stream
        that also takes what other tabs store would."""
        history = session.setdefault("history", [])
        for number in range(count):
            history.append(number)
            await session.save()
            if number == 1:
                async with other_tab(f"{NAME}={cookie}") as tab:
                    assert (await tab.post("/add/pear")).status_code == 200
            await session.reload()
        return {"history": history, "cart": session["cart"]}

    @app.post("/fresh")
    async def fresh(session: SessionDep) -> dict[str, Any]:
        await session.reload()  # nothing stored: nothing newer can exist
        session["cart"] = ["kiwi"]
        with pytest.raises(RuntimeError):
            await session.reload()  # not stored yet: it would be dropped
        await session.save()  # a new session: its cookie goes out with the response
        await session.reload()
        return {"cart": session["cart"]}

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, Any]:
        return {"user": session.user_id, "data": dict(session)}

    @app.websocket("/ws")
    async def watch(websocket: WebSocket) -> None:
        session: Session = await websocket.scope["session"].load()
        await websocket.accept()
        async for _ in websocket.iter_text():
            await session.reload()
            await websocket.send_json(session.get("cart"))

    app.add_middleware(SessionMiddleware, store=store, config=config)
    return app


def ticket_of(response: httpx.Response) -> str:
    value = response.cookies.get(NAME)
    assert value, response.headers.get_list("set-cookie")
    return value


async def started(client: httpx.AsyncClient) -> str:
    """A stored session holding a cart with an apple; its cookie value."""
    return ticket_of(await client.post("/add/apple"))


async def test_a_reload_brings_in_what_another_request_saved(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = await started(client)
        cookie = {"cookie": f"{NAME}={sid}"}
        response = await client.post(f"/meanwhile/add-pear?cookie={sid}", headers=cookie)
        assert response.status_code == 200
        assert response.json() == {"before": ["apple"], "after": ["apple", "pear"], "user": None}
        assert "set-cookie" not in response.headers  # the same ticket all along
        state = await client.get("/state", headers=cookie)
    # The change made after the reload is stored on top of the other request's.
    assert state.json()["data"] == {"cart": ["apple", "pear"], "seen": True}


async def test_a_reload_sees_a_login_made_meanwhile_as_an_ended_session(
    any_store: Store,
) -> None:
    """A login elsewhere gives that browser a new ID: the old one, this request's, is gone."""
    async with client_for(make_app(any_store)) as client:
        sid = await started(client)
        cookie = {"cookie": f"{NAME}={sid}"}
        response = await client.post(f"/meanwhile/login?cookie={sid}", headers=cookie)
        assert response.status_code == 409
        assert "ended or moved by another request" in response.json()["detail"]
        assert "set-cookie" not in response.headers
        # Nothing of this request brought the old session back.
        assert (await client.get("/state", headers=cookie)).json() == {"user": None, "data": {}}


async def test_a_reload_after_a_logout_elsewhere_stores_nothing_more(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = ticket_of(await client.post("/login"))
        cookie = {"cookie": f"{NAME}={sid}"}
        response = await client.post(f"/meanwhile/logout?cookie={sid}", headers=cookie)
        assert response.status_code == 409
        assert (await client.get("/state", headers=cookie)).json() == {"user": None, "data": {}}
    assert await any_store.count(CONFIG.clock()) == 0


async def test_a_session_found_ended_by_a_reload_stays_ended_when_the_app_goes_on(
    any_store: Store,
) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = ticket_of(await client.post("/login"))
        cookie = {"cookie": f"{NAME}={sid}"}
        response = await client.post(f"/caught/logout?cookie={sid}", headers=cookie)
        assert response.json() == {"ok": True}
        assert "set-cookie" not in response.headers
        assert (await client.get("/state", headers=cookie)).json() == {"user": None, "data": {}}
    assert await any_store.count(CONFIG.clock()) == 0


async def test_unsaved_changes_are_not_dropped_by_a_reload(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = await started(client)
        cookie = {"cookie": f"{NAME}={sid}"}
        response = await client.post("/unsaved", headers=cookie)
        assert response.json() == {"cart": ["apple", "fig"]}
        assert (await client.get("/state", headers=cookie)).json()["data"] == {
            "cart": ["apple", "fig"]
        }


async def test_a_list_held_across_reloads_stays_the_sessions(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = await started(client)
        cookie = {"cookie": f"{NAME}={sid}"}
        response = await client.post("/log/3", params={"cookie": sid}, headers=cookie)
        assert response.json() == {"history": [0, 1, 2], "cart": ["apple", "pear"]}
        assert (await client.get("/state", headers=cookie)).json()["data"] == {
            "cart": ["apple", "pear"],
            "history": [0, 1, 2],
        }


async def test_a_new_session_reloads_once_saved_and_keeps_its_cookie(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        response = await client.post("/fresh")
        assert response.json() == {"cart": ["kiwi"]}
        assert len(response.headers.get_list("set-cookie")) == 1
        cookie = {"cookie": f"{NAME}={ticket_of(response)}"}
        assert (await client.get("/state", headers=cookie)).json()["data"] == {"cart": ["kiwi"]}


async def test_the_cookie_store_has_nothing_to_reload() -> None:
    app = make_app(CookieStore())

    @app.post("/try")
    async def attempt(session: SessionDep) -> dict[str, str]:
        with pytest.raises(NotSupportedError, match="cookie store"):
            await session.reload()
        return {"ok": "refused"}

    # The route is added after the middleware's app was built: build a fresh stack.
    app.middleware_stack = app.build_middleware_stack()
    async with client_for(app) as client:
        assert (await client.post("/try")).json() == {"ok": "refused"}


def test_an_open_websocket_sees_the_cart_filled_in_another_tab(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sessions.db")
    with TestClient(make_app(store), base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}) as client:
        sid = client.post("/add/apple").cookies[NAME]
        cookie = {"cookie": f"{NAME}={sid}"}
        with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers=cookie) as socket:
            socket.send_text("cart?")
            assert socket.receive_json() == ["apple"]
            client.post("/add/pear", headers=cookie)  # another tab, while the socket is open
            socket.send_text("cart?")
            assert socket.receive_json() == ["apple", "pear"]
