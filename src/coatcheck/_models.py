"""Typed session values: a Pydantic model kept under one key of the session.

The session stores JSON; a model is validated from it when handed out and dumped back
when the response starts, and only when its dump changed, so a read creates nothing
(an anonymous visitor who looks at an empty cart gets no session). Pydantic 1 and 2
are both served, as FastAPI serves both; Pydantic is imported by the app, not here.
"""

from __future__ import annotations

import decimal
import functools
import inspect
import json
import logging
import math
import typing
from collections.abc import Iterator
from typing import Any, TypeVar

from ._audit import once
from .exceptions import ConfigurationError, SerializationError

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
    masked = _masked_field(model)
    if masked is not None:
        raise ConfigurationError(
            f"{masked} is a Pydantic secret, whose JSON dump is a mask ('**********'): the "
            "session would store the mask and lose the secret. Type it as str (and keep "
            "the data sealed with encrypt_data=True), or give it a field_serializer that "
            "returns the secret's value"
        )
    unread = _unread_alias(model)
    if unread is not None:
        raise ConfigurationError(
            f"{unread} would be stored under its serialization alias and read under "
            "another name, and lost at every request: before Pydantic 2.11 give it one "
            "alias for both (alias=...), or upgrade Pydantic"
        )
    _checked.add(model)


def _models_within(model: type[Any], seen: set[type[Any]] | None = None) -> Iterator[type[Any]]:
    """``model`` and every model its fields hold, however nested (``list[Card | None]``)."""
    seen = set() if seen is None else seen
    seen.add(model)
    yield model
    for annotation in _annotations(model).values():
        for part in _types_in(annotation):
            if _is_model(part) and part not in seen:
                yield from _models_within(part, seen)


def _annotations(model: type[Any]) -> dict[str, Any]:
    fields = getattr(model, "model_fields", None)
    if fields is not None:
        return {name: field.annotation for name, field in fields.items()}
    return {name: field.outer_type_ for name, field in model.__fields__.items()}  # Pydantic 1


def _masked_field(model: type[Any]) -> str | None:
    """``Model.field`` of the first secret field, nested models included, that no
    serializer of the app's own writes out: what the session would store as a mask."""
    for owner in _models_within(model):
        decorators = getattr(owner, "__pydantic_decorators__", None)
        if decorators is not None and decorators.model_serializers:
            continue  # the app writes this model itself
        if decorators is None and owner.__config__.json_encoders:
            continue  # Pydantic 1, whose encoders may write secrets out
        revealed = {
            name
            for serializer in getattr(decorators, "field_serializers", {}).values()
            for name in serializer.info.fields
        }
        for name, annotation in _annotations(owner).items():
            if name not in revealed and any(map(_is_secret, _types_in(annotation))):
                return f"{owner.__name__}.{name}"
    return None


def _unread_alias(model: type[Any]) -> str | None:
    """``Model.field`` of the first field that Pydantic 2 before 2.11 would store under
    one name (its serialization alias) and look for under another."""
    if not hasattr(model, "model_fields") or _pydantic_2_options()[1]:
        return None  # Pydantic 1 has one alias per field; 2.11 reads by name
    for owner in _models_within(model):
        by_name = owner.model_config.get("populate_by_name", False)
        for name, field in owner.model_fields.items():
            stored = field.serialization_alias or field.alias or name
            read = field.validation_alias or field.alias or name
            if isinstance(read, str):
                taken = {read}
            else:  # AliasChoices: its plain names; an AliasPath finds nothing flat
                taken = {c for c in getattr(read, "choices", ()) if isinstance(c, str)}
            if stored not in taken and not (by_name and stored == name):
                return f"{owner.__name__}.{name}"
    return None


def _types_in(annotation: Any) -> list[Any]:
    """``annotation`` and every type inside it: ``list[Card | None]`` gives ``Card`` too."""
    found = [annotation]
    for argument in typing.get_args(annotation):
        found.extend(_types_in(argument))
    return found


def _is_secret(tp: Any) -> bool:
    return isinstance(tp, type) and any(
        base.__module__.startswith("pydantic")
        and base.__name__ in ("SecretStr", "SecretBytes", "Secret", "_SecretBase")
        for base in tp.__mro__
    )


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and (hasattr(tp, "model_fields") or hasattr(tp, "__fields__"))


@functools.cache
def _pydantic_2_options() -> tuple[dict[str, Any], dict[str, Any]]:
    """How a Pydantic 2 model is dumped and validated so that what is stored reads back.

    Stored by field name and read by name or alias where Pydantic can (2.11 and later),
    else stored by alias, which validation takes by default: an API model with aliases
    (``alias_generator=to_camel``) would otherwise lose its data at every request.
    Computed fields stay out of the store; read back, ``extra="forbid"`` refuses them.
    """
    from pydantic import BaseModel  # imported by the app already, since it has models

    dumps = inspect.signature(BaseModel.model_dump).parameters
    validates = inspect.signature(BaseModel.model_validate).parameters
    dump_options: dict[str, Any] = {"mode": "json", "round_trip": True}
    validate_options: dict[str, Any] = {}
    if "by_name" in validates:
        dump_options["by_alias"] = False
        validate_options.update(by_alias=True, by_name=True)
    else:
        dump_options["by_alias"] = True
    if "exclude_computed_fields" in dumps:
        dump_options["exclude_computed_fields"] = True
    return dump_options, validate_options


def _validate(model: type[M], raw: Any) -> M:
    validate = getattr(model, "model_validate", None)
    if validate is None:
        return model.parse_obj(raw)  # type: ignore[attr-defined,no-any-return]
    options = _pydantic_2_options()[1]
    try:
        return validate(raw, **options)  # type: ignore[no-any-return]
    except ValueError:
        # A strict model takes a datetime, a UUID or a tuple only from JSON's text, the
        # form the store holds them in: read as JSON before the value counts as invalid.
        return model.model_validate_json(json.dumps(raw), **options)  # type: ignore[attr-defined,no-any-return]


def _problems(model: type[Any], exc: Exception) -> str:
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
    if model_dump is None:  # Pydantic 1: only its JSON encoder knows every type
        encoder = functools.partial(_exact, instance.__json_encoder__)
        return json.loads(instance.json(by_alias=True, encoder=encoder))
    options = _pydantic_2_options()[0]
    if "exclude_computed_fields" not in options:  # before Pydantic 2.12: the top level's
        computed = getattr(type(instance), "model_computed_fields", None)
        if not isinstance(computed, dict):  # a property of instances before Pydantic 2.10
            computed = instance.model_computed_fields
        if computed:
            return model_dump(**options, exclude=set(computed))
    return model_dump(**options)


def _exact(encode: Any, value: Any) -> Any:
    """Pydantic 1 writes a ``Decimal`` as a float, which loses digits (money); as text,
    it reads back exactly, as Pydantic 2 writes it."""
    return str(value) if isinstance(value, decimal.Decimal) else encode(value)


class Binding:
    """One model handed out for one key in one request, and the dump it started from.

    ``unknown`` holds what the stored value had that the model does not know (fields
    another version of the app added, in a rolling deploy): put back into each dump,
    so a write by this version does not drop them.
    """

    __slots__ = ("initial", "instance", "model", "unknown")

    def __init__(self, model: type[Any], instance: Any, initial: Any, unknown: Any = None) -> None:
        self.model = model
        self.instance = instance
        self.initial = initial
        self.unknown = unknown

    @classmethod
    def of(cls, key: str, model: type[Any], data: dict[str, Any]) -> Binding:
        """The model for ``data[key]``; a missing or no longer valid value gives the
        model's defaults, and is only replaced if the handler changes them."""
        if key in data:
            try:
                instance = _validate(model, data[key])
            except Exception as exc:  # a validator of the app's may raise anything on an old shape
                # Once: the value stays stored until the app changes it, so each read of
                # each session that holds one would say it again.
                problems = _problems(model, exc)
                once(
                    logger,
                    ("invalid", key, model, problems),
                    f"session value {key!r} is not a valid {model.__name__}; starting from "
                    f"its defaults: {problems} (said once for this key, model and problem)",
                )
            else:
                initial = dump(instance)
                stored = data[key]
                if stored == initial:  # as this version writes it: the usual case
                    return cls(model, instance, initial)
                unknown = _unknown(stored, initial, instance)
                if unknown is not None:
                    _restore(initial, unknown, instance)
                if _dropped_in_lists(stored, initial, instance):
                    once(
                        logger,
                        ("unknown", key, model),
                        f"session value {key!r} holds fields that {model.__name__} does "
                        "not know in the items of a list, which a write by this process "
                        "drops: give the models in that list extra='allow' to keep what "
                        "another version of the app stores there",
                    )
                return cls(model, instance, initial, unknown)
        instance = model()
        return cls(model, instance, dump(instance))

    def sync(self, key: str, data: dict[str, Any]) -> bool:
        """Put the model's dump in ``data`` if it changed since it was handed out or
        last synced; True when it did."""
        try:
            current = dump(self.instance)
        except ValueError as exc:  # Pydantic's own: bytes that are not UTF-8, say
            raise SerializationError(
                key, f"its {self.model.__name__} cannot be dumped: {exc}"
            ) from None
        if self.unknown is not None:
            _restore(current, self.unknown, self.instance)
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


_names_of: dict[type[Any], frozenset[str]] = {}
_MISSING: Any = object()


def _names(model: type[Any]) -> frozenset[str]:
    """Every name under which ``model`` reads or writes one of its own fields: a stored
    key among them is the model's, even if this dump names it otherwise (an alias
    stored by an older Pydantic), and is never kept beside it."""
    found = _names_of.get(model)
    if found is not None:
        return found
    names: set[str] = set()
    fields = getattr(model, "model_fields", None) or getattr(model, "__fields__", {})
    for name, field in fields.items():
        names.add(name)
        for alias in (
            getattr(field, "alias", None),
            getattr(field, "serialization_alias", None),
            getattr(field, "validation_alias", None),
        ):
            if isinstance(alias, str):
                names.add(alias)
            else:  # AliasChoices: its plain names
                names.update(c for c in getattr(alias, "choices", ()) if isinstance(c, str))
    found = _names_of[model] = frozenset(names)
    return found


def _known(holder: Any) -> frozenset[str]:
    """The names the object at this place reads: a model's own fields; a plain dict
    dumps every key it holds, so none of its stored keys is unknown to it."""
    return _names(type(holder)) if _is_model(type(holder)) else frozenset()


_fields_of: dict[type[Any], dict[str, str]] = {}


def _child(holder: Any, key: str) -> Any:
    """What ``holder`` (a model, or a dict of them) holds under ``key``: a field's name,
    or its alias where the dump is by alias (before Pydantic 2.11, and Pydantic 1)."""
    if type(holder) is dict:
        return holder.get(key, _MISSING)
    kind = type(holder)
    if not _is_model(kind):
        return _MISSING
    fields = _fields_of.get(kind)
    if fields is None:
        fields = _fields_of[kind] = {}
        declared = getattr(kind, "model_fields", None) or getattr(kind, "__fields__", {})
        for name, field in declared.items():
            for alias in (getattr(field, "serialization_alias", None), field.alias, name):
                if isinstance(alias, str):
                    fields.setdefault(alias, name)
    name = fields.get(key)
    return _MISSING if name is None else getattr(holder, name, _MISSING)


def _unknown(stored: Any, dumped: Any, holder: Any) -> dict[str, Any] | None:
    """What the dicts of ``stored`` hold that ``dumped`` leaves out and the object at
    that place does not read: ``{key: (True, value, None)}`` for such a key, ``{key:
    (False, inner, child)}`` for one whose value, ``child``, holds some. Lists are not
    gone into: their items may have moved, and another item's fields would be given to
    the wrong one; nor is an object replaced since (see :func:`_restore`)."""
    if type(stored) is not dict or type(dumped) is not dict:
        return None
    known = _known(holder)
    found: dict[str, Any] = {}
    for key, value in stored.items():
        if key not in dumped:
            if key not in known and type(holder) is not dict:
                found[key] = (True, value, None)
        else:
            child = _child(holder, key)
            if child is not _MISSING and (inner := _unknown(value, dumped[key], child)):
                found[key] = (False, inner, child)
    return found or None


def _dropped_in_lists(stored: Any, dumped: Any, holder: Any, in_list: bool = False) -> bool:
    """Whether an item of a list in ``stored`` holds a key its model does not read."""
    if type(stored) is dict and type(dumped) is dict:
        if in_list and _is_model(type(holder)):
            known = _known(holder)
            if any(k not in dumped and k not in known for k in stored):
                return True
        return any(
            _dropped_in_lists(value, dumped[k], child, in_list)
            for k, value in stored.items()
            if k in dumped and (child := _child(holder, k)) is not _MISSING
        )
    if (
        type(stored) is list
        and type(dumped) is list
        and isinstance(holder, (list, tuple))
        and len(stored) == len(dumped) == len(holder)
    ):
        return any(
            _dropped_in_lists(a, b, item, True)
            for a, b, item in zip(stored, dumped, holder, strict=True)
        )
    return False


def _restore(dumped: Any, unknown: dict[str, Any], holder: Any) -> None:
    """Put ``unknown`` (from :func:`_unknown`) back into ``dumped``, where the object
    that held it is still there: a field the model has since set is the model's, and a
    nested model replaced since (a new coupon) starts without the old one's fields."""
    for key, (whole, value, child) in unknown.items():
        if whole:
            dumped.setdefault(key, value)
        elif _child(holder, key) is child and type(dumped.get(key)) is dict:
            _restore(dumped[key], value, child)
