"""An open WebSocket follows its session: closed once it ends elsewhere, kept alive by use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.testclient import TestClient
from starlette.routing import WebSocketRoute
from starlette.testclient import WebSocketDenialResponse, WebSocketTestSession

from coatcheck import (
    ConfigurationError,
    CookieConfig,
    MemoryStore,
    SessionConfig,
    SessionEndedError,
    SessionMiddleware,
    SessionRecord,
    Store,
    StoreUnavailableError,
    _websocket,
)
from coatcheck.fastapi import SessionDep, get_session
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, TEST_WS_BASE_URL, FakeClock

WS = f"{TEST_WS_BASE_URL}/ws"


class FlakyStore(MemoryStore):
    """Loads fail while ``down`` is set, as during an outage."""

    down = False

    async def load(self, key: str, now: float) -> SessionRecord | None:
        if self.down:
            raise StoreUnavailableError("store unreachable", retry_after=1)
        return await super().load(key, now)


def make_app(store: Store, clock: FakeClock, **config: Any) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep, idle: int | None = None) -> dict[str, bool]:
        session.login("alice", idle_timeout=idle)
        return {"ok": True}

    @app.post("/logout")
    async def logout(session: SessionDep) -> dict[str, bool]:
        session.logout()
        return {"ok": True}

    @app.post("/cart/{item}")
    async def add(item: str, session: SessionDep) -> dict[str, Any]:
        session["cart"] = [*session.get("cart", []), item]
        return {"cart": session["cart"]}

    @app.get("/me")
    async def me(session: SessionDep) -> dict[str, Any]:
        return {"user": session.user_id, "data": dict(session)}

    @app.websocket("/ws")
    async def echo(websocket: WebSocket, save: bool = False) -> None:
        """With ``save``, each message is saved at once, and the chat goes on when the
        save finds the session ended."""
        session = await get_session()
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                session["said"] = text
                if not save:
                    await websocket.send_text(f"{session.user_id}: {text}")
                    continue
                try:
                    await session.save()
                    await websocket.send_text("saved")
                except SessionEndedError:
                    await websocket.send_text("not saved")
        except WebSocketDisconnect:
            return

    @app.websocket("/ws-strict")
    async def strict(websocket: WebSocket, how: str) -> None:
        """Saves, or reloads, after each message, catching nothing coatcheck raises."""
        session = await get_session()
        await websocket.accept()
        while True:
            text = await websocket.receive_text()
            if how == "save":
                session["said"] = text
                await session.save()
            else:
                await session.reload()
            await websocket.send_text(how)

    @app.websocket("/push")
    async def push(websocket: WebSocket) -> None:
        """Only sends, as a feed does: it learns that the socket closed from a send."""
        await get_session()
        await websocket.accept()
        app.state.pushed = 0
        try:
            for _ in range(2000):  # bounded, so that a send that never fails ends too
                await websocket.send_text("tick")
                app.state.pushed += 1
                await asyncio.sleep(0.005)
        finally:
            app.state.push_ended.set()

    @app.websocket("/worker")
    async def worker(websocket: WebSocket) -> None:
        """Waits in receive() while a task of its own pushes, as Strawberry's
        subscriptions do: an error in that task is what such frameworks log."""
        await get_session()
        await websocket.accept()
        app.state.worker_errors = []
        app.state.worker_pushes = 0
        app.state.worker_disconnected = False

        async def push() -> None:
            try:
                for _ in range(2000):  # bounded
                    await websocket.send_text("tick")
                    app.state.worker_pushes += 1
                    await asyncio.sleep(0.005)
            except Exception as exc:
                app.state.worker_errors.append(exc)

        task = asyncio.create_task(push())
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
            app.state.worker_disconnected = True
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            app.state.worker_ended.set()

    app.state.push_ended = threading.Event()
    app.state.worker_ended = threading.Event()
    app.add_middleware(SessionMiddleware, store=store, config=SessionConfig(clock=clock, **config))
    return app


def read_until_closed(socket: WebSocketTestSession) -> None:
    while True:
        socket.receive_text()


def client_for(app: FastAPI) -> TestClient:
    return TestClient(app, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN})


def test_a_socket_closes_at_its_next_message_once_the_session_ended_elsewhere() -> None:
    clock, store = FakeClock(), MemoryStore()
    with client_for(make_app(store, clock)) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            socket.send_text("hello")
            assert socket.receive_text() == "alice: hello"
            client.post("/logout")  # from another tab
            socket.send_text("still here?")  # checked once a minute: not yet
            assert socket.receive_text() == "alice: still here?"
            clock.advance(60)
            socket.send_text("and now?")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert closed.value.code == 1008
    assert closed.value.reason == "session ended"
    # The closed socket saved nothing: the logout stands.
    assert asyncio.run(store.count(clock())) == 0


def _closing_as_daphne_does(app: Any) -> Any:
    """``app`` behind a server that lets an application close a socket only with 1000
    or 3000-4999, as Daphne (through autobahn) does; 1008 raises in its send."""

    async def served(scope: Any, receive: Any, send: Any) -> None:
        async def strict_send(message: Any) -> None:
            code = message.get("code", 1000)
            if message["type"] == "websocket.close" and code != 1000 and code < 3000:
                raise Exception(f"invalid close code {code} (must be 1000 or from [3000, 4999])")
            await send(message)

        await app(scope, receive, strict_send)

    return served


def test_a_server_that_refuses_1008_gets_a_normal_close_that_says_why() -> None:
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock)
    with TestClient(
        _closing_as_daphne_does(app), base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}
    ) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            client.post("/logout")
            clock.advance(60)
            socket.send_text("anyone?")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert (closed.value.code, closed.value.reason) == (1000, "session ended")
    assert asyncio.run(store.count(clock())) == 0


def test_on_the_cookie_store_a_socket_lives_until_the_deadline_sealed_in_its_cookie() -> None:
    """Nothing on the server can end it, and no message can renew a cookie."""
    clock = FakeClock()
    keys = ["a-secret-key-of-at-least-16-bytes"]
    app = make_app(CookieStore(), clock, secret_keys=keys, idle_timeout=600)
    with client_for(app) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            for _ in range(9):  # rechecked each minute: live
                clock.advance(61)
                socket.send_text("hello")
                assert socket.receive_text() == "alice: hello"
            clock.advance(61)  # 610 s since the cookie was sealed
            socket.send_text("and now?")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert closed.value.code == 1008


@pytest.mark.parametrize("kind", ["memory", "cookie"])
def test_a_socket_ends_by_a_stricter_configuration_than_its_session_had(kind: str) -> None:
    """Logged in under a 1-hour idle limit, then redeployed with 5 minutes: a socket idle
    longer than that closes, rather than refreshing (or trusting) the old deadline."""
    clock = FakeClock()
    keys = ["a-secret-key-of-at-least-16-bytes"]
    store: Store = CookieStore() if kind == "cookie" else MemoryStore()
    before = make_app(store, clock, secret_keys=keys, idle_timeout=3600)
    with client_for(before) as client:
        value = client.post("/login").cookies["__Host-session"]
    after = make_app(store, clock, secret_keys=keys, idle_timeout=300)
    with client_for(after) as client:
        headers = {**SAME_ORIGIN, "cookie": f"__Host-session={value}"}
        with client.websocket_connect(WS, headers=headers) as socket:
            clock.advance(301)  # idle past the new limit, well inside the old one
            socket.send_text("hello")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert closed.value.code == 1008


def test_a_socket_closes_when_an_administrator_ends_every_session() -> None:
    clock, store = FakeClock(), MemoryStore()
    with client_for(make_app(store, clock)) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            assert asyncio.run(store.delete_all(clock())) == 1
            clock.advance(61)
            socket.send_text("hello")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert closed.value.code == 1008


def test_messages_count_as_use_and_keep_the_session_alive() -> None:
    """Ten minutes idle allowed; half an hour of chat without one HTTP request."""
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200)
    with client_for(app) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            for minute in range(0, 30, 5):
                clock.advance(300)
                socket.send_text(f"minute {minute}")
                assert socket.receive_text() == f"alice: minute {minute}"
        me = client.get("/me").json()
    assert me == {"user": "alice", "data": {"said": "minute 25"}}


def test_a_chat_outlasts_an_idle_limit_shorter_than_the_recheck_interval() -> None:
    """A login chose 40 idle seconds, under the minute between rechecks: the socket
    then looks its session up every 20 seconds, so messages every half minute keep it
    alive, and a pause past the limit still ends it."""
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200)
    with client_for(app) as client:
        client.post("/login", params={"idle": 40})
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            for second in range(30, 301, 30):
                clock.advance(30)
                socket.send_text(f"second {second}")
                assert socket.receive_text() == f"alice: second {second}"
            clock.advance(41)
            socket.send_text("back")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
        assert client.get("/me").json()["user"] is None
    assert closed.value.code == 1008


def test_a_chat_ends_its_session_at_most_a_tenth_of_the_idle_limit_early() -> None:
    """Each message counts as use, as a request does: once a refresh is due, the next
    message writes it back, whatever the time since the last recheck. A user who leaves
    the chat is signed in for at least nine tenths of the idle limit after their last
    message, as after their last request."""
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200)
    with client_for(app) as client:
        client.post("/login", params={"idle": 120})  # rechecked every 60 s
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            signed_in_at = clock()
            for second in [*range(10, 111, 10), 119]:
                clock.advance(signed_in_at + second - clock())
                socket.send_text(f"second {second}")
                assert socket.receive_text() == f"alice: second {second}"
                # Read while the socket is open: its own save, once it closes, would
                # refresh the session too.
                [record] = asyncio.run(store.list_user("alice", clock()))
                assert record.expires_at >= clock() + 0.9 * 120


def test_an_idle_socket_does_not_keep_the_session_alive() -> None:
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200)
    with client_for(app) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            clock.advance(601)  # no message for longer than the idle timeout
            socket.send_text("back")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
        assert client.get("/me").json()["user"] is None
    assert closed.value.code == 1008


def test_messages_that_are_not_activity_do_not_keep_the_session_alive() -> None:
    """Socket.IO's client answers the server's pings by itself ("3"): left out by
    ``websocket_activity``, they still let the socket learn of the session's end, but a
    tab nobody uses reaches its idle limit, as without them."""
    clock, store = FakeClock(), MemoryStore()
    not_pongs = {"websocket_activity": lambda message: message.get("text") != "3"}
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200, **not_pongs)
    with client_for(app) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            socket.send_text("hello")
            assert socket.receive_text() == "alice: hello"
            for _ in range(2):  # each would have written the sliding expiry back
                clock.advance(250)
                socket.send_text("3")
                assert socket.receive_text() == "alice: 3"
            clock.advance(250)  # 750 s since the last activity
            socket.send_text("3")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
        assert client.get("/me").json()["user"] is None
    assert closed.value.code == 1008


def test_websocket_activity_must_be_a_function() -> None:
    with pytest.raises(ConfigurationError, match="websocket_activity takes a function"):
        SessionConfig(websocket_activity="3")  # type: ignore[arg-type]


def test_a_feed_nobody_answers_does_not_keep_the_session_alive() -> None:
    """A tab left open on a live feed: the app's sends are not use, so the session ends
    at its idle limit, however long the feed runs, and the socket closes with it."""
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200)
    with client_for(app) as client:
        client.post("/login")
        start = clock()
        with client.websocket_connect(
            f"{TEST_WS_BASE_URL}/push", headers={**SAME_ORIGIN}
        ) as socket:
            assert socket.receive_text() == "tick"
            ended_after = None
            for _ in range(10):  # 100 s at a time, with ticks in between
                clock.advance(100)
                sent = app.state.pushed
                deadline = time.monotonic() + 10
                while app.state.pushed < sent + 2 and not app.state.push_ended.is_set():
                    assert time.monotonic() < deadline, "the feed stopped sending"
                    time.sleep(0.005)
                if app.state.push_ended.is_set():
                    ended_after = clock() - start
                    break
            assert ended_after == 600  # the first check at the limit
            with pytest.raises(WebSocketDisconnect) as closed:
                read_until_closed(socket)
        assert client.get("/me").json()["user"] is None
    assert closed.value.code == 1008


class CountingLoads(MemoryStore):
    loads = 0

    async def load(self, key: str, now: float) -> SessionRecord | None:
        self.loads += 1
        return await super().load(key, now)


def test_a_feed_past_its_sessions_refresh_time_looks_it_up_once_an_interval() -> None:
    """The app's sends are no use of the session: past the time its sliding expiry
    would be refreshed, they still look the session up once per interval, not at
    every send."""
    clock, store = FakeClock(), CountingLoads()
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200, websocket_recheck=300)
    with client_for(app) as client:
        client.post("/login")
        with client.websocket_connect(
            f"{TEST_WS_BASE_URL}/push", headers={**SAME_ORIGIN}
        ) as socket:
            assert socket.receive_text() == "tick"
            clock.advance(120)  # a refresh is due; the next check is not
            looked_up = store.loads
            for _ in range(20):
                assert socket.receive_text() == "tick"
            assert store.loads == looked_up


def test_a_slow_recheck_does_not_make_the_next_message_due_for_another() -> None:
    """A lookup that took longer than the interval (a store under load): the interval
    counts from its answer, not its start, so the next message is not checked again."""
    clock = FakeClock()

    class SlowLoads(CountingLoads):
        slow = False

        async def load(self, key: str, now: float) -> SessionRecord | None:
            if self.slow:
                clock.advance(61)
            return await super().load(key, now)

    store = SlowLoads()
    app = make_app(store, clock, websocket_recheck=60)
    with client_for(app) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            store.slow = True
            clock.advance(61)
            socket.send_text("one")
            assert socket.receive_text() == "alice: one"
            looked_up = store.loads
            socket.send_text("two")
            assert socket.receive_text() == "alice: two"
            assert store.loads == looked_up


def test_a_slow_handshake_refused_over_http_gets_its_whole_answer() -> None:
    """A handshake that took longer than the recheck interval, and whose session ended
    meanwhile, answers with its own HTTP response: the watch, which looks at sockets'
    messages, must not close a socket in the middle of that answer."""
    clock, store = FakeClock(), MemoryStore()

    async def slow(websocket: WebSocket) -> None:
        await websocket.scope["session"].load()
        clock.advance(120)  # checking credentials with a slow service
        await store.delete_user("alice")  # signed out everywhere meanwhile
        await websocket.send(
            {"type": "websocket.http.response.start", "status": 401, "headers": []}
        )
        await websocket.send({"type": "websocket.http.response.body", "body": b"who are you?"})

    app = make_app(store, clock)
    app.router.routes.append(WebSocketRoute("/slow", slow))
    with client_for(app) as client:
        client.post("/login")
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect(f"{TEST_WS_BASE_URL}/slow", headers={**SAME_ORIGIN}),
        ):
            pass  # pragma: no cover - refused before this
    assert refused.value.status_code == 401
    assert refused.value.content == b"who are you?"


def test_a_refresh_keeps_the_sockets_changes_and_other_requests_changes() -> None:
    """The refresh writes the stored record as it was; the socket's own changes and a
    parallel request's are merged when the socket ends, as for any save."""
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200)
    with client_for(app) as client:
        client.post("/login")
        client.post("/cart/apple")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            clock.advance(120)
            socket.send_text("one")  # a refresh is due: written here
            assert socket.receive_text() == "alice: one"
            client.post("/cart/pear")  # another tab, while the socket is open
            clock.advance(120)
            socket.send_text("two")  # another refresh, over a version it does not know
            assert socket.receive_text() == "alice: two"
        me = client.get("/me").json()
    assert me == {"user": "alice", "data": {"cart": ["apple", "pear"], "said": "two"}}


def test_a_chat_stays_alive_after_another_tab_saved_the_session() -> None:
    """Another request's save moves the stored version on: the socket's refreshes must
    follow the record as stored, not its own copy, or each would be refused until the
    idle limit ended the session under a busy chat."""
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock, idle_timeout=600, absolute_timeout=7200)
    with client_for(app) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            client.post("/cart/apple")  # another tab
            for minute in range(5, 35, 5):
                clock.advance(300)
                socket.send_text(f"minute {minute}")
                assert socket.receive_text() == f"alice: minute {minute}"
        me = client.get("/me").json()
    assert me == {"user": "alice", "data": {"cart": ["apple"], "said": "minute 30"}}


def test_a_socket_whose_save_found_the_session_ended_is_closed() -> None:
    """The app caught the SessionEndedError and went on; the socket must still close."""
    clock, store = FakeClock(), MemoryStore()
    with client_for(make_app(store, clock)) as client:
        client.post("/login")
        with client.websocket_connect(f"{WS}?save=true", headers={**SAME_ORIGIN}) as socket:
            socket.send_text("one")
            assert socket.receive_text() == "saved"
            client.post("/logout")  # from another tab
            socket.send_text("two")
            assert socket.receive_text() == "not saved"
            clock.advance(61)
            socket.send_text("three")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert closed.value.code == 1008
    assert asyncio.run(store.count(clock())) == 0


@pytest.mark.parametrize("how", ["save", "reload"])
def test_a_socket_whose_uncaught_save_found_the_session_ended_is_closed(how: str) -> None:
    """Not dropped with a traceback: closed with 1008, as the recheck closes it."""
    clock, store = FakeClock(), MemoryStore()
    with client_for(make_app(store, clock)) as client:
        client.post("/login")
        url = f"{TEST_WS_BASE_URL}/ws-strict?how={how}"
        with client.websocket_connect(url, headers={**SAME_ORIGIN}) as socket:
            socket.send_text("one")
            assert socket.receive_text() == how
            client.post("/logout")  # from another tab
            socket.send_text("two")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "session ended")
    assert asyncio.run(store.count(clock())) == 0


def test_a_socket_whose_uncaught_save_met_an_outage_is_told_to_come_back() -> None:
    clock, store = FakeClock(), FlakyStore()
    with client_for(make_app(store, clock)) as client:
        client.post("/login")
        url = f"{TEST_WS_BASE_URL}/ws-strict?how=reload"
        with client.websocket_connect(url, headers={**SAME_ORIGIN}) as socket:
            store.down = True
            socket.send_text("one")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert (closed.value.code, closed.value.reason) == (1013, "try again later")


def _closed_after_a_logout_elsewhere(
    path: str, settled: Callable[[FastAPI], bool]
) -> tuple[FastAPI, int]:
    """The app, and the code its socket at ``path`` was closed with once the session was
    logged out in another tab. The client stays until ``settled(app)``: what the handler
    did then, it did by itself, not because its client left."""
    clock, store = FakeClock(), MemoryStore()
    app = make_app(store, clock)
    with client_for(app) as client:
        client.post("/login")
        with client.websocket_connect(
            f"{TEST_WS_BASE_URL}{path}", headers={**SAME_ORIGIN}
        ) as socket:
            assert socket.receive_text() == "tick"
            client.post("/logout")  # from another tab
            clock.advance(61)
            with pytest.raises(WebSocketDisconnect) as closed:
                read_until_closed(socket)
            deadline = time.monotonic() + 10
            while not settled(app):
                assert time.monotonic() < deadline, "the handler did not settle"
                time.sleep(0.005)
    return app, closed.value.code


def test_a_feed_stops_once_its_socket_was_closed_for_it() -> None:
    """Its next send fails as a send to a client that went away does."""
    app, code = _closed_after_a_logout_elsewhere("/push", lambda app: app.state.push_ended.is_set())
    assert code == 1008
    assert app.state.pushed < 2000


def test_an_app_that_pushes_from_a_task_of_its_own_stops_quietly() -> None:
    """Once the session ended, its pushes go with the closed socket while it waits in
    receive(), which reports the disconnect, as when a client goes away: the pushing task
    sees no error for the framework to log (Strawberry logs one per subscription)."""
    pushed: list[int] = []

    def pushed_into_the_closed_socket(app: FastAPI) -> bool:
        pushed.append(app.state.worker_pushes)
        return bool(app.state.worker_errors) or pushed[-1] >= pushed[0] + 3

    app, code = _closed_after_a_logout_elsewhere("/worker", pushed_into_the_closed_socket)
    assert app.state.worker_ended.wait(10)  # the client left: receive() said so
    assert code == 1008
    assert app.state.worker_disconnected
    assert app.state.worker_errors == []


def test_an_app_that_pushes_while_its_server_never_reports_the_disconnect_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that waits for a vanished peer to answer the close (hypercorn) reports no
    disconnect: past the quiet period, the pushing task's sends fail as after any close,
    and it stops instead of pushing into the void for ever."""
    monkeypatch.setattr(_websocket, "QUIET_AFTER_CLOSE", 0.2)

    def pushes_failed(app: FastAPI) -> bool:
        return bool(app.state.worker_errors)  # while the client, holding on, says nothing

    app, code = _closed_after_a_logout_elsewhere("/worker", pushes_failed)
    assert code == 1008
    assert isinstance(app.state.worker_errors[0], WebSocketDisconnect)


def test_an_outage_during_a_recheck_leaves_the_socket_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, store = FakeClock(), FlakyStore()
    with client_for(make_app(store, clock)) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            store.down = True
            clock.advance(61)
            with caplog.at_level(logging.WARNING, logger="coatcheck"):
                socket.send_text("hello")
                assert socket.receive_text() == "alice: hello"
            store.down = False
    assert any("recheck" in line for line in caplog.messages)


def test_rechecks_can_be_turned_off() -> None:
    clock, store = FakeClock(), MemoryStore()
    with client_for(make_app(store, clock, websocket_recheck=None)) as client:
        client.post("/login")
        with client.websocket_connect(WS, headers={**SAME_ORIGIN}) as socket:
            client.post("/logout")
            clock.advance(3600)
            socket.send_text("hello")
            assert socket.receive_text() == "alice: hello"


@pytest.mark.parametrize("value", [0, -5, 1.5])
def test_a_recheck_interval_must_be_whole_positive_seconds(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="websocket_recheck"):
        SessionConfig(websocket_recheck=value)


def test_a_socket_on_a_process_that_cannot_open_its_session_leaves_the_data_alone() -> None:
    """``encrypt_data`` with a new key on some processes first: the socket's refresh on
    an old process read the data, newly sealed under that key, as nothing, and wrote
    that back sealed under its own key, emptying the session for every process."""
    clock, store = FakeClock(), MemoryStore()
    old_key, new_key = "an-old-key-of-at-least-16-bytes", "a-new-key-of-at-least-16-bytes"
    old = make_app(store, clock, secret_keys=[old_key], encrypt_data=True)
    new = make_app(store, clock, secret_keys=[new_key, old_key], encrypt_data=True)
    with client_for(old) as previous, client_for(new) as upgraded:
        previous.post("/login")
        previous.post("/cart/apple")
        cookie = {"cookie": "; ".join(f"{k}={v}" for k, v in previous.cookies.items())}
        with previous.websocket_connect(WS, headers={**SAME_ORIGIN, **cookie}) as socket:
            socket.send_text("hello")
            assert socket.receive_text() == "alice: hello"
            upgraded.post("/cart/pear", headers=cookie)  # sealed under the new key now
            clock.advance(400)  # past the recheck and the refresh window
            socket.send_text("still there?")
            assert socket.receive_text() == "alice: still there?"
        state = upgraded.get("/me", headers=cookie).json()
    assert state == {"user": "alice", "data": {"cart": ["apple", "pear"]}}


def test_a_mounted_apps_socket_follows_its_own_session_not_the_parents() -> None:
    """A mounted app with its own coatcheck (its own cookie and store) owns its sockets'
    session: the parent's, loaded on every path, ending in another tab must not close
    them, while the mounted app's own logout still does."""
    clock = FakeClock()
    api = FastAPI()
    own = CookieConfig(name="__Secure-api", path="/api")
    api.add_middleware(
        SessionMiddleware, store=MemoryStore(), config=SessionConfig(clock=clock, cookie=own)
    )

    @api.post("/login")
    async def api_login(session: SessionDep) -> None:
        session.login("bot")

    @api.post("/logout")
    async def api_logout(session: SessionDep) -> None:
        session.logout()

    @api.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        session = await get_session()
        await websocket.accept()
        while True:
            await websocket.send_text(f"{session.user_id}:{await websocket.receive_text()}")

    site = FastAPI()
    config = SessionConfig(clock=clock, eager_paths=["/"])
    site.add_middleware(SessionMiddleware, store=MemoryStore(), config=config)

    @site.post("/login")
    async def site_login(session: SessionDep) -> None:
        session.login("alice")

    @site.post("/logout")
    async def site_logout(session: SessionDep) -> None:
        session.logout()

    site.mount("/api", api)
    client = client_for(site)
    client.post("/login")
    client.post("/api/login")
    with client.websocket_connect(f"{TEST_WS_BASE_URL}/api/ws", headers={**SAME_ORIGIN}) as socket:
        socket.send_text("1")
        assert socket.receive_text() == "bot:1"
        client.post("/logout")  # the site's session ends
        clock.advance(120)  # past the recheck interval
        socket.send_text("2")
        assert socket.receive_text() == "bot:2"
        client.post("/api/logout")  # the socket's own session ends
        clock.advance(120)
        socket.send_text("3")
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "session ended")
