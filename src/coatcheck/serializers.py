"""JSON encoding of session data; never pickle.

``orjson`` is used when installed (``coatcheck[fast]``), the standard library
otherwise. Both reject values JSON cannot hold, and the error names the key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Protocol

from .exceptions import SerializationError

try:
    import orjson

    HAVE_ORJSON = True
    # Without these flags orjson would quietly turn dates and dataclasses into strings,
    # so data would not read back as it was written, and differently without orjson.
    _ORJSON_STRICT = (
        orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_DATACLASS
        | orjson.OPT_PASSTHROUGH_SUBCLASS
    )
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    HAVE_ORJSON = False


class Serializer(Protocol):
    """Turns session data into bytes for a store and back."""

    def dumps(self, data: Mapping[str, Any]) -> bytes: ...

    def loads(self, raw: bytes) -> dict[str, Any]: ...


class JSONSerializer:
    """Strict JSON: string keys, no NaN, no custom objects."""

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        try:
            return _dumps(data)
        except (TypeError, ValueError) as exc:
            for key, value in data.items():
                try:
                    _dumps({key: value})
                except (TypeError, ValueError) as inner:
                    raise SerializationError(str(key), str(inner)) from inner
            raise SerializationError("<keys>", str(exc)) from exc

    def loads(self, raw: bytes) -> dict[str, Any]:
        data = orjson.loads(raw) if HAVE_ORJSON else json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("session data is not a JSON object")
        return data


def _dumps(data: Mapping[str, Any]) -> bytes:
    if HAVE_ORJSON:
        result: bytes = orjson.dumps(data, option=_ORJSON_STRICT)
        # orjson writes NaN and infinities as null, which would read back as None: only
        # data holding a null can hide one, so only such data is searched.
        if b"null" in result:
            _refuse_what_json_changes(data)
        return result
    # The standard library would write integer keys as strings: refused, as by orjson.
    _refuse_what_json_changes(data)
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def _refuse_what_json_changes(value: Any) -> None:
    """Raise for what an encoder would store as something else: NaN and infinities
    (ValueError), mapping keys that are not strings (TypeError)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"key {key!r} is not a string")
            _refuse_what_json_changes(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refuse_what_json_changes(item)
