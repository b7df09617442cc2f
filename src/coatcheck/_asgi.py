"""ASGI type aliases, named once for the whole package, and how a path is matched."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Header = tuple[bytes, bytes]
Headers = list[Header]


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of the header ``name`` (lower case, as ASGI gives names)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def response(status: int, content_type: bytes, body: bytes, extra: Headers) -> ASGIApp:
    """A whole response of coatcheck's own (a refusal, a 503, a relay page): never kept
    by a cache."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def route_path(scope: Scope) -> str:
    """The path the app's routes see: ``scope["path"]`` less the ``root_path`` that a
    proxy prefix (``uvicorn --root-path``) or a Starlette ``Mount`` put in front."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


class PathPrefixes:
    """Path prefixes matched by whole segments, against the route path.

    ``/admin`` (or ``/admin/``) covers ``/admin`` and everything under it, but not
    ``/administrator``; ``/`` covers every path.
    """

    __slots__ = ("_exact", "_under")

    def __init__(self, prefixes: Sequence[str]) -> None:
        bases = [prefix.rstrip("/") for prefix in prefixes]
        self._exact = frozenset(bases)
        self._under = tuple(f"{base}/" for base in bases)

    def match(self, scope: Scope) -> bool:
        path = route_path(scope)
        return path in self._exact or path.startswith(self._under)
