"""Typed session values: a Pydantic model kept under one key of the session.

The session stores JSON; a model is validated from it when handed out and dumped back
when the response starts, and only when its dump changed, so a read creates nothing
(an anonymous visitor who looks at an empty cart gets no session). Pydantic 1 and 2
are both served, as FastAPI serves both; Pydantic is imported by the app, not here.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, TypeVar

from .exceptions import ConfigurationError

logger = logging.getLogger("coatcheck")

M = TypeVar("M")
_checked: set[type[Any]] = set()  # the model classes check_model() has passed


def check_model(model: type[Any]) -> None:
    """Fail at start-up, not at the first visitor, for a type that cannot serve."""
    if not isinstance(model, type) or not (
        hasattr(model, "model_validate") or hasattr(model, "parse_obj")
    ):
        raise ConfigurationError(
            f"a typed session value needs a Pydantic model class, not {model!r}"
        )
    if model in _checked:
        return  # once per model: the check builds one
    try:
        model()
    except ValueError as exc:  # Pydantic's ValidationError, in either major version
        raise ConfigurationError(
            f"{model.__name__} cannot be built without arguments, which a session without "
            f"that value needs: give every field a default ({exc.__class__.__name__})"
        ) from None
    _checked.add(model)


def _validate(model: type[M], raw: Any) -> M:
    validate = getattr(model, "model_validate", None)
    return validate(raw) if validate is not None else model.parse_obj(raw)  # type: ignore[attr-defined,no-any-return]


def _problems(model: type[Any], exc: ValueError) -> str:
    """Where and why validation failed, without the values: session data can be secret
    (``encrypt_data`` keeps it from the store, and must not see it logged instead). A
    location names the model's own fields and list positions; a key of the data (a
    dict's, or an extra field's) is data too, and shows as ``[key]``."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return type(exc).__name__
    try:
        found = errors(include_input=False, include_url=False)  # Pydantic 2
    except TypeError:
        found = errors()  # Pydantic 1, whose errors hold no input
    fields = set(getattr(model, "model_fields", None) or getattr(model, "__fields__", {}))

    def shown(at: int, part: Any) -> str:
        if isinstance(part, int) or (at == 0 and part in fields):
            return str(part)
        return "[key]"

    return "; ".join(
        f"{'.'.join(shown(at, part) for at, part in enumerate(error.get('loc', ()))) or '(value)'}"
        f": {error.get('type', 'invalid')}"
        for error in found
    )


def dump(instance: Any) -> Any:
    """The value as JSON types, as the session stores it."""
    model_dump = getattr(instance, "model_dump", None)
    if model_dump is not None:
        return model_dump(mode="json")
    return json.loads(instance.json())  # Pydantic 1: only its JSON encoder knows every type


class Binding:
    """One model handed out for one key in one request, and the dump it started from."""

    __slots__ = ("initial", "instance", "model")

    def __init__(self, model: type[Any], instance: Any, initial: Any) -> None:
        self.model = model
        self.instance = instance
        self.initial = initial

    @classmethod
    def of(cls, key: str, model: type[Any], data: dict[str, Any]) -> Binding:
        """The model for ``data[key]``; a missing or no longer valid value gives the
        model's defaults, and is only replaced if the handler changes them."""
        if key in data:
            try:
                instance = _validate(model, data[key])
            except ValueError as exc:
                logger.warning(
                    "session value %r is not a valid %s; starting from its defaults: %s",
                    key,
                    model.__name__,
                    _problems(model, exc),
                )
            else:
                return cls(model, instance, dump(instance))
        instance = model()
        return cls(model, instance, dump(instance))

    def sync(self, key: str, data: dict[str, Any]) -> bool:
        """Put the model's dump in ``data`` if it changed since it was handed out or
        last synced; True when it did."""
        current = dump(self.instance)
        if current == self.initial and _identical(current, self.initial):
            return False
        data[key] = current
        self.initial = current
        return True


def _identical(a: Any, b: Any) -> bool:
    """Equal as JSON sees it, for values Python already calls equal: ``True``, ``1``
    and ``1.0`` are equal in Python and three different values in JSON, and ``0.0``
    and ``-0.0`` two."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return all(_identical(value, b[key]) for key, value in a.items())
    if type(a) is list:
        return all(_identical(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    return True
