"""App servers whose clocks differ, over one store: NTP keeps them close, not always.

Each server is a ``Persistence`` with a clock of its own; they share the store, as
workers behind a load balancer do.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from coatcheck import SessionConfig, Store
from coatcheck._ids import store_key
from coatcheck._persist import Persistence
from coatcheck.events import SessionEvent
from coatcheck.session import Session
from coatcheck.testing import FakeClock

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
KEY, NEWER_KEY = "k" * 32, "n" * 32


def server(
    store: Store, clock: FakeClock, events: list[SessionEvent] | None = None, **config: Any
) -> Persistence:
    hooks = () if events is None else (events.append,)
    return Persistence(store, SessionConfig(clock=clock, **config), None, hooks)


def cookie(session_id: str | None) -> dict[str, Any]:
    assert session_id is not None
    return {"headers": [(b"cookie", f"{NAME}={session_id}".encode())]}


async def sign_in(persistence: Persistence, **limits: Any) -> str:
    session = await Session(persistence, {"headers": []}).load()
    session.login("alice", **limits)
    await persistence.commit(session, 200)
    assert session._id is not None
    return session._id


async def user_on(persistence: Persistence, session_id: str) -> str | None:
    return (await Session(persistence, cookie(session_id)).load()).user_id


@pytest.mark.parametrize("then", ["nothing", "a flash"])
async def test_a_logout_on_a_server_whose_clock_runs_ahead_ends_the_session_everywhere(
    any_store: Store, then: str
) -> None:
    """To a server ten minutes ahead, a five-minute session is over, but not to the
    others. Its logout must end it all the same: the next person at a shared computer
    would otherwise find the user signed in, on every other server."""
    now, events = time.time(), list[SessionEvent]()
    on_time = server(any_store, FakeClock(now))
    ahead = server(any_store, FakeClock(now + 600), events)
    session_id = await sign_in(on_time, idle_timeout=300)

    leaving = await Session(ahead, cookie(session_id)).load()
    assert leaving.user_id is None
    leaving.logout()
    if then == "a flash":
        leaving["flash"] = ["Signed out"]
    headers = await ahead.commit(leaving, 200)
    assert await user_on(on_time, session_id) is None
    assert await any_store.load(store_key(session_id), 0.0) is None
    # Dead by its clock, as a session long over is: announced as neither.
    assert [event.kind for event in events if event.kind != "created"] == []
    # Its cookie, which names nothing now, is left: it matched no session this server
    # serves, and a parallel login may have replaced it in the browser (below).
    assert (b"set-cookie", ahead.clear_cookie) not in headers


def _stricter_limits(
    store: Store, clock: FakeClock, events: list[SessionEvent]
) -> tuple[Persistence, Persistence]:
    """A rolling deploy that shortens the idle timeout: the session outlives it."""
    return server(store, clock), server(store, clock, events, idle_timeout=600)


def _newer_key(
    store: Store, clock: FakeClock, events: list[SessionEvent]
) -> tuple[Persistence, Persistence]:
    """A rolling deploy that adds a secret key: the processes that have it seal with it
    first, and those without it yet cannot open what they sealed."""
    return (
        server(store, clock, secret_keys=[NEWER_KEY, KEY], encrypt_data=True),
        server(store, clock, events, secret_keys=[KEY], encrypt_data=True),
    )


@pytest.mark.parametrize(
    ("deploy", "announced"), [(_stricter_limits, ["expired"]), (_newer_key, ["logged_out"])]
)
async def test_a_logout_on_a_process_that_serves_no_session_ends_it_for_those_that_do(
    any_store: Store, deploy: Any, announced: list[str]
) -> None:
    """Mid-deploy, a process may not serve a session that the others do. A logout it
    serves ends it for them too, and the end is announced once: as the expiry the
    process took it for, or as a logout of a session it could not open."""
    clock, events = FakeClock(), list[SessionEvent]()
    serving, other = deploy(any_store, clock, events)
    session_id = await sign_in(serving)
    clock.advance(900)

    leaving = await Session(other, cookie(session_id)).load()
    assert leaving.user_id is None
    leaving.logout()
    await other.commit(leaving, 200)
    assert await user_on(serving, session_id) is None
    assert [event.kind for event in events] == announced


async def test_a_save_dated_far_in_this_clocks_future_is_refreshed_by_a_read(
    any_store: Store,
) -> None:
    """A server whose clock is behind (or was set back) by most of the idle timeout
    sees the last save far in its future: by its own throttle it would refresh the
    session only after Redis, on its own clock, had ended it at the idle timeout. The
    first read writes the expiry back."""
    now = time.time()
    ahead, on_time = FakeClock(now + 1450), FakeClock(now)  # idle 1800 s, refreshes at 180
    session_id = await sign_in(server(any_store, ahead))
    persistence = server(any_store, on_time)
    reading = await Session(persistence, cookie(session_id)).load()
    assert reading.user_id == "alice"
    await persistence.commit(reading, 200)
    stored = await any_store.load(store_key(session_id), 0.0)
    assert stored is not None
    assert stored.last_seen_at == on_time()
    assert stored.expires_at == on_time() + 1800


async def test_servers_minutes_apart_refresh_a_session_once_per_window(any_store: Store) -> None:
    """Reads that alternate between two servers 200 s apart: each finds the last save
    old or in its future by more than the 180 s refresh window, and would write it back
    every time if both counted. The session is written back as often as on one server."""
    now = time.time()
    clocks = FakeClock(now + 200), FakeClock(now)
    servers = [server(any_store, clock) for clock in clocks]
    session_id = await sign_in(servers[0])
    first = await any_store.load(store_key(session_id), 0.0)
    for turn in range(40):  # 400 s
        for clock in clocks:
            clock.advance(10)
        reading = await Session(servers[turn % 2], cookie(session_id)).load()
        assert reading.user_id == "alice"
        await servers[turn % 2].commit(reading, 200)
    last = await any_store.load(store_key(session_id), 0.0)
    assert first is not None
    assert last is not None
    assert 1 <= last.version - first.version <= 3


async def test_a_late_logout_with_a_dead_cookie_leaves_a_parallel_logins_cookie(
    any_store: Store,
) -> None:
    """One tab logs out and another logs in, both with a cookie whose session is over
    (its record not purged yet); the login's answer comes first. The logout ends the old
    record, but must not clear the cookie the login just handed the browser: that would
    sign the user out and leave the login's session stored, held by no browser."""
    clock = FakeClock()
    persistence = server(any_store, clock)
    session_id = await sign_in(persistence, idle_timeout=300)
    clock.advance(400)
    leaving = await Session(persistence, cookie(session_id)).load()
    again = await Session(persistence, cookie(session_id)).load()
    again.login("alice")
    await persistence.commit(again, 200)

    leaving.logout()
    headers = await persistence.commit(leaving, 200)
    assert not [value for name, value in headers if name == b"set-cookie"]
    assert await user_on(persistence, again._id or "") == "alice"
