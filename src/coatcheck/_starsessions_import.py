"""Reading the sessions of starsessions' ``RedisStore``, to adopt them.

starsessions keeps a random ID in its cookie and the session's JSON under
``{prefix}{id}`` in Redis, with its own bookkeeping under ``__metadata__``. Once the
adopted session is stored here, the old key is deleted: unlike Starlette's signed
cookie, a copy of starsessions' cookie can then adopt nothing again.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from ._asgi import Headers
from ._cookies import read_cookie
from ._imports import Importer
from .config import CookieConfig, StarsessionsImport
from .exceptions import ConfigurationError, MissingDependencyError

try:
    from .stores._redis_errors import REDIS_ERRORS, translate
    from .stores._redis_url import client_from_url
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("redis", "redis") from exc

logger = logging.getLogger("coatcheck")

# starsessions mints 32 hex digits; anything far from an ID is not looked up at all.
_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_METADATA = "__metadata__"


class StarsessionsImporter(Importer):
    """Shared by all requests of one middleware; owns a Redis client."""

    def __init__(self, settings: StarsessionsImport, cookie: CookieConfig, key: bytes) -> None:
        super().__init__(settings, cookie, key)
        self._client, url_prefix = client_from_url(settings.url, None)
        if url_prefix is not None:
            raise ConfigurationError(
                "give starsessions' key prefix as StarsessionsImport(prefix=...), not in its URL"
            )
        self._prefix = settings.prefix

    def _key(self, headers: Headers) -> str | None:
        value = read_cookie(headers, self._needle)
        return None if value is None or not _ID.fullmatch(value) else self._prefix + value

    async def read(self, headers: Headers, now: float) -> dict[str, Any] | None:
        """The data stored for starsessions' cookie in ``headers``, or None."""
        if not self.open(now):
            return None
        key = self._key(headers)
        if key is None:
            return None
        # The old cookie's ID is a credential until adopted: what an error tracker sends
        # of this frame (its locals, and redis-py's frames of a chained error) leaves it
        # out, as coatcheck's own frames do.
        del headers
        failure = None
        try:
            raw = await self._client.get(key)
        except REDIS_ERRORS as exc:
            failure = translate(exc, None)  # the old store's outage: a 503 too
        if failure is not None:
            del key
            raise failure
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None  # another serializer's data: nothing that can be read here
        if not isinstance(data, dict):
            return None
        data.pop(_METADATA, None)
        if not data:
            return None
        logger.info("adopting a session from starsessions")
        return data

    async def consumed(self, headers: Headers) -> None:
        key = self._key(headers)
        if key is None:
            return
        try:
            await self._client.delete(key)
        except REDIS_ERRORS as exc:
            # The new session is stored; the old one lives on until starsessions' TTL.
            logger.warning("could not delete the adopted starsessions key: %s", exc)

    async def aclose(self) -> None:
        await self._client.aclose()
