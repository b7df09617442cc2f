from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from coatcheck import JSONSerializer, SerializationError


@dataclasses.dataclass
class Point:
    x: int


def test_round_trip_of_json_values() -> None:
    data = {"s": "é", "n": 1, "f": 1.5, "b": True, "z": None, "l": [1, {"a": []}], "d": {"k": "v"}}
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(data)) == data


@pytest.mark.parametrize(
    "value", [datetime.now(timezone.utc), Point(1), {1, 2}, b"bytes", object(), {"k": {1: 2}}]
)
def test_values_json_cannot_hold_fail_naming_the_key(value: object) -> None:
    with pytest.raises(SerializationError) as caught:
        JSONSerializer().dumps({"ok": 1, "bad": value})
    assert caught.value.key == "bad"
    assert "'bad'" in str(caught.value)


def test_loads_rejects_non_objects() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        JSONSerializer().loads(b"[1, 2]")
