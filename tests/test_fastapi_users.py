"""fastapi-users with coatcheck's sessions: its register, login, users and reset routers
run for real, over ``session_backend()`` and a user manager with ``EndSessionsMixin``.
Its users live in a dict (the app's own database); the sessions in real stores."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.db import BaseUserDatabase

from coatcheck import Session, SessionConfig, SessionMiddleware, Store, store_from_url
from coatcheck.fastapi import SessionDep
from coatcheck.fastapi_users import EndSessionsMixin, session_backend
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL

from .store_kinds import build_store

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"


@dataclass
class User:
    email: str
    hashed_password: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False


class UserDB(BaseUserDatabase[User, uuid.UUID]):
    def __init__(self) -> None:
        self.users: dict[uuid.UUID, User] = {}

    async def get(self, id: uuid.UUID) -> User | None:
        return self.users.get(id)

    async def get_by_email(self, email: str) -> User | None:
        return next((u for u in self.users.values() if u.email == email.lower()), None)

    async def create(self, create_dict: dict[str, Any]) -> User:
        user = User(**create_dict)
        self.users[user.id] = user
        return user

    async def update(self, user: User, update_dict: dict[str, Any]) -> User:
        for key, value in update_dict.items():
            setattr(user, key, value)
        return user

    async def delete(self, user: User) -> None:
        del self.users[user.id]


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserUpdate(schemas.BaseUserUpdate):
    pass


class Site:
    """The app, its user database and the reset tokens its user manager would mail."""

    def __init__(self, store: Store, config: SessionConfig | None = None) -> None:
        self.store = store
        self.db = UserDB()
        self.reset_tokens: dict[str, str] = {}
        self.browsers: list[httpx.AsyncClient] = []
        self.logins: list[str] = []  # what on_after_login was told of
        site = self

        class UserManager(
            EndSessionsMixin[User, uuid.UUID], UUIDIDMixin, BaseUserManager[User, uuid.UUID]
        ):
            reset_password_token_secret = verification_token_secret = "s" * 32

            async def on_after_forgot_password(
                self, user: User, token: str, request: Request | None = None
            ) -> None:
                site.reset_tokens[user.email] = token

            async def on_after_login(  # the README's "remember me"
                self,
                user: User,
                request: Request | None = None,
                response: Response | None = None,
            ) -> None:
                site.logins.append(user.email)
                if request is not None and (await request.form()).get("remember") == "on":
                    Session.of(request).remember = True

            async def on_after_update(  # an app's hook that does not call super()
                self, user: User, update_dict: dict[str, Any], request: Request | None = None
            ) -> None:
                pass

        self.manager_class = UserManager

        async def get_user_manager() -> AsyncIterator[UserManager]:
            yield UserManager(self.db)

        self.get_user_manager = get_user_manager
        backend = session_backend()
        users = FastAPIUsers[User, uuid.UUID](get_user_manager, [backend])
        current = users.current_user(active=True)
        app = FastAPI()
        app.include_router(users.get_auth_router(backend), prefix="/auth")
        app.include_router(users.get_register_router(UserRead, UserCreate), prefix="/auth")
        app.include_router(users.get_reset_password_router(), prefix="/auth")
        app.include_router(users.get_users_router(UserRead, UserUpdate), prefix="/users")

        @app.post("/cart")
        async def add(item: str, session: SessionDep) -> list[str]:
            cart: list[str] = session.setdefault("cart", [])
            cart.append(item)
            return cart

        @app.get("/whoami")
        async def whoami(
            session: SessionDep,
            user: User = Depends(current),  # noqa: B008  # a local: not in an Annotated alias
        ) -> dict[str, Any]:
            return {"email": user.email, "cart": session.get("cart", [])}

        app.add_middleware(SessionMiddleware, store=store, config=config)
        self.app = app

    def browser(self) -> httpx.AsyncClient:
        """A client that keeps its cookies, like a browser on the app's own page."""
        browser = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=TEST_BASE_URL, headers=SAME_ORIGIN
        )
        self.browsers.append(browser)
        return browser

    async def aclose(self) -> None:
        for browser in self.browsers:
            await browser.aclose()
        await self.store.aclose()

    async def register(self, email: str, *, superuser: bool = False) -> User:
        credentials = {"email": email, "password": PASSWORD}
        answer = await self.browser().post("/auth/register", json=credentials)
        assert answer.status_code == 201, answer.text
        user = await self.db.get_by_email(email)
        assert user is not None
        user.is_superuser = superuser
        return user

    async def signed_in(self, email: str) -> httpx.AsyncClient:
        browser = self.browser()
        answer = await browser.post("/auth/login", data={"username": email, "password": PASSWORD})
        assert answer.status_code == 204, answer.text
        return browser


@pytest.fixture(params=["sqlite", "redis-cluster", "postgres"])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Site]:
    site = Site(build_store(request.param, tmp_path))
    yield site
    await site.aclose()


@pytest.fixture
async def sqlite_site(tmp_path: Path) -> AsyncIterator[Site]:
    site = Site(build_store("sqlite", tmp_path))
    yield site
    await site.aclose()


async def status_of(browser: httpx.AsyncClient) -> int:
    return (await browser.get("/whoami")).status_code


async def test_login_is_a_server_side_session_that_keeps_the_cart(sqlite_site: Site) -> None:
    await sqlite_site.register("alice@example.com")
    browser = sqlite_site.browser()
    assert (await browser.post("/cart", params={"item": "apple"})).json() == ["apple"]
    anonymous = dict(browser.cookies)
    assert await status_of(browser) == 401

    login = await browser.post(
        "/auth/login", data={"username": "alice@example.com", "password": PASSWORD}
    )
    assert login.status_code == 204
    assert "HttpOnly" in login.headers["set-cookie"]
    assert dict(browser.cookies) != anonymous  # a new session ID at login
    assert (await browser.get("/whoami")).json() == {
        "email": "alice@example.com",
        "cart": ["apple"],
    }
    assert (await browser.get("/users/me")).json()["email"] == "alice@example.com"
    signed_in = dict(browser.cookies)

    assert (await browser.post("/auth/logout")).status_code == 204
    assert not browser.cookies
    assert await status_of(browser) == 401

    # The ticket of the ended session opens nothing: the logout was on the server.
    stolen = sqlite_site.browser()
    stolen.cookies.update(signed_in)
    assert await status_of(stolen) == 401


async def test_remember_me_set_after_the_login_keeps_the_cookie(sqlite_site: Site) -> None:
    await sqlite_site.register("alice@example.com")
    credentials = {"username": "alice@example.com", "password": PASSWORD}
    # The same browser each time: a login unticked after a ticked one is not remembered.
    browser = sqlite_site.browser()
    for remember, persistent in ((None, False), ("on", True), (None, False)):
        form = credentials if remember is None else {**credentials, "remember": remember}
        login = await browser.post("/auth/login", data=form)
        assert login.status_code == 204, login.text
        assert ("Max-Age=" in login.headers["set-cookie"]) is persistent


async def test_a_token_client_signs_in_through_fastapi_users(tmp_path: Path) -> None:
    site = Site(build_store("sqlite", tmp_path), SessionConfig(token_header="X-Session-Token"))
    try:
        await site.register("alice@example.com")
        client = site.browser()
        login = await client.post(
            "/auth/login",
            data={"username": "alice@example.com", "password": PASSWORD},
            headers={"x-session-token": "new"},
        )
        assert login.status_code == 204, login.text
        assert "set-cookie" not in login.headers
        ticket = {"x-session-token": login.headers["x-session-token"]}
        assert (await client.get("/users/me", headers=ticket)).status_code == 200
        logout = await client.post("/auth/logout", headers=ticket)
        assert logout.status_code == 204
        assert logout.headers["x-session-token"] == ""
        assert (await client.get("/users/me", headers=ticket)).status_code == 401
    finally:
        await site.aclose()


async def test_a_login_past_the_limit_is_refused_before_on_after_login(tmp_path: Path) -> None:
    limit = SessionConfig(max_sessions_per_user=1, at_session_limit="refuse_login")
    site = Site(build_store("sqlite", tmp_path), limit)
    try:
        await site.register("alice@example.com")
        laptop = await site.signed_in("alice@example.com")
        phone = site.browser()
        refused = await phone.post(
            "/auth/login", data={"username": "alice@example.com", "password": PASSWORD}
        )
        assert refused.status_code == 403
        assert "too many devices" in refused.json()["detail"]
        assert site.logins == ["alice@example.com"]  # the laptop's alone
        assert await status_of(phone) == 401
        assert await status_of(laptop) == 200
    finally:
        await site.aclose()


async def test_wrong_password_is_fastapi_users_own_answer(sqlite_site: Site) -> None:
    await sqlite_site.register("alice@example.com")
    answer = await sqlite_site.browser().post(
        "/auth/login", data={"username": "alice@example.com", "password": "wrong"}
    )
    assert answer.status_code == 400
    assert answer.json() == {"detail": "LOGIN_BAD_CREDENTIALS"}
    assert "set-cookie" not in answer.headers


async def test_a_password_change_ends_the_other_sessions_and_keeps_this_one(site: Site) -> None:
    await site.register("alice@example.com")
    await site.register("bob@example.com")
    laptop = await site.signed_in("alice@example.com")
    phone = await site.signed_in("alice@example.com")
    bob = await site.signed_in("bob@example.com")
    changed = await laptop.patch("/users/me", json={"password": "a new passphrase"})
    assert changed.status_code == 200, changed.text
    assert await status_of(laptop) == 200
    assert await status_of(phone) == 401
    assert await status_of(bob) == 200  # someone else's sessions stay


async def test_a_change_that_leaves_the_password_alone_ends_nothing(sqlite_site: Site) -> None:
    await sqlite_site.register("alice@example.com")
    laptop = await sqlite_site.signed_in("alice@example.com")
    phone = await sqlite_site.signed_in("alice@example.com")
    changed = await laptop.patch("/users/me", json={"email": "alice@example.org"})
    assert changed.status_code == 200, changed.text
    assert await status_of(phone) == 200


async def reset(site: Site, browser: httpx.AsyncClient, email: str) -> None:
    """The emailed link's flow, opened in ``browser``."""
    forgot = await browser.post("/auth/forgot-password", json={"email": email})
    assert forgot.status_code == 202
    token = site.reset_tokens[email]
    answer = await browser.post(
        "/auth/reset-password", json={"token": token, "password": "a new passphrase"}
    )
    assert answer.status_code == 200, answer.text


async def test_a_password_reset_ends_every_session_of_the_user(site: Site) -> None:
    await site.register("alice@example.com")
    await site.register("bob@example.com")
    alice = await site.signed_in("alice@example.com")
    bob = await site.signed_in("bob@example.com")
    await reset(site, site.browser(), "alice@example.com")
    assert await status_of(alice) == 401
    assert await status_of(bob) == 200
    # Opened in a browser signed in as that user, the reset signs that one out too.
    bobs_tablet = await site.signed_in("bob@example.com")
    await reset(site, bobs_tablet, "bob@example.com")
    assert await status_of(bobs_tablet) == 401
    assert await status_of(bob) == 401


async def test_an_administrator_who_deactivates_or_deletes_a_user_signs_them_out(
    site: Site,
) -> None:
    admin_user = await site.register("admin@example.com", superuser=True)
    alice = await site.register("alice@example.com")
    bob = await site.register("bob@example.com")
    admin = await site.signed_in("admin@example.com")
    alices = await site.signed_in("alice@example.com")
    bobs = await site.signed_in("bob@example.com")

    answer = await admin.patch(f"/users/{alice.id}", json={"is_active": False})
    assert answer.status_code == 200, answer.text
    # Ended by the change itself, not left for their next request to find.
    assert await site.store.list_user(str(alice.id), time.time()) == []
    assert await status_of(alices) == 401

    answer = await admin.delete(f"/users/{bob.id}")
    assert answer.status_code == 204, answer.text
    assert await site.store.list_user(str(bob.id), time.time()) == []
    assert await status_of(bobs) == 401

    # The administrator's own session is not one of theirs.
    assert (await admin.get("/users/me")).json()["id"] == str(admin_user.id)


async def test_an_account_removed_from_the_database_by_hand_is_signed_out_everywhere(
    site: Site,
) -> None:
    alice = await site.register("alice@example.com")
    laptop = await site.signed_in("alice@example.com")
    await site.signed_in("alice@example.com")
    await site.db.delete(alice)
    assert await status_of(laptop) == 401
    # Both ended at the first request that met the missing account.
    assert await site.store.list_user(str(alice.id), time.time()) == []


async def test_outside_a_request_the_sessions_end_through_the_store(
    sqlite_site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await sqlite_site.register("alice@example.com")
    laptop = await sqlite_site.signed_in("alice@example.com")
    manager = sqlite_site.manager_class(sqlite_site.db)
    # A script without a store is told what it left undone.
    with caplog.at_level(logging.WARNING, logger="coatcheck"):
        await manager.update(UserUpdate(password="a second passphrase"), alice)
    assert f"the sessions of user '{alice.id}' were not ended" in caplog.text
    assert await status_of(laptop) == 200

    manager.session_store = sqlite_site.store
    await manager.update(UserUpdate(password="a third passphrase"), alice)
    assert await status_of(laptop) == 401


async def test_a_script_on_the_cookie_store_is_told_it_ends_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_from_url("cookie://")
    site = Site(store, SessionConfig(secret_keys=["k" * 32]))
    try:
        alice = await site.register("alice@example.com")
        manager = site.manager_class(site.db)
        manager.session_store = store
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            await manager.update(UserUpdate(password="a second passphrase"), alice)
        assert "the cookie store reaches no browser from here" in caplog.text
        assert manager.password_helper.verify_and_update(
            "a second passphrase", alice.hashed_password
        )[0]
    finally:
        await site.aclose()


async def test_the_login_routes_show_coatchecks_scheme_in_openapi(sqlite_site: Site) -> None:
    schema = (await sqlite_site.browser().get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["coatcheck"]["in"] == "cookie"
    assert schema["paths"]["/users/me"]["get"]["security"] == [{"coatcheck": []}]
    assert "204" in schema["paths"]["/auth/login"]["post"]["responses"]


def test_the_mixin_must_come_before_the_user_manager() -> None:
    with pytest.raises(TypeError, match="list EndSessionsMixin before BaseUserManager"):

        class Backwards(  # its methods would be BaseUserManager's: no session would end
            UUIDIDMixin, BaseUserManager[User, uuid.UUID], EndSessionsMixin[User, uuid.UUID]
        ):
            pass
