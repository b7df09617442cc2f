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
from coatcheck.session import Session
from coatcheck.testing import FakeClock

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
KEY, NEWER_KEY = "k" * 32, "n" * 32


def server(store: Store, clock: FakeClock, **config: Any) -> Persistence:
    return Persistence(store, SessionConfig(clock=clock, **config), None)


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
    now = time.time()
    on_time, ahead = server(any_store, FakeClock(now)), server(any_store, FakeClock(now + 600))
    session_id = await sign_in(on_time, idle_timeout=300)

    leaving = await Session(ahead, cookie(session_id)).load()
    assert leaving.user_id is None
    leaving.logout()
    if then == "a flash":
        leaving["flash"] = ["Signed out"]
    headers = await ahead.commit(leaving, 200)
    assert await user_on(on_time, session_id) is None
    assert await any_store.load(store_key(session_id), 0.0) is None
    if then == "nothing":
        assert (b"set-cookie", ahead.clear_cookie) in headers


def _stricter_limits(store: Store, clock: FakeClock) -> tuple[Persistence, Persistence]:
    """A rolling deploy that shortens the idle timeout: the session outlives it."""
    return server(store, clock), server(store, clock, idle_timeout=600)


def _newer_key(store: Store, clock: FakeClock) -> tuple[Persistence, Persistence]:
    """A rolling deploy that adds a secret key: the processes that have it seal with it
    first, and those without it yet cannot open what they sealed."""
    return (
        server(store, clock, secret_keys=[NEWER_KEY, KEY], encrypt_data=True),
        server(store, clock, secret_keys=[KEY], encrypt_data=True),
    )


@pytest.mark.parametrize("deploy", [_stricter_limits, _newer_key])
async def test_a_logout_on_a_process_that_serves_no_session_ends_it_for_those_that_do(
    any_store: Store, deploy: Any
) -> None:
    """Mid-deploy, a process may not serve a session that the others do. A logout it
    serves ends it for them too."""
    clock = FakeClock()
    serving, other = deploy(any_store, clock)
    session_id = await sign_in(serving)
    clock.advance(900)

    leaving = await Session(other, cookie(session_id)).load()
    assert leaving.user_id is None
    leaving.logout()
    await other.commit(leaving, 200)
    assert await user_on(serving, session_id) is None


async def test_a_save_dated_in_this_clocks_future_is_refreshed_by_a_read(
    any_store: Store,
) -> None:
    """A server whose clock is behind (or was set back) by more than the refresh
    window sees the last save in its future, and would never refresh the session
    while Redis, on its own clock, ends it at the idle timeout: the first read writes
    the expiry back. A save less far ahead is left to the usual throttle."""
    now = time.time()
    ahead, on_time = FakeClock(now + 170), FakeClock(now)
    session_id = await sign_in(server(any_store, ahead))  # refreshes every 180 s
    persistence = server(any_store, on_time)
    reading = await Session(persistence, cookie(session_id)).load()
    assert reading.user_id == "alice"
    assert persistence.settled(reading)

    ahead.advance(20)  # its next save is 190 s in the future of the other clock
    session_id = await sign_in(server(any_store, ahead))
    reading = await Session(persistence, cookie(session_id)).load()
    assert not persistence.settled(reading)
    await persistence.commit(reading, 200)
    stored = await any_store.load(store_key(session_id), 0.0)
    assert stored is not None
    assert stored.last_seen_at == on_time()
    assert stored.expires_at == on_time() + 1800
