"""User ids are plain text on every store, whatever type the app hands over.

A ``str`` Enum or another ``str`` subclass is the text it holds (stores that format it
would file ``"Role.ADMIN"`` where the others file ``"admin"``, and a revocation would
miss it); an ``int`` is refused alike, rather than found by some stores and not others.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coatcheck import MemoryStore, SessionMiddleware, Store
from coatcheck.session import Session
from coatcheck.testing import create_session

from .conftest import client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"


class Role(str, Enum):
    ADMIN = "admin"


class Shout(str):
    """Like markupsafe's Markup: a str subclass with a meaning of its own."""


def make_app(store: Store) -> Starlette:
    async def login(request: Request) -> Response:
        session = await Session.of(request).load()
        session.login(Role.ADMIN)
        session.flash(Shout("Welcome back"), Role.ADMIN)
        return JSONResponse({"user": session.user_id, "type": type(session.user_id).__name__})

    async def state(request: Request) -> Response:
        session = await Session.of(request).load()
        flashes = [(f.category, f.message, type(f.message).__name__) for f in session.pop_flashes()]
        return JSONResponse({"user": session.user_id, "flashes": flashes})

    async def revoke_others(request: Request) -> Response:
        session = await Session.of(request).load()
        return JSONResponse({"revoked": await session.revoke_others()})

    async def can_login(request: Request) -> Response:
        session = await Session.of(request).load()
        try:
            await session.can_login(42)  # type: ignore[arg-type]
        except TypeError as exc:
            return JSONResponse({"refused": str(exc)})
        return JSONResponse({"refused": None})

    routes = [
        Route("/login", login, methods=["POST"]),
        Route("/state", state),
        Route("/revoke-others", revoke_others, methods=["POST"]),
        Route("/can-login", can_login),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SessionMiddleware, store=store)
    return app


def cookie(response: Any) -> dict[str, str]:
    value = response.cookies.get(NAME)
    assert value, response.headers
    return {"cookie": f"{NAME}={value}"}


async def test_a_str_enum_user_is_the_same_user_on_every_store(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        laptop_login = await client.post("/login")
        laptop = cookie(laptop_login)
        phone = cookie(await client.post("/login"))
        first = await client.get("/state", headers=laptop)
        revoked = await client.post("/revoke-others", headers=phone)
        after = await client.get("/state", headers=laptop)

    assert laptop_login.json() == {"user": "admin", "type": "str"}
    assert first.json() == {"user": "admin", "flashes": [["admin", "Welcome back", "str"]]}
    assert revoked.json() == {"revoked": 1}
    assert after.json()["user"] is None
    now = time.time()
    assert [r.user_id for r in await any_store.list_user(Role.ADMIN, now)] == ["admin"]
    assert await any_store.delete_user(Role.ADMIN, now=now) == 1
    assert await any_store.list_user("admin", now) == []


async def test_an_int_user_id_is_refused_alike_on_every_store(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        asked = await client.get("/can-login")
    assert asked.json() == {
        "refused": "user_id must be a string, not int: pass str(user.id) for a number or a UUID"
    }
    with pytest.raises(TypeError, match="not int"):
        await any_store.list_user(42, time.time())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not int"):
        await any_store.delete_user(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("user_id", "words"),
    [("\x00alice", "NUL"), ("\ud800", "lone surrogate"), ("a" * 513, "at most 512")],
)
async def test_create_session_refuses_what_login_refuses(user_id: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        await create_session(MemoryStore(), user_id=user_id)


async def test_create_session_takes_a_str_enum_as_its_text() -> None:
    store = MemoryStore()
    await create_session(store, user_id=Role.ADMIN)
    (record,) = await store.list_user("admin", time.time())
    assert type(record.user_id) is str


async def test_a_str_enum_key_is_stored_as_its_text() -> None:
    async def put(request: Request) -> Response:
        session = await Session.of(request).load()
        session[Role.ADMIN] = ["x"]
        return JSONResponse({"keys": [type(key).__name__ for key in session]})

    app = Starlette(routes=[Route("/put", put, methods=["POST"])])
    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        response = await client.post("/put")
    assert response.status_code == 200
    assert response.json() == {"keys": ["str"]}
