"""Libraries written for Starlette's synchronous ``request.session``, unchanged, on the
paths listed in ``eager_paths``: Authlib keeps its OAuth state in the session, and
SQLAdmin its login. Both run for real; the OAuth provider's token endpoint is a uvicorn
server on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.starlette_client import OAuth
from fastapi import FastAPI, Request
from sqladmin import Admin, ModelView
from sqladmin.authentication import AuthenticationBackend
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coatcheck import CookieConfig, MemoryStore, Session, SessionConfig, SessionMiddleware
from coatcheck.fastapi import SessionDep

from .conftest import client_for
from .e2e.conftest import served_here

pytestmark = pytest.mark.anyio

NAME = SessionConfig().cookie.name


def session_cookie(response: httpx.Response) -> dict[str, str]:
    return {"cookie": f"{NAME}={response.cookies[NAME]}"}


# -- Authlib -----------------------------------------------------------------------------


async def token_endpoint(request: Request) -> Response:
    form = await request.form()
    return JSONResponse(
        {"access_token": f"token-for-{form['code']}", "token_type": "Bearer", "expires_in": 60}
    )


@pytest.fixture
async def token_url() -> AsyncIterator[str]:
    """An OAuth provider's token endpoint, served over HTTP on a loopback port."""
    provider = Starlette(routes=[Route("/token", token_endpoint, methods=["POST"])])
    async with served_here(provider) as port:
        yield f"http://127.0.0.1:{port}/token"


def oauth_app(token_url: str, store: MemoryStore) -> FastAPI:
    oauth = OAuth()
    oauth.register(
        name="provider",
        client_id="client",
        client_secret="secret",
        authorize_url="https://provider.example/authorize",
        access_token_url=token_url,
    )
    app = FastAPI()

    @app.get("/auth/login")
    async def login(request: Request) -> Response:
        return await oauth.provider.authorize_redirect(request, "https://testserver/auth/back")

    @app.get("/auth/back")
    async def back(request: Request) -> Response:
        try:
            token = await oauth.provider.authorize_access_token(request)
        except OAuthError as exc:
            return JSONResponse({"error": exc.error}, status_code=400)
        return JSONResponse({"access_token": token["access_token"]})

    app.add_middleware(SessionMiddleware, store=store, config=SessionConfig(eager_paths=["/auth"]))
    return app


async def test_authlib_keeps_its_oauth_state_in_the_server_side_session(token_url: str) -> None:
    store = MemoryStore()
    async with client_for(oauth_app(token_url, store)) as client:
        started = await client.get("/auth/login")
        assert started.status_code == 302
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        cookie = session_cookie(started)
        assert await store.count(0) == 1  # the state lives on the server, not in the cookie
        assert state not in started.headers["set-cookie"]

        forged = await client.get("/auth/back?code=c1&state=forged", headers=cookie)
        assert (forged.status_code, forged.json()) == (400, {"error": "mismatching_state"})
        no_session = await client.get(f"/auth/back?code=c1&state={state}")
        assert (no_session.status_code, no_session.json()) == (400, {"error": "mismatching_state"})

        finished = await client.get(f"/auth/back?code=c1&state={state}", headers=cookie)
        assert (finished.status_code, finished.json()) == (200, {"access_token": "token-for-c1"})
        # Authlib took the state out: the same callback again finds none.
        replayed = await client.get(f"/auth/back?code=c1&state={state}", headers=cookie)
        assert (replayed.status_code, replayed.json()) == (400, {"error": "mismatching_state"})


# -- SQLAdmin ----------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Gadget(Base):
    __tablename__ = "gadgets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class GadgetAdmin(ModelView, model=Gadget):
    column_list = (Gadget.id, Gadget.name)


ADMIN_COOKIE = "__Host-admin"


class Backend(AuthenticationBackend):
    """SQLAdmin's documented backend, with the changes coatcheck needs: no cookie session
    of its own (coatcheck's, with a cookie of its own, takes its place on the admin's
    app), and a login that rotates the ID and names the admin."""

    def __init__(self) -> None:
        super().__init__(secret_key="unused: SQLAdmin's own cookie session is removed")
        self.middlewares = []

    async def login(self, request: Request) -> bool:
        form = await request.form()
        if (form.get("username"), form.get("password")) != ("admin", "secret"):
            return False
        Session.of(request).login("admin")
        return True

    async def logout(self, request: Request) -> bool:
        Session.of(request).logout()
        return True

    async def authenticate(self, request: Request) -> bool:
        return Session.of(request).user_id == "admin"


def admin_app(store: MemoryStore, admin_store: MemoryStore) -> FastAPI:
    """The site's login on its session, the admin's on a session (and store) of its own."""
    engine = create_engine(
        "sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool
    )
    Base.metadata.create_all(engine)
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, str]:
        session.login("bob")
        return {}

    @app.post("/logout")
    async def logout(session: SessionDep) -> dict[str, str]:
        session.logout()
        return {}

    @app.get("/me")
    async def me(session: SessionDep) -> dict[str, str | None]:
        return {"user": session.user_id}

    own = SessionConfig(cookie=CookieConfig(name=ADMIN_COOKIE), eager_paths=["/"])
    admin = Admin(
        app,
        engine,
        authentication_backend=Backend(),
        middlewares=[Middleware(SessionMiddleware, store=admin_store, config=own)],
    )
    admin.add_view(GadgetAdmin)
    app.add_middleware(SessionMiddleware, store=store)
    return app


async def test_sqladmin_logs_in_and_out_on_a_server_side_session_of_its_own() -> None:
    store, admin_store = MemoryStore(), MemoryStore()
    async with client_for(admin_app(store, admin_store)) as client:
        anonymous = await client.get("/admin/gadget/list")
        assert anonymous.status_code == 302
        assert urlsplit(anonymous.headers["location"]).path == "/admin/login"

        refused = await client.post("/admin/login", data={"username": "admin", "password": "no"})
        assert refused.status_code == 400
        assert await admin_store.count(0) == 0

        login = await client.post("/admin/login", data={"username": "admin", "password": "secret"})
        assert login.status_code == 302
        # One cookie, the admin's coatcheck session: SQLAdmin sets none of its own.
        names = [value.partition("=")[0] for value in login.headers.get_list("set-cookie")]
        assert names == [ADMIN_COOKIE]
        admin = {"cookie": f"{ADMIN_COOKIE}={login.cookies[ADMIN_COOKIE]}"}
        assert [r.user_id for r in await admin_store.list_user("admin", 0)] == ["admin"]

        # The site's login on the same browser is another session, in another store: each
        # logout ends its own, and the site's device lists never show the admin's.
        site = session_cookie(await client.post("/login"))
        both = {"cookie": f"{admin['cookie']}; {site['cookie']}"}
        assert (await client.get("/me", headers=both)).json() == {"user": "bob"}
        assert await store.count(0) == 1
        assert (await client.get("/admin/gadget/list", headers=both)).status_code == 200
        await client.post("/logout", headers=both)
        assert await store.count(0) == 0
        assert (await client.get("/admin/gadget/list", headers=admin)).status_code == 200

        logout = await client.get("/admin/logout", headers=admin)
        assert logout.status_code == 302
        assert await admin_store.count(0) == 0  # deleted on the server
        after = await client.get("/admin/gadget/list", headers=admin)
        assert after.status_code == 302  # the old cookie is worth nothing
