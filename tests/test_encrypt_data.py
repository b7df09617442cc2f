"""``SessionConfig(encrypt_data=True)``: what a server-side store keeps of the data is sealed.

On every store: the app reads and writes as before, parallel changes still merge,
a login still keeps the cart; the store itself holds ciphertext bound to each record,
while the user, times and device stay readable for device lists and the CLI. Records
stored before the switch still read, and a rotated key still opens older data.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coatcheck import ConfigurationError, MemoryStore, SessionConfig, SessionMiddleware, Store
from coatcheck._ids import store_key
from coatcheck.fastapi import SessionDep
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import create_session

from .conftest import CountingStore, client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
KEY = "data-sealing-key-" + "k" * 16
OLD_KEY = "an-older-sealing-key-" + "o" * 16
SEALED = SessionConfig(secret_keys=[KEY], encrypt_data=True)


def make_app(
    store: Store, config: SessionConfig = SEALED, tab: SessionConfig | None = None
) -> FastAPI:
    """``tab``: the configuration of the process that serves the other tab in
    ``/meanwhile``, as in a rolling deploy; this one's by default."""
    app = FastAPI()
    other = app if tab is None else make_app(store, tab)

    @app.post("/add/{item}")
    async def add(item: str, session: SessionDep) -> dict[str, Any]:
        session["cart"] = [*session.get("cart", []), item]
        return {"cart": session["cart"]}

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, bool]:
        session.login("alice")
        return {"ok": True}

    @app.post("/meanwhile")
    async def meanwhile(session: SessionDep, cookie: str) -> dict[str, Any]:
        """Load, let another request of the same browser add a pear, then add a plum:
        this save meets the other one's and merges with it."""
        session.get("cart")
        async with client_for(other, headers={"cookie": f"{NAME}={cookie}"}) as tab:
            assert (await tab.post("/add/pear")).status_code == 200
        session["note"] = "plum wanted"
        return {"ok": True}

    @app.post("/reload")
    async def reload(session: SessionDep, cookie: str) -> dict[str, Any]:
        """Load, let another request add a pear, then read the session again."""
        before = session.get("cart")
        async with client_for(app, headers={"cookie": f"{NAME}={cookie}"}) as tab:
            assert (await tab.post("/add/pear")).status_code == 200
        await session.reload()
        return {"before": before, "after": session.get("cart")}

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, Any]:
        devices = await session.devices() if session.user_id else []
        return {"user": session.user_id, "data": dict(session), "devices": len(devices)}

    app.add_middleware(SessionMiddleware, store=store, config=config)
    return app


def ticket(response: httpx.Response) -> str:
    value = response.cookies.get(NAME)
    assert value, response.headers.get_list("set-cookie")
    return value


async def raw_data(store: Store, session_id: str) -> bytes:
    """What the store itself holds of the session's data."""
    record = await store.load(store_key(session_id), time.time())
    assert record is not None
    return record.data


async def test_the_store_holds_only_ciphertext_and_the_app_sees_no_difference(
    any_store: Store,
) -> None:
    async with client_for(make_app(any_store)) as client:
        anonymous = ticket(await client.post("/add/apple"))
        assert b"apple" not in await raw_data(any_store, anonymous)
        signed_in = ticket(await client.post("/login", headers={"cookie": f"{NAME}={anonymous}"}))
        cookie = {"cookie": f"{NAME}={signed_in}"}
        assert (await client.post("/add/fig", headers=cookie)).status_code == 200
        state = (await client.get("/state", headers=cookie)).json()
    assert state == {"user": "alice", "data": {"cart": ["apple", "fig"]}, "devices": 1}
    data = await raw_data(any_store, signed_in)
    assert data.startswith(b"\x00\x01")
    assert b"apple" not in data
    assert b"fig" not in data
    assert b"cart" not in data
    stored = await any_store.load(store_key(signed_in), time.time())
    assert stored is not None
    assert stored.user_id == "alice"  # what device lists and the CLI need stays readable
    assert await any_store.load(store_key(anonymous), time.time()) is None


@pytest.mark.parametrize(
    ("config", "tab"),
    [
        pytest.param(SEALED, None, id="one-process"),
        # Mid-deploy, a process without encrypt_data yet meets what an upgraded one
        # sealed: it reads it, and its merge loses nothing.
        pytest.param(SessionConfig(secret_keys=[KEY]), SEALED, id="rolling-deploy"),
    ],
)
async def test_parallel_changes_still_merge(
    any_store: Store, config: SessionConfig, tab: SessionConfig | None
) -> None:
    async with client_for(make_app(any_store, config, tab=tab)) as client:
        session_id = ticket(await client.post("/add/apple"))
        cookie = {"cookie": f"{NAME}={session_id}"}
        response = await client.post("/meanwhile", params={"cookie": session_id}, headers=cookie)
        assert response.status_code == 200
        state = (await client.get("/state", headers=cookie)).json()
    assert state["data"] == {"cart": ["apple", "pear"], "note": "plum wanted"}
    # Stored by this process's merge: sealed only where this process seals.
    assert (b"pear" in await raw_data(any_store, session_id)) is not config.encrypt_data


async def test_a_reload_opens_what_another_request_sealed(any_store: Store) -> None:
    async with client_for(make_app(any_store)) as client:
        session_id = ticket(await client.post("/add/apple"))
        cookie = {"cookie": f"{NAME}={session_id}"}
        response = await client.post("/reload", params={"cookie": session_id}, headers=cookie)
    assert response.json() == {"before": ["apple"], "after": ["apple", "pear"]}


async def test_sessions_stored_before_the_switch_read_on_and_are_sealed_when_saved() -> None:
    store = MemoryStore()
    async with client_for(make_app(store, SessionConfig(secret_keys=[KEY]))) as client:
        session_id = ticket(await client.post("/add/apple"))
    assert b"apple" in await raw_data(store, session_id)
    cookie = {"cookie": f"{NAME}={session_id}"}
    async with client_for(make_app(store)) as client:
        assert (await client.get("/state", headers=cookie)).json()["data"] == {"cart": ["apple"]}
        await client.post("/add/fig", headers=cookie)
    assert b"apple" not in await raw_data(store, session_id)


async def test_a_rotated_key_still_opens_what_the_old_one_sealed() -> None:
    store = MemoryStore()
    old = SessionConfig(secret_keys=[OLD_KEY], encrypt_data=True)
    rotated = SessionConfig(secret_keys=[KEY, OLD_KEY], encrypt_data=True)
    only_new = SessionConfig(secret_keys=[KEY], encrypt_data=True)
    async with client_for(make_app(store, old)) as client:
        session_id = ticket(await client.post("/add/apple"))
    cookie = {"cookie": f"{NAME}={session_id}"}
    async with client_for(make_app(store, rotated)) as client:
        assert (await client.get("/state", headers=cookie)).json()["data"] == {"cart": ["apple"]}
        await client.post("/add/fig", headers=cookie)  # sealed anew, with the first key
    async with client_for(make_app(store, only_new)) as client:
        state = (await client.get("/state", headers=cookie)).json()
    assert state["data"] == {"cart": ["apple", "fig"]}


async def test_data_that_no_key_opens_is_no_session_and_never_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Data copied from another record (or sealed under a key since dropped) does not
    open: the visitor gets a fresh session, and the operator a warning."""
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        alice = ticket(await client.post("/add/apple"))
        mallory = ticket(await client.post("/add/fig"))
        alices = await store.load(store_key(alice), time.time())
        mallorys = await store.load(store_key(mallory), time.time())
        assert alices is not None
        assert mallorys is not None
        await store.save(mallorys._replace(data=alices.data))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            response = await client.get("/state", headers={"cookie": f"{NAME}={mallory}"})
    assert response.status_code == 200
    assert response.json()["data"] == {}
    assert "none of this process's keys opens" in caplog.text
    assert caplog.text.count("keys opens") == 1  # one line for it, not one per layer
    assert mallory not in caplog.text


@pytest.mark.parametrize("old", ["no keys", "other keys"])
async def test_a_process_that_cannot_open_a_session_leaves_it_to_those_that_can(
    any_store: Store, old: str
) -> None:
    """A rolling deploy that turns encrypt_data on along with secret_keys: a process
    still on the old settings reads a sealed session as none, and its write starts
    another. The sealed one must live on for the processes that hold the keys."""
    config = SessionConfig() if old == "no keys" else SessionConfig(secret_keys=[OLD_KEY])
    async with (
        client_for(make_app(any_store)) as new,
        client_for(make_app(any_store, config)) as previous,
    ):
        session_id = ticket(await new.post("/login"))
        await new.post("/add/apple", headers={"cookie": f"{NAME}={session_id}"})
        cookie = {"cookie": f"{NAME}={session_id}"}
        assert (await previous.get("/state", headers=cookie)).json()["user"] is None
        moved = await previous.post("/add/fig", headers=cookie)
        assert ticket(moved) != session_id
        state = (await new.get("/state", headers=cookie)).json()
    assert state == {"user": "alice", "data": {"cart": ["apple"]}, "devices": 1}


async def test_turned_off_again_sealed_sessions_read_on_and_are_stored_in_the_clear() -> None:
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        session_id = ticket(await client.post("/add/apple"))
    cookie = {"cookie": f"{NAME}={session_id}"}
    async with client_for(make_app(store, SessionConfig(secret_keys=[KEY]))) as client:
        assert (await client.get("/state", headers=cookie)).json()["data"] == {"cart": ["apple"]}
        await client.post("/add/fig", headers=cookie)
    assert b"apple" in await raw_data(store, session_id)
    # Without the key that sealed it, it is no session, and never an error.
    async with client_for(make_app(store, SessionConfig(secret_keys=[OLD_KEY]))) as client:
        await client.post("/add/apple")  # sealed data turns up only now: nothing opens it
    async with client_for(make_app(store)) as client:
        sealed_id = ticket(await client.post("/add/apple"))
    async with client_for(make_app(store, SessionConfig(secret_keys=[OLD_KEY]))) as client:
        response = await client.get("/state", headers={"cookie": f"{NAME}={sealed_id}"})
    assert response.status_code == 200
    assert response.json()["data"] == {}


async def test_a_process_that_does_not_seal_reads_sealed_sessions_without_writing() -> None:
    """A rolling deploy turning encrypt_data on: the older process reads what the newer
    sealed, and a read that hands out the cart (a list) must write nothing, as any
    read; its next change stores it in the clear."""
    store = CountingStore(MemoryStore())
    async with client_for(make_app(store)) as client:
        session_id = ticket(await client.post("/add/apple"))
    cookie = {"cookie": f"{NAME}={session_id}"}
    async with client_for(make_app(store, SessionConfig(secret_keys=[KEY]))) as client:
        saves = store.calls["save"]
        for _ in range(3):
            assert (await client.get("/state", headers=cookie)).json()["data"] == {
                "cart": ["apple"]
            }
        assert store.calls["save"] == saves
        await client.post("/add/fig", headers=cookie)
    assert b"fig" in await raw_data(store, session_id)


async def test_a_merge_with_data_this_process_cannot_open_is_refused_not_emptied(
    any_store: Store,
) -> None:
    """A process that lacks the key a parallel save sealed with (a new key deployed to
    some processes first) must not merge into nothing: 409, and that save stands."""
    old = SessionConfig(secret_keys=[OLD_KEY], encrypt_data=True)
    rotated = SessionConfig(secret_keys=[KEY, OLD_KEY], encrypt_data=True)
    async with client_for(make_app(any_store, old, tab=rotated)) as client:
        session_id = ticket(await client.post("/add/apple"))
        cookie = {"cookie": f"{NAME}={session_id}"}
        response = await client.post("/meanwhile", params={"cookie": session_id}, headers=cookie)
    assert response.status_code == 409
    # No "too many parallel changes": one change, which this process cannot read.
    assert response.json()["detail"].startswith("This session was changed by another request")
    async with client_for(make_app(any_store, rotated)) as client:
        state = (await client.get("/state", headers=cookie)).json()
    assert state["data"] == {"cart": ["apple", "pear"]}


async def test_create_session_stores_what_the_app_would() -> None:
    store = MemoryStore()
    session_id = await create_session(
        store, user_id="alice", data={"cart": ["kiwi"]}, config=SEALED
    )
    assert b"kiwi" not in await raw_data(store, session_id)
    async with client_for(make_app(store)) as client:
        state = (await client.get("/state", headers={"cookie": f"{NAME}={session_id}"})).json()
    assert state == {"user": "alice", "data": {"cart": ["kiwi"]}, "devices": 1}


async def test_encrypting_needs_shared_keys_and_a_server_side_store() -> None:
    with pytest.raises(ConfigurationError, match="encrypt_data needs SessionConfig\\(secret_keys"):
        SessionConfig(encrypt_data=True)
    with pytest.raises(ConfigurationError, match="the cookie store seals whole sessions already"):
        SessionMiddleware(FastAPI(), store=CookieStore(), config=SEALED)
