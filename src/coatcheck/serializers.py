"""JSON encoding of session data; never pickle.

``orjson`` is used when installed (``coatcheck[fast]``), the standard library
otherwise. Both reject the same values, those JSON cannot hold as they are, and the
error names the key.
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
        if HAVE_ORJSON:
            data = orjson.loads(raw)
        else:
            try:
                data = json.loads(raw)
            except RecursionError:  # nested past Python's stack: undecodable, as orjson says
                raise ValueError("session data nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("session data is not a JSON object")
        return data


def _dumps(data: Mapping[str, Any]) -> bytes:
    # Checked before either encoder runs, so both installs accept the same values.
    for key, value in data.items():
        if type(key) is not str:
            raise TypeError(f"key {key!r} is not a string")
        if type(value) is not str:
            _refuse_what_json_changes(value, 1)
    if HAVE_ORJSON:
        result: bytes = orjson.dumps(data, option=_ORJSON_STRICT)
        return result
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


# orjson's limits, held to on both installs: integers of 64 bits, and lists or dicts
# nested 254 deep, of which the session's own dict is the first.
_LOWEST, _HIGHEST = -(2**63), 2**64 - 1
_DEEPEST = 253


def _refuse_what_json_changes(value: Any, depth: int) -> None:
    """Raise for any value that would not read back as it is.

    Exact types only: a subclass (an ``IntEnum``, an ``OrderedDict``, a namedtuple)
    and anything else JSON has no type for (a UUID, an ``Enum``, a datetime, a set)
    would come back as something else, or differently with orjson installed than
    without. So would NaN and infinities (ValueError), and keys that are not strings.
    A tuple reads back as a list, as documented.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return
    if kind is int:
        if not _LOWEST <= value <= _HIGHEST:
            # Never the value itself, nor a key below (errors reach logs; the data may
            # be secret): where it is, the error's key says.
            raise TypeError("an integer does not fit in 64 bits: store it as a string")
    elif kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
    elif depth > _DEEPEST:
        raise ValueError(f"nested more than {_DEEPEST} levels deep (or contains itself)")
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"a key of type {type(key).__name__} is not a string")
            if type(item) is not str:  # strings, the commonest, need no call
                _refuse_what_json_changes(item, depth + 1)
    elif kind is list or kind is tuple:
        for item in value:
            if type(item) is not str:
                _refuse_what_json_changes(item, depth + 1)
    else:
        for plain in (dict, list, str, int, float):
            if isinstance(value, plain):
                # Authlib's token and userinfo are dicts of their own kind, say: stored,
                # they would read back as the plain type, so the app must say so itself.
                raise TypeError(
                    f"type {kind.__name__} is a {plain.__name__} of its own kind, which would "
                    f"read back as a plain {plain.__name__}: store {plain.__name__}(value), "
                    "converting what it holds as well"
                )
        raise TypeError(f"type {kind.__name__} is not JSON: store a str, number, list or dict")
