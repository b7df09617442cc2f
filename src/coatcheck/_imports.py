"""Adopting the sessions of the library an app used before, so switching logs nobody out.

An importer finds the old session of a request that has no coatcheck session yet. Its
data starts a new coatcheck session, stored when the response starts as any change
is; the same response clears the old cookie, and the importer then ends the old
session where it can.

A browser's first page often sends several requests at once, each with the old cookie
alone. They must not each start a session of their own: one's changes would be lost
under the other's cookie, and the user would count as two devices. So the new session's
ID is derived from the old cookie with a key from the app's ``secret_keys`` (not the old
library's, which is often retired or shared), and requests that bring the same old
cookie within a short while of each other join one session.
"""

from __future__ import annotations

from base64 import urlsafe_b64encode
from typing import Any

from ._asgi import Headers
from ._cookies import EPOCH, cookie_needle, read_cookie
from ._hashing import KeyedMac
from ._keys import Keyring
from ._user_ids import check_user_id
from .config import CookieConfig, SessionConfig, StarletteImport, StarsessionsImport

# Seconds after an import during which another request with the same old cookie joins
# the session it started: long enough for the rest of a page's parallel requests.
JOIN_WINDOW = 60.0


class Importer:
    """What every importer shares: the old cookie, who the data names, and until when."""

    def __init__(
        self, settings: StarletteImport | StarsessionsImport, cookie: CookieConfig, key: bytes
    ) -> None:
        self._id_mac = KeyedMac(key)  # derives the new session's ID from the old cookie
        self.cookie_name = settings.cookie_name
        self._needle = cookie_needle(settings.cookie_name)
        self._until = None if settings.until is None else settings.until.timestamp()
        self.user_key = settings.user_key
        self.remember = settings.remember
        attributes = [f"path={settings.path}"]
        if settings.domain is not None:
            attributes.append(f"Domain={settings.domain}")
        if cookie.secure or settings.partitioned:
            attributes.append("Secure")
        if settings.partitioned:
            # A partitioned cookie is a different cookie to the browser: only a clearing
            # that says Partitioned reaches it.
            attributes.append("Partitioned")
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

    def carried(self, headers: Headers) -> bool:
        """Whether the request brings the old cookie at all, valid or not."""
        return read_cookie(headers, self._needle) is not None

    def session_id(self, headers: Headers) -> str | None:
        """The ID of the session this request's old cookie starts, or None without one.

        The same old cookie always gives the same ID, which only the server can work
        out: the ID is a keyed hash of the cookie, shaped as a minted one.
        """
        value = read_cookie(headers, self._needle)
        if value is None:
            return None
        digest = self._id_mac.digest(value.encode("ascii"))
        return urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def user(self, data: dict[str, Any]) -> str | None:
        """The user the imported data names under ``user_key``, if any: one that
        ``login()`` would take, or none."""
        if self.user_key is None:
            return None
        value = data.get(self.user_key)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None
        try:
            return check_user_id(str(value))
        except ValueError:
            return None


def importer_for(config: SessionConfig, keyring: Keyring) -> Importer | None:
    if config.starlette_import is not None:
        from ._starlette_import import StarletteImporter

        key = keyring.derive("starlette-import")[0]
        return StarletteImporter(config.starlette_import, config.cookie, key)
    if config.starsessions_import is not None:
        from ._starsessions_import import StarsessionsImporter

        key = keyring.derive("starsessions-import")[0]
        return StarsessionsImporter(config.starsessions_import, config.cookie, key)
    return None
