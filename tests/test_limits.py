"""Limits: session size, sessions per user, oversized headers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from coatcheck import (
    ConfigurationError,
    JSONSerializer,
    MemoryStore,
    SessionConfig,
    SessionEvent,
    SessionMiddleware,
    SessionRecord,
    Store,
    StoreUnavailableError,
)
from coatcheck._ids import store_key
from coatcheck.testing import TEST_WS_BASE_URL, FakeClock

from .apps import make_app
from .conftest import CountingStore, client_for, without_denial_responses

pytestmark = pytest.mark.anyio
NAME = "__Host-session"


def ticket(response: httpx.Response) -> str:
    return response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]


async def test_an_oversized_session_is_refused_with_413_and_kept_intact(any_store: Store) -> None:
    config = SessionConfig(max_session_bytes=2048)
    async with client_for(make_app(any_store, config)) as client:
        sid = ticket(await client.post("/append?item=small"))
        before = await any_store.load(store_key(sid), config.clock())
        response = await client.post(
            f"/append?item={'x' * 3000}", headers={"cookie": f"{NAME}={sid}"}
        )
        assert response.status_code == 413
        assert "over the limit of 2048 bytes" in response.json()["detail"]
        assert "set-cookie" not in response.headers
        assert response.headers["vary"] == "Cookie"  # it read the session, as any answer
        assert await any_store.load(store_key(sid), config.clock()) == before


async def test_a_session_of_exactly_the_limit_is_stored(any_store: Store) -> None:
    config = SessionConfig(max_session_bytes=2048)
    item = "x" * (2048 - len(JSONSerializer().dumps({"cart": [""]})))
    async with client_for(make_app(any_store, config)) as client:
        response = await client.post(f"/append?item={item}")
    assert response.status_code == 200
    record = await any_store.load(store_key(ticket(response)), config.clock())
    assert record is not None
    assert len(record.data) == 2048
    async with client_for(make_app(any_store, config)) as client:
        response = await client.post(f"/append?item={item}x")  # one byte over
    assert response.status_code == 413


async def test_past_the_per_user_limit_the_oldest_sessions_end(any_store: Store) -> None:
    config = SessionConfig(max_sessions_per_user=2)
    async with client_for(make_app(any_store, config)) as client:
        first, second, third = [ticket(await client.post("/login")) for _ in range(3)]
        states = [
            (await client.get("/read", headers={"cookie": f"{NAME}={sid}"})).json()["user"]
            for sid in (first, second, third)
        ]
    assert states == [None, "alice", "alice"]
    assert len(await any_store.list_user("alice", config.clock())) == 2


async def test_the_session_getting_a_new_id_is_never_the_one_ended(
    any_store: Store, clock: FakeClock
) -> None:
    """Not even when it is the user's oldest, as after a deploy that lowered the limit."""
    async with client_for(make_app(any_store, SessionConfig(clock=clock))) as client:
        oldest = ticket(await client.post("/login"))
        for _ in range(2):
            clock.advance(1)
            await client.post("/login")
    config = SessionConfig(max_sessions_per_user=2, clock=clock)
    async with client_for(make_app(any_store, config)) as client:
        response = await client.post("/regenerate", headers={"cookie": f"{NAME}={oldest}"})
        rotated = {"cookie": f"{NAME}={ticket(response)}"}
        assert (await client.get("/read", headers=rotated)).json()["user"] == "alice"
    assert len(await any_store.list_user("alice", clock())) == 2


async def test_a_longer_idle_timeout_applies_to_sessions_stored_before_it(
    any_store: Store,
) -> None:
    """Raised from 20 s to 600 s at a restart: a session read every 3 s must live on,
    not end at the deadline it was stored with, which the throttle would otherwise
    move out only once 60 s (10% of the new window) had passed."""
    clock = FakeClock()
    short = SessionConfig(idle_timeout=20, clock=clock)
    async with client_for(make_app(any_store, short)) as client:
        sid = ticket(await client.post("/login"))
    longer = SessionConfig(idle_timeout=600, clock=clock)
    users = []
    async with client_for(make_app(any_store, longer)) as client:
        for _ in range(10):
            clock.advance(3)
            read = await client.get("/read", headers={"cookie": f"{NAME}={sid}"})
            users.append(read.json()["user"])
    assert users == ["alice"] * 10
    record = await any_store.load(store_key(sid), clock())
    assert record is not None
    assert record.expires_at > clock() + 500


REFUSE = SessionConfig(max_sessions_per_user=2, at_session_limit="refuse_login")


async def test_a_login_past_the_limit_is_refused_and_the_browser_keeps_its_session(
    any_store: Store,
) -> None:
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    async with client_for(make_app(any_store, REFUSE, events=[hook])) as client:
        first, second = [ticket(await client.post("/login")) for _ in range(2)]
        cart = ticket(await client.post("/append?item=pear"))
        response = await client.post("/login", headers={"cookie": f"{NAME}={cart}"})
        assert response.status_code == 403
        assert "at most 2 at once" in response.json()["detail"]
        assert "set-cookie" not in response.headers
        states = [
            (await client.get("/read", headers={"cookie": f"{NAME}={sid}"})).json()
            for sid in (first, second, cart)
        ]
    assert [state["user"] for state in states] == ["alice", "alice", None]
    assert states[2]["data"] == {"cart": ["pear"]}
    assert len(await any_store.list_user("alice", REFUSE.clock())) == 2
    assert [event.kind for event in seen if event.user_id == "alice"][-1] == "login_refused"


async def test_at_the_limit_a_user_may_log_in_again_on_a_session_of_theirs(
    any_store: Store,
) -> None:
    async with client_for(make_app(any_store, REFUSE)) as client:
        first, _ = [ticket(await client.post("/login")) for _ in range(2)]
        response = await client.post("/login?remember", headers={"cookie": f"{NAME}={first}"})
        assert response.status_code == 200
        state = await client.get("/read", headers={"cookie": f"{NAME}={ticket(response)}"})
    assert state.json()["user"] == "alice"
    assert len(await any_store.list_user("alice", REFUSE.clock())) == 2


async def test_after_the_limit_was_lowered_a_user_may_still_log_in_again_on_a_device(
    any_store: Store,
) -> None:
    """Over a limit lowered since, a login again on one of the user's own sessions (a
    password confirmed before "sign out everywhere") adds no device: it passes, and
    only a login from another device is refused."""
    async with client_for(make_app(any_store, REFUSE)) as client:
        first, _ = [ticket(await client.post("/login")) for _ in range(2)]
    lowered = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    async with client_for(make_app(any_store, lowered)) as client:
        asked = await client.get("/can-login?user=alice", headers={"cookie": f"{NAME}={first}"})
        again = await client.post("/login", headers={"cookie": f"{NAME}={first}"})
        state = await client.get("/read", headers={"cookie": f"{NAME}={ticket(again)}"})
        elsewhere = await client.post("/login")
    assert asked.json() == {"can_login": True}
    assert again.status_code == 200
    assert state.json()["user"] == "alice"
    assert elsewhere.status_code == 403
    assert len(await any_store.list_user("alice", lowered.clock())) == 2


async def test_can_login_tells_before_the_login_whether_it_would_pass(any_store: Store) -> None:
    async def can_login(client: httpx.AsyncClient, user: str, sid: str = "") -> bool:
        response = await client.get(f"/can-login?user={user}", headers={"cookie": f"{NAME}={sid}"})
        answer: bool = response.json()["can_login"]
        return answer

    async with client_for(make_app(any_store, REFUSE)) as client:
        first = ticket(await client.post("/login"))
        assert await can_login(client, "alice")
        await client.post("/login")
        assert not await can_login(client, "alice")
        assert await can_login(client, "alice", first)  # logging in again replaces it
        assert await can_login(client, "bob")
    ending = SessionConfig(max_sessions_per_user=2)
    async with client_for(make_app(any_store, ending)) as client:
        assert await can_login(client, "alice")  # past the limit, the oldest end instead


class ParallelLogin(CountingStore):
    """A real store on which another device of the user logs in right after this
    login's check of the limit, before its save: the race that check alone cannot close."""

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        records = await super().list_user(user_id, now)
        if self.calls["list_user"] == 1:
            key = store_key("R" * 43)
            rival = SessionRecord(key, "rival", b"{}", user_id, now, now, now + 60, False, "", 1)
            await self.inner.save(rival)
        return records


async def test_a_login_that_lost_a_race_past_the_limit_is_undone() -> None:
    store = ParallelLogin(MemoryStore())
    config = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    async with client_for(make_app(store, config)) as client:
        response = await client.post("/login")
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    (kept,) = await store.list_user("alice", config.clock())
    assert kept.public_id == "rival"


async def test_parallel_logins_never_pass_the_limit(any_store: Store) -> None:
    """Every login that answers 200 holds a live session, and they are at most the limit."""
    async with client_for(make_app(any_store, REFUSE)) as client:
        responses = await asyncio.gather(*(client.post("/login") for _ in range(6)))
        statuses = sorted(response.status_code for response in responses)
        live = [
            (await client.get("/read", headers={"cookie": f"{NAME}={ticket(response)}"})).json()
            for response in responses
            if response.status_code == 200
        ]
    assert set(statuses) <= {200, 403}
    assert statuses.count(200) <= 2
    assert all(state["user"] == "alice" for state in live)
    assert len(await any_store.list_user("alice", REFUSE.clock())) == len(live)


class LockStep(CountingStore):
    """A real store on which two logins of alice move in step: after its save and after
    each count of her sessions, each waits until the other has done the same. Both are
    stored before either counts, so each sees the other: the race at its closest."""

    def __init__(self, inner: Store, user: str = "alice") -> None:
        super().__init__(inner)
        self.user = user
        self.armed = False
        self._waiting: dict[str, list[asyncio.Event]] = {"save": [], "list": []}

    async def _meet(self, step: str) -> None:
        arrived = asyncio.Event()
        waiting = self._waiting[step]
        waiting.append(arrived)
        if len(waiting) == 2:
            for event in waiting:
                event.set()
            waiting.clear()
        await arrived.wait()

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        saved = await super().save(record, **options)
        if self.armed and record.user_id == self.user:
            await self._meet("save")
        return saved

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        records = await super().list_user(user_id, now)
        if self.armed:
            await self._meet("list")
        return records


async def test_logins_racing_past_the_limit_do_not_end_each_other(any_store: Store) -> None:
    """Each would end the other as "the oldest other session": both answered 200 and
    the user had none left. They agree on who stays, and the other is told."""
    store = LockStep(any_store)
    config = SessionConfig(max_sessions_per_user=1)
    async with client_for(make_app(store, config)) as client:
        carts = [ticket(await client.post(f"/append?item={item}")) for item in ("tea", "jam")]
        store.armed = True
        responses = await asyncio.gather(
            *(client.post("/login", headers={"cookie": f"{NAME}={sid}"}) for sid in carts)
        )
        store.armed = False
        assert sorted(response.status_code for response in responses) == [200, 409]
        (won,) = [response for response in responses if response.status_code == 200]
        state = await client.get("/read", headers={"cookie": f"{NAME}={ticket(won)}"})
        assert state.json()["user"] == "alice"
        (lost,) = [response for response in responses if response.status_code == 409]
        assert "set-cookie" not in lost.headers
    (kept,) = await any_store.list_user("alice", config.clock())
    assert kept.key == store_key(ticket(won))


class HeldAfterSave(CountingStore):
    """A real store that holds the first save of ``user``'s session, once it has landed,
    until ``go`` is set: another login can then run from start to end meanwhile. Before
    that save, it runs ``before`` (a parallel request's save) if given."""

    def __init__(self, inner: Store, user: str = "alice") -> None:
        super().__init__(inner)
        self.user = user
        self.saved = asyncio.Event()
        self.go = asyncio.Event()
        self.before: Any = None

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        if record.user_id == self.user and self.before is not None:
            before, self.before = self.before, None
            await before()
        saved = await super().save(record, **options)
        if record.user_id == self.user and not self.saved.is_set():
            self.saved.set()
            await self.go.wait()
        return saved


@pytest.mark.parametrize("parallel_cart", [False, True], ids=["alone", "cart-added-meanwhile"])
async def test_a_login_ended_by_a_later_one_at_the_limit_is_told_and_keeps_its_cart(
    any_store: Store, parallel_cart: bool
) -> None:
    """The first login is stored; a second, of another browser, is stored after it and
    ends it as the older session, all before the first counts alice's sessions. The
    first then finds itself gone: it answered 200 with a cookie naming nothing, and the
    cart its browser had was lost with the session the login replaced. What another tab
    added to that cart as the login was saved (the login merged it) is given back too."""
    store = HeldAfterSave(any_store)
    config = SessionConfig(max_sessions_per_user=1)
    async with client_for(make_app(store, config)) as client:
        tea, jam = [ticket(await client.post(f"/append?item={item}")) for item in ("tea", "jam")]

        async def other_tab() -> None:
            await client.post("/append?item=milk", headers={"cookie": f"{NAME}={tea}"})

        store.before = other_tab if parallel_cart else None
        first = asyncio.ensure_future(client.post("/login", headers={"cookie": f"{NAME}={tea}"}))
        await store.saved.wait()
        second = await client.post("/login", headers={"cookie": f"{NAME}={jam}"})
        store.go.set()
        overtaken = await first
        assert second.status_code == 200
        assert overtaken.status_code == 409, overtaken.text
        assert "set-cookie" not in overtaken.headers
        kept = await client.get("/read", headers={"cookie": f"{NAME}={tea}"})
        cart = ["tea", "milk"] if parallel_cart else ["tea"]
        assert kept.json() == {"user": None, "data": {"cart": cart}}
        won = await client.get("/read", headers={"cookie": f"{NAME}={ticket(second)}"})
        assert won.json()["user"] == "alice"
    (alice,) = await any_store.list_user("alice", config.clock())
    assert alice.key == store_key(ticket(second))


async def test_sessions_that_racing_logins_end_are_each_reported_once(any_store: Store) -> None:
    """Both logins end the user's older session; the one that stays alone says so."""
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    store = LockStep(any_store)
    config = SessionConfig(max_sessions_per_user=1)
    async with client_for(make_app(store, config, events=[hook])) as client:
        await client.post("/login")
        (older,) = [event.session for event in seen if event.kind == "logged_in"]
        carts = [ticket(await client.post(f"/append?item={item}")) for item in ("tea", "jam")]
        store.armed = True
        responses = await asyncio.gather(
            *(client.post("/login", headers={"cookie": f"{NAME}={sid}"}) for sid in carts)
        )
        store.armed = False
    assert sorted(response.status_code for response in responses) == [200, 409]
    evicted = [event.session for event in seen if event.kind == "evicted"]
    assert evicted.count(older) == 1
    assert len(evicted) == len(set(evicted))


async def test_a_switch_of_user_that_loses_a_race_still_reports_the_ended_session(
    any_store: Store,
) -> None:
    """Alice's browser signs in as bob while another device of bob does, past his limit.
    Whichever login stays, alice's session was replaced, and that is reported."""
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    store = LockStep(any_store, user="bob")
    config = SessionConfig(max_sessions_per_user=1)
    async with client_for(make_app(store, config, events=[hook])) as client:
        alice = ticket(await client.post("/login"))
        (alices,) = [event.session for event in seen if event.kind == "logged_in"]
        other = ticket(await client.post("/append?item=tea"))
        store.armed = True
        responses = await asyncio.gather(
            *(
                client.post("/login?user=bob", headers={"cookie": f"{NAME}={sid}"})
                for sid in (alice, other)
            )
        )
        store.armed = False
    assert sorted(response.status_code for response in responses) == [200, 409]
    ended = [(e.user_id, e.session) for e in seen if e.kind == "logged_out"]
    assert ended == [("alice", alices)]


async def test_logins_refused_in_a_race_keep_their_carts(any_store: Store) -> None:
    """Both count two sessions once stored, so both withdraw; each browser keeps the
    anonymous session its login replaced, cart included, as a refused login promises."""
    store = LockStep(any_store)
    config = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    async with client_for(make_app(store, config)) as client:
        carts = [ticket(await client.post(f"/append?item={item}")) for item in ("tea", "jam")]
        store.armed = True
        responses = await asyncio.gather(
            *(client.post("/login", headers={"cookie": f"{NAME}={sid}"}) for sid in carts)
        )
        store.armed = False
        assert [response.status_code for response in responses] == [403, 403]
        states = [
            (await client.get("/read", headers={"cookie": f"{NAME}={sid}"})).json() for sid in carts
        ]
    assert [state["data"] for state in states] == [{"cart": ["tea"]}, {"cart": ["jam"]}]
    assert [state["user"] for state in states] == [None, None]
    assert await any_store.list_user("alice", config.clock()) == []


def test_a_websocket_login_past_the_limit_is_closed_with_1008() -> None:
    async def sign_in(websocket: WebSocket) -> None:
        session = await websocket.scope["session"].load()
        session.login("alice")
        await websocket.accept()

    config = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    store = MemoryStore()
    app = Starlette(routes=[WebSocketRoute("/ws", sign_in)])
    app.add_middleware(SessionMiddleware, store=store, config=config)
    with TestClient(app) as client:
        with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws"):
            pass
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect(f"{TEST_WS_BASE_URL}/ws"),
        ):
            pass  # pragma: no cover - refused before this
        assert refused.value.status_code == 403  # as a request's login past the limit
    with (
        TestClient(without_denial_responses(app)) as client,
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect(f"{TEST_WS_BASE_URL}/ws"),
    ):
        pass
    assert closed.value.code == 1008
    assert closed.value.reason == "too many sessions"


class IndexDown(CountingStore):
    """A real store whose user index times out, as a loaded Redis node can."""

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        raise StoreUnavailableError("user index timed out")


async def test_a_login_stands_when_ending_the_oldest_sessions_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = IndexDown(MemoryStore())
    config = SessionConfig(max_sessions_per_user=1)
    async with client_for(make_app(store, config)) as client:
        first = ticket(await client.post("/login"))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            response = await client.post("/login", headers={"cookie": f"{NAME}={first}"})
        assert response.status_code == 200
        second = ticket(response)
        state = await client.get("/read", headers={"cookie": f"{NAME}={second}"})
    # The login was stored, so its cookie went out: a 503 would have lost the session.
    assert state.json()["user"] == "alice"
    assert any("past the limit" in line for line in caplog.messages)


async def test_without_a_limit_every_login_stays(any_store: Store) -> None:
    async with client_for(make_app(any_store, SessionConfig())) as client:
        for _ in range(5):
            await client.post("/login")
    assert len(await any_store.list_user("alice", SessionConfig().clock())) == 5


async def test_only_a_junk_sized_cookie_header_is_ignored(any_store: Store) -> None:
    """Other cookies of many kilobytes (analytics, preferences) leave the session alone;
    a header past 64 KiB is junk, and no session."""
    async with client_for(make_app(any_store)) as client:
        sid = ticket(await client.post("/login"))
        large = await client.get("/read", headers={"cookie": f"pad={'p' * 9000}; {NAME}={sid}"})
        junk = await client.get("/read", headers={"cookie": f"pad={'p' * 70_000}; {NAME}={sid}"})
        normal = await client.get("/read", headers={"cookie": f"{NAME}={sid}"})
    assert large.json()["user"] == "alice"
    assert junk.json()["user"] is None
    assert normal.json()["user"] == "alice"


async def test_an_oversized_user_agent_is_stored_cut_short(any_store: Store) -> None:
    """Every save stores the header, for the device list: a client must not be able to
    make each of its records, and so every listing of the user's devices, 10 kB larger."""
    agent = "Mozilla/5.0 (X11; Linux x86_64) " + "x" * 10_000
    async with client_for(make_app(any_store)) as client:
        response = await client.post("/login", headers={"user-agent": agent})
    assert response.status_code == 200
    (record,) = await any_store.list_user("alice", SessionConfig().clock())
    assert len(record.user_agent) <= 256
    assert record.user_agent.startswith("Mozilla/5.0 (X11; Linux x86_64) ")
    assert agent.startswith(record.user_agent)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_session_bytes": 10}, "max_session_bytes"),
        ({"max_sessions_per_user": 0}, "per_user"),
        ({"at_session_limit": "refuse_login"}, "needs max_sessions_per_user"),
        ({"max_sessions_per_user": 2, "at_session_limit": "refuse"}, "'end_oldest' or"),
    ],
)
def test_limits_are_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SessionConfig(**options)  # type: ignore[arg-type]


async def _spoil(store: Store, sid: str, clock: Any) -> None:
    """Leave the record of ``sid`` holding data no process can decode."""
    record = await store.load(store_key(sid), clock())
    assert record is not None
    assert await store.save(record._replace(data=b"\x80not json"))


@pytest.mark.parametrize("next_step", ["/append", "/login"])
async def test_an_undecodable_session_is_replaced_and_leaves_its_users_list(
    any_store: Store, next_step: str
) -> None:
    """The browser is moved to a new session, so the record it named is unreachable: the
    save that moves it deletes that record, which would otherwise hold a place in the
    user's list until it expires and, under refuse_login, keep the user out."""
    config = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    async with client_for(make_app(any_store, config)) as client:
        sid = ticket(await client.post("/login"))
        await _spoil(any_store, sid, config.clock)
        moved = await client.post(next_step, headers={"cookie": f"{NAME}={sid}"})
        assert moved.status_code == 200
        assert ticket(moved) != sid
        assert await any_store.load(store_key(sid), config.clock()) is None
        elsewhere = await client.post("/login")
        assert elsewhere.status_code == (200 if next_step == "/append" else 403)
    owners = [record.user_id for record in await any_store.list_user("alice", config.clock())]
    assert owners == ["alice"]
