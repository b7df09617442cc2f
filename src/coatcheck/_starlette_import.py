"""Reading the cookie of Starlette's ``SessionMiddleware``, to adopt its sessions.

Starlette keeps the whole session in its cookie: base64 of the JSON data, signed by
itsdangerous' ``TimestampSigner`` with the app's secret key. A valid one is as
trustworthy as it was to Starlette, so its data may start a server-side session.
"""

from __future__ import annotations

import binascii
import json
import logging
from base64 import b64decode
from datetime import timedelta
from typing import Any

from ._asgi import Headers
from ._cookies import read_cookie
from ._imports import Importer
from .config import CookieConfig, StarletteImport, _secret
from .exceptions import MissingDependencyError

logger = logging.getLogger("coatcheck")


class StarletteImporter(Importer):
    """Shared by all requests of one middleware."""

    def __init__(self, settings: StarletteImport, cookie: CookieConfig, key: bytes) -> None:
        try:
            from itsdangerous import BadSignature, TimestampSigner
        except ImportError as exc:
            raise MissingDependencyError("itsdangerous", "starlette-import") from exc
        super().__init__(settings, cookie, key)
        self._signer = TimestampSigner(_secret(settings.secret_key))  # text by now
        self._bad_signature = BadSignature
        max_age = settings.max_age  # whole seconds once validated; a timedelta before
        self._max_age = int(max_age.total_seconds() if isinstance(max_age, timedelta) else max_age)

    async def read(self, headers: Headers, now: float) -> dict[str, Any] | None:
        """The data of a valid Starlette cookie in ``headers``, or None."""
        if not self.open(now):
            return None
        value = read_cookie(headers, self._needle)
        if not value:
            return None
        try:
            payload = self._signer.unsign(value, max_age=self._max_age)
            data = json.loads(b64decode(payload, validate=True))
        except (self._bad_signature, binascii.Error, ValueError):
            return None  # forged, expired, or not Starlette's: no session, as for ours
        if not isinstance(data, dict) or not data:
            return None
        logger.info("adopting a session from Starlette's cookie")
        return data
