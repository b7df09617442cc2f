"""Adopting the sessions of the library an app used before, so switching logs nobody out.

An importer finds the old session of a request that has no coatcheck session yet. Its
data starts a new coatcheck session, stored when the response starts as any change
is; the same response clears the old cookie, and the importer then ends the old
session where it can.
"""

from __future__ import annotations

from typing import Any

from ._asgi import Headers
from ._cookies import EPOCH, cookie_needle
from .config import CookieConfig, SessionConfig, StarletteImport, StarsessionsImport


class Importer:
    """What every importer shares: the old cookie, who the data names, and until when."""

    def __init__(
        self, settings: StarletteImport | StarsessionsImport, cookie: CookieConfig
    ) -> None:
        self.cookie_name = settings.cookie_name
        self._needle = cookie_needle(settings.cookie_name)
        self._until = None if settings.until is None else settings.until.timestamp()
        self.user_key = settings.user_key
        self.remember = settings.remember
        attributes = [f"path={settings.path}"]
        if settings.domain is not None:
            attributes.append(f"Domain={settings.domain}")
        if cookie.secure:
            attributes.append("Secure")
        clear = f"{settings.cookie_name}=null; expires={EPOCH}; {'; '.join(attributes)}"
        self.clear_cookie = clear.encode()
        # When both share one name, a new session's cookie replaces the old one instead:
        # a response must not set one name twice.
        self.shares_name = settings.cookie_name == cookie.name

    def open(self, now: float) -> bool:
        """Whether the import still runs at ``now`` (see ``until``)."""
        return self._until is None or now < self._until

    async def read(self, headers: Headers, now: float) -> dict[str, Any] | None:
        """The old session's data for this request, or None."""
        raise NotImplementedError

    async def consumed(self, headers: Headers) -> None:
        """The old session was adopted or ended here: make sure it cannot be again."""

    async def aclose(self) -> None:
        """Release what the importer holds open."""

    def user(self, data: dict[str, Any]) -> str | None:
        """The user the imported data names under ``user_key``, if any."""
        if self.user_key is None:
            return None
        value = data.get(self.user_key)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            return None
        user = str(value)
        return None if "\x00" in user else user  # as login() refuses it


def importer_for(config: SessionConfig) -> Importer | None:
    if config.starlette_import is not None:
        from ._starlette_import import StarletteImporter

        return StarletteImporter(config.starlette_import, config.cookie)
    if config.starsessions_import is not None:
        from ._starsessions_import import StarsessionsImporter

        return StarsessionsImporter(config.starsessions_import, config.cookie)
    return None
