"""Changes made after the response started: stored when the app returns, never lost in
silence, and never a new ID the browser could not receive."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from coatcheck import (
    MemoryStore,
    ResponseStartedError,
    SessionConfig,
    SessionMiddleware,
    SessionRecord,
    StoreUnavailableError,
)
from coatcheck._ids import store_key
from coatcheck.fastapi import SessionDep, get_session
from coatcheck.session import Session
from coatcheck.testing import (
    SAME_ORIGIN,
    TEST_BASE_URL,
    TEST_WS_BASE_URL,
    FakeClock,
    create_session,
    read_session,
)

from .conftest import client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"


async def _tracked(session: SessionDep) -> AsyncIterator[Session]:
    yield session
    session["teardown"] = True  # FastAPI runs this after the response has gone out


def make_app(store: MemoryStore, clock: FakeClock) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, str]:
        session.login("alice")
        session["cart"] = ["apple"]
        return {}

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, object]:
        return {"user": session.user_id, "data": dict(session)}

    @app.get("/stream")
    async def stream(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"working..."
            session["cart"].append("pear")
            session["streamed"] = True
            yield b"done"

        return StreamingResponse(body())

    @app.get("/stream-in-place")
    async def stream_in_place(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"working..."
            session["cart"].append("pear")  # in place only: no assignment marks it
            yield b"done"

        return StreamingResponse(body())

    @app.get("/stream-loads-late")
    async def stream_loads_late() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"working..."
            session = await get_session()  # first asked for after the body's last part
            session["cart"].append("pear")

        return StreamingResponse(body())

    @app.get("/stream-note")
    async def stream_note(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"working..."
            session["note"] = "streamed"

        return StreamingResponse(body())

    @app.get("/background")
    async def background(session: SessionDep, tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(session.__setitem__, "background", True)
        return {}

    @app.get("/teardown")
    async def teardown(session: Annotated[Session, Depends(_tracked)]) -> dict[str, str]:
        return {}

    @app.get("/late-login")
    async def late_login(session: SessionDep, tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(session.login, "mallory")
        return {}

    @app.get("/late-logout")
    async def late_logout(session: SessionDep, tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(session.logout)
        return {}

    @app.get("/late-logout-then-note")
    async def late_logout_then_note(session: SessionDep, tasks: BackgroundTasks) -> dict[str, str]:
        def leave() -> None:
            session.logout()
            session["note"] = "logged out"

        tasks.add_task(leave)
        return {}

    @app.get("/ended-meanwhile")
    async def ended_meanwhile(session: SessionDep, tasks: BackgroundTasks) -> dict[str, str]:
        async def late() -> None:
            await app.state.end_elsewhere()
            session["late"] = True

        tasks.add_task(late)
        return {}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, session: SessionDep) -> None:
        await websocket.accept()
        action = await websocket.receive_text()
        if action == "login":
            try:
                session.login("mallory")
            except ResponseStartedError as exc:
                await websocket.send_text(f"refused: {exc}")
        else:
            session["ws"] = action
            await websocket.send_text("stored")
        await websocket.close()

    app.add_middleware(SessionMiddleware, store=store, config=SessionConfig(clock=clock))
    return app


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def app(store: MemoryStore, clock: FakeClock) -> FastAPI:
    return make_app(store, clock)


def cookie(sid: str) -> dict[str, str]:
    return {"cookie": f"{NAME}={sid}"}


async def logged_in(client: httpx.AsyncClient) -> str:
    response = await client.post("/login")
    return response.cookies[NAME]


async def state(client: httpx.AsyncClient, sid: str) -> dict[str, object]:
    response = await client.get("/state", headers=cookie(sid))
    result: dict[str, object] = response.json()
    return result


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/stream", {"cart": ["apple", "pear"], "streamed": True}),
        ("/stream-in-place", {"cart": ["apple", "pear"]}),
        ("/background", {"cart": ["apple"], "background": True}),
        ("/teardown", {"cart": ["apple"], "teardown": True}),
    ],
)
async def test_changes_after_the_response_started_are_stored(
    app: FastAPI, path: str, expected: dict[str, object]
) -> None:
    async with client_for(app) as client:
        sid = await logged_in(client)
        response = await client.get(path, headers=cookie(sid))
        assert response.status_code == 200
        assert "set-cookie" not in response.headers
        assert await state(client, sid) == {"user": "alice", "data": expected}


@pytest.mark.parametrize("path", ["/stream", "/stream-in-place", "/stream-loads-late"])
async def test_a_streamed_change_is_stored_before_the_last_part_goes_out(
    app: FastAPI, store: MemoryStore, path: str
) -> None:
    """A client that has read the whole body, and sends its next request at once, must
    find the change: stored when the app returned, it could come too late."""
    async with client_for(app) as client:
        sid = await logged_in(client)
    stored_at_end: list[SessionRecord | None] = []
    requested, done = False, asyncio.Event()

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the client stays until the whole response is in
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            stored_at_end.append(await store.load(store_key(sid), time.time()))
            done.set()

    headers = [(b"cookie", f"{NAME}={sid}".encode()), (b"host", b"testserver")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
    }
    await app(scope, receive, send)
    [record] = stored_at_end
    assert record is not None
    assert b"pear" in record.data


async def test_a_new_id_after_the_response_started_is_refused(
    app: FastAPI, store: MemoryStore, clock: FakeClock
) -> None:
    async with client_for(app) as client:
        sid = await logged_in(client)
        with pytest.raises(ResponseStartedError, match="before responding"):
            await client.get("/late-login", headers=cookie(sid))
        # The browser's cookie still works, for the same user: nothing moved.
        assert await state(client, sid) == {"user": "alice", "data": {"cart": ["apple"]}}
        assert await store.count(clock()) == 1


async def test_a_logout_after_the_response_started_still_ends_the_session(
    app: FastAPI, store: MemoryStore, clock: FakeClock
) -> None:
    async with client_for(app) as client:
        sid = await logged_in(client)
        response = await client.get("/late-logout", headers=cookie(sid))
        assert response.status_code == 200
        assert await store.load(store_key(sid), clock()) is None
        assert await state(client, sid) == {"user": None, "data": {}}


async def test_data_after_a_late_logout_leaves_no_record_behind(
    app: FastAPI, store: MemoryStore, clock: FakeClock
) -> None:
    """A new record would need a cookie the browser can no longer get: nobody could reach it."""
    async with client_for(app) as client:
        sid = await logged_in(client)
        response = await client.get("/late-logout-then-note", headers=cookie(sid))
        assert response.status_code == 200
        assert "set-cookie" not in response.headers
        assert await state(client, sid) == {"user": None, "data": {}}
    assert await store.count(clock()) == 0


async def test_late_changes_to_a_session_ended_meanwhile_are_dropped_quietly(
    app: FastAPI, store: MemoryStore, clock: FakeClock
) -> None:
    async with client_for(app) as client:
        sid = await logged_in(client)

        async def end_elsewhere() -> None:  # as a logout on another tab would
            await store.delete(store_key(sid))

        app.state.end_elsewhere = end_elsewhere
        response = await client.get("/ended-meanwhile", headers=cookie(sid))
        assert response.status_code == 200
        assert await state(client, sid) == {"user": None, "data": {}}
    assert await store.count(clock()) == 0


class _FailingLateStore(MemoryStore):
    """Stores the first save, then fails, as a store that goes down mid-request."""

    saves = 0

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        self.saves += 1
        if self.saves > 1:
            raise StoreUnavailableError("connection lost")
        return await super().save(record, **options)


async def test_a_store_failure_after_the_response_started_is_raised_not_answered_twice() -> None:
    """A 503 can no longer go out: a second response start would break the protocol, and
    swallowing the failure would hide that the late change was lost. The save is made
    before the body's last part, so the client gets an unfinished response, not a whole
    one that says nothing of the loss."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        session = await scope["session"].load()
        session["n"] = 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        session["late"] = True
        await send({"type": "http.response.body", "body": b"done"})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = SessionMiddleware(app, store=_FailingLateStore())
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "scheme": "https"}
    with pytest.raises(StoreUnavailableError):
        await middleware(scope, receive, send)
    assert [message["type"] for message in sent] == ["http.response.start"]


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_a_streamed_change_is_stored_before_the_byte_that_completes_the_body(
    length: bool,
) -> None:
    """With a Content-Length, the client has the whole body at its last byte: the empty
    part Starlette sends after it came too late, and a client that left at once had the
    stream cancelled, with the save, and a complete 200 that said nothing of it."""
    store = MemoryStore()
    cookie = await create_session(store, data={"downloads": 0})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        session = await scope["session"].load()
        headers = [(b"content-length", b"8")] if length else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"1234", "more_body": True})
        session["downloads"] += 1
        await send({"type": "http.response.body", "body": b"5678", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    stored_when_sent: list[Any] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            data = await read_session(store, cookie)
            assert data is not None
            stored_when_sent.append((message["body"], data["downloads"]))

    headers = [(b"cookie", f"{NAME}={cookie}".encode())]
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "scheme": "https"}
    await SessionMiddleware(app, store=store)(scope, receive, send)
    last = 1 if length else 0  # the byte completing the declared length, or the end
    assert stored_when_sent == [(b"1234", 0), (b"5678", last), (b"", 1)]


@pytest.mark.parametrize("path", ["/background", "/stream-note"])
async def test_late_data_for_a_session_without_a_record_is_dropped_with_a_warning(
    app: FastAPI,
    store: MemoryStore,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    async with client_for(app) as client:
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            response = await client.get(path)
        assert response.status_code == 200
        assert "set-cookie" not in response.headers
    assert await store.count(clock()) == 0
    said = [line for line in caplog.messages if "after the response started" in line]
    assert len(said) == 1, said


def test_websocket_changes_after_accept_are_stored(app: FastAPI) -> None:
    with TestClient(app, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}) as client:
        sid = client.post("/login").cookies[NAME]
        with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers={**SAME_ORIGIN}) as socket:
            socket.send_text("hello")
            assert socket.receive_text() == "stored"
        assert client.get("/state").json() == {
            "user": "alice",
            "data": {"cart": ["apple"], "ws": "hello"},
        }
        assert client.cookies[NAME] == sid


def test_websocket_login_after_accept_is_refused_and_keeps_the_session(
    app: FastAPI, store: MemoryStore, clock: FakeClock
) -> None:
    with TestClient(app, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}) as client:
        client.post("/login")
        with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers={**SAME_ORIGIN}) as socket:
            socket.send_text("login")
            assert socket.receive_text().startswith("refused: the response has started")
            with pytest.raises(WebSocketDisconnect):
                socket.receive_text()
        # Still alice, under the same cookie, with one record: no ghost device.
        assert client.get("/state").json()["user"] == "alice"
    assert asyncio.run(store.count(clock())) == 1


class _LandsWhenCancelled(MemoryStore):
    """A store whose write, once sent, lands even if the request waiting for it is
    cancelled meanwhile, as a database's does; ``sent`` says when one is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: asyncio.Event | None = None

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        if self.sent is None:
            return await super().save(record, **options)
        write = asyncio.ensure_future(super().save(record, **options))
        self.sent.set()
        await asyncio.sleep(0.05)  # the answer is on its way: a cancel lands here
        return await write


async def test_a_save_cut_short_by_a_client_gone_is_never_applied_twice() -> None:
    """Starlette cancels a streamed body when its client goes away (on servers of ASGI
    spec 2.3, uvicorn's): a save under way then may have landed, and another would
    merge onto it, counting this download twice."""
    store = _LandsWhenCancelled()

    async def download(scope: Scope, receive: Receive, send: Send) -> None:
        session = await scope["session"].load()

        async def body() -> AsyncIterator[bytes]:
            yield b"file contents"
            session.modify("downloads", lambda n: n + 1, 0)

        await StreamingResponse(body())(scope, receive, send)

    middleware = SessionMiddleware(download, store=store)
    value = await create_session(store, data={"downloads": 0})
    store.sent = asyncio.Event()

    async def receive() -> Message:
        assert store.sent is not None
        await store.sent.wait()  # the client goes away as the save is sent
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "method": "GET",
        "path": "/download",
        "headers": [(b"cookie", f"{NAME}={value}".encode())],
        "scheme": "https",
    }
    await middleware(scope, receive, send)
    await asyncio.sleep(0.1)  # the write sent before the cancel has landed
    assert await read_session(store, value) == {"downloads": 1}


class Prefs(BaseModel):
    theme: str = "light"


async def _outlived(session: Session, kind: str) -> None:
    """What an event handler run after its request does (Gradio's queue, NiceGUI)."""
    await asyncio.sleep(0.01)
    if kind == "slow-saver":  # a model call between the change and the save
        session["status"] = "working"
        await asyncio.sleep(1.2)
        session["status"] = "done"
        await session.save()
    elif kind == "logout":
        session.logout()
    elif kind == "in-place":
        session["cart"].append("pear")
    elif kind == "model":
        session.model("prefs", Prefs).theme = "dark"
    elif kind == "reads":
        assert session["cart"] == ["apple"]


@pytest.mark.parametrize(
    ("kind", "lost"),
    [
        ("slow-saver", False),
        ("reads", False),
        ("logout", True),
        ("in-place", True),
        ("model", True),
    ],
)
async def test_a_change_by_a_task_that_outlived_its_request_is_not_lost_in_silence(
    caplog: pytest.LogCaptureFixture, kind: str, lost: bool
) -> None:
    """Gradio's queue and NiceGUI's handlers run after the request that started them
    has returned, with its session: nothing commits their changes then. A task that
    saves, however slowly, is left in peace; one that ends with a change unsaved is
    named, since what it did (a logout above all) is lost."""
    store = MemoryStore()
    app = FastAPI()
    app.add_middleware(SessionMiddleware, store=store)
    handlers: list[asyncio.Task[None]] = []

    @app.post("/login")
    async def login(session: SessionDep) -> None:
        session.login("alice")
        session["cart"] = ["apple"]

    @app.post("/event")
    async def event(session: SessionDep) -> None:
        handlers.append(asyncio.create_task(_outlived(session, kind)))

    caplog.set_level(logging.WARNING, logger="coatcheck")
    async with client_for(app) as client:
        cookie = (await client.post("/login")).headers["set-cookie"].split(";")[0]
        await client.post("/event", headers={"cookie": cookie})
        await handlers[-1]
        await asyncio.sleep(0)  # the task's end is told to its callbacks
    late = [r.getMessage() for r in caplog.records if "after that request" in r.getMessage()]
    record = await store.load(store_key(cookie.split("=", 1)[1]), time.time())
    if not lost:
        assert late == []
        assert record is not None
        if kind == "slow-saver":
            assert read_json(record)["status"] == "done"
        return
    assert record is not None  # what the task did is lost: said so
    assert read_json(record) == {"cart": ["apple"]}
    assert late == [
        "the session of a request to '/event' was changed after that request had finished, "
        "by a task that outlived it (a framework's event handler, a queued job), which ended "
        "without saving it: only `await session.save()` in that task stores it"
    ]


def read_json(record: SessionRecord) -> Any:
    return json.loads(record.data)


async def test_a_change_refused_after_the_response_started_is_withdrawn_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A one-time code spent in a streamed body, which a parallel request spent first:
    no 409 can go out any more, so the refusal is logged, the stream ends whole, and
    the body's other changes are stored."""
    store = MemoryStore()
    app = FastAPI()
    started, spent = asyncio.Event(), asyncio.Event()

    def spend(code: dict[str, bool]) -> dict[str, bool]:
        if code.get("used"):
            raise ValueError("code already used")
        return {"used": True}

    @app.post("/start")
    async def start(session: SessionDep) -> None:
        session["code"] = {"used": False}

    @app.post("/spend")
    async def spend_now(session: SessionDep) -> None:
        session.modify("code", spend, {})

    @app.get("/stream")
    async def stream(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"working\n"
            started.set()
            await spent.wait()
            session.modify("code", spend, {})  # unused, as this request loaded it
            session["streamed"] = True
            yield b"done\n"

        return StreamingResponse(body())

    app.add_middleware(SessionMiddleware, store=store)
    caplog.set_level(logging.WARNING, logger="coatcheck")
    async with client_for(app) as client:
        cookie = {"cookie": (await client.post("/start")).headers["set-cookie"].split(";")[0]}

        async def other() -> int:
            await started.wait()
            status = (await client.post("/spend", headers=cookie)).status_code
            spent.set()
            return status

        streamed, spent_status = await asyncio.gather(
            client.get("/stream", headers=cookie), other()
        )
    assert (streamed.status_code, streamed.text, spent_status) == (200, "working\ndone\n", 200)
    session = await read_session(store, cookie["cookie"].split("=", 1)[1])
    assert session == {"code": {"used": True}, "streamed": True}
    (line,) = [r.getMessage() for r in caplog.records if "withdrawn" in r.getMessage()]
    assert line.startswith("the modify() change to 'code' raised ValueError")
    assert line.endswith("at '/stream' (route '/stream')")
