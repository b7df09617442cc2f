"""Typed session values: a Pydantic model under one key, stored only when it changed.

Written for Pydantic 1 and 2 alike (``make test-oldest`` runs this file on both), so
the assertions read the session's plain JSON rather than a model's dump.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import inspect
import json
import logging
import time
import uuid
from typing import Annotated, Any, ClassVar

import httpx
import pydantic
import pytest
from fastapi import BackgroundTasks, FastAPI, WebSocket
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field, SecretStr

from coatcheck import (
    ConfigurationError,
    MemoryStore,
    SerializationError,
    SessionConfig,
    SessionMiddleware,
)
from coatcheck._ids import store_key
from coatcheck._models import Binding, _child, _restore, _unknown
from coatcheck.fastapi import SessionDep, session_model
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, TEST_WS_BASE_URL

from .conftest import CountingStore, client_for

pytestmark = pytest.mark.anyio

NAME = "__Host-session"


class Cart(BaseModel):
    items: list[str] = []
    coupon: str | None = None


class Prefs(BaseModel):
    theme: str = "light"


class Account(BaseModel):
    email: str  # no default: a session without it could not be given one


class Extra(BaseModel):
    values: dict[str, Any] = {}


CartDep = Annotated[Cart, session_model("cart", Cart)]
ExtraDep = Annotated[Extra, session_model("extra", Extra)]
VALUES: dict[str, Any] = {"one": 1, "true": True, "float": 1.0, "zero": 0.0, "minus-zero": -0.0}
PrefsDep = Annotated[Prefs, session_model("prefs", Prefs)]


def make_app(store: Any, config: SessionConfig | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/cart")
    async def show(cart: CartDep) -> dict[str, Any]:
        return {"items": cart.items, "coupon": cart.coupon}

    @app.post("/cart/{item}")
    async def add(item: str, cart: CartDep) -> dict[str, Any]:
        cart.items.append(item)
        return {"items": cart.items}

    @app.post("/coupon/{code}")
    async def coupon(code: str, cart: CartDep) -> dict[str, Any]:
        cart.coupon = code
        return {"coupon": code}

    @app.post("/both/{item}")
    async def both(item: str, cart: CartDep, again: CartDep, prefs: PrefsDep) -> dict[str, Any]:
        again.items.append(item)  # the same instance as ``cart``
        prefs.theme = "dark"
        return {"same": cart is again, "items": cart.items}

    @app.post("/replace")
    async def replace(cart: CartDep, session: SessionDep) -> dict[str, bool]:
        cart.items.append("lost")
        session["cart"] = {"items": ["set"], "coupon": None}  # set last: this wins
        return {"ok": True}

    @app.post("/login/{user}")
    async def login(user: str, cart: CartDep, session: SessionDep) -> dict[str, bool]:
        cart.coupon = f"WELCOME-{user}"  # changed before the login
        session.login(user)
        return {"ok": True}

    @app.post("/empty")
    async def empty(cart: CartDep, session: SessionDep) -> dict[str, bool]:
        session.clear()
        cart.items.append("after clear")
        return {"ok": True}

    @app.post("/logout")
    async def logout(cart: CartDep, session: SessionDep) -> dict[str, bool]:
        session.logout()
        cart.items.append("after logout")
        return {"ok": True}

    @app.post("/later/{item}")
    async def later(item: str, cart: CartDep, tasks: BackgroundTasks) -> dict[str, bool]:
        cart.coupon = "first"

        def add_later() -> None:
            cart.items.append(item)

        tasks.add_task(add_later)
        return {"ok": True}

    @app.post("/slow/{item}")
    async def slow(item: str, cart: CartDep) -> dict[str, Any]:
        await asyncio.sleep(0.05)  # another request saves meanwhile
        cart.items.append(item)
        return {"items": cart.items}

    @app.post("/prefs/{theme}")
    async def set_theme(theme: str, prefs: PrefsDep) -> dict[str, str]:
        await asyncio.sleep(0.05)
        prefs.theme = theme
        return {"theme": theme}

    @app.get("/raw")
    async def raw(session: SessionDep) -> dict[str, Any]:
        return dict(session)

    @app.post("/extra/{name}")
    async def set_extra(name: str, extra: ExtraDep) -> dict[str, bool]:
        extra.values["n"] = VALUES[name]
        return {"ok": True}

    app.add_middleware(SessionMiddleware, store=store, config=config)
    return app


def cookie_of(response: httpx.Response) -> dict[str, str]:
    value = response.cookies.get(NAME)
    assert value, response.headers
    return {"cookie": f"{NAME}={value}"}


async def store_raw(store: Any, headers: dict[str, str], data: bytes) -> None:
    """Put ``data`` in the stored session of ``headers``, as another deploy wrote it."""
    record = await store.load(store_key(headers["cookie"].partition("=")[2]), 0)
    assert record is not None
    new = record._replace(data=data, version=record.version + 1)
    assert await store.save(new, expected_version=record.version)


async def test_a_missing_value_gives_the_defaults_and_reading_it_creates_nothing() -> None:
    store = CountingStore(MemoryStore())
    async with client_for(make_app(store)) as client:
        response = await client.get("/cart")
    assert response.json() == {"items": [], "coupon": None}
    assert "set-cookie" not in response.headers
    assert store.calls["save"] == 0
    assert await store.count(0) == 0


async def test_a_change_in_place_is_stored_and_read_back_as_the_model() -> None:
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        first = await client.post("/cart/apple")
        assert first.json() == {"items": ["apple"]}
        headers = cookie_of(first)
        assert (await client.post("/cart/pear", headers=headers)).json() == {
            "items": ["apple", "pear"]
        }
        assert (await client.get("/raw", headers=headers)).json() == {
            "cart": {"items": ["apple", "pear"], "coupon": None}
        }
        assert (await client.get("/cart", headers=headers)).json() == {
            "items": ["apple", "pear"],
            "coupon": None,
        }


async def test_an_unchanged_model_writes_nothing() -> None:
    store = CountingStore(MemoryStore())
    async with client_for(make_app(store)) as client:
        headers = cookie_of(await client.post("/cart/apple"))
        saves = store.calls["save"]
        for _ in range(3):
            response = await client.get("/cart", headers=headers)
            assert response.json()["items"] == ["apple"]
            assert "set-cookie" not in response.headers
    assert store.calls["save"] == saves == 1


@pytest.mark.parametrize(
    ("before", "after"), [("one", "true"), ("one", "float"), ("zero", "minus-zero")]
)
async def test_a_change_python_calls_equal_is_stored_all_the_same(before: str, after: str) -> None:
    """1 == True == 1.0 and 0.0 == -0.0 in Python, but JSON tells them apart: a typed
    value set to the other must be stored, as a plain ``session[...]`` is."""
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        headers = cookie_of(await client.post(f"/extra/{before}"))
        await client.post(f"/extra/{after}", headers=headers)
        raw = await store.load(store_key(headers["cookie"].partition("=")[2]), time.time())
    assert raw is not None
    assert json.loads(raw.data) == {"extra": {"values": {"n": VALUES[after]}}}
    stored = json.loads(raw.data)["extra"]["values"]["n"]
    assert (type(stored), str(stored)) == (type(VALUES[after]), str(VALUES[after]))


async def test_one_instance_per_key_per_request_and_several_keys_at_once() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        response = await client.post("/both/fig")
        assert response.json() == {"same": True, "items": ["fig"]}
        raw = await client.get("/raw", headers=cookie_of(response))
    assert raw.json() == {"cart": {"items": ["fig"], "coupon": None}, "prefs": {"theme": "dark"}}


async def test_setting_the_key_after_handing_out_the_model_wins() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        headers = cookie_of(await client.post("/cart/apple"))
        await client.post("/replace", headers=headers)
        raw = await client.get("/raw", headers=headers)
    assert raw.json() == {"cart": {"items": ["set"], "coupon": None}}


async def test_a_change_after_logout_is_not_stored() -> None:
    store = MemoryStore()
    async with client_for(make_app(store)) as client:
        headers = cookie_of(await client.post("/cart/apple"))
        response = await client.post("/logout", headers=headers)
        assert response.headers["set-cookie"].startswith(f"{NAME}=;")
        assert (await client.get("/raw", headers=headers)).json() == {}
    assert await store.count(0) == 0


async def test_a_change_in_a_background_task_is_stored_when_the_app_returns() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        headers = cookie_of(await client.post("/cart/apple"))
        await client.post("/later/pear", headers=headers)
        raw = await client.get("/raw", headers=headers)
    assert raw.json() == {"cart": {"items": ["apple", "pear"], "coupon": "first"}}


async def test_parallel_requests_changing_different_keys_keep_both() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        headers = cookie_of(await client.post("/cart/apple"))
        await asyncio.gather(
            client.post("/slow/pear", headers=headers),
            client.post("/prefs/dark", headers=headers),
        )
        raw = await client.get("/raw", headers=headers)
    assert raw.json() == {
        "cart": {"items": ["apple", "pear"], "coupon": None},
        "prefs": {"theme": "dark"},
    }


async def test_a_stored_value_that_no_longer_validates_gives_the_defaults_and_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    app = make_app(store)
    async with client_for(app) as client:
        headers = cookie_of(await client.post("/cart/apple"))
        # An older deploy stored the cart in another shape.
        await store_raw(store, headers, b'{"cart":{"items":"backup-code-8812"}}')
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            response = await client.get("/cart", headers=headers)
            await client.get("/cart", headers=headers)  # the value is still stored
        assert response.json() == {"items": [], "coupon": None}
        # Said once: every read of every session holding such a value would repeat it.
        assert caplog.text.count("session value 'cart' is not a valid Cart") == 1
        # Where and why, never the value: session data may be a secret.
        assert "items: list_type" in caplog.text or "items: type_error.list" in caplog.text
        assert "backup-code-8812" not in caplog.text
        # Only read: the old value stays for whoever can still use it.
        assert (await client.get("/raw", headers=headers)).json() == {
            "cart": {"items": "backup-code-8812"}
        }
        # Changed: the new shape replaces it.
        await client.post("/coupon/SAVE10", headers=headers)
        assert (await client.get("/raw", headers=headers)).json() == {
            "cart": {"items": [], "coupon": "SAVE10"}
        }


def test_a_model_without_defaults_fails_when_declared() -> None:
    with pytest.raises(ConfigurationError, match="Account cannot be built without arguments"):
        session_model("account", Account)


@pytest.mark.parametrize("not_a_model", [dict, int, "Cart"])
def test_only_pydantic_models_are_taken(not_a_model: Any) -> None:
    with pytest.raises(ConfigurationError, match="needs a Pydantic model class"):
        session_model("value", not_a_model)


async def test_one_key_cannot_be_two_models_in_one_request() -> None:
    app = FastAPI()

    @app.get("/clash")
    async def clash(session: SessionDep) -> None:
        session.model("cart", Cart)
        session.model("cart", Prefs)

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        with pytest.raises(TypeError, match="'cart' is already in use as a Cart"):
            await client.get("/clash")


async def test_the_openapi_schema_gains_no_parameter() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        schema = (await client.get("/openapi.json")).json()
    assert "parameters" not in schema["paths"]["/cart"]["get"]
    parameters = schema["paths"]["/cart/{item}"]["post"]["parameters"]
    assert [(p["name"], p["in"]) for p in parameters] == [("item", "path")]


async def test_a_route_with_a_typed_value_declares_the_sessions_ticket() -> None:
    """A client generated with a token_header sends it only where the schema asks: a
    typed cart without it started a new session at every call."""
    config = SessionConfig(token_header="X-Session-Token")
    async with client_for(make_app(MemoryStore(), config)) as client:
        schema = (await client.get("/openapi.json")).json()
    for path, method in (("/cart", "get"), ("/cart/{item}", "post")):
        assert schema["paths"][path][method]["security"] == [{"coatcheck": []}], path
    scheme = schema["components"]["securitySchemes"]["coatcheck"]
    assert (scheme["in"], scheme["name"]) == ("header", "X-Session-Token")


async def test_a_valid_value_in_an_older_shape_is_not_rewritten_by_a_read() -> None:
    store = CountingStore(MemoryStore())
    async with client_for(make_app(store)) as client:
        headers = cookie_of(await client.post("/cart/apple"))
        # Stored before ``coupon`` existed: valid, but not what the model dumps today.
        await store_raw(store, headers, b'{"cart":{"items":["apple"]}}')
        saves = store.calls["save"]
        assert (await client.get("/cart", headers=headers)).json() == {
            "items": ["apple"],
            "coupon": None,
        }
        assert store.calls["save"] == saves
        assert (await client.get("/raw", headers=headers)).json() == {"cart": {"items": ["apple"]}}


class Address(BaseModel):
    street: str = ""


class Line(BaseModel):
    sku: str = ""


class Order(BaseModel):
    """As the older version of an app knows it, in a rolling deploy."""

    address: Address = Address()
    lines: list[Line] = []


async def test_fields_a_newer_version_added_are_kept_when_an_older_one_writes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rolling deploy adds fields with defaults: the older version, writing the value
    back, keeps those it does not know (in nested models too), or says which it drops
    (in a list's items, whose places may have moved), so nothing goes in silence."""
    store = MemoryStore()
    app = FastAPI()

    @app.post("/order/{sku}")
    async def add(sku: str, session: SessionDep) -> dict[str, Any]:
        order = session.model("order", Order)
        order.address.street = "Main St"
        order.lines.append(Line(sku=sku))
        return {"ok": True}

    @app.post("/seed")
    async def seed(session: SessionDep) -> None:
        session["order"] = {
            "address": {"street": "", "zip": "10115"},  # a field of a newer Address
            "lines": [{"sku": "apple", "qty": 3}],  # and of a newer Line
            "coupon": "SAVE10",  # and of a newer Order
        }

    app.add_middleware(SessionMiddleware, store=store)
    caplog.set_level(logging.WARNING, logger="coatcheck")
    async with client_for(app) as client:
        headers = cookie_of(await client.post("/seed"))
        assert (await client.post("/order/pear", headers=headers)).status_code == 200
    record = await store.load(store_key(headers["cookie"].partition("=")[2]), time.time())
    assert record is not None
    assert json.loads(record.data)["order"] == {
        "address": {"street": "Main St", "zip": "10115"},
        "lines": [{"sku": "apple"}, {"sku": "pear"}],
        "coupon": "SAVE10",
    }
    (warning,) = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert "'order' holds fields that Order does not know in the items of a list" in warning
    assert "extra='allow'" in warning


class Coupon(BaseModel):
    code: str = ""


class Checkout(BaseModel):
    name: str = ""
    coupon: Coupon | None = None
    address: Address = Address()


@pytest.mark.parametrize("replace", [False, True], ids=["changed", "replaced"])
async def test_a_nested_model_keeps_its_own_unknown_fields_and_a_new_one_starts_without(
    replace: bool,
) -> None:
    """A newer version's field stays with the object that had it: a coupon replaced by
    this version does not inherit the old one's discount. And a newer field is known
    by its own model only: ``name`` in the address is unknown there, whatever the
    checkout calls ``name``."""
    stored = {
        "name": "Anna",
        "coupon": {"code": "VIP50", "discount_pct": 50},
        "address": {"street": "", "name": "Home"},
    }
    data: dict[str, Any] = {"checkout": stored}
    binding = Binding.of("checkout", Checkout, data)
    checkout = binding.instance
    checkout.address.street = "Main St"
    if replace:
        checkout.coupon = Coupon(code="WELCOME")
    assert binding.sync("checkout", data)
    assert data["checkout"] == {
        "name": "Anna",
        "coupon": {"code": "WELCOME"} if replace else {"code": "VIP50", "discount_pct": 50},
        "address": {"street": "Main St", "name": "Home"},
    }


def test_a_nested_model_is_found_under_the_alias_its_value_is_stored_by() -> None:
    """Before Pydantic 2.11 (and in Pydantic 1) values are stored by alias: the nested
    model that holds a newer version's field is found under it all the same."""

    def to_camel(name: str) -> str:
        first, *rest = name.split("_")
        return first + "".join(word.title() for word in rest)

    class Camel(BaseModel):
        if PYDANTIC_2:
            model_config = pydantic.ConfigDict(alias_generator=to_camel, populate_by_name=True)
        else:

            class Config:
                alias_generator = to_camel
                allow_population_by_field_name = True

    class Shipping(Camel):
        street_name: str = ""

    class Profile(Camel):
        shipping_address: Shipping = Shipping()

    profile = Profile()
    assert _child(profile, "shippingAddress") is profile.shipping_address
    assert _child(profile, "shipping_address") is profile.shipping_address
    stored = {"shippingAddress": {"streetName": "", "zipPlus": "1234"}}
    dumped = {"shippingAddress": {"streetName": "Main"}}  # as dumped by alias
    unknown = _unknown(stored, dumped, profile)
    assert unknown is not None
    _restore(dumped, unknown, profile)
    assert dumped == {"shippingAddress": {"streetName": "Main", "zipPlus": "1234"}}


async def test_a_late_change_to_a_session_without_a_record_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    app = FastAPI()

    @app.get("/later/{item}")
    async def later(item: int, cart: CartDep, tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(cart.items.append, "too late")  # no cookie can be sent any more
        return {"ok": True}

    app.add_middleware(SessionMiddleware, store=store)
    async with client_for(app) as client:
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            response = await client.get("/later/1")
            await client.get("/later/2")  # each visitor's request would say it again
    assert "set-cookie" not in response.headers
    said = (
        "session changes made at '/later/1' (route '/later/{item}') after the response"
        " started were dropped"
    )
    assert caplog.text.count(said) == 1  # named by its path and route, said once a route
    assert "'/later/2'" not in caplog.text
    assert await store.count(0) == 0


async def test_a_cart_built_before_login_is_kept_and_a_user_switch_drops_it() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        anonymous = cookie_of(await client.post("/cart/apple"))
        alice = cookie_of(await client.post("/login/alice", headers=anonymous))
        assert (await client.get("/raw", headers=alice)).json() == {
            "cart": {"items": ["apple"], "coupon": "WELCOME-alice"}
        }
        # Bob logs in at the same browser: nothing of Alice's, not even the new coupon.
        bob = cookie_of(await client.post("/login/bob", headers=alice))
        assert (await client.get("/raw", headers=bob)).json() == {}


async def test_a_change_after_clear_is_not_stored() -> None:
    async with client_for(make_app(MemoryStore())) as client:
        headers = cookie_of(await client.post("/cart/apple"))
        await client.post("/empty", headers=headers)
        assert (await client.get("/raw", headers=headers)).json() == {}


def test_a_websocket_can_change_a_typed_value_after_accepting() -> None:
    app = make_app(MemoryStore())

    @app.websocket("/ws")
    async def ws(socket: WebSocket, cart: CartDep) -> None:
        await socket.accept()
        cart.items.append(await socket.receive_text())  # after the handshake's save
        await socket.send_text("added")
        await socket.close()

    with TestClient(app, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN}) as client:
        client.post("/cart/apple")
        with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers={**SAME_ORIGIN}) as socket:
            socket.send_text("pear")
            assert socket.receive_text() == "added"
        assert client.get("/raw").json() == {"cart": {"items": ["apple", "pear"], "coupon": None}}


class Tokens(BaseModel):
    scopes: dict[str, int] = {}


def test_a_warning_names_fields_and_positions_never_keys_of_the_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dict's keys are data too: an OAuth token kept as one reached the log."""
    from coatcheck._models import Binding

    stored = {"tokens": {"scopes": {"ya29.secret-oauth-token": "x"}}}
    with caplog.at_level(logging.WARNING, logger="coatcheck"):
        binding = Binding.of("tokens", Tokens, stored)
    assert binding.instance == Tokens()
    assert "scopes.[key]: " in caplog.text  # int_parsing, or type_error.integer on Pydantic 1
    assert "ya29" not in caplog.text


# -- models whose JSON dump is not what validation takes ------------------------------------

PYDANTIC_2 = pydantic.VERSION.startswith("2")


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


class Aliased(BaseModel):  # an API model reused as a session value
    cart_items: list[str] = Field(default_factory=list, alias="cartItems")


if PYDANTIC_2:

    class Camel(BaseModel):  # FastAPI's usual camelCase models
        model_config = {"alias_generator": _camel}
        cart_items: list[str] = []

else:

    class Camel(BaseModel):  # type: ignore[no-redef]
        class Config:
            alias_generator = _camel

        cart_items: list[str] = []


AliasedDep = Annotated[Aliased, session_model("aliased", Aliased)]
CamelDep = Annotated[Camel, session_model("camel", Camel)]


def aliased_app() -> FastAPI:
    app = FastAPI()

    @app.post("/aliased/{item}")
    async def add_aliased(item: str, value: AliasedDep) -> dict[str, Any]:
        value.cart_items.append(item)
        return {"items": value.cart_items}

    @app.post("/camel/{item}")
    async def add_camel(item: str, value: CamelDep) -> dict[str, Any]:
        value.cart_items.append(item)
        return {"items": value.cart_items}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    return app


@pytest.mark.parametrize("kind", ["aliased", "camel"])
async def test_a_model_with_aliases_reads_back_what_it_stored(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored by field name, such a model failed validation by alias at every request,
    silently: each request started from an empty cart."""
    async with client_for(aliased_app()) as client:
        headers = cookie_of(await client.post(f"/{kind}/apple"))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            second = await client.post(f"/{kind}/pear", headers=headers)
    assert second.json() == {"items": ["apple", "pear"]}
    assert "not a valid" not in caplog.text


if PYDANTIC_2:

    class Counted(BaseModel):  # a cart that shows its size, and refuses unknown fields
        model_config = {"extra": "forbid"}
        items: list[str] = []

        @pydantic.computed_field  # type: ignore[prop-decorator]
        @property
        def count(self) -> int:
            return len(self.items)

    CountedDep = Annotated[Counted, session_model("counted", Counted)]


@pytest.mark.skipif(not PYDANTIC_2, reason="computed fields are Pydantic 2's")
async def test_a_computed_field_stays_out_of_the_store(caplog: pytest.LogCaptureFixture) -> None:
    """Stored, ``count`` made the next read fail ``extra="forbid"``: the cart restarted."""
    app = FastAPI()

    @app.post("/counted/{item}")
    async def add(item: str, cart: CountedDep, session: SessionDep) -> dict[str, Any]:
        cart.items.append(item)
        return {"count": cart.count}

    @app.get("/raw")
    async def raw(session: SessionDep) -> dict[str, Any]:
        return dict(session)

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        headers = cookie_of(await client.post("/counted/a"))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            counts = [(await client.post(f"/counted/{x}", headers=headers)).json() for x in "bc"]
        stored = (await client.get("/raw", headers=headers)).json()
    assert counts == [{"count": 2}, {"count": 3}]
    assert "not a valid" not in caplog.text
    assert stored == {"counted": {"items": ["a", "b", "c"]}}


class OAuthTokens(BaseModel):
    access_token: SecretStr = SecretStr("")


class Wallet(BaseModel):
    cards: list[OAuthTokens | None] = []


@pytest.mark.parametrize("model", [OAuthTokens, Wallet])
def test_a_secret_field_fails_when_declared_rather_than_store_its_mask(
    model: type[BaseModel],
) -> None:
    """Its JSON dump is ``'**********'``: the next request got the mask as its token."""
    with pytest.raises(ConfigurationError, match=r"OAuthTokens\.access_token is a Pydantic"):
        session_model("tokens", model)


if PYDANTIC_2:

    class Revealed(BaseModel):
        access_token: SecretStr = SecretStr("")

        @pydantic.field_serializer("access_token", when_used="json")
        def _reveal(self, value: SecretStr) -> str:
            return value.get_secret_value()

else:

    class Revealed(BaseModel):  # type: ignore[no-redef]
        access_token: SecretStr = SecretStr("")

        class Config:
            json_encoders: ClassVar[dict[Any, Any]] = {
                SecretStr: lambda value: value.get_secret_value()
            }


RevealedDep = Annotated[Revealed, session_model("revealed", Revealed)]


async def test_a_secret_the_model_writes_out_itself_is_stored_and_read_back() -> None:
    app = FastAPI()

    @app.post("/token/{value}")
    async def set_token(value: str, tokens: RevealedDep) -> dict[str, bool]:
        tokens.access_token = SecretStr(value)
        return {"ok": True}

    @app.get("/token")
    async def get_token(tokens: RevealedDep) -> dict[str, str]:
        return {"token": tokens.access_token.get_secret_value()}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        headers = cookie_of(await client.post("/token/real-token"))
        assert (await client.get("/token", headers=headers)).json() == {"token": "real-token"}


class Upload(BaseModel):
    name: str = ""
    content: bytes = b""


UploadDep = Annotated[Upload, session_model("upload", Upload)]


async def test_a_model_that_cannot_be_dumped_fails_naming_its_key_and_keeps_the_stored_one() -> (
    None
):
    """Pydantic dumps bytes as UTF-8 text: other bytes raised its own error, unnamed."""
    app = FastAPI()

    @app.post("/upload/{name}")
    async def upload(name: str, value: UploadDep) -> dict[str, bool]:
        value.name = name
        value.content = name.encode() if name != "binary" else b"\xff\xfe"
        return {"ok": True}

    @app.get("/upload")
    async def show(value: UploadDep) -> dict[str, str]:
        return {"name": value.name}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        headers = cookie_of(await client.post("/upload/notes"))
        with pytest.raises(SerializationError, match="under key 'upload'") as raised:
            await client.post("/upload/binary", headers=headers)
        assert raised.value.key == "upload"
        assert (await client.get("/upload", headers=headers)).json() == {"name": "notes"}


# -- keys, strict models, old shapes, exact decimals ----------------------------------------


class Key(str, enum.Enum):
    CART = "cart"


async def test_a_str_enum_key_is_stored_as_its_text_by_model_and_modify() -> None:
    """``session[Key.CART] = v`` stored the text; ``model()`` and ``modify()`` stored the
    Enum itself, which JSON refuses as a key: the save failed."""
    app = FastAPI()

    @app.post("/typed")
    async def typed(session: SessionDep) -> dict[str, bool]:
        session.model(Key.CART, Cart).items.append("apple")
        return {"ok": True}

    @app.post("/modified")
    async def modified(session: SessionDep) -> dict[str, bool]:
        session.modify(Key.CART, lambda cart: {**cart, "coupon": "SAVE10"}, default={})
        return {"ok": True}

    @app.get("/raw")
    async def raw(session: SessionDep) -> dict[str, Any]:
        return {"keys": [type(key).__name__ for key in session], "data": dict(session)}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        for path in ("/typed", "/modified"):
            headers = cookie_of(await client.post(path))
            assert (await client.get("/raw", headers=headers)).json()["keys"] == ["str"]


async def test_a_plain_read_and_modify_see_a_change_made_in_place() -> None:
    """After ``cart.coupon = ...`` a plain read of the key gave the old value, and a
    ``modify()`` of it ran on the old value, which dropped the coupon."""
    app = FastAPI()

    @app.post("/checkout")
    async def checkout(cart: CartDep, session: SessionDep) -> dict[str, Any]:
        cart.coupon = "SAVE10"
        seen = {"in": "cart" in session, "get": session.get("cart"), "keys": list(session)}
        session.modify("cart", lambda value: {**value, "items": [*value["items"], "pear"]})
        return seen

    @app.get("/raw")
    async def raw(session: SessionDep) -> dict[str, Any]:
        return dict(session)

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        response = await client.post("/checkout")
        stored = (await client.get("/raw", headers=cookie_of(response))).json()
    assert response.json() == {
        "in": True,
        "get": {"items": [], "coupon": "SAVE10"},
        "keys": ["cart"],
    }
    assert stored == {"cart": {"items": ["pear"], "coupon": "SAVE10"}}


class Money(BaseModel):
    price: decimal.Decimal = decimal.Decimal("0")


MoneyDep = Annotated[Money, session_model("money", Money)]


@pytest.mark.parametrize("price", ["19.90", "12345678901234567890.12"])
async def test_a_decimal_reads_back_exactly(price: str) -> None:
    """Pydantic 1 wrote a Decimal as a float: 19.90 came back as 19.9, and larger
    amounts lost digits."""
    app = FastAPI()

    @app.post("/price/{value}")
    async def set_price(value: str, money: MoneyDep) -> dict[str, bool]:
        money.price = decimal.Decimal(value)
        return {"ok": True}

    @app.get("/price")
    async def get_price(money: MoneyDep) -> dict[str, str]:
        return {"price": str(money.price)}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        headers = cookie_of(await client.post(f"/price/{price}"))
        assert (await client.get("/price", headers=headers)).json() == {"price": price}


if PYDANTIC_2:

    class StrictVisit(BaseModel):
        model_config = {"strict": True}
        at: datetime.datetime | None = None
        visitor: uuid.UUID | None = None
        pages: tuple[str, ...] = ()

    StrictDep = Annotated[StrictVisit, session_model("visit", StrictVisit)]


@pytest.mark.skipif(not PYDANTIC_2, reason="strict models are Pydantic 2's")
async def test_a_strict_model_reads_back_the_text_its_values_are_stored_as(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A strict model takes a datetime or a UUID only as itself, or as JSON's text:
    checked as Python values, the stored text failed, and every request restarted."""
    app = FastAPI()

    @app.post("/visit/{page}")
    async def visit(page: str, value: StrictDep) -> dict[str, Any]:
        if value.visitor is None:
            value.at = datetime.datetime(2026, 5, 1, tzinfo=datetime.timezone.utc)
            value.visitor = uuid.UUID(int=7)
        value.pages = (*value.pages, page)
        return {"pages": list(value.pages), "visitor": str(value.visitor)}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        headers = cookie_of(await client.post("/visit/home"))
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            second = (await client.post("/visit/cart", headers=headers)).json()
    assert second == {"pages": ["home", "cart"], "visitor": str(uuid.UUID(int=7))}
    assert "not a valid" not in caplog.text


if PYDANTIC_2:

    class Reshaped(BaseModel):  # a deploy moved "items" under "lines"
        lines: list[str] = []

        @pydantic.model_validator(mode="before")
        @classmethod
        def _from_lines(cls, value: Any) -> Any:
            return {"lines": value["lines"]} if value else value  # KeyError on the old shape

else:

    class Reshaped(BaseModel):  # type: ignore[no-redef]
        lines: list[str] = []

        @pydantic.root_validator(pre=True)
        def _from_lines(cls, value: Any) -> Any:
            return {"lines": value["lines"]} if value else value


ReshapedDep = Annotated[Reshaped, session_model("cart", Reshaped)]


async def test_a_validator_that_breaks_on_an_old_shape_gives_the_defaults_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pydantic lets a validator's KeyError through: every request of that user
    answered 500, where a value that no longer validates gives the defaults."""
    app = FastAPI()

    @app.get("/lines")
    async def lines(cart: ReshapedDep) -> dict[str, Any]:
        return {"lines": cart.lines}

    store = MemoryStore()
    app.add_middleware(SessionMiddleware, store=store)
    async with client_for(make_app(store)) as client:
        headers = cookie_of(await client.post("/cart/apple"))  # {"items": [...]}
    async with client_for(app) as client:
        with caplog.at_level(logging.WARNING, logger="coatcheck"):
            response = await client.get("/lines", headers=headers)
    assert response.json() == {"lines": []}
    assert "'cart' is not a valid Reshaped; starting from its defaults: KeyError" in caplog.text
    assert "apple" not in caplog.text


if PYDANTIC_2:

    class OneSided(BaseModel):  # answers in camelCase, reads snake_case
        display_name: str = pydantic.Field("", serialization_alias="displayName")


@pytest.mark.skipif(not PYDANTIC_2, reason="Pydantic 1 has one alias per field")
async def test_a_field_with_a_serialization_alias_alone_reads_back_or_is_refused() -> None:
    """Before Pydantic 2.11, stored under ``displayName`` and looked for under
    ``display_name``: lost at every request, silently. There it is refused when
    declared; from 2.11, stored and read by name."""
    if "by_name" not in inspect.signature(BaseModel.model_validate).parameters:
        with pytest.raises(ConfigurationError, match=r"OneSided\.display_name would be stored"):
            session_model("profile", OneSided)
        return
    app = FastAPI()

    @app.post("/name/{name}")
    async def rename(name: str, session: SessionDep) -> dict[str, str]:
        profile = session.model("profile", OneSided)
        before, profile.display_name = profile.display_name, name
        return {"before": before}

    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with client_for(app) as client:
        headers = cookie_of(await client.post("/name/alice"))
        assert (await client.post("/name/bob", headers=headers)).json() == {"before": "alice"}
