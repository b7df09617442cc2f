"""Life-cycle events reach the app's hooks; a failing hook never breaks a request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coatcheck import (
    MemoryStore,
    SessionConfig,
    SessionEvent,
    SessionRecord,
    Store,
    StoreUnavailableError,
)
from coatcheck._persist import Persistence
from coatcheck.session import Session
from coatcheck.testing import TEST_BASE_URL, FakeClock

from .apps import make_app
from .conftest import SHORTENED, MeanwhileStore, client_for

pytestmark = pytest.mark.anyio
NAME = "__Host-session"


def ticket(response: httpx.Response) -> dict[str, str]:
    return {"cookie": response.headers["set-cookie"].split(";", 1)[0]}


async def test_the_life_cycle_is_reported(any_store: Store, clock: FakeClock) -> None:
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    config = SessionConfig(idle_timeout=100, absolute_timeout=1000, clock=clock)
    app = make_app(any_store, config, events=[hook])
    async with client_for(app) as client:
        anonymous = ticket(await client.post("/write"))
        alice = ticket(await client.post("/login", headers=anonymous))
        rotated = ticket(await client.post("/regenerate", headers=alice))
        await client.post("/logout", headers=rotated)
        forged = await client.post("/write", headers={"sec-fetch-site": "cross-site", **alice})
        assert forged.status_code == 403
    kinds = [event.kind for event in seen]
    assert kinds == ["created", "logged_in", "rotated", "logged_out", "csrf_rejected"]
    assert {event.at for event in seen} == {clock()}
    assert [event.user_id for event in seen[:4]] == [None, "alice", "alice", "alice"]
    assert seen[1].path == "/login"
    # The client behind each event: who signed in, from where, say for a notice.
    assert {(event.ip_address, event.user_agent) for event in seen} == {
        ("127.0.0.1", "python-httpx/" + httpx.__version__)
    }
    assert seen[0].session  # a public id ...
    assert seen[0].session == seen[1].session  # ... that stays with the device
    for event in seen:
        for value in (anonymous, alice, rotated):
            assert value["cookie"].split("=", 1)[1] not in repr(event)


@pytest.mark.parametrize(("limits", "active", "then"), SHORTENED)
async def test_expiry_is_reported_when_an_expired_session_is_presented(
    any_store: Store,
    clock: FakeClock,
    limits: tuple[int, int],
    active: list[int],
    then: int,
) -> None:
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    long = SessionConfig(idle_timeout=1000, absolute_timeout=10_000, clock=clock)
    idle, absolute = limits
    short = SessionConfig(idle_timeout=idle, absolute_timeout=absolute, clock=clock)
    async with client_for(make_app(any_store, long)) as client:
        alice = ticket(await client.post("/login"))
        for seconds in active:
            clock.advance(seconds)
            assert (await client.get("/read", headers=alice)).json()["user"] == "alice"
    clock.advance(then)
    async with client_for(make_app(any_store, short, events=[hook])) as client:
        for _ in range(2):
            assert (await client.get("/read", headers=alice)).json()["user"] is None
    assert [(event.kind, event.user_id) for event in seen] == [("expired", "alice")] * 2
    # Left in the store: a process whose limits are longer (mid-deploy) still serves it.
    async with client_for(make_app(any_store, long)) as client:
        assert (await client.get("/read", headers=alice)).json()["user"] == "alice"


async def test_revocations_are_reported_with_their_count(any_store: Store) -> None:
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    app = make_app(any_store, events=[hook])
    async with client_for(app) as client:
        devices = [ticket(await client.post("/login")) for _ in range(3)]
    seen.clear()
    # revoke_others() as a handler would call it, on the first device's session.
    persistence = Persistence(any_store, SessionConfig(), None, [hook])
    scope = {"headers": [(b"cookie", devices[0]["cookie"].encode())]}
    session = await Session(persistence, scope).load()
    assert await session.revoke_others() == 2
    assert [(e.kind, e.count, e.user_id) for e in seen] == [("revoked", 2, "alice")]


async def events_of(
    store: Store, cookie: dict[str, str], act: Callable[[Session], Awaitable[object]]
) -> list[tuple[str, int, str | None]]:
    """The events of one request of ``cookie`` that does ``act`` to its session."""
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    persistence = Persistence(store, SessionConfig(), None, [hook])
    scope = {"headers": [(b"cookie", cookie["cookie"].encode())]}
    session = await Session(persistence, scope).load()
    await act(session)
    await persistence.commit(session, 200)
    return [(event.kind, event.count, event.user_id) for event in seen]


async def test_each_ended_session_is_counted_once(any_store: Store) -> None:
    """The request's own session, ended with the others, is counted in ``revoked`` and
    not again as logged_out; a revocation that ended nothing says nothing."""
    async with client_for(make_app(any_store)) as client:
        devices = [ticket(await client.post("/login")) for _ in range(3)]
        alone = ticket(await client.post("/login?user=bob"))
    assert await events_of(any_store, devices[0], Session.revoke_all) == [("revoked", 3, "alice")]
    assert await events_of(any_store, alone, Session.revoke_others) == []

    async def own(session: Session) -> None:
        (device,) = await session.devices()
        assert await session.revoke(device.id)

    assert await events_of(any_store, alone, own) == [("revoked", 1, "bob")]


async def test_signing_back_in_after_ending_every_session_is_one_request(
    any_store: Store,
) -> None:
    """A password change: every session ends, this browser signs in again. The login
    found its own request had ended the session it replaces, and is no race."""
    async with client_for(make_app(any_store)) as client:
        devices = [ticket(await client.post("/login")) for _ in range(2)]

    async def change_password(session: Session) -> None:
        await session.revoke_all()
        session.login("alice")

    assert await events_of(any_store, devices[0], change_password) == [
        ("revoked", 2, "alice"),
        ("created", 1, "alice"),
        ("logged_in", 1, "alice"),
    ]
    assert len(await any_store.list_user("alice", time.time())) == 1


async def test_each_end_in_a_long_request_is_announced_once(any_store: Store) -> None:
    """Revoked, then a new login stored, then that one logged out: three ends and
    starts, each said once (a websocket can do all of this in one request)."""
    async with client_for(make_app(any_store)) as client:
        alice = ticket(await client.post("/login"))

    async def story(session: Session) -> None:
        (device,) = await session.devices()
        assert await session.revoke(device.id)
        session.login("alice")
        await session.save()
        session.logout()

    assert await events_of(any_store, alice, story) == [
        ("revoked", 1, "alice"),
        ("created", 1, "alice"),
        ("logged_in", 1, "alice"),
        ("logged_out", 1, "alice"),
    ]


async def test_a_revocation_a_parallel_request_overtook_says_and_clears_nothing(
    any_store: Store,
) -> None:
    """A logout (or a login as bob) in another tab ended this session first, announced
    it, and gave the browser its cookie: "sign out everywhere" here ends nothing of
    its own, announces nothing again, and leaves the browser's cookie alone."""
    seen: list[tuple[str, str | None]] = []

    async def hook(event: SessionEvent) -> None:
        seen.append((event.kind, event.user_id))

    persistence = Persistence(any_store, SessionConfig(), None, [hook])
    async with client_for(make_app(any_store)) as client:
        alice = ticket(await client.post("/login"))
    scope = {"headers": [(b"cookie", alice["cookie"].encode())]}
    here, there = await Session(persistence, scope).load(), await Session(persistence, scope).load()
    there.logout()
    await persistence.commit(there, 200)
    assert await here.revoke_all() == 0
    assert await persistence.commit(here, 200) == []  # no cookie cleared
    assert seen == [("logged_out", "alice")]


async def test_revoking_this_device_ends_it_after_another_tab_signed_in_again() -> None:
    """Another tab's login moved the device to a new key, with its public id, after
    the revocation had found it under this request's key: it is ended there, rather
    than reported missing while it stays signed in."""
    store = MeanwhileStore()
    persistence = Persistence(store, SessionConfig(), None)
    async with client_for(make_app(store)) as client:
        alice = ticket(await client.post("/login"))
    scope = {"headers": [(b"cookie", alice["cookie"].encode())]}
    here, there = await Session(persistence, scope).load(), await Session(persistence, scope).load()
    (device,) = await here.devices()

    async def confirm_password() -> None:
        there.login("alice")
        await persistence.commit(there, 200)

    store.meanwhile = confirm_password
    assert await here.revoke(device.id)
    assert await store.list_user("alice", persistence.now()) == []


async def test_a_login_of_this_request_is_not_whose_session_a_revocation_counts(
    any_store: Store,
) -> None:
    """The record a request loaded before its login(bob) was alice's: bob's
    "sign out everywhere" ended none of bob's sessions."""
    async with client_for(make_app(any_store)) as client:
        alice = ticket(await client.post("/login"))

    async def become_bob(session: Session) -> None:
        session.login("bob")
        assert await session.revoke_all() == 0

    assert await events_of(any_store, alice, become_bob) == [("logged_out", 1, "alice")]


class _WritesFail(MemoryStore):
    down = False

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        if self.down:
            raise StoreUnavailableError("the store went away")
        return await super().save(record, **options)


async def test_revoking_this_device_is_announced_only_once_it_has_ended() -> None:
    store = _WritesFail()
    async with client_for(make_app(store)) as client:
        alice = ticket(await client.post("/login"))
    store.down = True

    async def own(session: Session) -> None:
        (device,) = await session.devices()
        await session.revoke(device.id)

    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    persistence = Persistence(store, SessionConfig(), None, [hook])
    session = await Session(
        persistence, {"headers": [(b"cookie", alice["cookie"].encode())]}
    ).load()
    with pytest.raises(StoreUnavailableError):
        await own(session)
    assert seen == []  # not revoked: alice is still signed in there
    store.down = False
    assert await events_of(store, alice, own) == [("revoked", 1, "alice")]


async def test_a_visitors_session_that_empties_is_not_a_logout(any_store: Store) -> None:
    """A flash shown to a visitor who never signed in, or a cleared cart, ends that
    session's record, but nobody logged out: the counter of logouts must not say so."""
    async with client_for(make_app(any_store)) as client:
        visitor = ticket(await client.post("/write"))
    assert await events_of(any_store, visitor, _clear) == []


async def _clear(session: Session) -> None:
    session.clear()


async def test_revoking_one_device_is_reported_with_its_public_id(any_store: Store) -> None:
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    async with client_for(make_app(any_store)) as client:
        devices = [ticket(await client.post("/login")) for _ in range(2)]
    persistence = Persistence(any_store, SessionConfig(), None, [hook])
    session = await Session(
        persistence, {"headers": [(b"cookie", devices[0]["cookie"].encode())]}
    ).load()
    (other,) = [device for device in await session.devices() if not device.current]
    assert await session.revoke(other.id)
    assert [(e.kind, e.count, e.user_id, e.session) for e in seen] == [
        ("revoked", 1, "alice", other.id)
    ]


async def test_a_failing_hook_is_logged_and_the_request_goes_on(
    any_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(event: SessionEvent) -> None:
        raise RuntimeError("the audit service is down")

    seen: list[str] = []

    async def second(event: SessionEvent) -> None:
        seen.append(event.kind)

    async with client_for(make_app(any_store, events=[broken, second])) as client:
        response = await client.post("/login")
    assert response.status_code == 200
    assert "created" in seen
    assert any(
        record.name == "coatcheck.events" and record.levelno == logging.ERROR
        for record in caplog.records
    )


async def test_a_plain_function_is_a_hook_too(caplog: pytest.LogCaptureFixture) -> None:
    """``queue.put_nowait``, the quick hand-off the docs advise, did its work and was
    then logged as a failed hook at every event: it returns no awaitable."""
    queue: asyncio.Queue[SessionEvent] = asyncio.Queue()
    audited: list[str] = []

    def audit(event: SessionEvent) -> None:
        audited.append(event.kind)

    app = make_app(MemoryStore(), events=[queue.put_nowait, audit])
    with caplog.at_level(logging.ERROR, logger="coatcheck.events"):
        async with client_for(app) as client:
            assert (await client.post("/login")).status_code == 200
    assert [queue.get_nowait().kind for _ in range(queue.qsize())] == ["created", "logged_in"]
    assert audited == ["created", "logged_in"]
    assert not caplog.records


async def test_a_rejected_token_names_the_session_it_was_aimed_at() -> None:
    """A client that sends neither ``Sec-Fetch-Site`` nor ``Origin`` is checked by its
    token, which loads the session: the event said nobody's."""
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    app = make_app(MemoryStore(), events=[hook])
    async with client_for(app) as client:
        alice = ticket(await client.post("/login"))
    plain = httpx.ASGITransport(app=app)  # what curl sends: neither header
    async with httpx.AsyncClient(transport=plain, base_url=TEST_BASE_URL) as client:
        forged = await client.post("/write", headers={**alice, "x-csrf-token": "forged"})
    assert forged.status_code == 403
    assert "token" in forged.json()["detail"]
    login, rejected = seen[1], seen[-1]
    assert rejected.kind == "csrf_rejected"
    assert (rejected.user_id, rejected.session) == ("alice", login.session)


async def test_sessions_a_login_past_the_limit_ends_are_reported(any_store: Store) -> None:
    """Under ``end_oldest``, each session a login ends gets an event of its own, with its
    public id: an audit log sees why the device was signed out."""
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    config = SessionConfig(max_sessions_per_user=2)
    async with client_for(make_app(any_store, config, events=[hook])) as client:
        first = ticket(await client.post("/login"))
        oldest = seen[-1].session  # the first device's public id, from its logged_in
        await client.post("/login")
        seen.clear()
        third = await client.post("/login", headers={"user-agent": "Tablet"})
        assert third.status_code == 200
        assert (await client.get("/read", headers=first)).json()["user"] is None
    newest = seen[-1].session
    assert [(e.kind, e.user_id, e.session) for e in seen] == [
        ("evicted", "alice", oldest),
        ("created", "alice", newest),
        ("logged_in", "alice", newest),
    ]
    assert seen[0].user_agent == "Tablet"  # the login that ended it


async def test_a_session_ended_and_stored_anew_in_one_request_is_reported_as_ended(
    any_store: Store,
) -> None:
    """A logout followed by a flash ("You are signed out"), or a login as someone else,
    ends the session the browser held as surely as a plain logout does."""
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    async def logout_with_message(request: Request) -> Response:
        session = await Session.of(request).load()
        session.logout()
        session.flash("You are signed out.")
        return Response(status_code=204)

    app = make_app(any_store, events=[hook])
    app.router.routes.append(Route("/logout-with-message", logout_with_message, methods=["POST"]))
    async with client_for(app) as client:
        alice = ticket(await client.post("/login"))
        alice_id = seen[-1].session
        seen.clear()
        bob = ticket(await client.post("/login?user=bob", headers=alice))
        bob_id = seen[-1].session
        assert [(e.kind, e.user_id, e.session) for e in seen] == [
            ("logged_out", "alice", alice_id),
            ("created", "bob", bob_id),
            ("logged_in", "bob", bob_id),
        ]
        seen.clear()
        response = await client.post("/logout-with-message", headers=bob)
        assert response.status_code == 204
        anonymous = seen[-1].session
        assert [(e.kind, e.user_id, e.session) for e in seen] == [
            ("logged_out", "bob", bob_id),
            ("created", None, anonymous),
        ]
        assert anonymous not in (alice_id, bob_id)


async def test_a_hook_that_asks_for_the_session_during_its_load_is_told_not_to(
    clock: FakeClock,
) -> None:
    """``expired`` is reported while the session loads; a hook asking for that session
    there gets an error (logged, the request goes on), not a load waiting for itself."""
    from coatcheck import MemoryStore
    from coatcheck.fastapi import get_session

    told: list[str] = []

    async def hook(event: SessionEvent) -> None:
        try:
            await get_session()
        except RuntimeError as exc:
            told.append(str(exc))

    store = MemoryStore()
    long = SessionConfig(idle_timeout=1000, absolute_timeout=10_000, clock=clock)
    async with client_for(make_app(store, long)) as client:
        alice = ticket(await client.post("/login"))
    clock.advance(200)
    short = SessionConfig(idle_timeout=100, absolute_timeout=10_000, clock=clock)
    async with client_for(make_app(store, short, events=[hook])) as client:
        with anyio.fail_after(5):
            read = await client.get("/read", headers=alice)
    assert read.json()["user"] is None
    assert len(told) == 1
    assert "still loading" in told[0]


async def test_remember_turned_on_or_off_is_no_login(any_store: Store) -> None:
    """A new ID, so ``rotated``; audit logs and "new sign-in" notices must not fire."""
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    async with client_for(make_app(any_store, SessionConfig(), events=[hook])) as client:
        alice = ticket(await client.post("/login"))
        remembered = ticket(await client.post("/remember?on=1", headers=alice))
        await client.post("/remember?on=0", headers=remembered)
    assert [event.kind for event in seen] == ["created", "logged_in", "rotated", "rotated"]


async def _parallel(
    store: Store, acts: list[tuple[dict[str, str], Callable[[Session], Awaitable[object]]]]
) -> tuple[list[object], list[SessionEvent]]:
    """Requests run at once, each of a cookie doing one thing to its session; what each
    returned, and the events of all."""
    seen: list[SessionEvent] = []

    async def hook(event: SessionEvent) -> None:
        seen.append(event)

    persistence = Persistence(store, SessionConfig(), None, [hook])

    async def one(cookie: dict[str, str], act: Callable[[Session], Awaitable[object]]) -> object:
        session = await Session(
            persistence, {"headers": [(b"cookie", cookie["cookie"].encode())]}
        ).load()
        result = await act(session)
        await persistence.commit(session, 200)
        return result

    results = await asyncio.gather(*(one(cookie, act) for cookie, act in acts))
    return list(results), seen


def _revoke(public_id: str) -> Callable[[Session], Awaitable[bool]]:
    async def act(session: Session) -> bool:
        return await session.revoke(public_id)

    return act


async def _logout(session: Session) -> None:
    session.logout()


async def _public_id(store: Store, cookie: dict[str, str]) -> str:
    persistence = Persistence(store, SessionConfig(), None, [])
    scope = {"headers": [(b"cookie", cookie["cookie"].encode())]}
    public_id = (await Session(persistence, scope).load()).public_id
    assert public_id
    return public_id


async def test_one_session_ended_by_parallel_requests_is_announced_once(any_store: Store) -> None:
    """A double-clicked "sign out this device", a device that signs out as another
    revokes it, and "sign out everywhere" double-clicked: each session that ended is
    announced (and counted) once, by the request that ended it."""
    for round_ in range(4):
        user = f"user{round_}"
        async with client_for(make_app(any_store)) as client:
            laptop, tablet, phone, watch = [
                ticket(await client.post("/login", params={"user": user})) for _ in range(4)
            ]
        phone_id, watch_id = [await _public_id(any_store, c) for c in (phone, watch)]

        answers, seen = await _parallel(
            any_store, [(laptop, _revoke(phone_id)), (laptop, _revoke(phone_id))]
        )
        assert sorted(answers, key=str) == [False, True], answers
        assert [(e.kind, e.session) for e in seen] == [("revoked", phone_id)]

        _, seen = await _parallel(any_store, [(tablet, _revoke(watch_id)), (watch, _logout)])
        ends = [(e.kind, e.session) for e in seen if e.kind in ("revoked", "logged_out")]
        assert len(ends) == 1, ends

        answers, seen = await _parallel(
            any_store, [(laptop, Session.revoke_all), (laptop, Session.revoke_all)]
        )
        ended = sum(e.count for e in seen if e.kind in ("revoked", "logged_out"))
        assert ended == 2, (answers, [(e.kind, e.count) for e in seen])  # laptop and tablet
