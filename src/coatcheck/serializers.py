"""JSON encoding of session data; never pickle.

``orjson`` is used when installed (``coatcheck[fast]``), the standard library
otherwise. Both reject values JSON cannot hold, and the error names the key.
"""

from __future__ import annotations

import json
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
        return result
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
