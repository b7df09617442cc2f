"""Sessions kept in the browser: the whole record, encrypted, in the cookie itself.

For apps that must keep no session state on the server. The data is sealed with
AES-256-GCM under a key derived from ``SessionConfig.secret_keys``, so the browser can
neither read nor change it, and every expiry is checked on the server as with any
store. What it gives up, because the server keeps nothing:

- a logout clears the cookie, but a copy taken before opens the session until its own
  idle deadline, renewed by its use up to the absolute timeout, and a stolen cookie
  cannot be revoked;
- no device list, and no ending a user's other sessions (:class:`NotSupportedError`);
- parallel requests of one session each send a whole cookie and the browser keeps the
  last, so one request's changes can undo another's;
- the session must fit a cookie: about 2.9 KB of JSON with the default 4096 bytes.

Needs the ``cookie`` extra (``cryptography``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .._sealing import CookieSealer
from ..exceptions import NotSupportedError
from .base import Merge, SessionRecord

_STATELESS = (
    "the cookie store keeps sessions in the browser's cookie, so the server has none to "
    "{}; use a server-side store (SQLite, Redis, PostgreSQL) for device lists and for "
    "ending sessions elsewhere"
)


def not_supported(what: str) -> NotSupportedError:
    """The refusal of an operation that needs sessions kept on the server."""
    return NotSupportedError(_STATELESS.format(what))


class CookieStore:
    """A store with nothing on the server: the middleware seals each record into the
    cookie, and the methods of the store contract have nothing to do.

    ``max_bytes`` bounds the cookie's name and value together; 4096 is what every
    browser keeps.
    """

    def __init__(self, *, max_bytes: int = 4096) -> None:
        if not 512 <= max_bytes <= 4096:
            raise ValueError(
                "max_bytes must be from 512 (room for a sealed session) to 4096 (the most "
                "a browser keeps of one cookie)"
            )
        self.max_bytes = max_bytes

    def cookie_sealer(self, keys: Sequence[bytes], cookie_name: str) -> CookieSealer:
        """What the middleware seals and opens cookies with; finding this method is how
        it tells a store that lives in the cookie."""
        return CookieSealer(keys, cookie_name, self.max_bytes)

    async def load(self, key: str, now: float) -> SessionRecord | None:
        return None  # the record arrives in the cookie, opened before any load

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        return True  # written by the Set-Cookie header the middleware sends

    async def delete(self, key: str) -> None:
        return None  # the middleware clears the cookie; a copy lives until its deadline

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        raise not_supported("list")

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        raise not_supported("end")

    async def delete_all(self, now: float) -> int:
        raise NotSupportedError(
            _STATELESS.format("end") + "; replacing every secret key ends them all"
        )

    async def purge_expired(self, now: float) -> int:
        return 0  # an expired cookie is refused when it comes back, and browsers drop it

    async def count(self, now: float) -> int:
        raise not_supported("count")

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"CookieStore(max_bytes={self.max_bytes})"
