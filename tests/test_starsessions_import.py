"""Switching from starsessions: its Redis sessions start coatcheck sessions, once each.

The old sessions are minted by starsessions' real middleware and RedisStore, on the
test redis-server.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starsessions import SessionAutoloadMiddleware
from starsessions import SessionMiddleware as StarsessionsMiddleware
from starsessions.stores.redis import RedisStore as StarsessionsStore

from coatcheck import (
    ConfigurationError,
    MemoryStore,
    SessionConfig,
    SessionMiddleware,
    StarletteImport,
    StarsessionsImport,
    StoreError,
)
from coatcheck._imports import JOIN_WINDOW
from coatcheck.session import Session
from coatcheck.testing import FakeClock

from . import apps
from .conftest import client_for, frames_showing, shut_down
from .redis_servers import RedisServer, free_port
from .store_kinds import unique_prefix

pytestmark = pytest.mark.anyio

OLD = "session"
NEW = "__Host-session"


async def mint(redis_server: RedisServer, prefix: str, data: dict[str, Any]) -> str:
    """A session of the app before the switch; returns starsessions' cookie value."""

    async def fill(request: Request) -> Response:
        request.session.update(data)
        return JSONResponse({"ok": True})

    connection = Redis.from_url(redis_server.url)
    app = Starlette(routes=[Route("/fill", fill, methods=["POST"])])
    app.add_middleware(SessionAutoloadMiddleware)
    store = StarsessionsStore(connection=connection, prefix=prefix)
    app.add_middleware(StarsessionsMiddleware, store=store, lifetime=3600)
    try:
        async with client_for(app) as client:
            response = await client.post("/fill")
    finally:
        await connection.aclose()
    value = response.cookies.get(OLD)
    assert value, response.headers
    return value


@asynccontextmanager
async def coatcheck_client(
    settings: StarsessionsImport, clock: FakeClock | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app after the switch, whose shutdown closes the importer's client."""
    config = SessionConfig(starsessions_import=settings)
    if clock is not None:
        config = SessionConfig(starsessions_import=settings, clock=clock)
    app = apps.make_app(MemoryStore(), config)
    try:
        async with client_for(app) as client:
            yield client
    finally:
        await shut_down(app)


async def old_keys(redis_server: RedisServer, prefix: str) -> list[bytes]:
    async with Redis.from_url(redis_server.url) as client:
        return sorted(await client.keys(f"{prefix}*"))


async def test_a_starsessions_session_is_adopted_once_and_logged_in(
    redis_server: RedisServer,
) -> None:
    prefix = f"{unique_prefix()}."
    old_id = await mint(redis_server, prefix, {"user": "alice", "cart": ["apple"]})
    assert await old_keys(redis_server, prefix) == [f"{prefix}{old_id}".encode()]
    settings = StarsessionsImport(url=redis_server.url, prefix=prefix, user_key="user")
    clock = FakeClock()
    async with coatcheck_client(settings, clock) as client:
        response = await client.get("/read", headers={"cookie": f"{OLD}={old_id}"})
        # starsessions' bookkeeping stays behind; the data and the login come over.
        assert response.json() == {"data": {"user": "alice", "cart": ["apple"]}, "user": "alice"}
        cookies = response.headers.get_list("set-cookie")
        assert [c.split("=", 1)[0] for c in cookies] == [NEW, OLD]
        assert cookies[1].startswith(f"{OLD}=null; expires=Thu, 01 Jan 1970")
        new_cookie = {"cookie": f"{NEW}={response.cookies[NEW]}"}
        # The old key is gone. For a minute, the old cookie joins the session it
        # started (the rest of a page's parallel requests); then it adopts nothing.
        assert await old_keys(redis_server, prefix) == []
        clock.advance(JOIN_WINDOW - 1)
        parallel = await client.get("/read", headers={"cookie": f"{OLD}={old_id}"})
        assert parallel.json() == {"data": {"user": "alice", "cart": ["apple"]}, "user": "alice"}
        assert parallel.cookies[NEW] == response.cookies[NEW]
        clock.advance(1)
        replay = await client.get("/read", headers={"cookie": f"{OLD}={old_id}"})
        assert replay.json() == {"data": {}, "user": None}
        assert "set-cookie" not in replay.headers
        assert (await client.get("/read", headers=new_cookie)).json()["user"] == "alice"


async def test_a_login_again_after_the_imports_answer_was_lost_replaces_its_session(
    redis_server: RedisServer,
) -> None:
    """The adopting request logged the user in, and its answer never came back: the old
    key is gone, so the browser, holding only the old cookie, comes back anonymous. Its
    login replaces the session no browser took rather than count as a second device."""
    prefix = f"{unique_prefix()}."
    old_id = await mint(redis_server, prefix, {"user": "alice", "cart": ["apple"]})
    settings = StarsessionsImport(url=redis_server.url, prefix=prefix, user_key="user")
    clock, store = FakeClock(), MemoryStore()
    config = SessionConfig(
        starsessions_import=settings,
        clock=clock,
        max_sessions_per_user=1,
        at_session_limit="refuse_login",
    )
    app = apps.make_app(store, config)
    old = {"cookie": f"{OLD}={old_id}"}
    try:
        async with client_for(app) as client:
            lost = await client.get("/read", headers=old)
            assert lost.json()["user"] == "alice"
            (unheard,) = await store.list_user("alice", clock())
            clock.advance(JOIN_WINDOW + 60)
            assert (await client.get("/read", headers=old)).json() == {"data": {}, "user": None}
            assert (await client.get("/can-login?user=alice", headers=old)).json()["can_login"]
            login = await client.post("/login", headers=old)
            assert login.json()["user"] == "alice", login.text
    finally:
        await shut_down(app)
    (device,) = await store.list_user("alice", clock())
    assert device.public_id != unheard.public_id


async def test_nothing_is_adopted_after_until_or_from_a_cookie_starsessions_never_set(
    redis_server: RedisServer,
) -> None:
    prefix = f"{unique_prefix()}."
    old_id = await mint(redis_server, prefix, {"user": "alice"})
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    closed = StarsessionsImport(url=redis_server.url, prefix=prefix, until=past)
    open_ = StarsessionsImport(url=redis_server.url, prefix=prefix)
    async with coatcheck_client(closed) as client:
        late = await client.get("/read", headers={"cookie": f"{OLD}={old_id}"})
    async with coatcheck_client(open_) as client:
        unknown = await client.get("/read", headers={"cookie": f"{OLD}={'0' * 32}"})
        junk = await client.get("/read", headers={"cookie": f"{OLD}=a b*c"})
    for response in (late, unknown, junk):
        assert response.json() == {"data": {}, "user": None}
        assert "set-cookie" not in response.headers
    assert await old_keys(redis_server, prefix) == [f"{prefix}{old_id}".encode()]


async def test_a_logout_on_the_first_request_ends_the_old_session_too(
    redis_server: RedisServer,
) -> None:
    prefix = f"{unique_prefix()}."
    old_id = await mint(redis_server, prefix, {"user": "alice"})
    settings = StarsessionsImport(url=redis_server.url, prefix=prefix, user_key="user")
    async with coatcheck_client(settings) as client:
        response = await client.post("/logout", headers={"cookie": f"{OLD}={old_id}"})
    assert response.headers["set-cookie"].startswith(f"{OLD}=null;")
    assert await old_keys(redis_server, prefix) == []


async def test_the_old_stores_outage_is_a_503_only_for_requests_that_carry_its_cookie() -> None:
    settings = StarsessionsImport(url=f"redis://127.0.0.1:{free_port()}/0?timeout=0.5")
    async with coatcheck_client(settings) as client:
        old = await client.get("/read", headers={"cookie": f"{OLD}={'a' * 32}"})
        fresh = await client.get("/read")
    assert old.status_code == 503
    assert old.headers["retry-after"]
    assert fresh.json() == {"data": {}, "user": None}


async def test_the_old_cookies_id_stays_out_of_the_frames_an_outage_passes() -> None:
    """Until adopted, the old cookie's ID signs its user in: an app that reports the old
    store's outage to an error tracker (which sends frame locals) must not send it."""
    old_id = "0123456789abcdef0123456789abcdef"
    caught: list[StoreError] = []

    async def read(request: Request) -> Response:
        try:
            await Session.of(request).load()
        except StoreError as exc:
            caught.append(exc)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", read)])
    settings = StarsessionsImport(url=f"redis://127.0.0.1:{free_port()}/0?timeout=0.5")
    app.add_middleware(
        SessionMiddleware, store=MemoryStore(), config=SessionConfig(starsessions_import=settings)
    )
    async with client_for(app) as client:
        assert (await client.get("/", headers={"cookie": f"{OLD}={old_id}"})).status_code == 200
    await shut_down(app)
    assert len(caught) == 1
    assert frames_showing(caught[0], old_id) == []


async def test_the_old_cookie_is_a_credential_for_the_csrf_check(
    redis_server: RedisServer,
) -> None:
    async with coatcheck_client(StarsessionsImport(url=redis_server.url)) as client:
        del client.headers["sec-fetch-site"]  # as from another site's form
        forged = await client.post("/write", headers={"cookie": f"{OLD}={'a' * 32}"})
    assert forged.status_code == 403


async def test_the_middleware_closes_the_old_stores_client(redis_server: RedisServer) -> None:
    settings = StarsessionsImport(url=redis_server.url)
    middleware = SessionMiddleware(
        apps.make_app(MemoryStore()), MemoryStore(), SessionConfig(starsessions_import=settings)
    )
    client = middleware._persistence._importer._client  # type: ignore[union-attr]
    connection = await client.client_id()
    await middleware._persistence.aclose()
    # redis-py reconnects on the next command: a new connection ID means it was closed.
    assert await client.client_id() != connection
    await client.aclose()


def test_settings_that_cannot_work_fail_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        SessionConfig(
            starlette_import=StarletteImport("s" * 32),
            starsessions_import=StarsessionsImport(url="redis://localhost"),
        )
    with pytest.raises(ConfigurationError, match="URL of starsessions' Redis"):
        StarsessionsImport(url="")
    with pytest.raises(ConfigurationError, match="key prefix"):
        StarsessionsImport(url="redis://localhost", prefix="")
    with pytest.raises(ConfigurationError, match="not a valid cookie name"):
        StarsessionsImport(url="redis://localhost", cookie_name="a b")
    config = SessionConfig(starsessions_import=StarsessionsImport(url="redis://h?prefix=x"))
    with pytest.raises(ConfigurationError, match="not in its URL"):
        SessionMiddleware(apps.make_app(MemoryStore()), MemoryStore(), config)


def test_without_redis_py_the_import_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "from coatcheck import MemoryStore, SessionConfig, SessionMiddleware, StarsessionsImport\n"
        "config = SessionConfig(starsessions_import=StarsessionsImport(url='redis://h'))\n"
        "SessionMiddleware(None, MemoryStore(), config)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install 'coatcheck[redis]'" in result.stderr
