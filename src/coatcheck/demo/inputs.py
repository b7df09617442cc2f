"""Reading the body of the demo's dual-use endpoints: JSON for APIs, forms for the page.

The same URL serves ``fetch`` callers and plain HTML forms, so the body format is
chosen by ``Content-Type`` and the answer format by ``Content-Type``/``Accept``.
Bad input is always a 422: a JSON error list for API callers (as FastAPI gives), the
page with a readable message for browsers.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import Message, Receive

from .settings import MAX_BODY, SESSION_HEADER

M = TypeVar("M", bound=BaseModel)


class PageError(Exception):
    """A problem to show on the HTML page, with the status the response should carry,
    the input it is about (marked invalid, and focused) and what the form had ticked."""

    def __init__(
        self,
        message: str,
        status_code: int,
        *,
        username: str = "",
        field: str | None = None,
        ticked: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.username = username
        self.field = field
        self.ticked = ticked


def _media_type(request: Request, header: str) -> str:
    return request.headers.get(header, "").split(";", 1)[0].strip().lower()


def has_json_body(request: Request) -> bool:
    media_type = _media_type(request, "content-type")
    return media_type == "application/json" or media_type.endswith("+json")


def has_form_body(request: Request) -> bool:
    return _media_type(request, "content-type") in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    )


def wants_json(request: Request) -> bool:
    """True for API callers: a JSON body, ``application/json`` in ``Accept``, or the
    session carried in the token header, which only clients that are not browsers send."""
    accept = request.headers.get("accept", "").lower()
    return (
        has_json_body(request) or "application/json" in accept or SESSION_HEADER in request.headers
    )


def from_page(request: Request) -> bool:
    """A plain form of the page, as opposed to an API call, with or without a body."""
    return has_form_body(request) and not wants_json(request)


async def read_input(request: Request, model: type[M]) -> M:
    """Parse and validate the body as ``model``; raise the right kind of 422 otherwise."""
    raw: Any
    sent = _media_type(request, "content-type")
    if sent and not (has_json_body(request) or has_form_body(request)):
        # text/plain is what a cross-site "simple" request can send without a preflight.
        raise HTTPException(status_code=415, detail="Send JSON or a form")
    body = await _bounded_body(request)
    if has_json_body(request):
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": "Invalid JSON"}]
            ) from None
    else:
        raw = await _text_fields(request, body)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        if wants_json(request):
            raise RequestValidationError(_without_input(exc)) from None
        loc = exc.errors(include_url=False)[0]["loc"]
        field = str(loc[0]) if loc else None  # the page's inputs are named as the fields
        raise PageError(_describe(exc), 422, username=_username(raw), field=field) from None


async def form_field(request: Request, name: str) -> str | None:
    """One text field of a form post, read within :data:`MAX_BODY`."""
    return (await _text_fields(request, await _bounded_body(request))).get(name)


async def _text_fields(request: Request, body: bytes) -> dict[str, str]:
    """The text fields of a form post whose ``body`` has been read (files left out)."""
    form = await Request(request.scope, _replay(body)).form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    await form.close()
    return fields


async def _bounded_body(request: Request) -> bytes:
    """The body, or a 413 as soon as it is known to pass :data:`MAX_BODY`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(status_code=413, detail="Request body too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(status_code=413, detail="Request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _without_input(exc: ValidationError) -> list[dict[str, Any]]:
    """The errors minus what was sent: never echo a password, nor text JSON cannot hold."""
    return [
        {"type": error["type"], "loc": error["loc"], "msg": error["msg"]}
        for error in exc.errors(include_url=False)
    ]


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "input"
    return f"Please check the {field} field: {first['msg'].lower()}."


def _username(raw: Any) -> str:
    value = raw.get("username", "") if isinstance(raw, dict) else ""
    return value[:150] if isinstance(value, str) else ""


# FastAPI's own 422 body, which read_input() gives API callers: declared here, since
# FastAPI declares it only for bodies it parses itself.
_INVALID = {
    "type": "object",
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
                "required": ["loc", "msg", "type"],
            },
        }
    },
}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` for a handler that parses its body by hand, and the
    answers that reading gives."""
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        },
        "responses": {
            "413": {"description": "The body, or the session it would make, is too large"},
            "415": {"description": "Send JSON or a form"},
            "422": {
                "description": "Invalid input",
                "content": {"application/json": {"schema": _INVALID}},
            },
        },
    }


def invalid(field: str, message: str) -> RequestValidationError:
    """A 422 for API callers in FastAPI's shape, about a rule no model holds."""
    return RequestValidationError([{"type": "value_error", "loc": (field,), "msg": message}])
