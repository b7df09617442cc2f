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
from ._cookies import EPOCH, cookie_needle, read_cookie
from .config import CookieConfig, StarletteImport
from .exceptions import MissingDependencyError

logger = logging.getLogger("coatcheck")


class StarletteImporter:
    """Shared by all requests of one middleware."""

    def __init__(self, settings: StarletteImport, cookie: CookieConfig) -> None:
        try:
            from itsdangerous import BadSignature, TimestampSigner
        except ImportError as exc:
            raise MissingDependencyError("itsdangerous", "starlette-import") from exc
        self._signer = TimestampSigner(settings.secret_key)
        self._bad_signature = BadSignature
        self._needle = cookie_needle(settings.cookie_name)
        max_age = settings.max_age  # whole seconds once validated; a timedelta before
        self._max_age = int(max_age.total_seconds() if isinstance(max_age, timedelta) else max_age)
        self._until = None if settings.until is None else settings.until.timestamp()
        self.user_key = settings.user_key
        self.remember = settings.remember
        # Starlette's own way to end its cookie. When both share one name, a new session's
        # cookie replaces it instead: a response must not set one name twice.
        attributes = [f"path={settings.path}"]
        if settings.domain is not None:
            attributes.append(f"Domain={settings.domain}")
        if cookie.secure:
            attributes.append("Secure")
        clear = f"{settings.cookie_name}=null; expires={EPOCH}; {'; '.join(attributes)}"
        self.clear_cookie = clear.encode()
        self.shares_name = settings.cookie_name == cookie.name

    def read(self, headers: Headers, now: float) -> dict[str, Any] | None:
        """The data of a valid Starlette cookie in ``headers``, or None."""
        if self._until is not None and now >= self._until:
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

    def user(self, data: dict[str, Any]) -> str | None:
        """The user the imported data names under ``user_key``, if any."""
        if self.user_key is None:
            return None
        value = data.get(self.user_key)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            return None
        return str(value)
