"""Flash messages: shown once on the next page, across redirects, logins and logouts,
and never lost to a parallel request."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Body, FastAPI
from fastapi.responses import RedirectResponse

from coatcheck import (
    Flash,
    MemoryStore,
    SessionConfig,
    SessionMiddleware,
    SessionRecord,
    StoreFullError,
)
from coatcheck._flash import MAX_WAITING
from coatcheck._persist import Persistence
from coatcheck.fastapi import SessionDep
from coatcheck.session import Session
from coatcheck.stores.base import Merge

from .conftest import client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"


def make_app(store: MemoryStore) -> FastAPI:
    app = FastAPI()

    @app.post("/save")
    async def save(session: SessionDep) -> RedirectResponse:
        session.flash("Saved.", "success")
        return RedirectResponse("/", status_code=303)

    @app.post("/flash/{category}/{message}")
    async def flash(category: str, message: str, session: SessionDep) -> dict[str, bool]:
        session.flash(message, category)
        return {"ok": True}

    @app.get("/")
    async def page(session: SessionDep, category: str | None = None) -> list[list[str]]:
        return [[f.category, f.message] for f in session.pop_flashes(category)]

    @app.get("/slow-page")
    async def slow_page(session: SessionDep) -> list[str]:
        await asyncio.sleep(0.05)  # a parallel request flashes and saves meanwhile
        return [f.message for f in session.pop_flashes()]

    @app.post("/login")
    async def login(session: SessionDep) -> RedirectResponse:
        session.login("alice")
        session.flash("Welcome back.")
        return RedirectResponse("/", status_code=303)

    @app.post("/switch/{user}")
    async def switch(user: str, session: SessionDep) -> RedirectResponse:
        """Another person signs in at the same browser: flashed, then logged in."""
        session.flash(f"Welcome, {user}.")
        session.login(user)
        return RedirectResponse("/", status_code=303)

    @app.post("/switch-after-save/{user}")
    async def switch_after_save(user: str, session: SessionDep) -> RedirectResponse:
        """As /switch, with the message stored by a save before the login."""
        session.flash(f"Welcome, {user}.")
        await session.save()
        session.login(user)
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    async def logout(session: SessionDep) -> RedirectResponse:
        session.logout()
        session.flash("Signed out.")
        return RedirectResponse("/", status_code=303)

    @app.get("/raw")
    async def raw(session: SessionDep) -> dict[str, Any]:
        return {"data": dict(session), "user": session.user_id}

    @app.put("/raw/{key}")
    async def put(key: str, value: Annotated[Any, Body()], session: SessionDep) -> None:
        session[key] = value

    app.add_middleware(SessionMiddleware, store=store)
    return app


def cookie_of(response: httpx.Response) -> dict[str, str]:
    value = response.cookies.get(NAME)
    assert value, response.headers
    return {"cookie": f"{NAME}={value}"}


async def test_a_message_flashed_before_a_redirect_is_shown_once() -> None:
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        response = await client.post("/save")
        assert response.status_code == 303
        headers = cookie_of(response)
        page = await client.get(response.headers["location"], headers=headers)
        assert page.json() == [["success", "Saved."]]
        assert (await client.get("/", headers=headers)).json() == []
        # The visitor is anonymous: once shown, the session holds nothing and is ended.
        assert page.headers["set-cookie"].startswith(f"{NAME}=;")
    assert await store.count(0) == 0


async def test_messages_keep_their_order_and_a_category_can_be_taken_alone() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        headers = cookie_of(await client.post("/flash/info/one"))
        await client.post("/flash/error/two", headers=headers)
        await client.post("/flash/info/three", headers=headers)
        assert (await client.get("/?category=error", headers=headers)).json() == [["error", "two"]]
        assert (await client.get("/", headers=headers)).json() == [
            ["info", "one"],
            ["info", "three"],
        ]


async def test_messages_no_page_shows_do_not_grow_the_session_without_end() -> None:
    """A route that flashes but answers with a fragment never shows them: the oldest
    go, rather than the session reaching its size limit and refusing every write."""
    async with client_for(make_app(MemoryStore())) as client:
        headers = cookie_of(await client.post("/flash/info/0"))
        for number in range(1, MAX_WAITING + 10):
            await client.post(f"/flash/info/{number}", headers=headers)
        shown = [message for _, message in (await client.get("/", headers=headers)).json()]
    assert shown == [str(number) for number in range(10, MAX_WAITING + 10)]


async def test_messages_outlive_a_login_and_follow_a_logout() -> None:
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        anonymous = cookie_of(await client.post("/flash/info/cart%20kept"))
        alice = cookie_of(await client.post("/login", headers=anonymous))
        assert (await client.get("/", headers=alice)).json() == [
            ["info", "cart kept"],
            ["info", "Welcome back."],
        ]
        await client.post("/flash/info/unseen", headers=alice)
        out = await client.post("/logout", headers=alice)
        after = cookie_of(out)
        assert after != alice
        # The logged-in session is gone with its messages; the new one has only its own.
        assert (await client.get("/raw", headers=alice)).json() == {"data": {}, "user": None}
        assert (await client.get("/", headers=after)).json() == [["info", "Signed out."]]


@pytest.mark.parametrize("switch", ["/switch/bob", "/switch-after-save/bob"])
async def test_a_login_as_someone_else_keeps_only_the_messages_flashed_for_them(
    switch: str,
) -> None:
    """Also when a save stored the message before the login: a save forgets its
    pending changes, and with them how the request had known its own messages."""
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        alice = cookie_of(await client.post("/login"))
        await client.post("/flash/info/for%20alice%20only", headers=alice)
        bob = cookie_of(await client.post(switch, headers=alice))
        assert (await client.get("/", headers=bob)).json() == [["info", "Welcome, bob."]]


async def test_a_message_flashed_by_a_parallel_request_is_not_lost() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        headers = cookie_of(await client.post("/flash/info/first"))
        slow = asyncio.create_task(client.get("/slow-page", headers=headers))
        await asyncio.sleep(0.01)
        await client.post("/flash/info/second", headers=headers)
        assert (await slow).json() == ["first"]
        assert (await client.get("/", headers=headers)).json() == [["info", "second"]]
        assert (await client.get("/", headers=headers)).json() == []


async def test_a_malformed_queue_shows_nothing_and_is_replaced_by_the_next_flash() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        headers = cookie_of(await client.put("/raw/_flashes", json="not a list"))
        assert (await client.get("/", headers=headers)).json() == []
        await client.put("/raw/_flashes", json=[{"id": 1, "message": "x"}, "junk"], headers=headers)
        assert (await client.get("/", headers=headers)).json() == []
        await client.post("/flash/info/fine", headers=headers)
        assert (await client.get("/", headers=headers)).json() == [["info", "fine"]]


async def test_only_strings_can_be_flashed() -> None:
    app = FastAPI()
    errors: list[str] = []

    @app.post("/")
    async def bad(session: SessionDep) -> None:
        for message, category in ((42, "info"), ("ok", None)):
            with pytest.raises(TypeError, match="must be strings") as info:
                session.flash(message, category)  # type: ignore[arg-type]
            errors.append(str(info.value))

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        assert (await client.post("/")).status_code == 200
    assert len(errors) == 2


def test_flash_is_a_plain_value() -> None:
    assert Flash("Saved.", "success") == Flash(message="Saved.", category="success")


class _FullStore(MemoryStore):
    """Once ``full``, refuses every write of a live record, as a full Redis does; a
    dead one (an end), which frees room, still goes through."""

    full = False

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        if self.full:
            if record.expires_at > record.last_seen_at:
                raise StoreFullError("the store is full")
            if merge is not None:
                inner = merge

                def merge(base: SessionRecord) -> SessionRecord:
                    merged = inner(base)
                    if merged.expires_at > merged.last_seen_at:
                        raise StoreFullError("the store is full")
                    return merged

        return await super().save(
            record, replaces=replaces, expected_version=expected_version, merge=merge
        )


async def test_showing_the_last_message_on_a_full_store_keeps_what_a_parallel_request_added() -> (
    None
):
    """The page that shows it empties the session, and ends it; a parallel request that
    stored a cart meanwhile makes the end a merge, which needs room: the page gets the
    503, and the cart stays, rather than be deleted with the message."""
    store = _FullStore()
    persistence = Persistence(store, SessionConfig(), None)
    visitor = await Session(persistence, {"headers": []}).load()
    visitor.flash("Saved.")
    headers = dict(await persistence.commit(visitor, 200))
    cookie = [(b"cookie", headers[b"set-cookie"].split(b";")[0])]
    page = await Session(persistence, {"headers": cookie}).load()
    cart = await Session(persistence, {"headers": cookie}).load()
    assert [flash.message for flash in page.pop_flashes()] == ["Saved."]
    cart["cart"] = ["pear"]
    await persistence.commit(cart, 200)
    store.full = True
    with pytest.raises(StoreFullError):
        await persistence.commit(page, 200)
    store.full = False
    again = await Session(persistence, {"headers": cookie}).load()
    assert again.get("cart") == ["pear"]
