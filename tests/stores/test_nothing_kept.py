"""Nothing of a finished request stays alive: not its session (its data, its ID, its
cookie), held by a connection, a pool's worker or a task the store made while serving
it; and nothing of an event loop closed without a word (no asyncio.run(), no aclose()).
A worker lives for days, and all of that added up."""

from __future__ import annotations

import asyncio
import contextvars
import gc
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from coatcheck import Session, SessionMiddleware
from coatcheck.stores import Store
from coatcheck.stores._loops import LoopWatch
from coatcheck.stores.redis import RedisStore

from ..apps import make_app
from ..conftest import client_for
from ..redis_servers import RedisServer
from ..store_kinds import build_store, unique_prefix

pytestmark = pytest.mark.anyio

VISITORS = 12


def alive() -> list[Session]:
    gc.collect()
    return [found for found in gc.get_objects() if type(found) is Session]


@pytest.mark.parametrize(
    "kind", ["memory", "sqlite", "redis", "redis-cluster", "redis-sentinel", "postgres"]
)
async def test_no_session_outlives_its_request(kind: str, tmp_path: Path) -> None:
    """The store connects lazily, while serving the first requests that need it: a
    burst of them makes it open several connections (and a pool, a loop's watcher)."""
    store: Store = build_store(kind, tmp_path)
    try:
        app = keeping_the_request(make_app(store))
        answers = await visit_at_once(app, "/write", "/read", VISITORS)
        assert [answer.json()["data"] for answer in answers] == [{"n": 1}] * VISITORS
        # A timeout's timer, cancelled, stays in the loop's schedule until it is due.
        await asyncio.sleep(2.5)
        assert alive() == []
    finally:
        await store.aclose()


# Where an app's tools keep the request while it is served (Sentry's integration, a
# request-id middleware, a "global request" helper): its scope holds the session.
the_request: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "the_request", default=None
)


def keeping_the_request(app: Any) -> Any:
    async def outermost(scope: Any, receive: Any, send: Any) -> None:
        token = the_request.set(scope)
        try:
            await app(scope, receive, send)
        finally:
            the_request.reset(token)

    return outermost


async def visit_at_once(app: Any, first: str, then: str, visitors: int) -> list[Any]:
    """Each visitor POSTs ``first`` (one after another) for a session, then all GET
    ``then`` at once: the answers."""
    clients = [client_for(app) for _ in range(visitors)]
    try:
        for client in clients:
            answer = await client.post(first)
            assert answer.status_code == 200
            client.headers["cookie"] = f"__Host-session={answer.cookies['__Host-session']}"
        return await asyncio.gather(*(client.get(then) for client in clients))
    finally:
        for client in clients:
            await client.aclose()


async def signed_in(request: Request) -> Response:
    session = await Session.of(request).load()
    session.login("alice")
    session["notes"] = "n" * 10_000
    return PlainTextResponse("signed in")


async def devices(request: Request) -> Response:
    session = await Session.of(request).load()
    return JSONResponse({"devices": len(await session.devices())})


async def test_no_session_outlives_a_request_that_read_a_long_reply(
    redis_server: RedisServer,
) -> None:
    """A devices page of a user with many sessions: a reply of over 128 KiB, whose
    socket asyncio stopped reading and started again from the request, keeping its
    context (on uvloop it keeps its own)."""
    store = RedisStore.from_url(redis_server.url, prefix=unique_prefix())
    app = Starlette(routes=[Route("/login", signed_in, methods=["POST"]), Route("/", devices)])
    app.add_middleware(SessionMiddleware, store=store)
    try:
        answers = await visit_at_once(app, "/login", "/", 40)
        assert [answer.json() for answer in answers] == [{"devices": 40}] * 40
        await asyncio.sleep(1.5)  # past the store's timeout (see above)
        assert alive() == []
    finally:
        await store.aclose()


def test_a_loop_closed_without_a_word_is_let_go() -> None:
    """Each loop that used a store got a watcher task, which held on to that loop for
    good when it was closed by hand without ``aclose()``."""
    closed: list[str] = []

    async def close(loop: asyncio.AbstractEventLoop) -> None:
        closed.append("closed")

    watch = LoopWatch(close)

    async def use() -> None:
        watch.watch(asyncio.get_running_loop())

    for _ in range(20):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(use())
        loop.close()
    gc.collect()
    assert len(watch._tasks) <= 1
    loops = [found for found in gc.get_objects() if isinstance(found, asyncio.AbstractEventLoop)]
    assert sum(loop.is_closed() for loop in loops) <= 1
    assert closed == []  # nothing was left to close them in
