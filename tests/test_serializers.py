from __future__ import annotations

import collections
import dataclasses
import enum
import time
import uuid
from datetime import datetime, timezone

import pytest
from pydantic import BaseModel

from coatcheck import JSONSerializer, MemoryStore, SerializationError, SessionConfig, serializers
from coatcheck._ids import store_key
from coatcheck._persist import Persistence
from coatcheck.session import Session
from coatcheck.testing import create_session


@dataclasses.dataclass
class Point:
    x: int


class Tag(str):
    """A str subclass: would read back as a plain str, not as what was stored."""


def test_round_trip_of_json_values() -> None:
    data = {"s": "é", "n": 1, "f": 1.5, "b": True, "z": None, "l": [1, {"a": []}], "d": {"k": "v"}}
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(data)) == data


class Cart(BaseModel):
    items: list[str] = []


@pytest.mark.parametrize(
    "value",
    [
        datetime.now(timezone.utc),
        Point(1),
        Tag("x"),
        Cart(items=["apple"]),  # it would read back as a dict: the app stores model_dump()
        {1, 2},
        b"bytes",
        object(),
        {"k": {1: 2}},
    ],
)
def test_values_json_cannot_hold_fail_naming_the_key(value: object) -> None:
    with pytest.raises(SerializationError) as caught:
        JSONSerializer().dumps({"ok": 1, "bad": value})
    assert caught.value.key == "bad"
    assert "'bad'" in str(caught.value)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


Pair = collections.namedtuple("Pair", "a b")


def _loop() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


def _deep(levels: int) -> list[object]:
    value: list[object] = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("encoder", ["orjson", "json"])
@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        [None, float("-inf")],
        {"k": None, "n": float("nan")},
        {1: 2},
        # Each install used to take some of these and refuse others: a UUID or an Enum
        # read back as a str with orjson; the rest read back as plain values without.
        uuid.UUID(int=1),
        Colour.RED,
        Level.HIGH,
        collections.OrderedDict(a=1),
        Pair(1, 2),
        2**64,
        -(2**63) - 1,
        # Refused by a SerializationError naming the key, not a RecursionError.
        _loop(),
        _deep(300),
    ],
)
def test_what_json_would_store_as_something_else_fails_naming_the_key(
    value: object, encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # orjson writes NaN as null and the standard library writes 1 as "1": each would read
    # back as another value.
    monkeypatch.setattr(serializers, "HAVE_ORJSON", encoder == "orjson")
    with pytest.raises(SerializationError) as caught:
        JSONSerializer().dumps({"ok": 1, "bad": value})
    assert caught.value.key == "bad"


@pytest.mark.parametrize("encoder", ["orjson", "json"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (147690576549554478236585100746003668591, "an integer does not fit in 64 bits"),
        ({"codes": {123456: "used"}}, "a key of type int is not a string"),
    ],
)
def test_a_refused_value_is_named_by_its_key_and_never_shown(
    value: object, reason: str, encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error reaches the server's log, and the data may be secret (a nonce, recovery
    codes): ``encrypt_data`` keeps it from the store, so the log must not show it."""
    monkeypatch.setattr(serializers, "HAVE_ORJSON", encoder == "orjson")
    with pytest.raises(SerializationError) as caught:
        JSONSerializer().dumps({"secret": value})
    assert caught.value.key == "secret"
    assert reason in str(caught.value)
    assert "14769057654955447823" not in str(caught.value)
    assert "123456" not in str(caught.value)


def test_a_dict_of_its_own_kind_is_refused_with_what_to_store_instead() -> None:
    """Authlib's token and userinfo are dict subclasses: "store a ... dict" was no help."""

    class UserInfo(dict[str, object]):
        pass

    with pytest.raises(SerializationError) as caught:
        JSONSerializer().dumps({"user": UserInfo(sub="alice")})
    assert "UserInfo is a dict of its own kind" in str(caught.value)
    assert "store dict(value)" in str(caught.value)


@pytest.mark.parametrize("encoder", ["orjson", "json"])
def test_nulls_and_finite_floats_are_stored_by_either_encoder(
    encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serializers, "HAVE_ORJSON", encoder == "orjson")
    data = {
        "z": None,
        "f": [1.5, -0.0, 1e308],
        "d": {"n": None},
        "i": [2**64 - 1, -(2**63)],
        "deep": _deep(250),
    }
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(data)) == data


@pytest.mark.parametrize("encoder", ["orjson", "json"])
def test_both_installs_draw_the_nesting_line_at_the_same_depth(
    encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """253 lists inside the session's dict are stored; one more is refused, by name."""
    monkeypatch.setattr(serializers, "HAVE_ORJSON", encoder == "orjson")
    serializer = JSONSerializer()
    deepest = {"k": _deep(252)}
    assert serializer.loads(serializer.dumps(deepest)) == deepest
    with pytest.raises(SerializationError, match="nested more than 253 levels deep"):
        serializer.dumps({"k": _deep(253)})


def test_loads_rejects_non_objects() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        JSONSerializer().loads(b"[1, 2]")


@pytest.mark.parametrize("encoder", ["orjson", "json"])
def test_data_nested_past_the_stack_is_undecodable_not_a_crash(
    encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written by something else (saves refuse 253 levels): the standard library's
    RecursionError got past every ``except ValueError``, a 500 at every request."""
    monkeypatch.setattr(serializers, "HAVE_ORJSON", encoder == "orjson")
    with pytest.raises(ValueError, match=r"deep|depth"):
        JSONSerializer().loads(b'{"x":' + b"[" * 100_000)


@pytest.mark.anyio
async def test_a_stored_record_nested_past_the_stack_reads_as_no_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serializers, "HAVE_ORJSON", False)
    store = MemoryStore()
    session_id = await create_session(store, user_id="alice")
    record = await store.load(store_key(session_id), time.time())
    assert record is not None
    bomb = record._replace(data=b'{"x":' + b"[" * 100_000, version=record.version + 1)
    assert await store.save(bomb, expected_version=record.version)
    persistence = Persistence(store, SessionConfig(), None)
    headers = [(b"cookie", f"__Host-session={session_id}".encode())]
    session = await Session(persistence, {"headers": headers}).load()
    assert (session.user_id, dict(session)) == (None, {})
