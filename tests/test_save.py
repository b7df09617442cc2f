"""``await session.save()``: changes stored before the response, or while a websocket or a
streaming body runs, with failures raised where the app can handle them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from coatcheck import (
    MemoryStore,
    ResponseStartedError,
    SerializationError,
    SessionConfig,
    SessionEndedError,
    SessionLimitError,
    SessionMiddleware,
    SessionNotLoadedError,
    SessionTooLargeError,
    SQLiteStore,
    Store,
)
from coatcheck._ids import store_key
from coatcheck.fastapi import SessionDep
from coatcheck.session import Session
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import TEST_BASE_URL, TEST_WS_BASE_URL, FakeClock

from .conftest import client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
CONFIG = SessionConfig(max_session_bytes=2048, secret_keys=["k" * 32], token_header="X-Token")


class Cart(BaseModel):
    items: list[str] = []


def make_app(store: Store, config: SessionConfig = CONFIG) -> FastAPI:
    app = FastAPI()
    now = config.clock

    def stored_under(request: Request) -> str:
        return store_key(request.cookies[config.cookie.name])

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, Any]:
        return {"user": session.user_id, "data": dict(session)}

    @app.post("/early")
    async def early(session: SessionDep) -> dict[str, Any]:
        """Stored by save(), before the response: the store has it already."""
        session["cart"] = ["apple"]
        await session.save()
        return {"is_new": session.is_new, "count": await store.count(now())}

    @app.post("/early-then-more")
    async def early_then_more(session: SessionDep) -> dict[str, Any]:
        session["cart"] = ["apple"]
        await session.save()
        session["cart"].append("pear")  # in place, after the save
        return {}

    @app.post("/early-then-more-by-reference")
    async def early_then_more_by_reference(session: SessionDep) -> dict[str, Any]:
        """The handler's own objects, set or returned by modify(), changed after the save
        without being read from the session again."""
        cart, notes = ["apple"], session.modify("notes", lambda notes: {**notes}, {})
        session["cart"] = cart
        await session.save()
        cart.append("pear")
        notes["gift"] = "wrap"
        return {}

    @app.post("/early-then-login")
    async def early_then_login(session: SessionDep) -> dict[str, Any]:
        session["cart"] = ["apple"]
        await session.save()
        session.login("alice")
        return {}

    @app.post("/login-then-save")
    async def login_then_save(session: SessionDep) -> dict[str, Any]:
        session.login("alice")
        await session.save()
        devices = await store.list_user("alice", now())
        return {"listed": session.public_id in {record.public_id for record in devices}}

    @app.post("/typed-early")
    async def typed_early(session: SessionDep) -> dict[str, Any]:
        """A typed value changed in place is stored by save(), like any change."""
        session.login("alice")
        cart = session.model("cart", Cart)
        cart.items.append("typed")
        await session.save()
        (record,) = await store.list_user("alice", now())
        return {"stored": json.loads(record.data)}

    @app.post("/login-at-limit")
    async def login_at_limit(session: SessionDep, catch: bool = True) -> dict[str, Any]:
        session.login("alice")
        try:
            await session.save()
        except SessionLimitError:
            if not catch:
                raise
            session["tried"] = True  # not stored: the refused login is not tried again
            return {"refused": True}
        return {"refused": False}

    @app.post("/save-unchanged")
    async def save_unchanged(session: SessionDep) -> dict[str, Any]:
        await session.save()
        return {"data": dict(session)}

    @app.post("/too-big")
    async def too_big(session: SessionDep, catch: bool = True) -> Any:
        session["blob"] = "x" * 4096
        try:
            await session.save()
        except SessionTooLargeError as exc:
            if not catch:
                raise
            del session["blob"]
            return {"refused": str(exc)}
        return {"refused": None}

    @app.post("/login-save-then-too-big")
    async def login_save_then_too_big(session: SessionDep) -> dict[str, Any]:
        session.login("alice")
        await session.save()  # stored under a new ID; the old one is gone
        session["blob"] = "x" * 4096  # refused when the response starts: a 413
        return {}

    @app.post("/unencodable")
    async def unencodable(session: SessionDep) -> dict[str, Any]:
        session["when"] = object()
        try:
            await session.save()
        except SerializationError as exc:
            del session["when"]
            return {"refused": str(exc)}
        return {"refused": None}

    @app.post("/ended-meanwhile")
    async def ended_meanwhile(session: SessionDep, catch: bool = True) -> dict[str, Any]:
        session["seen"] = True
        await store.delete_user("alice")  # "log out everywhere", from a parallel request
        try:
            await session.save()
        except SessionEndedError:
            if not catch:
                raise
            session["after"] = True  # must not bring the session back
            try:
                await session.save()
            except SessionEndedError:
                return {"ended": "twice"}
        return {"ended": None}

    @app.post("/refresh-ended")
    async def refresh_ended(session: SessionDep, catch: bool = False) -> dict[str, Any]:
        """Nothing changed, but the sliding expiry is due: the save finds the session gone."""
        await store.delete_user("alice")
        try:
            await session.save()
        except SessionEndedError:
            if not catch:
                raise
            session["cart"] = ["paid"]  # not stored: the ended session stays ended
            await session.save()  # says so again
        return {"user": session.user_id}

    @app.get("/stream")
    async def stream(request: Request, session: SessionDep) -> StreamingResponse:
        key = stored_under(request)

        async def body() -> AsyncIterator[bytes]:
            yield b"started;"
            session["cart"].append("pear")
            try:
                await session.save()
            except ResponseStartedError as exc:
                yield str(exc).encode()
                return
            record = await store.load(key, now())
            yield b"nothing stored" if record is None else record.data

        return StreamingResponse(body())

    @app.get("/stream-unchanged")
    async def stream_unchanged(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"started;"
            await session.save()
            yield json.dumps(dict(session)).encode()

        return StreamingResponse(body())

    @app.get("/stream-new")
    async def stream_new(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"started;"
            session["cart"] = ["pear"]
            try:
                await session.save()
            except ResponseStartedError as exc:
                yield str(exc).encode()

        return StreamingResponse(body())

    @app.get("/stream-typed-new")
    async def stream_typed_new(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"started;"
            session.model("cart", Cart).items.append("pear")  # nothing stored to carry it
            try:
                await session.save()
            except ResponseStartedError as exc:
                yield str(exc).encode()

        return StreamingResponse(body())

    @app.websocket("/ws")
    async def chat(websocket: WebSocket) -> None:
        session: Session = await websocket.scope["session"].load()
        await websocket.accept()
        async for item in websocket.iter_text():
            session["cart"] = [*session.get("cart", []), item]
            try:
                await session.save()
            except ResponseStartedError as exc:
                await websocket.send_text(f"refused: {exc}")
            else:
                await websocket.send_text("saved")

    @app.websocket("/ws-before-accept")
    async def before_accept(websocket: WebSocket) -> None:
        session: Session = await websocket.scope["session"].load()
        session["greeted"] = True
        await session.save()
        await websocket.accept()
        await websocket.close()

    @app.websocket("/ws-refused")
    async def refused(websocket: WebSocket, saved: bool = False) -> None:
        """Signs in, then refuses the socket with an HTTP response."""
        session: Session = await websocket.scope["session"].load()
        session.login("alice")
        session.flash("Use the page, not the socket.")
        if saved:
            await session.save()
        await websocket.send_denial_response(JSONResponse({"detail": "no"}, status_code=403))

    app.add_middleware(SessionMiddleware, store=store, config=config)
    return app


def set_cookies(response: httpx.Response) -> list[str]:
    return [value for name, value in response.headers.multi_items() if name == "set-cookie"]


def ticket(response: httpx.Response) -> str:
    (cookie,) = set_cookies(response)
    return cookie.split(";", 1)[0].split("=", 1)[1]


async def state(client: httpx.AsyncClient, sid: str) -> Any:
    return (await client.get("/state", headers={"cookie": f"{NAME}={sid}"})).json()


async def test_save_stores_before_the_response_and_the_cookie_goes_with_it(
    any_store: Store,
) -> None:
    async with client_for(make_app(any_store)) as client:
        response = await client.post("/early")
        assert response.json() == {"is_new": False, "count": 1}
        assert response.headers["cache-control"] == "no-store"
        assert await state(client, ticket(response)) == {"user": None, "data": {"cart": ["apple"]}}


async def test_changes_after_save_are_saved_too_under_one_cookie(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        response = await client.post("/early-then-more")
        sid = ticket(response)  # exactly one Set-Cookie
        assert await state(client, sid) == {"user": None, "data": {"cart": ["apple", "pear"]}}
    record = await any_store.load(store_key(sid), CONFIG.clock())
    assert record is not None
    assert record.version == 2  # the save, then the commit of the change made after it


async def test_objects_the_handler_set_and_changes_after_save_are_saved_too(
    any_store: Store,
) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = ticket(await client.post("/early-then-more-by-reference"))
        assert await state(client, sid) == {
            "user": None,
            "data": {"cart": ["apple", "pear"], "notes": {"gift": "wrap"}},
        }


async def test_a_login_after_save_sends_only_the_rotated_cookie(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = ticket(await client.post("/early-then-login"))
        assert await state(client, sid) == {"user": "alice", "data": {"cart": ["apple"]}}
    # The record save() wrote under the first ID was replaced by the login's.
    assert await any_store.count(CONFIG.clock()) == 1


async def test_a_saved_login_is_in_the_device_list_before_the_response(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        response = await client.post("/login-then-save")
        assert response.json() == {"listed": True}
        assert (await state(client, ticket(response)))["user"] == "alice"


async def test_a_typed_value_changed_in_place_is_stored_by_save() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        response = await client.post("/typed-early")
        assert response.json() == {"stored": {"cart": {"items": ["typed"]}}}
        assert await state(client, ticket(response)) == {
            "user": "alice",
            "data": {"cart": {"items": ["typed"]}},
        }


async def test_saving_an_unchanged_session_writes_nothing(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = ticket(await client.post("/early"))
        before = await any_store.load(store_key(sid), CONFIG.clock())
        response = await client.post("/save-unchanged", headers={"cookie": f"{NAME}={sid}"})
        assert response.json() == {"data": {"cart": ["apple"]}}
        assert set_cookies(response) == []
    assert await any_store.load(store_key(sid), CONFIG.clock()) == before


async def test_a_session_too_big_is_raised_at_save_and_the_stored_one_stands(
    any_store: Store,
) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = ticket(await client.post("/early"))
        before = await any_store.load(store_key(sid), CONFIG.clock())
        cookie = {"cookie": f"{NAME}={sid}"}
        handled = await client.post("/too-big", headers=cookie)
        assert handled.status_code == 200
        assert "over the limit of 2048 bytes" in handled.json()["refused"]
        uncaught = await client.post("/too-big?catch=false", headers=cookie)
        assert uncaught.status_code == 413
        assert set_cookies(uncaught) == []
    assert await any_store.load(store_key(sid), CONFIG.clock()) == before


async def test_an_error_answered_after_a_save_still_hands_over_its_new_cookie(
    any_store: Store,
) -> None:
    """The save before did move the session to a new ID, and deleted the old one: the
    413 carries the new cookie, or the browser would hold a ticket to nothing."""
    async with client_for(make_app(any_store)) as client:
        sid = ticket(await client.post("/early"))
        refused = await client.post("/login-save-then-too-big", headers={"cookie": f"{NAME}={sid}"})
        assert refused.status_code == 413
        assert refused.headers["cache-control"] == "no-store"
        assert await state(client, ticket(refused)) == {
            "user": "alice",
            "data": {"cart": ["apple"]},
        }


async def test_a_value_json_cannot_hold_is_named_at_save() -> None:
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        sid = ticket(await client.post("/early"))
        response = await client.post("/unencodable", headers={"cookie": f"{NAME}={sid}"})
        assert "'when'" in response.json()["refused"]
        assert await state(client, sid) == {"user": None, "data": {"cart": ["apple"]}}


async def test_a_session_ended_meanwhile_is_raised_at_save_and_stays_ended(
    any_store: Store,
) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = ticket(await client.post("/login-then-save"))
        cookie = {"cookie": f"{NAME}={sid}"}
        response = await client.post("/ended-meanwhile", headers=cookie)
        assert response.json() == {"ended": "twice"}
        assert set_cookies(response) == []
        assert await state(client, sid) == {"user": None, "data": {}}
        assert await any_store.count(CONFIG.clock()) == 0

        sid = ticket(await client.post("/login-then-save"))
        response = await client.post(
            "/ended-meanwhile?catch=false", headers={"cookie": f"{NAME}={sid}"}
        )
        assert response.status_code == 409
        assert "nothing was saved" in response.json()["detail"]
    assert await any_store.count(CONFIG.clock()) == 0


async def test_a_due_refresh_finding_the_session_ended_does_not_revive_it(
    any_store: Store, clock: FakeClock
) -> None:
    config = SessionConfig(clock=clock, secret_keys=["k" * 32])
    async with client_for(make_app(any_store, config)) as client:
        sid = ticket(await client.post("/login-then-save"))
        clock.advance(config.normal.idle * config.refresh_fraction + 1)
        uncaught = await client.post("/refresh-ended", headers={"cookie": f"{NAME}={sid}"})
        # The handler learns it, so it cannot go on as if later changes were stored.
        assert uncaught.status_code == 409
        assert set_cookies(uncaught) == []
        assert await state(client, sid) == {"user": None, "data": {}}
        sid = ticket(await client.post("/login-then-save"))
        clock.advance(config.normal.idle * config.refresh_fraction + 1)
        cookie = {"cookie": f"{NAME}={sid}"}
        caught = await client.post("/refresh-ended?catch=true", headers=cookie)
        assert caught.status_code == 409  # the second save() raised it again
        assert set_cookies(caught) == []
        assert await state(client, sid) == {"user": None, "data": {}}
    assert await any_store.list_user("alice", clock()) == []


async def test_a_login_refused_at_save_is_raised_and_not_tried_again(any_store: Store) -> None:
    config = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    async with client_for(make_app(any_store, config)) as client:
        first = ticket(await client.post("/login-then-save"))
        handled = await client.post("/login-at-limit")
        assert handled.json() == {"refused": True}
        assert set_cookies(handled) == []
        uncaught = await client.post("/login-at-limit?catch=false")
        assert uncaught.status_code == 403
        assert "at most 1" in uncaught.json()["detail"]
        assert (await state(client, first))["user"] == "alice"
    (kept,) = await any_store.list_user("alice", config.clock())
    assert kept.key == store_key(first)
    assert await any_store.count(config.clock()) == 1


async def test_save_in_a_streaming_body_stores_at_once(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        sid = ticket(await client.post("/early"))
        response = await client.get("/stream", headers={"cookie": f"{NAME}={sid}"})
        head, stored = response.content.split(b";", 1)
        assert head == b"started"
        assert b"pear" in stored  # read back from the store while the body still ran
        assert await state(client, sid) == {"user": None, "data": {"cart": ["apple", "pear"]}}


@pytest.mark.parametrize("path", ["/stream-new", "/stream-typed-new"])
async def test_a_new_session_cannot_be_saved_once_the_response_started(path: str) -> None:
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        response = await client.get(path)
        assert b"cannot be saved" in response.content
        assert b"new cookie" in response.content
        assert set_cookies(response) == []
    assert await store.count(CONFIG.clock()) == 0


async def test_the_cookie_store_saves_before_the_response_but_not_after() -> None:
    async with client_for(make_app(CookieStore())) as client:
        first = await client.post("/early-then-more")
        sid = ticket(first)  # one sealed cookie: the one with both items
        assert await state(client, sid) == {"user": None, "data": {"cart": ["apple", "pear"]}}
        cookie = {"cookie": f"{NAME}={sid}"}
        streamed = await client.get("/stream", headers=cookie)
        assert b"cannot be saved: it would have to be sealed in a new cookie" in streamed.content
        assert await state(client, sid) == {"user": None, "data": {"cart": ["apple", "pear"]}}
        unchanged = await client.get("/stream-unchanged", headers=cookie)
        assert unchanged.content == b'started;{"cart": ["apple", "pear"]}'


async def test_a_header_client_gets_one_ticket_after_save_and_login() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        response = await client.post("/early-then-login", headers={"x-token": "new"})
        (token,) = response.headers.get_list("x-token")
        assert set_cookies(response) == []
        state = await client.get("/state", headers={"x-token": token})
        assert state.json() == {"user": "alice", "data": {"cart": ["apple"]}}


def test_a_websocket_saves_each_change_while_it_stays_open(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sessions.db")
    with TestClient(make_app(store), base_url=TEST_BASE_URL) as client:
        sid = client.post("/early", headers={"sec-fetch-site": "same-origin"}).cookies[NAME]
        cookie = {"cookie": f"{NAME}={sid}"}
        with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers=cookie) as socket:
            socket.send_text("pear")
            assert socket.receive_text() == "saved"
            # A request made while the socket is still open sees the item.
            seen = client.get("/state", headers=cookie).json()
            assert seen["data"] == {"cart": ["apple", "pear"]}
            socket.send_text("plum")
            assert socket.receive_text() == "saved"
            assert client.get("/state", headers=cookie).json()["data"]["cart"][-1] == "plum"


def test_a_websocket_without_a_stored_session_is_told_after_accepting() -> None:
    store = MemoryStore()
    with (
        TestClient(make_app(store), base_url=TEST_BASE_URL) as client,
        client.websocket_connect(f"{TEST_WS_BASE_URL}/ws") as socket,
    ):
        socket.send_text("pear")
        assert socket.receive_text().startswith("refused: the response has started")


def test_a_websocket_saved_before_accepting_gets_its_cookie_in_the_handshake() -> None:
    store = MemoryStore()
    with TestClient(make_app(store), base_url=TEST_BASE_URL) as client:
        with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws-before-accept") as socket:
            headers = dict(socket.extra_headers or [])
        cookie = headers[b"set-cookie"].decode()
        sid = cookie.split(";", 1)[0].split("=", 1)[1]
        seen = client.get("/state", headers={"cookie": f"{NAME}={sid}"}).json()
        assert seen["data"] == {"greeted": True}


@pytest.mark.parametrize("saved", [False, True])
def test_a_websocket_refused_with_an_http_response_stores_and_hands_over_its_session(
    saved: bool,
) -> None:
    """A denial response starts a response like any other: the change is stored, and
    the new cookie (of the commit, or of an early save) goes with it."""
    from starlette.testclient import WebSocketDenialResponse

    store = MemoryStore()
    with TestClient(make_app(store), base_url=TEST_BASE_URL) as client:
        with (
            pytest.raises(WebSocketDenialResponse) as caught,
            client.websocket_connect(f"{TEST_WS_BASE_URL}/ws-refused?saved={saved}"),
        ):
            pass  # pragma: no cover - refused before this
        denial = caught.value
        assert denial.status_code == 403
        assert denial.headers["cache-control"] == "no-store"
        assert denial.headers["vary"] == "Cookie, x-token"
        sid = denial.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        seen = client.get("/state", headers={"cookie": f"{NAME}={sid}"}).json()
        assert seen["user"] == "alice"
        (flashed,) = seen["data"]["_flashes"]
        assert flashed["message"] == "Use the page, not the socket."


@pytest.mark.parametrize("method", ["save", "reload"])
def test_save_or_reload_before_load_says_how_to_load(method: str) -> None:
    async def handler(request: Request) -> JSONResponse:
        try:
            await getattr(request.scope["session"], method)()
        except SessionNotLoadedError as exc:
            return JSONResponse({"error": str(exc)})
        return JSONResponse({"error": None})

    app = FastAPI()
    app.add_api_route("/", handler)
    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=CONFIG)
    with TestClient(app, base_url=TEST_BASE_URL) as client:
        assert "the session is loaded lazily" in client.get("/").json()["error"]
