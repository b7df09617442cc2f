"""Parallel requests of one session never overwrite each other, on every store."""

from __future__ import annotations

import contextlib
import time
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coatcheck import (
    MemoryStore,
    SessionConfig,
    SessionConflictError,
    SessionEndedError,
    SessionLimitError,
    SessionMiddleware,
    SessionRecord,
    Store,
)
from coatcheck._ids import key_of
from coatcheck._persist import ARRIVAL_SLACK, Persistence
from coatcheck.events import SessionEvent
from coatcheck.session import Session
from coatcheck.stores.base import MOVED_FOR, Merge
from coatcheck.testing import FakeClock

from . import redis_servers
from .apps import make_app as make_test_app
from .conftest import CountingStore, MeanwhileStore, client_for
from .store_kinds import STORE_KINDS, fresh_store

pytestmark = pytest.mark.anyio


class Barrier:
    """Holds every request after it loaded its session until all of them have."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.all_loaded = anyio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.parties:
            self.all_loaded.set()
        await self.all_loaded.wait()


async def change(request: Request) -> Response:
    session = request.scope["session"]
    assert isinstance(session, Session)
    await session.load()
    await request.app.state.barrier.wait()
    action, key = request.path_params["action"], request.query_params.get("key", "k")
    value = request.query_params.get("value", "v")
    if action == "set":
        session[key] = value
    elif action == "delete":
        del session[key]
    elif action == "append-in-place":
        session[key].append(value)
    elif action == "modify":
        session.modify(key, lambda items: [*items, value], default=[])
    elif action == "logout":
        session.logout()
    elif action == "use-code":
        session["tried"] = value
        try:
            session.modify("used", partial(_use_once, value), default=[])
            if "save" in request.query_params:
                await session.save()
        except CodeUsed:
            return JSONResponse({"detail": "code already used"}, 401)
    return JSONResponse(dict(session))


class CodeUsed(Exception):
    """How an app's change refuses a one-time code it finds used already."""


def _use_once(code: str, used: list[str]) -> list[str]:
    if code in used:
        raise CodeUsed(code)
    return [*used, code]


async def read(request: Request) -> Response:
    session = request.scope["session"]
    assert isinstance(session, Session)
    await session.load()
    return JSONResponse({"data": dict(session), "user": session.user_id})


async def seed(request: Request) -> Response:
    session = request.scope["session"]
    assert isinstance(session, Session)
    await session.load()
    session.update(await request.json())
    return JSONResponse({})


def make_app(store: Store, parties: int) -> Starlette:
    app = Starlette(
        routes=[
            Route("/change/{action}", change, methods=["POST"]),
            Route("/read", read),
            Route("/seed", seed, methods=["POST"]),
        ]
    )
    app.state.barrier = Barrier(parties)
    app.add_middleware(SessionMiddleware, store=store, config=SessionConfig())
    return app


async def seeded(client: httpx.AsyncClient, data: dict[str, Any]) -> dict[str, str]:
    response = await client.post("/seed", json=data)
    name, _, rest = response.headers["set-cookie"].partition("=")
    return {"cookie": f"{name}={rest.split(';', 1)[0]}"}


async def race(client: httpx.AsyncClient, cookie: dict[str, str], *paths: str) -> list[int]:
    statuses: list[int] = []

    async def one(path: str) -> None:
        statuses.append((await client.post(path, headers=cookie)).status_code)

    async with anyio.create_task_group() as tasks:
        for path in paths:
            tasks.start_soon(one, path)
    return statuses


async def final(client: httpx.AsyncClient, cookie: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/read", headers=cookie)).json()
    return body


async def test_parallel_changes_to_different_keys_all_persist(any_store: Store) -> None:
    app = make_app(any_store, parties=4)
    async with client_for(app) as client:
        cookie = await seeded(client, {"keep": 1, "gone": 2, "cart": ["a"]})
        statuses = await race(
            client,
            cookie,
            "/change/set?key=theme&value=dark",
            "/change/set?key=lang&value=fr",
            "/change/delete?key=gone",
            "/change/append-in-place?key=cart&value=b",
        )
        assert statuses == [200, 200, 200, 200]
        data = (await final(client, cookie))["data"]
    assert data == {"keep": 1, "theme": "dark", "lang": "fr", "cart": ["a", "b"]}


async def test_modify_keeps_every_append_of_parallel_requests(any_store: Store) -> None:
    """Fifty requests load the session before any of them saves: on Redis, every save
    but the first then loses a race, and without turns the last would lose 49."""
    app = make_app(any_store, parties=50)
    async with client_for(app) as client:
        cookie = await seeded(client, {"cart": ["first"]})
        paths = [f"/change/modify?key=cart&value=item{n}" for n in range(50)]
        assert await race(client, cookie, *paths) == [200] * 50
        cart = (await final(client, cookie))["data"]["cart"]
    assert cart[0] == "first"
    assert sorted(cart[1:]) == sorted(f"item{n}" for n in range(50))


async def test_plain_assignment_of_the_same_key_is_last_writer_wins(any_store: Store) -> None:
    """The documented limit: two requests replacing one key cannot both win."""
    app = make_app(any_store, parties=2)
    async with client_for(app) as client:
        cookie = await seeded(client, {"n": 0})
        paths = ["/change/set?key=n&value=one", "/change/set?key=n&value=two"]
        assert await race(client, cookie, *paths) == [200, 200]
        assert (await final(client, cookie))["data"]["n"] in ("one", "two")


async def test_a_logout_wins_over_parallel_writes(any_store: Store) -> None:
    app = make_app(any_store, parties=3)
    async with client_for(app) as client:
        cookie = await seeded(client, {"n": 0})
        statuses = await race(
            client, cookie, "/change/set?key=a", "/change/logout", "/change/set?key=b"
        )
        assert sorted(statuses) in ([200, 200, 200], [200, 409, 409], [200, 200, 409])
        assert (await final(client, cookie))["data"] == {}
        assert statuses.count(409) + statuses.count(200) == 3


# -- interleavings of loads and saves, checked against a model -------------------------


def persistence_for(store: Store) -> Persistence:
    return Persistence(store, SessionConfig(), None)


async def open_session(persistence: Persistence, cookie: str | None) -> Session:
    headers = [] if cookie is None else [(b"cookie", f"__Host-session={cookie}".encode())]
    return await Session(persistence, {"headers": headers}).load()


async def test_after_a_merge_the_session_holds_what_was_stored(any_store: Store) -> None:
    """A request that merged with a parallel save goes on with the merged data, so a
    later change in the same request (a streaming body, a background task) starts from
    it and cannot write the other request's change away."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first["base"] = 0
    header = dict(await persistence.commit(first, 200))[b"set-cookie"].decode()
    cookie = header.split(";", 1)[0].split("=", 1)[1]
    a, b = await open_session(persistence, cookie), await open_session(persistence, cookie)
    a["x"] = 1
    assert await persistence.commit(a, 200) == []
    b["y"] = 2
    assert await persistence.commit(b, 200) == []
    assert dict(b) == {"base": 0, "x": 1, "y": 2}
    b["z"] = 3
    assert await persistence.commit(b, 200) == []
    assert dict(await open_session(persistence, cookie)) == {"base": 0, "x": 1, "y": 2, "z": 3}


async def two_requests_on_one_value(persistence: Persistence) -> tuple[str, Session, Session]:
    """A session holding ``{"only": 1}``, loaded by two requests before either saves."""
    first = await open_session(persistence, None)
    first["only"] = 1
    cookie = issued(await persistence.commit(first, 200))
    return cookie, await open_session(persistence, cookie), await open_session(persistence, cookie)


async def test_emptying_a_session_keeps_what_a_parallel_save_added(any_store: Store) -> None:
    """Removing an anonymous session's last value ends it, but not over another
    request's new value: the emptying is merged like any change, and the session lives."""
    persistence = persistence_for(any_store)
    cookie, emptying, adding = await two_requests_on_one_value(persistence)
    adding["lang"] = "fr"
    assert await persistence.commit(adding, 200) == []
    del emptying["only"]
    assert await persistence.commit(emptying, 200) == []  # no cleared cookie
    assert dict(emptying) == {"lang": "fr"}
    assert dict(await open_session(persistence, cookie)) == {"lang": "fr"}


async def test_emptying_over_a_parallel_change_of_the_same_value_ends_it(
    any_store: Store,
) -> None:
    persistence = persistence_for(any_store)
    _, emptying, changing = await two_requests_on_one_value(persistence)
    changing["only"] = 2
    assert await persistence.commit(changing, 200) == []
    del emptying["only"]
    headers = await persistence.commit(emptying, 200)
    assert dict(headers)[b"set-cookie"].startswith(b"__Host-session=;")
    assert await any_store.count(persistence.now()) == 0


async def test_an_emptied_session_ends_and_a_slower_save_is_told(any_store: Store) -> None:
    persistence = persistence_for(any_store)
    cookie, emptying, adding = await two_requests_on_one_value(persistence)
    del emptying["only"]
    headers = await persistence.commit(emptying, 200)
    assert dict(headers)[b"set-cookie"].startswith(b"__Host-session=;")
    adding["lang"] = "fr"
    with pytest.raises(SessionEndedError):
        await persistence.commit(adding, 200)
    assert await any_store.count(persistence.now()) == 0
    reopened = await open_session(persistence, cookie)
    assert dict(reopened) == {}
    assert reopened.is_new


def issued(headers: list[tuple[bytes, bytes]]) -> str:
    """The session ID a commit's Set-Cookie hands to the browser."""
    return dict(headers)[b"set-cookie"].decode().split(";", 1)[0].split("=", 1)[1]


@pytest.mark.parametrize("successor", ["login", "logout"])
async def test_the_next_user_inherits_nothing_from_a_parallel_save(
    any_store: Store, successor: str
) -> None:
    """Bob logs in (or alice logs out and leaves a note) while another of alice's requests
    saves: what that request added is hers, and must not reach the new session."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first.login("alice")
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    a, b = await open_session(persistence, cookie), await open_session(persistence, cookie)
    a["address"] = "alice's"
    assert await persistence.commit(a, 200) == []
    if successor == "login":
        b.login("bob")
    else:
        b.logout()
        b["flash"] = "logged out"
    after = await open_session(persistence, issued(await persistence.commit(b, 200)))
    if successor == "login":
        assert (after.user_id, dict(after)) == ("bob", {})
    else:
        assert (after.user_id, dict(after)) == (None, {"flash": "logged out"})
    assert await any_store.list_user("alice", persistence.now()) == []


async def test_of_two_parallel_logins_as_someone_else_the_second_is_refused(
    any_store: Store,
) -> None:
    """A double-submitted "log in as bob" from alice's browser: each login replaces her
    session, and the second found it gone. Stored anyway, it was a device no browser
    held, which under ``max_sessions_per_user`` could sign bob's phone out."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first.login("alice")
    cookie = issued(await persistence.commit(first, 200))
    a, b = await open_session(persistence, cookie), await open_session(persistence, cookie)
    a.login("bob")
    b.login("bob")
    kept = issued(await persistence.commit(a, 200))
    with pytest.raises(SessionEndedError):
        await persistence.commit(b, 200)
    now = persistence.now()
    assert [record.key for record in await any_store.list_user("bob", now)] == [key_of(kept)]
    assert await any_store.list_user("alice", now) == []


async def test_a_request_that_loads_after_a_parallel_login_does_not_sign_it_out(
    any_store: Store,
) -> None:
    """The browser sent it before the login's answer arrived, and it first loads its
    session once the login is stored: a slow upload, a handler that awaits something
    first. It finds no session under the old cookie; a new anonymous one would put its
    cookie over the login's. Told the session moved after it came, its write is refused."""
    clock = FakeClock()
    persistence = Persistence(any_store, SessionConfig(clock=clock), None)
    first = await open_session(persistence, None)
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    # Two requests come with the first cookie; the login is stored while they wait.
    late = Session(persistence, {"headers": [(b"cookie", f"__Host-session={cookie}".encode())]})
    later = Session(persistence, {"headers": [(b"cookie", f"__Host-session={cookie}".encode())]})
    clock.advance(5)
    login = await open_session(persistence, cookie)
    login.login("alice")
    kept = issued(await persistence.commit(login, 200))

    await late.load()
    assert late.user_id is None  # the old cookie is no session
    assert dict(late) == {}
    late["seen"] = True
    with pytest.raises(SessionEndedError, match="moved to a new ID"):
        await persistence.commit(late, 200)
    assert await any_store.count(clock()) == 1
    again = await open_session(persistence, kept)
    assert again.user_id == "alice"
    assert again["cart"] == ["apple"]

    # The other one loads nine minutes on (a slow upload): refused all the same.
    clock.advance(MOVED_FOR - 60)
    await later.load()
    later["seen"] = True
    with pytest.raises(SessionEndedError, match="moved to a new ID"):
        await persistence.commit(later, 200)


async def _cart_moved_by_a_login(
    store: Store, events: list[SessionEvent] | None = None, **options: Any
) -> tuple[FakeClock, Persistence, str, str]:
    """A visitor's cart on ``store``, then moved by alice's login: the clock, the
    persistence (with ``options`` for its config; ``events`` hears what it announces),
    the old cookie and the login's."""
    clock = FakeClock()
    hooks = () if events is None else (events.append,)
    persistence = Persistence(store, SessionConfig(clock=clock, **options), None, hooks)
    first = await open_session(persistence, None)
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    login = await open_session(persistence, cookie)
    login.login("alice")
    return clock, persistence, cookie, issued(await persistence.commit(login, 200))


async def test_a_browser_that_never_got_its_logins_answer_goes_on(any_store: Store) -> None:
    """Its connection dropped: it holds the old cookie, and its next requests, sent
    after the login was stored, are no late part of the page. A login goes through at
    once; any other write once the login's answer is surely lost (ARRIVAL_SLACK)."""
    clock, persistence, cookie, kept = await _cart_moved_by_a_login(any_store)

    retried = await open_session(persistence, cookie)
    retried.login("alice")
    assert issued(await persistence.commit(retried, 200)) not in (cookie, kept)
    clock.advance(ARRIVAL_SLACK)
    browsing = await open_session(persistence, cookie)
    browsing["seen"] = True
    assert issued(await persistence.commit(browsing, 200)) not in (cookie, kept)


@pytest.mark.parametrize("limit", ["refuse_login", "end_oldest", None])
async def test_a_login_again_after_a_lost_answer_replaces_the_unheard_one(
    any_store: Store, limit: str | None
) -> None:
    """Its connection dropped, so the browser never got its login's cookie and signs in
    again with the old one. The first login's session, which no browser holds, ends:
    it neither refuses alice at ``max_sessions_per_user=1`` (she would be locked out
    until it idled out) nor stays listed as a device of hers."""
    options: dict[str, Any] = {}
    if limit is not None:
        options = {"max_sessions_per_user": 1, "at_session_limit": limit}
    events: list[SessionEvent] = []
    clock, persistence, cookie, unheard = await _cart_moved_by_a_login(any_store, events, **options)
    clock.advance(30)
    (first,) = await any_store.list_user("alice", clock())
    del events[:]

    retried = await open_session(persistence, cookie)
    assert await retried.can_login("alice")  # as the login then finds, asked first
    retried.login("alice")
    heard = issued(await persistence.commit(retried, 200))

    (device,) = await any_store.list_user("alice", clock())
    assert device.key == key_of(heard)
    assert (await open_session(persistence, unheard)).user_id is None
    assert [(e.kind, e.session) for e in events] == [
        ("logged_out", first.public_id),
        ("created", device.public_id),
        ("logged_in", device.public_id),
    ]


async def test_logins_after_lost_answers_in_a_row_each_replace_the_last(any_store: Store) -> None:
    """The connection dropped twice: the third login follows both moves to the session
    the second one made, which no browser holds either."""
    clock, persistence, cookie, _ = await _cart_moved_by_a_login(
        any_store, max_sessions_per_user=1, at_session_limit="refuse_login"
    )
    for _ in range(2):
        clock.advance(30)
        retried = await open_session(persistence, cookie)
        retried.login("alice")
        heard = issued(await persistence.commit(retried, 200))
        (device,) = await any_store.list_user("alice", clock())
        assert device.key == key_of(heard)


async def _both_clicks_stay(clock: FakeClock, persistence: Persistence, cookie: str) -> None:
    """Two clicks of a login as alice, both bringing ``cookie``: the second loads its
    session only once the first is stored, half a second on. Both stay signed in."""
    first = await open_session(persistence, cookie)
    second = Session(persistence, {"headers": [(b"cookie", f"__Host-session={cookie}".encode())]})
    first.login("alice")
    one = issued(await persistence.commit(first, 200))
    clock.advance(0.5)
    await second.load()
    second.login("alice")
    two = issued(await persistence.commit(second, 200))
    assert (await open_session(persistence, one)).user_id == "alice"
    assert (await open_session(persistence, two)).user_id == "alice"


async def test_a_double_clicked_login_ends_neither_login(any_store: Store) -> None:
    """Both clicks bring the visitor's cookie, and the second loads its session only
    once the first login is stored. It was sent before that answer could arrive, and
    the browser may take either answer last: both sessions stay."""
    clock = FakeClock()
    persistence = Persistence(any_store, SessionConfig(clock=clock), None)
    visitor = await open_session(persistence, None)
    visitor["cart"] = ["apple"]
    cookie = issued(await persistence.commit(visitor, 200))
    await _both_clicks_stay(clock, persistence, cookie)


async def test_a_lost_answer_gives_no_hold_on_another_users_session(any_store: Store) -> None:
    """The old cookie alone is no credential for the session a login made of it: bob
    signing in with it ends nothing of alice's."""
    clock, persistence, cookie, alices = await _cart_moved_by_a_login(any_store)
    retried = await open_session(persistence, cookie)
    retried.login("bob")
    issued(await persistence.commit(retried, 200))
    assert (await open_session(persistence, alices)).user_id == "alice"
    assert len(await any_store.list_user("alice", clock())) == 1


async def test_a_planted_cookie_gains_nothing_the_password_does_not_give(
    any_store: Store,
) -> None:
    """Mallory planted the visitor's cookie in alice's browser, and has her password.
    Signing in as alice with it ends alice's session, as signing in with the password
    and ending her other devices would, but hands over nothing of it: not the second
    factor alice confirmed there. (That session was written since the login, as a
    login's own hook that notes the sign-in writes it: no sign of a lost answer.)"""
    clock, persistence, cookie, alices = await _cart_moved_by_a_login(any_store)
    clock.advance(1)
    confirmed = await open_session(persistence, alices)
    confirmed["second_factor"] = True
    await persistence.commit(confirmed, 200)
    clock.advance(30)

    planted = await open_session(persistence, cookie)
    planted.login("alice")
    theirs = issued(await persistence.commit(planted, 200))

    assert dict(await open_session(persistence, theirs)) == {}
    assert (await open_session(persistence, alices)).user_id is None
    (device,) = await any_store.list_user("alice", clock())
    assert device.key == key_of(theirs)


async def test_a_lost_answer_is_one_whatever_a_hook_of_that_login_wrote() -> None:
    """A ``logged_in`` hook that notes the sign-in in the session (as the README shows)
    writes it a moment after the move, in the login's own request: the browser that
    never got the answer still signs in again, under ``max_sessions_per_user=1``."""
    from coatcheck.fastapi import get_session

    clock = FakeClock()

    async def note_the_sign_in(event: SessionEvent) -> None:
        if event.kind == "logged_in":
            clock.advance(0.2)
            session = await get_session()
            session["signed_in_at"] = event.at
            await session.save()

    config = SessionConfig(clock=clock, max_sessions_per_user=1, at_session_limit="refuse_login")
    store = MemoryStore()
    app = make_test_app(store, config, events=[note_the_sign_in])
    async with client_for(app) as client:
        visitor = (await client.post("/write")).headers["set-cookie"].split(";")[0]
        lost = await client.post("/login", headers={"cookie": visitor})
        assert lost.status_code == 200
        clock.advance(30)
        again = await client.post("/login", headers={"cookie": visitor})
    assert again.status_code == 200
    (device,) = await store.list_user("alice", clock())
    assert device.data != b"{}"  # noted by the hook


async def test_a_double_clicked_login_again_after_a_lost_answer_keeps_the_first_click(
    any_store: Store,
) -> None:
    """Both clicks bring the old cookie of a login whose answer was lost. The first
    replaces that login's session; the second, sent before the first one's answer could
    arrive, leaves the first one's session alone, so either answer may come last."""
    clock, persistence, cookie, _ = await _cart_moved_by_a_login(any_store)
    clock.advance(30)
    await _both_clicks_stay(clock, persistence, cookie)


@pytest.mark.parametrize("meanwhile", ["the other click", "a revocation"])
async def test_a_login_again_after_a_lost_answer_yields_to_a_parallel_change(
    meanwhile: str,
) -> None:
    """Between the retry's look at the unheard session and its save, the other click of
    a double click replaced that session, or alice revoked it from her phone: the retry
    gets a 409 rather than a second session under the limit, or the revoked one back."""
    store = MeanwhileStore()
    clock, persistence, cookie, _ = await _cart_moved_by_a_login(
        store, max_sessions_per_user=2, at_session_limit="refuse_login"
    )
    phone = await open_session(persistence, None)
    phone.login("alice")
    phone_cookie = issued(await persistence.commit(phone, 200))
    clock.advance(30)
    winners: list[str] = []

    async def parallel() -> None:
        if meanwhile == "the other click":
            other = await open_session(persistence, cookie)
            other.login("alice")
            winners.append(issued(await persistence.commit(other, 200)))
        else:
            from_phone = await open_session(persistence, phone_cookie)
            assert await from_phone.revoke_others() == 1
            winners.append(phone_cookie)

    retried = await open_session(persistence, cookie)
    retried.login("alice")
    store.meanwhile = parallel  # at the retry's count of alice's sessions
    with pytest.raises(SessionEndedError):
        await persistence.commit(retried, 200)
    live = await store.list_user("alice", clock())
    assert sorted(record.key for record in live) == sorted(
        {key_of(phone_cookie), *map(key_of, winners)}
    )


async def test_the_slack_for_a_logins_answer_is_ten_seconds(any_store: Store) -> None:
    """What docs/concurrency.md promises, in seconds rather than by the constant's name:
    a request that came nine seconds after the move is taken for one sent before the
    login's answer arrived, and refused; one that came ten seconds after is not."""
    clock, persistence, cookie, kept = await _cart_moved_by_a_login(any_store)

    clock.advance(9)
    early = await open_session(persistence, cookie)
    early["seen"] = True
    with pytest.raises(SessionEndedError, match="moved to a new ID"):
        await persistence.commit(early, 200)
    clock.advance(1)
    browsing = await open_session(persistence, cookie)
    browsing["seen"] = True
    assert issued(await persistence.commit(browsing, 200)) not in (cookie, kept)


async def test_a_move_is_dated_after_a_slow_check_of_the_users_sessions() -> None:
    """Under ``refuse_login`` a login counts the user's sessions before it is stored. A
    request of the page that came while that count took a minute came before the move,
    whose answer had not left yet: it is refused, rather than start an anonymous
    session whose cookie would replace the login's."""
    clock = FakeClock()
    store = MeanwhileStore()
    config = SessionConfig(clock=clock, max_sessions_per_user=3, at_session_limit="refuse_login")
    persistence = Persistence(store, config, None)
    first = await open_session(persistence, None)
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    login = await open_session(persistence, cookie)
    login.login("alice")
    came: list[Session] = []

    async def slow_count() -> None:
        clock.advance(60)
        came.append(
            Session(persistence, {"headers": [(b"cookie", f"__Host-session={cookie}".encode())]})
        )

    store.meanwhile = slow_count
    kept = issued(await persistence.commit(login, 200))
    (late,) = came
    await late.load()
    late["seen"] = True
    with pytest.raises(SessionEndedError, match="moved to a new ID"):
        await persistence.commit(late, 200)
    again = await open_session(persistence, kept)
    assert (again.user_id, dict(again)) == ("alice", {"cart": ["apple"]})


async def test_the_refused_late_write_leaves_the_browsers_login_cookie_alone(
    any_store: Store,
) -> None:
    """The same over HTTP: the late request's answer is a 409 that sets no cookie, so the
    browser keeps the one the login gave it, and stays signed in."""
    held = anyio.Event()
    loaded_late = anyio.Event()

    async def late(request: Request) -> Response:
        await held.wait()  # awaits something before it touches the session
        session = Session.of(request)
        await session.load()
        loaded_late.set()
        session["seen"] = True
        return JSONResponse({"user": session.user_id})

    async def login(request: Request) -> Response:
        session = await Session.of(request).load()
        session.login("alice")
        return JSONResponse({})

    app = make_app(any_store, parties=1)
    app.router.routes.extend([Route("/late", late), Route("/login", login, methods=["POST"])])
    async with client_for(app) as client:
        cookie = await seeded(client, {"cart": ["apple"]})
        answers: list[httpx.Response] = []

        async def slow() -> None:
            answers.append(await client.get("/late", headers=cookie))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(slow)
            await anyio.sleep(0.05)
            signed_in = await client.post("/login", headers=cookie)
            held.set()
        (answer,) = answers
        assert loaded_late.is_set()
        assert answer.status_code == 409, answer.text
        assert "set-cookie" not in answer.headers
        name, _, rest = signed_in.headers["set-cookie"].partition("=")
        body = await final(client, {"cookie": f"{name}={rest.split(';', 1)[0]}"})
    assert body == {"data": {"cart": ["apple"]}, "user": "alice"}


@pytest.mark.parametrize("flash", [False, True], ids=["plain", "with-a-flash"])
async def test_a_logout_ends_the_session_a_parallel_login_moved_it_to(
    any_store: Store, flash: bool
) -> None:
    """Sign out in one tab while another confirms the password (a login again, which
    moves the session to a new ID): the logout loaded the old record, now a mark, and
    must end the session the login's cookie names, or the user stays signed in. So
    must one that leaves a message for the page after it."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first.login("alice")
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    relogin, logout = (
        await open_session(persistence, cookie),
        await open_session(persistence, cookie),
    )
    relogin.login("alice")
    moved = issued(await persistence.commit(relogin, 200))
    logout.logout()
    if flash:
        logout["flash"] = "signed out"
    left = issued(await persistence.commit(logout, 200))
    assert await any_store.list_user("alice", persistence.now()) == []
    assert (await open_session(persistence, moved)).user_id is None
    if flash:
        assert dict(await open_session(persistence, left)) == {"flash": "signed out"}
    else:
        assert left == ""  # its cookie cleared


async def _alice_heard(store: Store) -> tuple[Persistence, list[str], str]:
    """alice signed in on ``store``, with a hook that notes the kind of every event:
    the persistence, what it heard, and her cookie."""
    heard: list[str] = []

    async def hook(event: SessionEvent) -> None:
        heard.append(event.kind)

    persistence = Persistence(store, SessionConfig(), None, (hook,))
    first = await open_session(persistence, None)
    first.login("alice")
    return persistence, heard, issued(await persistence.commit(first, 200))


async def test_a_logout_whose_moved_session_another_logout_ended_is_no_conflict(
    any_store: Store,
) -> None:
    """Tab 1 signs out slowly, tab 2 logs in again, tab 3 signs out with the new cookie:
    the user is signed out, as tab 1 asked, so it gets no 409, and nobody hears the
    end twice."""
    persistence, heard, cookie = await _alice_heard(any_store)
    relogin, slow = await open_session(persistence, cookie), await open_session(persistence, cookie)
    relogin.login("alice")
    moved = issued(await persistence.commit(relogin, 200))
    quick = await open_session(persistence, moved)
    quick.logout()
    await persistence.commit(quick, 200)
    heard.clear()
    slow.logout()
    assert await persistence.commit(slow, 200) == []  # the browser's cookie left alone
    assert heard == []
    assert await any_store.list_user("alice", persistence.now()) == []


@pytest.mark.parametrize("second", ["logout", "destroy", "revoke_all", "logout-flash"])
async def test_two_requests_ending_one_session_announce_its_end_once(
    any_store: Store, second: str
) -> None:
    persistence, heard, cookie = await _alice_heard(any_store)
    one, two = await open_session(persistence, cookie), await open_session(persistence, cookie)
    one.logout()
    await persistence.commit(one, 200)
    if second == "revoke_all":
        assert await two.revoke_all() == 0
    elif second == "logout-flash":
        two.logout()
        two["flash"] = "signed out"  # a new visitor's session, as after any logout
    else:
        getattr(two, second)()
    # The first gave the browser its cookie; a second, even with a flash to leave for
    # a new visitor's session, must not replace it.
    assert await persistence.commit(two, 200) == []
    assert heard == ["created", "logged_in", "logged_out"]


async def test_a_logout_with_a_flash_leaves_the_browser_to_another_users_parallel_login(
    any_store: Store,
) -> None:
    """alice signs out in one tab (leaving "Signed out" for the next page) while bob
    signs in on another tab of the same browser: bob's login moved the session, so the
    logout ends nothing, and a visitor's session for its flash would replace bob's
    cookie and sign him out in this browser."""
    persistence, heard, cookie = await _alice_heard(any_store)
    logout, bobs = await open_session(persistence, cookie), await open_session(persistence, cookie)
    bobs.login("bob")
    bob = issued(await persistence.commit(bobs, 200))
    heard.clear()
    logout.logout()
    logout.flash("Signed out.")
    assert await persistence.commit(logout, 200) == []  # bob's cookie left alone
    assert heard == []
    assert (await open_session(persistence, bob)).user_id == "bob"
    assert len(await any_store.list_user("bob", persistence.now())) == 1
    assert not logout.pop_flashes()  # nothing of it left to store later


async def test_signing_out_other_devices_keeps_the_session_a_parallel_login_moved(
    any_store: Store,
) -> None:
    """ "Sign out other devices" from a page that loaded before this browser logged in
    again: the session it must keep has moved to a new key, which it ended with the
    phone's, signing the user out here too."""
    persistence = persistence_for(any_store)
    phone = await open_session(persistence, None)
    phone.login("alice")
    await persistence.commit(phone, 200)
    laptop = await open_session(persistence, None)
    laptop.login("alice")
    cookie = issued(await persistence.commit(laptop, 200))
    page, relogin = await open_session(persistence, cookie), await open_session(persistence, cookie)
    relogin.login("alice")
    moved = issued(await persistence.commit(relogin, 200))
    assert await page.revoke_others() == 1
    await persistence.commit(page, 200)
    (kept,) = await any_store.list_user("alice", persistence.now())
    assert kept.key == key_of(moved)


async def test_a_logout_that_finds_the_session_moved_is_refused(any_store: Store) -> None:
    """The same logout, had it loaded its session only after the login was stored: it
    finds nothing, and ends nothing, so it answers 409 rather than a sign-out that did
    not happen; the browser, which holds the login's cookie by then, tries again. So
    does "log out everywhere", and ending a device, from such a page."""
    clock = FakeClock()
    persistence = Persistence(any_store, SessionConfig(clock=clock), None)
    first = await open_session(persistence, None)
    first.login("alice")
    cookie = issued(await persistence.commit(first, 200))
    header = {"headers": [(b"cookie", f"__Host-session={cookie}".encode())]}
    late = [Session(persistence, header) for _ in range(3)]
    clock.advance(1)
    relogin = await open_session(persistence, cookie)
    relogin.login("alice")
    moved = issued(await persistence.commit(relogin, 200))

    logout, everywhere, device = late
    await logout.load()
    logout.logout()
    with pytest.raises(SessionEndedError, match="moved to a new ID"):
        await persistence.commit(logout, 200)
    await everywhere.load()
    with pytest.raises(SessionEndedError, match="moved to a new ID"):
        await everywhere.revoke_all()
    await device.load()
    with pytest.raises(SessionEndedError, match="moved to a new ID"):
        await device.revoke("any")
    assert (await open_session(persistence, moved)).user_id == "alice"
    # A browser that never got the login's answer is not refused for ever: signing
    # out from the old cookie ends nothing, as for any unknown cookie.
    clock.advance(ARRIVAL_SLACK)
    gone = await open_session(persistence, cookie)
    gone.logout()
    assert await persistence.commit(gone, 200) == []


async def test_a_logout_of_a_visitor_whose_session_a_login_moved_is_refused(
    any_store: Store,
) -> None:
    """An anonymous session destroyed while another tab logs in: the moved session is
    now the user's, found in no list this request can name, so it answers 409 and the
    login stands rather than being ended by a page of the visitor it was."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    login, forget = await open_session(persistence, cookie), await open_session(persistence, cookie)
    login.login("alice")
    moved = issued(await persistence.commit(login, 200))
    forget.destroy()
    with pytest.raises(SessionEndedError, match="moved to a new ID"):
        await persistence.commit(forget, 200)
    kept = await open_session(persistence, moved)
    assert (kept.user_id, dict(kept)) == ("alice", {"cart": ["apple"]})


async def test_a_save_that_builds_the_very_record_a_merge_stored_still_merges(
    any_store: Store,
) -> None:
    """Three increments, and two of them arrive at the same bytes: one merged onto the
    first's save, one built on it, at the same clock reading (FakeClock, or a coarse
    clock). Redis took the second for a resent copy of the first, and lost it."""
    persistence = Persistence(any_store, SessionConfig(clock=FakeClock()), None)
    first = await open_session(persistence, None)
    first["n"] = 0
    cookie = issued(await persistence.commit(first, 200))
    c, a = await open_session(persistence, cookie), await open_session(persistence, cookie)

    def add(session: Session) -> None:
        session.modify("n", lambda n: n + 1, default=0)

    add(c)
    await persistence.commit(c, 200)
    b = await open_session(persistence, cookie)
    add(a)
    await persistence.commit(a, 200)  # merged onto c's save
    add(b)
    await persistence.commit(b, 200)  # the same bytes as a's, from c's save: must merge
    assert dict(await open_session(persistence, cookie)) == {"n": 3}


async def test_reload_after_a_save_that_merged_finds_nothing_unsaved(any_store: Store) -> None:
    """The merged data was kept in this request's key order, not the stored one: encoded
    again it differed, and reload() refused with "save() first" right after the save."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first["list"] = []
    cookie = issued(await persistence.commit(first, 200))
    a, b = await open_session(persistence, cookie), await open_session(persistence, cookie)
    b["theirs"] = 1
    await b.save()
    assert a["list"] == []  # a mutable value handed out: compared by its encoding
    a["ours"] = 2
    await a.save()  # merged onto b's save
    await a.reload()
    assert dict(a) == {"list": [], "theirs": 1, "ours": 2}


@pytest.mark.parametrize("elsewhere", ["logout", "login as bob"])
async def test_a_password_change_that_a_parallel_end_overtook_is_refused(
    any_store: Store, elsewhere: str
) -> None:
    """ "Sign out everywhere, then sign me back in", while another tab of the browser
    signed out (or in as bob): that end wins, as any logout does, and the password
    change gets a 409 rather than signing the browser in again."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first.login("alice")
    cookie = issued(await persistence.commit(first, 200))
    a, b = await open_session(persistence, cookie), await open_session(persistence, cookie)
    if elsewhere == "logout":
        b.logout()
    else:
        b.login("bob")
    await persistence.commit(b, 200)
    assert await a.revoke_all() == 0  # nothing of alice's left to end
    a.login("alice")
    with pytest.raises(SessionEndedError):
        await persistence.commit(a, 200)
    now = persistence.now()
    assert await any_store.list_user("alice", now) == []
    assert len(await any_store.list_user("bob", now)) == (elsewhere == "login as bob")


async def test_a_password_change_is_counted_against_a_refusing_limit() -> None:
    """Its login replaces a session it ended itself: a new device, which a login from
    another browser between its check and its save may have taken the last place of."""
    store = MeanwhileStore()
    config = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    persistence = Persistence(store, config, None)
    first = await open_session(persistence, None)
    first.login("alice")
    cookie = issued(await persistence.commit(first, 200))
    changing = await open_session(persistence, cookie)
    assert await changing.revoke_all() == 1
    changing.login("alice")

    async def other_browser() -> None:
        other = await open_session(persistence, None)
        other.login("alice")  # the place is free: alice's one session has ended
        await persistence.commit(other, 200)

    store.meanwhile = other_browser
    with pytest.raises(SessionLimitError):
        await persistence.commit(changing, 200)
    assert len(await store.list_user("alice", persistence.now())) == 1


async def test_a_login_that_merges_with_a_parallel_save_stays_logged_in(any_store: Store) -> None:
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    a, b = await open_session(persistence, cookie), await open_session(persistence, cookie)
    a["theme"] = "dark"
    assert await persistence.commit(a, 200) == []
    b.login("alice", remember=True)
    after = await open_session(persistence, issued(await persistence.commit(b, 200)))
    assert (after.user_id, after.remember) == ("alice", True)
    assert dict(after) == {"cart": ["apple"], "theme": "dark"}


async def test_a_saved_modify_is_not_applied_again_by_a_later_merge(any_store: Store) -> None:
    """After its save, a request that changes more (a streaming body, a background task)
    and then meets a parallel save re-applies only what it changed since."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first["cart"] = []
    cookie = issued(await persistence.commit(first, 200))
    a = await open_session(persistence, cookie)
    a.modify("cart", lambda cart: [*cart, "apple"])
    assert await persistence.commit(a, 200) == []
    other = await open_session(persistence, cookie)
    other["theme"] = "dark"
    assert await persistence.commit(other, 200) == []
    a["late"] = True
    assert await persistence.commit(a, 200) == []
    stored = dict(await open_session(persistence, cookie))
    assert stored == {"cart": ["apple"], "theme": "dark", "late": True}


async def test_a_value_held_across_a_merged_save_stays_the_sessions(any_store: Store) -> None:
    """A stream that saves as it goes and keeps appending to the list it was handed:
    a save that merged with a parallel one must not leave that list behind."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first["cart"] = []
    cookie = issued(await persistence.commit(first, 200))
    a, other = await open_session(persistence, cookie), await open_session(persistence, cookie)
    cart = a["cart"]
    cart.append("step 1")
    other["theme"] = "dark"
    assert await persistence.commit(other, 200) == []
    assert await persistence.commit(a, 200) == []  # merged with the theme
    assert a["cart"] is cart
    cart.append("step 2")
    assert await persistence.commit(a, 200) == []
    stored = dict(await open_session(persistence, cookie))
    assert stored == {"cart": ["step 1", "step 2"], "theme": "dark"}


@pytest.mark.parametrize(
    ("after_modify", "expected"),
    [
        (lambda session: session.__setitem__("n", 100), {"n": 100, "other": 1}),
        (lambda session: session.__delitem__("n"), {"other": 1}),
        (lambda session: session.clear(), {"other": 1}),
        (lambda session: session.pop("n"), {"other": 1}),
    ],
    ids=["set", "del", "clear", "pop"],
)
async def test_a_value_set_after_modify_is_not_recomputed_by_a_merge(
    any_store: Store, after_modify: Any, expected: dict[str, Any]
) -> None:
    """What the request did last to a key wins: a merge re-runs ``modify()`` only for
    keys still left to it."""
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first["n"] = 5
    cookie = issued(await persistence.commit(first, 200))
    a, other = await open_session(persistence, cookie), await open_session(persistence, cookie)
    a.modify("n", lambda n: n + 1)
    after_modify(a)
    other["other"] = 1
    assert await persistence.commit(other, 200) == []
    await persistence.commit(a, 200)
    assert dict(await open_session(persistence, cookie)) == expected


@pytest.mark.parametrize(
    ("query", "answers"), [("&save=1", [200, 401]), ("", [200, 409])], ids=["save", "commit"]
)
async def test_a_change_that_refuses_a_parallel_save_is_withdrawn(
    any_store: Store, query: str, answers: list[int]
) -> None:
    """A ``modify()`` change may raise when run again on what a parallel request saved
    (a one-time code used meanwhile). From ``save()`` the app gets its own error and
    answers (401), its request's other changes stored; raised at the commit, after the
    app answered, it is a conflict: a 409, nothing of that request stored, never a 500."""
    app = make_app(any_store, 2)
    async with client_for(app) as client:
        cookie = await seeded(client, {"cart": ["apple"]})
        path = f"/change/use-code?value=123456{query}"
        assert sorted(await race(client, cookie, path, path)) == answers
        data = (await final(client, cookie))["data"]
    assert data == {"cart": ["apple"], "used": ["123456"], "tried": "123456"}


async def test_a_withdrawn_change_leaves_the_key_to_the_stored_value(any_store: Store) -> None:
    persistence = persistence_for(any_store)
    first = await open_session(persistence, None)
    first["used"] = []
    cookie = issued(await persistence.commit(first, 200))
    a, other = await open_session(persistence, cookie), await open_session(persistence, cookie)
    a.modify("used", partial(_use_once, "1"))
    a.modify("used", partial(_use_once, "2"))
    a["theme"] = "dark"
    other.modify("used", partial(_use_once, "2"))
    await persistence.commit(other, 200)
    with pytest.raises(CodeUsed):
        await a.save()
    assert a["used"] == []  # both calls on the key are taken back, as loaded
    assert await persistence.commit(a, 200) == []
    assert dict(a) == {"used": ["2"], "theme": "dark"}
    assert dict(await open_session(persistence, cookie)) == {"used": ["2"], "theme": "dark"}


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[str, int]]:
    """A random interleaving of load i / save i (each load before its save)."""
    count = draw(st.integers(min_value=2, max_value=5))
    pending = [[("load", i), ("save", i)] for i in range(count)]
    order: list[tuple[str, int]] = []
    while any(pending):
        choices = [i for i, steps in enumerate(pending) if steps]
        pick = draw(st.sampled_from(choices))
        order.append(pending[pick].pop(0))
    return order


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_no_interleaving_of_loads_and_saves_loses_an_update(kind: str) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(schedule=schedules(), modify_too=st.booleans())
    def run(schedule: list[tuple[str, int]], modify_too: bool) -> None:
        anyio.run(check, schedule, modify_too)

    async def check(schedule: list[tuple[str, int]], modify_too: bool) -> None:
        async with fresh_store(kind) as store:
            persistence = persistence_for(store)
            first = await open_session(persistence, None)
            first["base"] = "kept"
            header = dict(await persistence.commit(first, 200))[b"set-cookie"].decode()
            cookie = header.split(";", 1)[0].split("=", 1)[1]
            sessions: dict[int, Session] = {}
            for step, i in schedule:
                if step == "load":
                    sessions[i] = await open_session(persistence, cookie)
                    continue
                session = sessions[i]
                session[f"key{i}"] = i
                if modify_too:
                    session.modify("log", lambda log, i=i: [*log, i], default=[])
                assert await persistence.commit(session, 200) == []
            data = dict(await open_session(persistence, cookie))
            requests = len(sessions)
            expected: dict[str, Any] = {"base": "kept", **{f"key{i}": i for i in range(requests)}}
            if modify_too:
                assert sorted(data.pop("log")) == list(range(requests))
            assert data == expected

    run()


# -- giving up -------------------------------------------------------------------------


class AlwaysContended:
    """A real store whose saves always lose the race, as under a flood of writers."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        if expected_version is not None:
            raise SessionConflictError("still contended")
        return await self.inner.save(record, replaces=replaces)


async def test_exhausted_retries_fail_loudly_with_409(any_store: Store) -> None:
    app = make_app(AlwaysContended(any_store), parties=1)  # type: ignore[arg-type]
    async with client_for(app) as client:
        cookie = await seeded(client, {"n": 0})
        response = await client.post("/change/set?key=n&value=1", headers=cookie)
        assert response.status_code == 409
        assert "retry" in response.json()["detail"]
        assert "set-cookie" not in response.headers
        assert (await final(client, cookie))["data"] == {"n": 0}


async def test_redis_gives_up_after_a_bounded_number_of_merges() -> None:
    from coatcheck.stores.redis import RedisStore

    async with fresh_store("redis") as store:
        assert isinstance(store, RedisStore)
        record = SessionRecord(
            key="k" * 64, public_id="p", data=b"{}", user_id=None,
            created_at=1.0, last_seen_at=2.0, expires_at=4e9,
        )  # fmt: skip
        await store.save(record)
        merges = 0

        def merge(base: SessionRecord) -> SessionRecord:
            # A rival writer lands between every attempt, so each one loses again.
            nonlocal merges
            merges += 1
            with redis_servers.active().standalone().client() as rival:
                rival.hincrby(f"{store.prefix}:s:{{{record.key}}}", "v", 1)
            return base._replace(version=base.version + 1)

        with pytest.raises(SessionConflictError):
            await store.save(record._replace(version=2), expected_version=0, merge=merge)
        assert 2 <= merges <= 100


async def test_tasks_of_one_request_that_load_at_once_share_one_load(any_store: Store) -> None:
    """``asyncio.gather`` of two parts that each ask for the session: the second load
    waits for the first, rather than replace the data the first part changed."""
    import asyncio

    async def part(session: Session, name: str) -> None:
        await session.load()
        session[name] = True

    async def both(request: Request) -> Response:
        session = request.scope["session"]
        assert isinstance(session, Session)
        await asyncio.gather(part(session, "a"), part(session, "b"))
        return JSONResponse(dict(session))

    async def read(request: Request) -> Response:
        return JSONResponse(dict(await Session.of(request).load()))

    async def reseed(request: Request) -> Response:
        session = await Session.of(request).load()
        session.clear()
        session["seed"] = 1
        return JSONResponse({})

    routes = [Route("/both", both, methods=["POST"]), Route("/read", read)]
    app = Starlette(routes=[*routes, Route("/clear", reseed, methods=["POST"])])
    app.add_middleware(SessionMiddleware, store=any_store)
    async with client_for(app) as client:
        response = await client.post("/both")
        assert response.json() == {"a": True, "b": True}
        cookie = {"cookie": response.headers["set-cookie"].split(";", 1)[0]}
        await client.post("/clear", headers=cookie)
        # A stored session, whose load takes a round trip to the store.
        response = await client.post("/both", headers=cookie)
        assert response.json() == {"a": True, "b": True, "seed": 1}
        assert (await client.get("/read", headers=cookie)).json() == response.json()


class SaveMeanwhile(CountingStore):
    """Runs ``meanwhile`` once, while the next save awaits the store: another task of the
    same request (a stream's producer, ``asyncio.gather``) acting at that moment."""

    meanwhile: Any = None

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return await super().save(record, **options)


async def _reopened(
    inner: Store, data: dict[str, Any] | None = None, user: str | None = None
) -> tuple[SaveMeanwhile, Persistence, str, Session]:
    """A session stored with ``data`` (and ``user`` logged in), opened again by a new
    request: the store, the persistence, the cookie and that request's session."""
    store = SaveMeanwhile(inner)
    persistence = persistence_for(store)
    first = await open_session(persistence, None)
    first.update(data or {})
    if user is not None:
        first.login(user)
    cookie = issued(await persistence.commit(first, 200))
    return store, persistence, cookie, await open_session(persistence, cookie)


class BeforeDelete(CountingStore):
    """Runs ``meanwhile`` once, right before the next delete reaches the store (and
    not at a save, as :class:`DeleteMeanwhile` would)."""

    meanwhile: Any = None

    async def delete(self, key: str) -> None:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        await super().delete(key)


async def test_a_save_a_moment_behind_an_emptying_is_refused_rather_than_deleted_after_it(
    any_store: Store,
) -> None:
    """A visitor's flash shown (the session emptied) while another tab stores a theme,
    on a process whose clock is half a second behind: the record written to end the
    session was dead only from the emptying request's "now", so that save merged onto
    it, answered 200, and was deleted with it. A 409 says it was not stored."""
    store = BeforeDelete(any_store)
    emptying = Persistence(store, SessionConfig(), None)
    behind = Persistence(store, SessionConfig(clock=lambda: time.time() - 0.5), None)
    first = await open_session(emptying, None)
    first["flash"] = "hi"
    cookie = issued(await emptying.commit(first, 200))
    tab, shown = await open_session(behind, cookie), await open_session(emptying, cookie)
    del shown["flash"]

    async def meanwhile() -> None:
        tab["theme"] = "dark"
        with pytest.raises(SessionEndedError):
            await behind.commit(tab, 200)

    store.meanwhile = meanwhile
    await emptying.commit(shown, 200)
    assert store.meanwhile is None  # the tab's save ran between the end and the delete
    assert await _stored_data(emptying, cookie) is None


async def _stored_data(persistence: Persistence, cookie: str) -> dict[str, Any] | None:
    record = await persistence.store.load(key_of(cookie), persistence.now())
    return None if record is None else persistence.serializer.loads(record.data)


@pytest.mark.parametrize("merged", [False, True], ids=["alone", "after-a-parallel-save"])
async def test_a_change_made_while_a_save_is_on_its_way_is_stored_by_the_next(
    any_store: Store, merged: bool
) -> None:
    """The save stores what it sent; what another task of the request changed while it
    awaited the store stays unsaved, for the next save, rather than being taken for
    saved. After a parallel request's save too, whose change the merge keeps."""
    store, persistence, cookie, session = await _reopened(any_store, {"seed": 0})
    if merged:
        other = await open_session(persistence, cookie)
        other["other"] = True
        await persistence.commit(other, 200)
    session["order"] = "pending"
    session.modify("count", lambda n: n + 1, default=0)

    async def meanwhile() -> None:
        session["coupon"] = "used"
        session.modify("count", lambda n: n + 10, default=0)

    store.meanwhile = meanwhile
    await persistence.commit(session, 200)
    assert session["coupon"] == "used"
    await persistence.commit(session, 200)

    expected = {"seed": 0, "order": "pending", "count": 11, "coupon": "used"}
    assert await _stored_data(persistence, cookie) == (
        {**expected, "other": True} if merged else expected
    )
    assert await persistence.commit(session, 200) == []  # nothing left to store
    assert store.calls["save"] == 3 + merged


async def test_a_change_made_while_an_emptying_save_is_on_its_way_is_kept(
    any_store: Store,
) -> None:
    """A visitor's last value removed (the flash shown), while a parallel request of
    the browser added one, so the session lives on: what another task of this request
    set while that save awaited the store was taken for the merge's outcome and lost."""
    store, persistence, cookie, session = await _reopened(any_store, {"flash": "hi"})
    other = await open_session(persistence, cookie)
    other["theme"] = "dark"
    await persistence.commit(other, 200)
    del session["flash"]

    async def meanwhile() -> None:
        session["coupon"] = "used"
        session.modify("count", lambda n: n + 1, default=0)

    store.meanwhile = meanwhile
    await persistence.commit(session, 200)
    assert dict(session) == {"coupon": "used", "count": 1}
    await persistence.commit(session, 200)
    assert await _stored_data(persistence, cookie) == {
        "theme": "dark",
        "coupon": "used",
        "count": 1,
    }
    assert await persistence.commit(session, 200) == []


@pytest.mark.parametrize("parallel", ["before", "after"])
async def test_a_modify_made_while_a_save_is_on_its_way_is_merged_as_a_modify(
    any_store: Store, parallel: str
) -> None:
    """A ``modify()`` another task made while the save awaited the store is left for the
    next save as a ``modify()``: recomputed on what a parallel request stored (before
    the first save, which merges, or after it), not written over it as a plain value,
    nor counted twice."""
    store, persistence, cookie, session = await _reopened(any_store, {"count": 0})
    session["order"] = "pending"

    async def parallel_increment() -> None:
        other = await open_session(persistence, cookie)
        other.modify("count", lambda n: n + 1, default=0)
        assert await persistence.commit(other, 200) == []

    async def meanwhile() -> None:
        session.modify("count", lambda n: n + 10, default=0)

    if parallel == "before":
        await parallel_increment()
    store.meanwhile = meanwhile
    await persistence.commit(session, 200)
    if parallel == "after":
        await parallel_increment()
    await persistence.commit(session, 200)
    assert await _stored_data(persistence, cookie) == {"count": 11, "order": "pending"}
    assert session["count"] == 11


async def test_a_save_from_code_that_runs_during_the_same_save_is_an_error(
    any_store: Store,
) -> None:
    """A store (or anything else the save awaits) that saves the session again, in the
    save's own task: told so, rather than waiting for ever on its own turn."""
    store, persistence, _, session = await _reopened(any_store, {"count": 0})
    session["count"] = 1

    async def meanwhile() -> None:
        await persistence.commit(session, 200)

    store.meanwhile = meanwhile
    with anyio.fail_after(5), pytest.raises(RuntimeError, match="being saved"):
        await persistence.commit(session, 200)


async def test_a_logout_made_while_a_save_is_on_its_way_ends_the_session(
    any_store: Store,
) -> None:
    store, persistence, cookie, session = await _reopened(any_store, user="alice")
    session["progress"] = 1

    async def meanwhile() -> None:
        session.logout()

    store.meanwhile = meanwhile
    await persistence.commit(session, 200)
    headers = await persistence.commit(session, 200)
    assert dict(headers)[b"set-cookie"].startswith(b"__Host-session=;")
    assert await _stored_data(persistence, cookie) is None
    assert await any_store.list_user("alice", persistence.now()) == []


async def test_a_value_deleted_while_a_save_is_on_its_way_is_deleted_by_the_next(
    any_store: Store,
) -> None:
    store, persistence, cookie, session = await _reopened(any_store, {"coupon": "new"})
    session["order"] = "pending"

    async def meanwhile() -> None:
        del session["coupon"]

    store.meanwhile = meanwhile
    await persistence.commit(session, 200)
    await persistence.commit(session, 200)
    assert await _stored_data(persistence, cookie) == {"order": "pending"}


async def test_a_typed_value_another_task_saves_during_a_save_is_stored(
    any_store: Store,
) -> None:
    """The other task's ``save()`` writes its typed value into the data, then waits for
    the save on its way: that one must leave the change unsaved, for it."""
    import asyncio

    from pydantic import BaseModel

    class Cart(BaseModel):
        items: list[str] = []

    store, persistence, cookie, session = await _reopened(any_store, {"seen": 1})
    cart = session.model("cart", Cart)
    session["order"] = "pending"
    saving: list[asyncio.Task[None]] = []

    async def meanwhile() -> None:
        cart.items.append("pear")
        saving.append(asyncio.ensure_future(session.save()))
        await asyncio.sleep(0)  # it syncs the cart, then waits for its turn

    store.meanwhile = meanwhile
    await persistence.commit(session, 200)
    await saving[0]
    assert await _stored_data(persistence, cookie) == {
        "seen": 1,
        "order": "pending",
        "cart": {"items": ["pear"]},
    }


async def test_a_clear_made_while_a_save_is_on_its_way_is_stored_by_the_next(
    any_store: Store,
) -> None:
    store, persistence, cookie, session = await _reopened(any_store, {"cart": ["apple"]}, "alice")
    session["order"] = "pending"

    async def meanwhile() -> None:
        session.clear()

    store.meanwhile = meanwhile
    await persistence.commit(session, 200)
    await persistence.commit(session, 200)
    assert await _stored_data(persistence, cookie) == {}


class DeleteMeanwhile(SaveMeanwhile):
    """Runs ``meanwhile`` once, while the next delete awaits the store."""

    async def delete(self, key: str) -> None:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        await super().delete(key)


async def test_a_value_set_while_a_logout_deletes_the_record_is_stored_next() -> None:
    """Another task of the request leaves a note while the logout's save deletes the
    session: the note is the new session's, stored by the next save, not dropped."""
    store = DeleteMeanwhile(MemoryStore())
    persistence = persistence_for(store)
    first = await open_session(persistence, None)
    first.login("alice")
    cookie = issued(await persistence.commit(first, 200))
    session = await open_session(persistence, cookie)
    session.logout()

    async def meanwhile() -> None:
        session["flash"] = "signed out"

    store.meanwhile = meanwhile
    headers = await persistence.commit(session, 200)
    assert dict(headers)[b"set-cookie"].startswith(b"__Host-session=;")
    after = await open_session(persistence, issued(await persistence.commit(session, 200)))
    assert (after.user_id, dict(after)) == (None, {"flash": "signed out"})


async def test_a_login_made_while_a_save_is_on_its_way_is_stored_by_the_next(
    any_store: Store,
) -> None:
    """Another task logs the user in while a save of the anonymous session awaits the
    store: the next save moves the session to a new ID, as any login does."""
    store, persistence, cookie, session = await _reopened(any_store, {"cart": ["apple"]})
    session["lang"] = "fr"

    async def meanwhile() -> None:
        session.login("alice")

    store.meanwhile = meanwhile
    assert await persistence.commit(session, 200) == []
    kept = issued(await persistence.commit(session, 200))
    assert kept != cookie
    after = await open_session(persistence, kept)
    assert (after.user_id, dict(after)) == ("alice", {"cart": ["apple"], "lang": "fr"})
    assert await _stored_data(persistence, cookie) is None


async def test_a_merged_save_of_handed_out_values_adopts_the_parallel_change(
    any_store: Store,
) -> None:
    """A request holding a list it was handed merges with a parallel save: it goes on
    with what was stored, and has nothing left to store."""
    store, persistence, cookie, session = await _reopened(any_store, {"cart": ["apple"]})
    other = await open_session(persistence, cookie)
    other["lang"] = "fr"
    assert await persistence.commit(other, 200) == []
    session["cart"].append("pear")
    assert await persistence.commit(session, 200) == []
    assert dict(session) == {"cart": ["apple", "pear"], "lang": "fr"}
    saves = store.calls["save"]
    assert await persistence.commit(session, 200) == []
    assert store.calls["save"] == saves


class SlowLoads(CountingStore):
    """Loads that take a moment, as a store over the network does."""

    async def load(self, key: str, now: float) -> SessionRecord | None:
        import asyncio

        await asyncio.sleep(0.01)
        return await super().load(key, now)


async def test_a_task_that_waits_for_another_tasks_reload_is_not_left_waiting(
    any_store: Store,
) -> None:
    """Two tasks of a websocket reload at once: the second waits for the first's turn,
    and gets it when that reload is done."""
    import asyncio

    persistence = persistence_for(SlowLoads(any_store))
    first = await open_session(persistence, None)
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    session = await open_session(persistence, cookie)
    other = await open_session(persistence, cookie)
    other["lang"] = "fr"
    await persistence.commit(other, 200)
    with anyio.fail_after(5):
        await asyncio.gather(session.reload(), session.reload(), session.save())
    assert dict(session) == {"cart": ["apple"], "lang": "fr"}


async def test_two_saves_of_one_request_at_once_apply_a_modify_once(any_store: Store) -> None:
    """A stream's producer saving while the response start commits: the second save
    waits for the first, rather than merge onto it and count the modify() again."""
    import asyncio

    store, persistence, cookie, session = await _reopened(any_store, {"opened": 0})
    session.modify("opened", lambda n: n + 1, default=0)

    async def meanwhile() -> None:
        await asyncio.sleep(0.01)  # the other save starts now

    store.meanwhile = meanwhile
    await asyncio.gather(persistence.commit(session, 200), persistence.commit(session, 200))
    assert await _stored_data(persistence, cookie) == {"opened": 1}
    assert store.calls["save"] == 2


async def test_a_stream_producer_changing_the_session_as_the_response_starts(
    any_store: Store,
) -> None:
    """FastAPI's EventSourceResponse runs its generator in a task of its own, which
    goes on while the response start awaits the store: its change is stored too."""

    store = SaveMeanwhile(any_store)

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        session = await Session.of(Request(scope)).load()
        session["visits"] = session.get("visits", 0) + 1

        async def producer() -> None:
            session["progress"] = 1

        store.meanwhile = producer
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def read(request: Request) -> Response:
        return JSONResponse(dict(await Session.of(request).load()))

    inner = Starlette(routes=[Route("/read", read), Route("/seed", seed, methods=["POST"])])
    app = SessionMiddleware(
        lambda scope, receive, send: (
            stream(scope, receive, send)
            if scope.get("path") == "/stream"
            else inner(scope, receive, send)
        ),
        store=store,
    )
    async with client_for(app) as client:
        cookie = await seeded(client, {"visits": 0})
        assert (await client.get("/stream", headers=cookie)).status_code == 200
        assert (await client.get("/read", headers=cookie)).json() == {"visits": 1, "progress": 1}


async def test_an_event_hook_that_saves_from_another_task_does_not_hang() -> None:
    """Hooks run once the save is done: one that waits for a task saving the session
    would otherwise wait for the save it is part of, for ever."""
    import asyncio

    from coatcheck._context import current_session

    seen: list[str] = []

    async def hook(event: SessionEvent) -> None:
        session = current_session.get()
        assert session is not None
        session["welcomed"] = True
        await asyncio.gather(session.save())
        seen.append(event.kind)

    async def login(request: Request) -> Response:
        session = await Session.of(request).load()
        session.login("alice")
        return JSONResponse({})

    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/read", read)])
    app.add_middleware(SessionMiddleware, store=MemoryStore(), events=[hook])
    async with client_for(app) as client:
        signed_in = await asyncio.wait_for(client.post("/login"), 10)
        assert signed_in.status_code == 200
        cookie = {"cookie": signed_in.headers["set-cookie"].split(";", 1)[0]}
        assert (await client.get("/read", headers=cookie)).json() == {
            "data": {"welcomed": True},
            "user": "alice",
        }
    assert seen == ["created", "logged_in"]


async def test_a_reload_waits_for_a_save_another_task_is_making(any_store: Store) -> None:
    import asyncio

    store, persistence, _, session = await _reopened(any_store, {"n": 0})
    session["n"] = 1
    reloads: list[asyncio.Task[None]] = []

    async def meanwhile() -> None:
        reloads.append(asyncio.create_task(session.reload()))
        await asyncio.sleep(0.01)  # the reload starts while the save is on its way

    store.meanwhile = meanwhile
    await persistence.commit(session, 200)
    await reloads[0]  # not "this request changed the session"
    assert dict(session) == {"n": 1}


class LoadMeanwhile(CountingStore):
    """Runs ``meanwhile`` once, while the next load awaits the store."""

    meanwhile: Any = None

    async def load(self, key: str, now: float) -> SessionRecord | None:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return await super().load(key, now)


@pytest.mark.parametrize("change", ["set", "in place", "login"])
async def test_a_change_made_while_a_reload_is_on_its_way_is_not_dropped(
    any_store: Store, change: str
) -> None:
    """reload() refuses to drop the request's unsaved changes; one that another task
    made while it read the store was dropped all the same (a login undone too)."""
    store = LoadMeanwhile(any_store)
    persistence = persistence_for(store)
    first = await open_session(persistence, None)
    first["cart"] = ["apple"]
    cookie = issued(await persistence.commit(first, 200))
    session = await open_session(persistence, cookie)

    async def meanwhile() -> None:
        if change == "set":
            session["coupon"] = "used"
        elif change == "in place":
            session["cart"].append("pear")
        else:
            session.login("alice")

    store.meanwhile = meanwhile
    with pytest.raises(RuntimeError, match="during reload"):
        await session.reload()
    await persistence.commit(session, 200)
    if change == "login":
        assert session.user_id == "alice"
        (alice,) = await any_store.list_user("alice", persistence.now())
        assert persistence.decode(alice) == {"cart": ["apple"]}
    else:
        assert await _stored_data(persistence, cookie) == dict(session) != {"cart": ["apple"]}


async def test_changes_after_a_save_the_app_cancelled_are_not_answered_as_stored() -> None:
    """The handler gave its save a deadline, caught the timeout and went on: what it
    stored is not known, and what it changed after cannot be stored. A 503 says so."""
    import asyncio

    class SlowSaves(MemoryStore):
        async def save(self, record: SessionRecord, **kwargs: Any) -> bool:
            await asyncio.sleep(0.5)
            return await super().save(record, **kwargs)

    async def checkout(request: Request) -> Response:
        session = await Session.of(request).load()
        session["order"] = "pending"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(session.save(), 0.05)
        session["coupon"] = "used"
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/checkout", checkout, methods=["POST"])])
    app.add_middleware(SessionMiddleware, store=SlowSaves())
    async with client_for(app) as client:
        answer = await client.post("/checkout")
    assert answer.status_code == 503
    assert "set-cookie" not in answer.headers


async def test_a_login_whose_save_outran_the_apps_deadline_still_gets_its_cookie() -> None:
    """The login was stored, and only its event hooks, run after it, outlasted the
    handler's ``wait_for``: the cookie must go out, or the browser is signed out."""
    import asyncio

    async def slow_hook(event: SessionEvent) -> None:
        await asyncio.sleep(0.3)

    async def login(request: Request) -> Response:
        session = await Session.of(request).load()
        session.login("alice")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(session.save(), 0.1)
        return JSONResponse({})

    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/read", read)])
    app.add_middleware(SessionMiddleware, store=MemoryStore(), events=[slow_hook])
    async with client_for(app) as client:
        signed_in = await client.post("/login")
        assert signed_in.status_code == 200
        cookie = {"cookie": signed_in.headers["set-cookie"].split(";", 1)[0]}
        assert (await client.get("/read", headers=cookie)).json()["user"] == "alice"


class SlowListingAfterLogin(CountingStore):
    """A real store slow to list alice's sessions once her login is stored (the count
    that follows the save under either policy; refuse_login counts before it too): by
    ``delay`` seconds, or for ever when None."""

    def __init__(self, inner: Store, delay: float | None) -> None:
        super().__init__(inner)
        self.delay = delay
        self.slow = False

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        saved = await super().save(record, **options)
        self.slow = self.slow or record.user_id == "alice"
        return saved

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        if self.slow:
            await (anyio.sleep_forever() if self.delay is None else anyio.sleep(self.delay))
        return await super().list_user(user_id, now)


@pytest.mark.parametrize("deadline", ["asyncio", "anyio"])
@pytest.mark.parametrize("policy", ["end_oldest", "refuse_login"])
async def test_a_login_cut_short_after_its_save_landed_still_gets_its_cookie(
    any_store: Store, policy: str, deadline: str
) -> None:
    """The login was stored, and the handler's deadline ran out while it counted the
    user's sessions (a slow index): its cookie went nowhere and no event was heard, so
    the browser was signed out of a login that stands, with its cart in it. anyio's
    deadline (Starlette's, for a stream whose client left) cancels at every await.
    What the handler changes after it is stored as usual: the login is known."""
    import asyncio

    heard: list[str] = []

    async def hook(event: SessionEvent) -> None:
        heard.append(event.kind)

    async def login(request: Request) -> Response:
        session = await Session.of(request).load()
        session.login("alice")
        if deadline == "asyncio":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.save(), 0.1)
        else:
            with anyio.move_on_after(0.1):
                await session.save()
        session["welcome"] = True
        return JSONResponse({})

    store = SlowListingAfterLogin(any_store, 0.3)
    config = SessionConfig(max_sessions_per_user=2, at_session_limit=policy)  # type: ignore[arg-type]
    app = make_app(store, parties=1)
    app.router.routes.append(Route("/login", login, methods=["POST"]))
    app.user_middleware.clear()
    app.add_middleware(SessionMiddleware, store=store, config=config, events=[hook])
    async with client_for(app) as client:
        cart = await seeded(client, {"cart": ["apple"]})
        assert heard == ["created"]
        signed_in = await client.post("/login", headers=cart)
        assert signed_in.status_code == 200
        cookie = {"cookie": signed_in.headers["set-cookie"].split(";", 1)[0]}
        assert await final(client, cookie) == {
            "data": {"cart": ["apple"], "welcome": True},
            "user": "alice",
        }
    assert heard == ["created", "logged_in"]


async def test_a_login_cut_short_while_its_store_hangs_ends_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What follows a stored login outlives a cancellation, but not for ever: a store
    that never answers (no timeout of its own) lets the request end after a while."""
    import asyncio

    from coatcheck import _persist

    monkeypatch.setattr(_persist, "_FINISH_WITHIN", 0.3)

    store = SlowListingAfterLogin(MemoryStore(), None)
    persistence = Persistence(store, SessionConfig(max_sessions_per_user=2), None)
    session = await open_session(persistence, None)
    session.login("alice")
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(persistence.commit(session, 200), 0.1)
    assert asyncio.get_running_loop().time() - started < 5


async def _heard_session(
    heard: list[tuple[str, str | None]],
) -> tuple[Persistence, Session]:
    """bob's stored session, opened again, with hooks that take a moment and note what
    they heard."""
    import asyncio

    async def hook(event: SessionEvent) -> None:
        await asyncio.sleep(0.01)
        heard.append((event.kind, event.user_id))

    persistence = Persistence(MemoryStore(), SessionConfig(), None, (hook,))
    first = await open_session(persistence, None)
    first.login("bob")
    cookie = issued(await persistence.commit(first, 200))
    heard.clear()
    return persistence, await open_session(persistence, cookie)


async def test_events_of_two_tasks_saving_one_session_reach_hooks_in_order() -> None:
    """One task logs in while another waits for its turn to log out: the hooks hear
    the login before the logout."""
    import asyncio

    heard: list[tuple[str, str | None]] = []
    persistence, session = await _heard_session(heard)

    async def log_in() -> None:
        session.login("alice")
        await persistence.commit(session, 200)

    async def log_out() -> None:
        await asyncio.sleep(0)
        session.logout()
        await persistence.commit(session, 200)

    await asyncio.gather(log_in(), log_out())
    assert heard == [
        ("logged_out", "bob"),
        ("created", "alice"),
        ("logged_in", "alice"),
        ("logged_out", "alice"),
    ]


async def test_events_of_a_save_are_heard_though_its_request_is_cut_short() -> None:
    import asyncio

    heard: list[tuple[str, str | None]] = []
    persistence, session = await _heard_session(heard)
    session.login("alice")
    task = asyncio.ensure_future(persistence.commit(session, 200))
    await asyncio.sleep(0.005)  # stored; the hooks are running
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for _ in range(100):
        if len(heard) == 3:
            break
        await asyncio.sleep(0.01)
    assert heard == [("logged_out", "bob"), ("created", "alice"), ("logged_in", "alice")]


def _saving_login(scopes: list[Any], hook: Any, config: SessionConfig | None = None) -> Starlette:
    """An app whose ``/login`` logs alice in and saves at once, noting each request's
    scope in ``scopes`` for ``hook`` to reach the session by."""

    async def login(request: Request) -> Response:
        scopes.append(request.scope)
        session = await Session.of(request).load()
        session.login("alice")
        await session.save()
        return JSONResponse({})

    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/read", read)])
    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=config, events=[hook])
    return app


async def test_a_hook_that_moves_the_session_on_sends_its_own_cookie() -> None:
    """The handler's save logs alice in; its ``logged_in`` hook gives the session a new
    ID and saves: the browser must get that newer cookie, not the login's."""

    async def hook(event: SessionEvent) -> None:
        if event.kind == "logged_in":
            session = Session.of(Request(request_scope[0]))
            session.regenerate()
            await session.save()

    request_scope: list[Any] = []
    app = _saving_login(request_scope, hook)
    async with client_for(app) as client:
        signed_in = await client.post("/login")
        (cookie,) = signed_in.headers.get_list("set-cookie")
        jar = {"cookie": cookie.split(";", 1)[0]}
        assert (await client.get("/read", headers=jar)).json()["user"] == "alice"


async def test_a_refused_login_is_announced_once_though_a_hook_saves() -> None:

    refused: list[str] = []

    async def hook(event: SessionEvent) -> None:
        if event.kind == "login_refused":
            refused.append(event.kind)
            session = Session.of(Request(request_scope[-1]))
            session.flash("Sign out of another device first")
            with contextlib.suppress(SessionLimitError):
                await session.save()

    request_scope: list[Any] = []
    config = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    app = _saving_login(request_scope, hook, config)  # its save refused past the limit: 403
    async with client_for(app) as client:
        assert (await client.post("/login")).status_code == 200
        assert (await client.post("/login")).status_code == 403
    assert refused == ["login_refused"]


async def test_an_event_of_another_task_waits_for_the_one_being_heard() -> None:
    """Hooks never overlap: an event emitted while the last queued one is being heard
    is heard after it."""
    import asyncio

    log: list[str] = []

    async def hook(event: SessionEvent) -> None:
        log.append(f"start {event.kind}")
        await asyncio.sleep(0.05)
        log.append(f"end {event.kind}")

    persistence = Persistence(MemoryStore(), SessionConfig(), None, (hook,))
    session = await open_session(persistence, None)
    session["cart"] = ["apple"]

    async def other() -> None:
        await asyncio.sleep(0.02)  # while "created" is being heard
        await persistence.emit(session, "csrf_rejected", None, "")

    await asyncio.gather(persistence.commit(session, 200), other())
    assert log == ["start created", "end created", "start csrf_rejected", "end csrf_rejected"]


async def test_a_saves_events_wait_for_one_another_task_is_hearing() -> None:
    """The converse: an event heard outside any save ("revoked" from revoke_others())
    holds back the events of a save another task makes meanwhile."""
    import asyncio

    log: list[str] = []

    async def hook(event: SessionEvent) -> None:
        log.append(f"start {event.kind}")
        await asyncio.sleep(0.05 if event.kind == "revoked" else 0.01)
        log.append(f"end {event.kind}")

    persistence = Persistence(MemoryStore(), SessionConfig(), None, (hook,))
    phone = await open_session(persistence, None)
    phone.login("alice")
    await persistence.commit(phone, 200)
    laptop = await open_session(persistence, None)
    laptop.login("alice")
    session = await open_session(persistence, issued(await persistence.commit(laptop, 200)))
    log.clear()

    async def relogin() -> None:
        await asyncio.sleep(0.02)  # while "revoked" is being heard
        session.login("alice")
        await session.save()

    await asyncio.gather(session.revoke_others(), relogin())
    assert log == ["start revoked", "end revoked", "start logged_in", "end logged_in"]
