from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from coatcheck import CookieConfig, MemoryStore, SessionConfig, SessionMiddleware
from coatcheck.fastapi import (
    CurrentUser,
    RequiredUser,
    SessionDep,
    SessionErrorBody,
    dependency_of,
    get_session,
    not_authenticated,
    openapi,
    session_responses,
    user_loader,
)

from .conftest import DownStore, client_for

if TYPE_CHECKING:
    from decimal import Decimal as OnlyForTypeCheckers

pytestmark = pytest.mark.anyio


def make_app(config: SessionConfig | None = None) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, bool]:
        session.login("alice")
        return {"ok": True}

    @app.get("/whoami")
    async def whoami(user: CurrentUser) -> dict[str, str | None]:
        return {"user": user}

    @app.get("/private")
    async def private(user: RequiredUser) -> dict[str, str]:
        return {"user": user}

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {"hello": "world"}

    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=config)
    return app


async def test_require_user_answers_401_with_a_json_detail() -> None:
    async with client_for(make_app()) as client:
        response = await client.get("/private")
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    # HTTP requires a challenge on a 401: the scheme /docs shows, as FastAPI's APIKeyCookie.
    assert response.headers["www-authenticate"] == "APIKey"


async def test_current_user_after_login() -> None:
    async with client_for(make_app()) as client:
        assert (await client.get("/whoami")).json() == {"user": None}
        login = await client.post("/login")
        name, _, rest = login.headers["set-cookie"].partition("=")
        headers = {"cookie": f"{name}={rest.split(';')[0]}"}
        assert (await client.get("/whoami", headers=headers)).json() == {"user": "alice"}
        assert (await client.get("/private", headers=headers)).json() == {"user": "alice"}


@pytest.mark.parametrize(("secure", "name"), [(True, "__Host-session"), (False, "session")])
async def test_openapi_declares_the_cookie_the_app_really_uses(secure: bool, name: str) -> None:
    config = SessionConfig(cookie=CookieConfig(secure=secure))
    async with client_for(make_app(config)) as client:
        schema = (await client.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"]["coatcheck"]
    assert scheme["type"] == "apiKey"
    assert scheme["in"] == "cookie"
    assert scheme["name"] == name
    for route in ("/private", "/whoami"):
        assert schema["paths"][route]["get"]["security"] == [{"coatcheck": []}], route
    assert schema["paths"]["/login"]["post"]["security"] == [{"coatcheck": []}]
    assert "security" not in schema["paths"]["/public"]["get"]


async def test_openapi_declares_the_token_header_when_there_is_one() -> None:
    """What a generated client, or the Authorize button of /docs, can send."""
    async with client_for(make_app(SessionConfig(token_header="X-Session-Token"))) as client:
        schema = (await client.get("/openapi.json")).json()
        login = await client.post("/login", headers={"x-session-token": "new"})
        ticket = login.headers["x-session-token"]
        user = await client.get("/private", headers={"x-session-token": ticket})
    scheme = schema["components"]["securitySchemes"]["coatcheck"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-Session-Token")
    assert "__Host-session cookie" in scheme["description"]
    assert schema["paths"]["/private"]["get"]["security"] == [{"coatcheck": []}]
    # A route that only uses the session declares it too: a client generated from the
    # schema sent no header to /login or /logout, whose 204 then ended nothing.
    assert schema["paths"]["/login"]["post"]["security"] == [{"coatcheck": []}]
    assert user.json() == {"user": "alice"}


@pytest.mark.parametrize(
    ("config", "where", "name"),
    [
        (SessionConfig(token_header="X-Session-Token"), "header", "X-Session-Token"),
        (SessionConfig(cookie=CookieConfig(secure=False)), "cookie", "session"),
        (None, "cookie", "__Host-session"),
    ],
)
async def test_a_schema_exported_outside_a_request_names_the_apps_ticket(
    config: SessionConfig | None, where: str, name: str
) -> None:
    """What a script that feeds a client generator does; FastAPI then serves the schema
    it built there at /openapi.json too."""
    app = make_app(config)
    app.openapi()  # outside a request, as a script or an import-time customisation runs it
    schema = openapi(app)
    async with client_for(app) as client:
        served = (await client.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"]["coatcheck"]
    assert (scheme["in"], scheme["name"]) == (where, name)
    assert served == schema


def test_a_schema_names_the_ticket_of_a_configuration_given_by_position() -> None:
    """``app.add_middleware(SessionMiddleware, store, config)``, as Starlette allows."""
    app = FastAPI()

    @app.get("/whoami")
    async def whoami(user: CurrentUser) -> dict[str, str | None]:
        return {"user": user}

    app.add_middleware(SessionMiddleware, MemoryStore(), SessionConfig(token_header="X-Token"))
    scheme = openapi(app)["components"]["securitySchemes"]["coatcheck"]
    assert (scheme["in"], scheme["name"]) == ("header", "X-Token")


def test_a_schema_is_exported_only_for_an_app_with_the_middleware() -> None:
    with pytest.raises(RuntimeError, match=r"SessionMiddleware is not installed.*config="):
        openapi(FastAPI())


def test_a_schema_is_exported_for_a_subclass_of_the_middleware_or_a_mounted_app() -> None:
    """An app's own subclass is its middleware; an API mounted in an app that has the
    middleware takes that app's configuration."""

    class AuditedSessions(SessionMiddleware):
        pass

    config = SessionConfig(cookie=CookieConfig(secure=False, name="sid"))
    own = make_app(None)
    own.user_middleware.clear()
    own.add_middleware(AuditedSessions, store=MemoryStore(), config=config)
    api = FastAPI()

    @api.get("/me")
    async def me(user: CurrentUser) -> dict[str, str | None]:
        return {"user": user}

    for app, given in ((own, None), (api, config)):
        scheme = openapi(app, config=given)["components"]["securitySchemes"]["coatcheck"]
        assert (scheme["in"], scheme["name"]) == ("cookie", "sid")


async def test_get_session_outside_a_request_says_where_it_works() -> None:
    with pytest.raises(RuntimeError, match="outside a request it serves"):
        await get_session()


def test_a_user_check_costs_fastapi_one_dependency() -> None:
    """FastAPI resolves every dependency on every request: the user checks, which also
    carry the cookie scheme, must not bring the session and the scheme as two more."""
    app = make_app()
    for path in ("/private", "/whoami"):
        (route,) = [r for r in app.routes if isinstance(r, APIRoute) and r.path == path]
        (check,) = route.dependant.dependencies
        assert check.dependencies == [], path


async def test_dependency_without_middleware_says_what_is_missing() -> None:
    app = FastAPI()

    @app.get("/")
    async def index(session: SessionDep) -> dict[str, str]:
        return {}

    async with client_for(make_app()) as other:  # a session of another app, just before
        assert (await other.get("/whoami")).status_code == 200
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="https://t") as client:
        with pytest.raises(RuntimeError, match="SessionMiddleware is not installed"):
            await client.get("/")


async def test_plain_def_handlers_read_and_write_the_session() -> None:
    """FastAPI runs ``def`` handlers in a thread: their changes are saved all the same."""
    app = FastAPI()

    @app.post("/cart")
    def add(session: SessionDep) -> dict[str, list[str]]:
        session.setdefault("cart", []).append("apple")
        return {"cart": session["cart"]}

    @app.post("/login")
    def login(session: SessionDep) -> None:
        session.login("alice")

    @app.get("/me")
    def me(user: RequiredUser, session: SessionDep) -> dict[str, object]:
        return {"user": user, "cart": session.get("cart")}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        first = await client.post("/cart")
        cookie = first.headers["set-cookie"].split(";")[0]
        second = await client.post("/cart", headers={"cookie": cookie})
        assert second.json() == {"cart": ["apple", "apple"]}
        assert (await client.get("/me", headers={"cookie": cookie})).status_code == 401
        login = await client.post("/login", headers={"cookie": cookie})
        rotated = login.headers["set-cookie"].split(";")[0]
        assert rotated != cookie
        after = await client.get("/me", headers={"cookie": rotated})
    assert after.json() == {"user": "alice", "cart": ["apple", "apple"]}


# -- user_loader -------------------------------------------------------------------------


@dataclass
class Account:
    name: str
    loaded_in: str  # the thread that loaded it


ACCOUNTS = {"alice", "bob"}


async def load_async(user_id: str) -> Account | None:
    return Account(user_id, threading.current_thread().name) if user_id in ACCOUNTS else None


def load_sync(user_id: str) -> Account | None:
    return Account(user_id, threading.current_thread().name) if user_id in ACCOUNTS else None


class Repository:
    """A loader that holds what it needs, such as a connection pool."""

    async def __call__(self, user_id: str) -> Account | None:
        return await load_async(user_id)


def load_later(user_id: str) -> Awaitable[Account | None]:
    """A plain function that hands back a coroutine, as a wrapper may."""
    return load_async(user_id)


# Each loader, and whether it runs on the event loop (not in the thread pool).
LOADERS: dict[str, tuple[Any, bool]] = {
    "async": (load_async, True),
    "def": (load_sync, False),
    "async __call__": (Repository(), True),
    "partial": (functools.partial(load_async), True),
    "def giving a coroutine": (load_later, True),
}


def loader_app(kind: str = "async") -> FastAPI:
    app = FastAPI()
    loaded = user_loader(LOADERS[kind][0])

    @app.post("/login/{user}")
    async def login(user: str, session: SessionDep) -> None:
        session.login(user)

    @app.get("/account")
    async def account(current: Account = loaded) -> dict[str, str]:
        return {"name": current.name, "thread": current.loaded_in}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    return app


def cookie_of(response: httpx.Response) -> dict[str, str]:
    return {"cookie": f"__Host-session={response.cookies['__Host-session']}"}


CurrentAccount = Annotated[Account, user_loader(load_async)]


async def test_a_test_overrides_a_user_loader_through_dependency_of() -> None:
    """``app.dependency_overrides[load_user]`` cannot reach the dependency that wraps the
    loader; ``dependency_of`` names the one FastAPI resolves."""
    app = FastAPI()

    @app.get("/account")
    async def read(current: CurrentAccount) -> dict[str, str]:
        return {"name": current.name}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    app.dependency_overrides[dependency_of(CurrentAccount)] = lambda: Account("admin", "test")
    async with client_for(app) as client:
        assert (await client.get("/account")).json() == {"name": "admin"}
    assert dependency_of(CurrentAccount) is dependency_of(CurrentAccount.__metadata__[0])
    with pytest.raises(TypeError, match="names no dependency"):
        dependency_of(Account)


@pytest.mark.parametrize("kind", LOADERS)
async def test_user_loader_gives_the_apps_own_user_object(kind: str) -> None:
    async with client_for(loader_app(kind)) as client:
        alice = cookie_of(await client.post("/login/alice"))
        body = (await client.get("/account", headers=alice)).json()
        anonymous = await client.get("/account")
    assert body["name"] == "alice"
    # A plain def loader is kept off the event loop, as FastAPI keeps plain dependencies.
    assert (body["thread"] == threading.main_thread().name) is LOADERS[kind][1]
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "APIKey"
    assert "set-cookie" not in anonymous.headers


@pytest.mark.parametrize("kind", LOADERS)
async def test_a_user_the_loader_no_longer_finds_is_signed_out_everywhere(kind: str) -> None:
    ACCOUNTS.add("carol")
    async with client_for(loader_app(kind)) as client:
        laptop = cookie_of(await client.post("/login/carol"))
        phone = cookie_of(await client.post("/login/carol"))
        assert (await client.get("/account", headers=laptop)).status_code == 200
        ACCOUNTS.discard("carol")  # the account is deleted
        refused = await client.get("/account", headers=laptop)
        assert refused.status_code == 401
        assert "Max-Age=0" in refused.headers["set-cookie"]
        ACCOUNTS.add("carol")  # even if it came back, those sessions stay ended
        try:
            for device in (laptop, phone):
                assert (await client.get("/account", headers=device)).status_code == 401
        finally:
            ACCOUNTS.discard("carol")


class Database:
    """Stands for a request's database session: opened per request, closed after."""

    def __init__(self) -> None:
        self.closed = False


async def open_database() -> AsyncIterator[Database]:
    database = Database()
    try:
        yield database
    finally:
        database.closed = True


DB = Annotated[Database, Depends(open_database)]


async def load_with_db(user_id: str, db: DB) -> tuple[str, Database] | None:
    assert not db.closed
    return (user_id, db) if user_id in ACCOUNTS else None


def load_with_db_in_a_thread(user_id: str, db: DB) -> tuple[str, Database] | None:
    assert not db.closed
    return (user_id, db) if user_id in ACCOUNTS else None


@pytest.mark.parametrize("load", [load_with_db, load_with_db_in_a_thread])
async def test_a_user_loader_shares_the_routes_own_dependencies(load: Any) -> None:
    """A loader that reads the account with the request's database session: the one the
    route changes it with, or the route's change would go to a session nobody commits."""
    app = loader_app()
    loaded = user_loader(load)

    @app.get("/same-db")
    async def same_db(db: DB, current: tuple[str, Database] = loaded) -> dict[str, Any]:
        return {"user": current[0], "same": current[1] is db}

    async with client_for(app) as client:
        alice = cookie_of(await client.post("/login/alice"))
        body = (await client.get("/same-db", headers=alice)).json()
        anonymous = await client.get("/same-db")
        schema = (await client.get("/openapi.json")).json()
    assert body == {"user": "alice", "same": True}
    assert anonymous.status_code == 401
    assert "parameters" not in schema["paths"]["/same-db"]["get"]  # no db= in the query


async def load_unless_disabled(user_id: str, include_disabled: bool = False) -> str | None:
    """A default the app means for its own calls, never for a client to set."""
    return user_id if include_disabled or user_id != "mallory" else None


async def load_from(user_id: str, table: str) -> str | None:
    return f"{user_id} in {table}"


async def load_only_typed(user_id: str, db: DB) -> OnlyForTypeCheckers | None:
    """Its return type exists for type checkers alone, as one imported to avoid a cycle."""
    return user_id if not db.closed else None


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (load_unless_disabled, {"alice": 200, "mallory": 401}),
        (functools.partial(load_from, table="users"), {"alice": 200, "mallory": 200}),
        ({"alice": "alice"}.get, {"alice": 200, "mallory": 401}),
        (load_only_typed, {"alice": 200, "mallory": 200}),
    ],
    ids=["plain default", "partial", "dict.get", "type-checking only"],
)
async def test_only_a_loaders_dependencies_reach_fastapi(load: Any, expected: Any) -> None:
    """Not its plain defaults, nor what a partial bound: as query parameters, a client
    could set them (``?include_disabled=true`` let a disabled account back in)."""
    app = loader_app()
    loaded = user_loader(load)

    @app.get("/who")
    async def who(current: Any = loaded) -> dict[str, Any]:
        return {"user": current}

    query = "?include_disabled=true&table=admins&default=alice&db=1"
    async with client_for(app) as client:
        answers = {}
        for user in expected:
            cookie = cookie_of(await client.post(f"/login/{user}"))
            answers[user] = await client.get(f"/who{query}", headers=cookie)
        schema = (await client.get("/openapi.json")).json()
    assert {user: answer.status_code for user, answer in answers.items()} == expected
    if isinstance(load, functools.partial):
        assert answers["alice"].json() == {"user": "alice in users"}
    assert "parameters" not in schema["paths"]["/who"]["get"]


def test_a_loader_parameter_fastapi_cannot_give_is_refused_at_once() -> None:
    async def load(user_id: str, table: str) -> None:
        return None

    with pytest.raises(TypeError, match=r"'table' .* is neither the user id nor a FastAPI"):
        user_loader(load)


def test_a_user_loader_that_takes_no_user_id_is_refused_at_once() -> None:
    async def load() -> None:
        return None

    with pytest.raises(TypeError, match="must take the user id as its first argument"):
        user_loader(load)


async def test_user_loader_routes_show_the_cookie_in_the_docs() -> None:
    async with client_for(loader_app()) as client:
        schema = (await client.get("/openapi.json")).json()
    assert schema["paths"]["/account"]["get"]["security"] == [{"coatcheck": []}]
    assert "parameters" not in schema["paths"]["/account"]["get"]


async def test_overriding_get_session_reaches_session_dep() -> None:
    """FastAPI's way to stub a dependency in tests: SessionDep had become a dependency of
    its own, which an override of get_session no longer reached."""
    app = make_app()

    @app.get("/who")
    async def who(session: SessionDep) -> dict[str, Any]:
        return {"user": session.get("user")}

    async def stub() -> dict[str, str]:
        return {"user": "alice"}

    app.dependency_overrides[get_session] = stub
    async with client_for(app) as client:
        assert (await client.get("/who")).json() == {"user": "alice"}


async def test_the_answers_coatcheck_gives_can_be_declared_in_the_schema() -> None:
    """coatcheck answers in place of a route (a 503 in an outage, the CSRF guard's
    403): ``session_responses()`` puts those answers in /openapi.json, shaped as sent."""
    store = DownStore()
    app = FastAPI(responses=session_responses())

    @app.post("/cart", responses=session_responses(401))
    async def cart(session: SessionDep) -> dict[str, Any]:
        session["n"] = 1
        return dict(session)

    app.add_middleware(SessionMiddleware, store=store)
    async with client_for(app) as client:
        store.down = True
        unavailable = await client.post("/cart")
        schema = (await client.get("/openapi.json")).json()
    assert unavailable.status_code == 503
    SessionErrorBody(**unavailable.json())  # as the schema shapes it, in Pydantic 1 and 2
    answers = schema["paths"]["/cart"]["post"]["responses"]
    assert set(answers) == {"200", "401", "403", "409", "413", "503"}
    assert answers["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    body = answers["409"]["content"]["application/json"]["schema"]["$ref"]
    assert schema["components"]["schemas"][body.rsplit("/", 1)[1]]["required"] == ["detail"]
    assert set(session_responses(401, 503)) == {401, 503}
    with pytest.raises(ValueError, match=r"coatcheck answers none of \[404\]"):
        session_responses(404)


async def test_a_401_tells_a_session_that_ended_from_nobody_signed_in() -> None:
    """A client (a single-page app) shows "you were signed out" rather than a first
    sign-in when its ticket's session ended: the challenge says so (RFC 6750's
    ``invalid_token``), the body stays FastAPI's."""
    store = MemoryStore()
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> None:
        session.login("alice")

    @app.get("/private")
    async def private(user: RequiredUser) -> str:
        return user

    app.add_middleware(SessionMiddleware, store=store)
    async with client_for(app) as client:
        never = await client.get("/private")
        cookie = {"cookie": (await client.post("/login")).headers["set-cookie"].split(";")[0]}
        assert (await client.get("/private", headers=cookie)).status_code == 200
        assert await store.delete_user("alice") == 1
        ended = await client.get("/private", headers=cookie)
    assert never.headers["www-authenticate"] == "APIKey"
    assert (ended.status_code, ended.json()) == (401, {"detail": "Not authenticated"})
    assert ended.headers["www-authenticate"] == ENDED
    # The same answer from the app's own code.
    assert not_authenticated(ended=True).headers == {"WWW-Authenticate": ENDED}


ENDED = 'APIKey error="invalid_token", error_description="the session has ended"'


async def test_a_user_the_loader_no_longer_finds_is_told_the_session_ended() -> None:
    """The account went away: its sessions end there and then, and the answer says so,
    since the next request, its cookie cleared, can no longer tell."""
    gone: set[str] = set()

    async def load(user_id: str) -> str | None:
        return None if user_id in gone else user_id

    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> None:
        session.login("alice")

    loaded = user_loader(load)

    @app.get("/account")
    async def account(user: str = loaded) -> str:
        return user

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        cookie = {"cookie": (await client.post("/login")).headers["set-cookie"].split(";")[0]}
        gone.add("alice")
        answer = await client.get("/account", headers=cookie)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == ENDED
