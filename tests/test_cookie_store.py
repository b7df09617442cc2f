"""The cookie store: the whole session sealed in its cookie, and nothing on the server.

What it must keep of coatcheck's promises (strict cookies, server-checked expiry,
rotation at login, CSRF bound to the session, clear errors) and what it honestly gives
up (revocation elsewhere, device lists), each shown by a request through the middleware.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import string
import struct
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from coatcheck import (
    ConfigurationError,
    CookieConfig,
    NotSupportedError,
    SessionConfig,
    SessionMiddleware,
    SessionRecord,
    SessionTooLargeError,
    store_from_url,
)
from coatcheck._ids import new_session_id, store_key
from coatcheck._keys import Keyring
from coatcheck._sealing import CookieSealer
from coatcheck.fastapi import SessionDep, user_loader
from coatcheck.stores.cookie import CookieStore
from coatcheck.testing import FakeClock, create_session

from . import test_csrf
from .conftest import client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"
KEY_A = "a-secret-key-of-at-least-16-bytes"
KEY_B = "another-secret-key-of-16-bytes-or-more"
MARKER = "pear-tart-recipe-7f3a"


def make_app(
    keys: list[str] | None = None,
    clock: FakeClock | None = None,
    store: CookieStore | None = None,
    **options: object,
) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep, remember: bool = False) -> dict[str, str]:
        session.login("alice", remember=remember)
        return {}

    @app.post("/logout")
    async def logout(session: SessionDep) -> Response:
        session.logout()
        return Response(status_code=204)

    @app.post("/add")
    async def add(session: SessionDep, item: str = MARKER) -> dict[str, object]:
        session.setdefault("cart", []).append(item)
        return {"cart": session["cart"]}

    @app.post("/empty")
    async def empty(session: SessionDep) -> dict[str, object]:
        session.pop("cart", None)
        return {}

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, object]:
        return {"user": session.user_id, "cart": session.get("cart"), "id": session.public_id}

    @app.get("/devices")
    async def devices(session: SessionDep) -> list[str]:
        return [device.id for device in await session.devices()]

    @app.get("/stream")
    async def stream(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"working..."
            session["late"] = True

        return StreamingResponse(body())

    config = SessionConfig(secret_keys=keys or [KEY_A], clock=clock or FakeClock(), **options)  # type: ignore[arg-type]
    app.add_middleware(SessionMiddleware, store=store or CookieStore(), config=config)
    return app


KNOWN: set[str] = set()


async def load_user(user_id: str) -> str | None:
    return user_id if user_id in KNOWN else None


KnownUser = Annotated[str, user_loader(load_user)]


def sealed(response: httpx.Response) -> str:
    """The cookie value the response sets; it must set exactly one."""
    (header,) = response.headers.get_list("set-cookie")
    name, _, rest = header.partition("=")
    assert name == NAME
    return rest.split(";", 1)[0]


def cookie(value: str) -> dict[str, str]:
    return {"cookie": f"{NAME}={value}"}


def opener(*keys: str, name: str = NAME) -> CookieSealer:
    return CookieSealer(Keyring(list(keys)).derive("cookie-store"), name, 4096)


async def test_the_session_travels_in_the_cookie_unreadable() -> None:
    async with client_for(make_app()) as client:
        first = sealed(await client.post("/add"))
        second = sealed(await client.post("/add", params={"item": "fig"}, headers=cookie(first)))
        state = await client.get("/state", headers=cookie(second))
    assert state.json()["cart"] == [MARKER, "fig"]
    assert "set-cookie" not in state.headers  # a read sends nothing back
    for value in (first, second):
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        assert MARKER.encode() not in decoded
        assert MARKER not in value


async def test_every_change_seals_a_new_cookie_with_a_fresh_nonce() -> None:
    async with client_for(make_app()) as client:
        start = sealed(await client.post("/add"))
        # The same change from the same cookie: equal records, sealed apart.
        values = [sealed(await client.post("/add", headers=cookie(start))) for _ in range(3)]
        carts = [(await client.get("/state", headers=cookie(v))).json()["cart"] for v in values]
    assert len(set(values)) == 3
    assert carts == [[MARKER, MARKER]] * 3


def flip(value: str, at: int) -> str:
    """``value`` with the character at ``at`` swapped for another of the alphabet."""
    return value[:at] + ("A" if value[at] != "A" else "B") + value[at + 1 :]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda v: flip(v, len(v) - 1), id="tag"),
        pytest.param(lambda v: flip(v, 40), id="ciphertext"),
        pytest.param(lambda v: flip(v, 5), id="nonce"),
        pytest.param(lambda v: v[:-10], id="truncated"),
        # One of these is a character past a whole base64 group, whatever the length.
        pytest.param(lambda v: v[:-1], id="cut-1"),
        pytest.param(lambda v: v[:-2], id="cut-2"),
        pytest.param(lambda v: v[:-3], id="cut-3"),
        pytest.param(lambda v: v + "AAAA", id="extended"),
        pytest.param(lambda v: v.replace("-", "+").replace("_", "/") + "+", id="std-base64"),
        pytest.param(lambda v: "", id="empty"),
        pytest.param(lambda v: "AQ", id="too-short"),
        pytest.param(lambda v: "A" * 5000, id="oversized"),
        pytest.param(lambda v: "Aw" + v[2:], id="unknown-format"),
        pytest.param(lambda v: with_format(v, 2), id="switched-format"),
    ],
)
async def test_a_damaged_cookie_is_no_session_never_an_error(damage: object) -> None:
    async with client_for(make_app()) as client:
        value = sealed(await client.post("/login"))
        assert (await client.get("/state", headers=cookie(value))).json()["user"] == "alice"
        assert callable(damage)
        response = await client.get("/state", headers=cookie(damage(value)))
    assert response.status_code == 200
    assert response.json() == {"user": None, "cart": None, "id": ""}
    assert "set-cookie" not in response.headers  # a read of nothing clears nothing


async def test_only_the_keys_and_the_cookie_name_it_was_sealed_for_open_it() -> None:
    async with client_for(make_app([KEY_A])) as client:
        value = sealed(await client.post("/login"))
    assert opener(KEY_A).open(value) is not None
    assert opener(KEY_B).open(value) is None
    # The cookie's name is sealed in: a value moved to another cookie does not open.
    assert opener(KEY_A, name="session").open(value) is None
    async with client_for(make_app([KEY_B])) as client:
        assert (await client.get("/state", headers=cookie(value))).json()["user"] is None


async def test_a_key_is_rotated_without_logging_anyone_out() -> None:
    clock = FakeClock()
    async with client_for(make_app([KEY_A], clock)) as client:
        old = sealed(await client.post("/login"))
    rotated = make_app([KEY_B, KEY_A], clock)
    async with client_for(rotated) as client:
        assert (await client.get("/state", headers=cookie(old))).json()["user"] == "alice"
        resealed = sealed(await client.post("/add", headers=cookie(old)))
    # Every new seal uses the first key, so the old one can go once cookies renewed.
    assert opener(KEY_B).open(resealed) is not None
    assert opener(KEY_A).open(resealed) is None
    async with client_for(make_app([KEY_B], clock)) as client:
        assert (await client.get("/state", headers=cookie(resealed))).json()["user"] == "alice"
        assert (await client.get("/state", headers=cookie(old))).json()["user"] is None


async def test_expiry_is_checked_on_the_server_from_the_sealed_times() -> None:
    clock = FakeClock()
    app = make_app(clock=clock, idle_timeout=600, absolute_timeout=1000)
    async with client_for(app) as client:
        value = sealed(await client.post("/login"))
        clock.advance(599)
        assert (await client.get("/state", headers=cookie(value))).json()["user"] == "alice"
        clock.advance(2)
        # Past the idle deadline the same cookie opens nothing, though it still decrypts.
        assert (await client.get("/state", headers=cookie(value))).json()["user"] is None
        kept = sealed(await client.post("/login"))
        for _ in range(4):  # active all along: the idle deadline slides...
            clock.advance(240)
            response = await client.get("/state", headers=cookie(kept))
            assert response.json()["user"] == "alice"
            kept = sealed(response)  # ...by a refreshed cookie, each read past the throttle
        clock.advance(100)  # ...but never past the absolute one
        assert (await client.get("/state", headers=cookie(kept))).json()["user"] is None


async def test_a_remembered_session_cookie_lasts_its_absolute_lifetime() -> None:
    async with client_for(
        make_app(remember_idle_timeout=3600, remember_absolute_timeout=86_400)
    ) as client:
        response = await client.post("/login", params={"remember": True})
        session_only = await client.post("/login")
    assert "Max-Age=86400" in response.headers["set-cookie"]
    assert "Max-Age" not in session_only.headers["set-cookie"]


async def test_login_seals_a_new_session_id_and_the_csrf_token_dies_with_the_old() -> None:
    app = test_csrf.make_app(CookieStore())
    async with test_csrf.no_browser(app) as client:
        alice = await test_csrf.logged_in(client)
        token = (await client.get("/csrf", headers=alice)).json()["token"]
        assert (
            await client.post("/anything", headers={**alice, "x-csrf-token": token})
        ).status_code == 200
        again = await client.post("/login", headers={**alice, "x-csrf-token": token})
        relogged = {"cookie": again.headers["set-cookie"].split(";", 1)[0]}
        stale = await client.post("/anything", headers={**relogged, "x-csrf-token": token})
    assert stale.status_code == 403
    before = opener(test_csrf.KEY_A).open(alice["cookie"].split("=", 1)[1])
    after = opener(test_csrf.KEY_A).open(relogged["cookie"].split("=", 1)[1])
    assert before is not None
    assert after is not None
    assert before[0] != after[0]
    assert before[1].key != after[1].key


async def test_logout_clears_the_cookie_but_a_copy_lives_until_its_idle_deadline() -> None:
    clock = FakeClock()
    async with client_for(make_app(clock=clock, idle_timeout=600)) as client:
        value = sealed(await client.post("/login"))
        logout = await client.post("/logout", headers=cookie(value))
        assert "Max-Age=0" in logout.headers["set-cookie"]
        # The documented limit of keeping nothing on the server: a copy replays...
        assert (await client.get("/state", headers=cookie(value))).json()["user"] == "alice"
        clock.advance(601)
        # ...and the server still ends it at the deadline sealed inside.
        assert (await client.get("/state", headers=cookie(value))).json()["user"] is None


async def test_a_logout_warns_of_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing was changed after the response started, so nothing was dropped."""
    async with client_for(make_app()) as client:
        value = sealed(await client.post("/login"))
        value = sealed(await client.post("/add", headers=cookie(value)))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            logout = await client.post("/logout", headers=cookie(value))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            nobody = await client.post("/logout")  # no session at all: nothing to say
    assert "Max-Age=0" in logout.headers["set-cookie"]
    assert nobody.status_code == 204
    assert caplog.records == []


async def test_a_session_too_big_for_its_cookie_is_a_413_and_the_old_cookie_stands() -> None:
    async with client_for(make_app()) as client:
        value = sealed(await client.post("/add", params={"item": "x" * 2880}))
        assert len(f"{NAME}={value}") <= 4096
        response = await client.post("/add", params={"item": "y" * 2000}, headers=cookie(value))
        state = await client.get("/state", headers=cookie(value))
    assert response.status_code == 413
    assert "set-cookie" not in response.headers
    assert "fit in the session's cookie of 4096 bytes" in response.json()["detail"]
    assert state.json()["cart"] == ["x" * 2880]


def test_a_user_id_too_long_for_any_cookie_is_refused_when_sealed() -> None:
    sealer = opener(KEY_A)
    session_id = new_session_id()
    record = SessionRecord(store_key(session_id), "p", b"{}", "u" * 70_000, 1.0, 2.0, 3.0)
    with pytest.raises(SessionTooLargeError, match="user ID alone is too long"):
        sealer.seal(session_id, record)
    # One that fits the size field but leaves no room for data: the user ID is named.
    record = record._replace(user_id="u" * 3000)
    with pytest.raises(SessionTooLargeError, match="user ID is too long for the session's"):
        sealer.seal(session_id, record)


async def test_max_bytes_bounds_the_cookie() -> None:
    async with client_for(make_app(store=CookieStore(max_bytes=1024))) as client:
        fits = await client.post("/add", params={"item": "x" * 500})
        too_big = await client.post("/add", params={"item": "x" * 800})
    assert len(f"{NAME}={sealed(fits)}") <= 1024
    assert too_big.status_code == 413


@pytest.mark.parametrize("tail", [2, 3])
def test_only_one_spelling_of_a_sealed_value_opens(tail: int) -> None:
    """The last character of a value not a whole number of base64 groups long has bits
    past the last byte: set, they spell the same bytes, but no seal wrote them."""
    sealer, session_id = opener(KEY_A), new_session_id()
    for size in range(2, 10):
        record = SessionRecord(store_key(session_id), "p" * 16, b"x" * size, None, 1.0, 2.0, 3.0)
        value = sealer.seal(session_id, record)
        if len(value) % 4 == tail:
            break
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet.index(value[-1])
    assert sealer.open(value) == (session_id, record)
    for spare in range(1, 16 if tail == 2 else 4):
        assert sealer.open(value[:-1] + alphabet[last | spare]) is None


def test_the_room_named_for_data_just_too_big_is_smaller_than_the_data() -> None:
    """Rounded down, "2931 bytes; at most about 2931 fit" would contradict itself."""
    sealer, session_id = opener(KEY_A), new_session_id()

    def record(size: int) -> SessionRecord:
        return SessionRecord(store_key(session_id), "p" * 16, b"x" * size, None, 1.0, 2.0, 3.0)

    size = 2800
    with contextlib.suppress(SessionTooLargeError):
        while sealer.seal(session_id, record(size)):
            size += 1  # up to the smallest that does not fit: a character too many
    with pytest.raises(SessionTooLargeError) as refused:
        sealer.seal(session_id, record(size))
    assert refused.value.limit < size
    assert f"at most about {refused.value.limit} fit" in str(refused.value)


def test_a_cookie_name_that_leaves_no_room_fails_at_start_up() -> None:
    config = SessionConfig(secret_keys=[KEY_A], cookie=CookieConfig(name="__Host-" + "n" * 470))
    with pytest.raises(ConfigurationError, match="leaves no room for a session in 512 bytes"):
        SessionMiddleware(FastAPI(), store=CookieStore(max_bytes=512), config=config)
    SessionMiddleware(FastAPI(), store=CookieStore(max_bytes=4096), config=config)


async def test_device_lists_and_revocation_say_why_they_cannot_work() -> None:
    store = CookieStore()
    async with client_for(make_app(store=store)) as client:
        value = sealed(await client.post("/login"))
        with pytest.raises(NotSupportedError, match="use a server-side store"):
            await client.get("/devices", headers=cookie(value))
        # Logged out too: code tried that way must fail as it will in production.
        with pytest.raises(NotSupportedError, match="use a server-side store"):
            await client.get("/devices")
    for call in (store.list_user("alice", 0), store.delete_user("alice"), store.count(0)):
        with pytest.raises(NotSupportedError, match="keeps sessions in the browser's cookie"):
            await call
    with pytest.raises(NotSupportedError, match="replacing every secret key"):
        await store.delete_all(0)


def test_it_needs_shared_secret_keys_and_no_per_user_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ConfigurationError, match="needs SessionConfig\\(secret_keys"):
        SessionMiddleware(FastAPI(), store=CookieStore(), config=SessionConfig())
    # Not first a warning that a random key is used, which the error then contradicts.
    assert not any("random per-process key" in line for line in caplog.messages)
    # Logged as it is raised: under uvicorn's --lifespan auto, which swallows errors of
    # the start-up, this line is what shows at start-up.
    assert [(r.name, r.levelname) for r in caplog.records] == [("coatcheck", "ERROR")]
    assert "coatcheck cannot start: the cookie store needs" in caplog.messages[0]
    config = SessionConfig(secret_keys=[KEY_A], max_sessions_per_user=3)
    with pytest.raises(ConfigurationError, match="max_sessions_per_user needs a server-side"):
        SessionMiddleware(FastAPI(), store=CookieStore(), config=config)
    for size in (100, 5000):
        with pytest.raises(ValueError, match=r"from 512 .* to 4096"):
            CookieStore(max_bytes=size)


async def test_a_user_the_app_no_longer_knows_gets_a_401_and_a_cleared_cookie() -> None:
    app = make_app()

    @app.get("/me")
    async def me(user: KnownUser) -> dict[str, str]:
        return {"user": user}

    KNOWN.add("alice")

    async with client_for(app) as client:
        value = sealed(await client.post("/login"))
        assert (await client.get("/me", headers=cookie(value))).json() == {"user": "alice"}
        KNOWN.clear()
        gone = await client.get("/me", headers=cookie(value))
    assert gone.status_code == 401
    assert "Max-Age=0" in gone.headers["set-cookie"]


async def test_changes_after_the_response_started_are_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client_for(make_app()) as client:
        value = sealed(await client.post("/add"))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            response = await client.get("/stream", headers=cookie(value))
    assert response.text == "working..."
    assert "set-cookie" not in response.headers
    assert any("cookie store" in record.getMessage() for record in caplog.records)


async def test_create_session_gives_a_sealed_cookie_for_tests() -> None:
    config = SessionConfig(secret_keys=[KEY_A])
    value = await create_session(
        CookieStore(), user_id="bob", data={"cart": ["kiwi"]}, config=config
    )
    async with client_for(make_app([KEY_A])) as client:
        state = (await client.get("/state", headers=cookie(value))).json()
    assert (state["user"], state["cart"]) == ("bob", ["kiwi"])


def test_it_is_chosen_by_url() -> None:
    store = store_from_url("cookie://")
    assert isinstance(store, CookieStore)
    assert store.max_bytes == 4096
    small = store_from_url("cookie://?max_bytes=2048")
    assert isinstance(small, CookieStore)
    assert small.max_bytes == 2048
    for bad in ("cookie://somewhere", "cookie:///path", "cookie://?size=1"):
        with pytest.raises(ConfigurationError):
            store_from_url(bad)


def seal_raw(plain: bytes, key: str = KEY_A) -> str:
    """``plain`` sealed as the store would, whatever its shape: a cookie made with our key."""
    nonce = os.urandom(12)
    cipher = AESGCM(Keyring([key]).derive("cookie-store")[0])
    token = b"\x01" + nonce + cipher.encrypt(nonce, plain, NAME.encode())
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode()


def with_format(value: str, fmt: int) -> str:
    """``value`` with its (unencrypted) format byte set to ``fmt``."""
    token = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return base64.urlsafe_b64encode(bytes([fmt]) + token[1:]).rstrip(b"=").decode()


def test_only_what_the_first_format_cannot_hold_takes_a_later_one() -> None:
    """The first format implies the login time (the creation time, or none for nobody),
    so every other record keeps it and an earlier release opens it during a rolling
    deploy. A login adopted from another library takes the second, one with limits of
    its own the third. The format byte is sealed in: a cookie switched to another one
    is nothing."""
    sealer = opener(KEY_A)
    session_id = new_session_id()
    made_here = SessionRecord(store_key(session_id), "public", b"{}", "alice", 1.0, 2.0, 3.0)
    made_here = made_here._replace(authenticated_at=1.0)
    anonymous = made_here._replace(user_id=None, authenticated_at=0.0)
    adopted = made_here._replace(authenticated_at=0.0)
    shortened = made_here._replace(idle_timeout=300, absolute_timeout=3600)
    cases = [(made_here, 1), (anonymous, 1), (adopted, 2), (shortened, 3)]
    cases.append((adopted._replace(absolute_timeout=60), 3))
    for record, fmt in cases:
        value = sealer.seal(session_id, record)
        assert base64.urlsafe_b64decode(value[:4])[0] == fmt
        assert sealer.open(value) == (session_id, record)
        for other in {1, 2, 3} - {fmt}:
            assert sealer.open(with_format(value, other)) is None
    # Sealed the way earlier releases seal: the cookie's name alone as associated data.
    value = sealer.seal(session_id, made_here)
    token = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    cipher = AESGCM(Keyring([KEY_A]).derive("cookie-store")[0])
    assert cipher.decrypt(token[1:13], token[13:], NAME.encode()).startswith(session_id.encode())


def test_a_record_of_another_shape_opens_as_nothing() -> None:
    """Only our own key seals, so a bad shape means a bug or an old format; it is still
    no session, never an error."""
    sealer = opener(KEY_A)
    session_id = new_session_id()
    record = SessionRecord(store_key(session_id), "public", b'{"n":1}', "alice", 1.0, 2.0, 3.0)
    assert sealer.open(sealer.seal(session_id, record)) == (session_id, record)
    assert sealer.open(seal_raw(b"")) is None
    assert sealer.open(seal_raw(b"\x00" * 80)) is None  # no ID of ours
    assert sealer.open(sealer.seal("short", record)) is None
    head = 43 + 8 * 3 + 1 + 8
    sizes = struct.pack("<HH", 6, 200)  # a user ID running past the end
    assert sealer.open(seal_raw(session_id.encode() + bytes(head - 43) + sizes + b"public")) is None
    bad_utf8 = session_id.encode() + bytes(head - 43) + struct.pack("<HH", 2, 0) + b"\xff\xfe"
    assert sealer.open(seal_raw(bad_utf8)) is None


GENUINE = opener(KEY_A)
SESSION_ID = new_session_id()
RECORD = SessionRecord(store_key(SESSION_ID), "public", b'{"cart":[1]}', "alice", 1.0, 2.0, 3.0)
SEALED = GENUINE.seal(SESSION_ID, RECORD)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(
    junk=st.text(max_size=4200)
    | st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=4200),
)
def test_no_junk_value_opens_or_raises(junk: str) -> None:
    assert GENUINE.open(junk) is None


@settings(max_examples=600, deadline=None, derandomize=True)
@given(
    at=st.integers(min_value=0, max_value=len(SEALED) - 1),
    char=st.sampled_from(string.ascii_letters + string.digits + "-_"),
    cut=st.integers(min_value=0, max_value=3),
)
def test_no_edit_of_a_real_cookie_opens_as_anything_else(at: int, char: str, cut: int) -> None:
    edited = SEALED[:at] + char + SEALED[at + 1 :]
    edited = edited[: len(edited) - cut] if cut else edited
    opened = GENUINE.open(edited)
    # Either the edit is lost in base64's unused last bits, or the tag refuses it.
    assert opened is None or (opened == (SESSION_ID, RECORD) and not cut)
