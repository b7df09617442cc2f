"""Sealing a whole session record into a cookie value, and opening it again.

AES-256-GCM: the browser can neither read the data nor change a single bit of it
unnoticed. Each seal draws a fresh 96-bit nonce, so two seals of the same record never
look alike. The cookie's name is the associated data: a value moved to another cookie
does not open. Every key of the keyring opens, the first one seals, so a key is rotated
without logging anyone out.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Sequence

from ._ids import ID_LENGTH, key_of, new_session_id, store_key
from .exceptions import ConfigurationError, MissingDependencyError, SessionTooLargeError
from .stores.base import SessionRecord, implied_login_time

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("cryptography", "cookie") from exc

_FORMAT = b"\x01"  # the first byte of every sealed value
_FORMAT_AUTH = b"\x02"  # the same with a login time of its own (see below)
_FORMAT_CUT = b"\x03"  # and with shorter limits its login chose
_NONCE_BYTES = 12
_TAG_BYTES = 16
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Session ID, created, last seen, expires, remember, version, then the sizes of the
# public ID and of the user ID (0: none, else one more than its length); then the two
# IDs and the data. Fixed-size numbers: cheaper to open than JSON, and typed already.
# The second format adds the login time after those sizes. The first implies it (see
# ``implied_login_time``), so the second is written only for a login adopted from
# another library (0.0: unknown), and workers of an earlier release open every other
# cookie during a rolling deploy. The third adds the idle and absolute limits a login
# chose, and is written only for such a login. The later formats seal their format
# byte into the associated data, so a cookie cannot be switched to another unnoticed.
_HEAD = struct.Struct(f"<{ID_LENGTH}sddd?QHH")
_HEAD_AUTH = struct.Struct(f"<{ID_LENGTH}sddd?QHHd")
_HEAD_CUT = struct.Struct(f"<{ID_LENGTH}sddd?QHHdII")
_HEADS = {_FORMAT: _HEAD, _FORMAT_AUTH: _HEAD_AUTH, _FORMAT_CUT: _HEAD_CUT}


class CookieSealer:
    """Turns records into cookie values of at most ``max_bytes`` (name included) and back."""

    def __init__(self, keys: Sequence[bytes], cookie_name: str, max_bytes: int) -> None:
        self._ciphers = [AESGCM(key) for key in keys]
        self._name = cookie_name.encode("latin-1")
        self._max_bytes = max_bytes
        self._max_value = max_bytes - len(self._name) - 1  # name=value
        session_id = new_session_id()
        smallest = SessionRecord(store_key(session_id), "p" * 16, b"{}", None, 0, 0, 0)
        try:  # said now rather than at a first login
            self.seal(session_id, smallest)
        except SessionTooLargeError:
            raise ConfigurationError(
                f"a cookie named {cookie_name!r} leaves no room for a session in {max_bytes} bytes"
            ) from None

    def seal(self, session_id: str, record: SessionRecord) -> str:
        """The cookie value carrying ``record``; raises SessionTooLargeError past the limit.

        The user agent is left out: only a device list shows it, and this store has none.
        """
        public_id = record.public_id.encode()
        user_id = b"" if record.user_id is None else record.user_id.encode()
        if len(user_id) > self._max_value:  # and its size is packed in two bytes
            raise SessionTooLargeError(
                len(user_id), self._max_value, "the user ID alone is too long for a cookie"
            )
        fields = (
            session_id.encode("ascii"),
            record.created_at,
            record.last_seen_at,
            record.expires_at,
            record.remember,
            record.version,
            len(public_id),
            0 if record.user_id is None else len(user_id) + 1,
        )
        if record.idle_timeout or record.absolute_timeout:
            form = _FORMAT_CUT
            head = _HEAD_CUT.pack(
                *fields, record.authenticated_at, record.idle_timeout, record.absolute_timeout
            )
        elif record.authenticated_at != implied_login_time(
            record.created_at, record.user_id is not None
        ):
            form, head = _FORMAT_AUTH, _HEAD_AUTH.pack(*fields, record.authenticated_at)
        else:
            form, head = _FORMAT, _HEAD.pack(*fields)
        plain = b"".join((head, public_id, user_id, record.data))
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[0].encrypt(nonce, plain, self._associated(form))
        token = form + nonce + sealed
        value = base64.urlsafe_b64encode(token).rstrip(b"=")
        if len(value) > self._max_value:
            # Each base64 character past the limit is three quarters of a byte too many.
            room = len(record.data) - -(-(len(value) - self._max_value) * 3 // 4)
            if room <= 2:  # not even "{}": the rest of the record takes the cookie
                raise SessionTooLargeError(
                    len(user_id),
                    0,
                    f"the user ID is too long for the session's cookie of {self._max_bytes} bytes",
                )
            raise SessionTooLargeError(
                len(record.data),
                room,
                f"session data is {len(record.data)} bytes; at most about {room} fit in "
                f"the session's cookie of {self._max_bytes} bytes",
            )
        return value.decode("ascii")

    def open(self, value: str) -> tuple[str, SessionRecord] | None:
        """The session ID and record sealed in ``value``; None for anything not sealed
        here with one of the keys, whatever the reason: no detail helps a forger."""
        if len(value) > self._max_value or not value.isascii():
            return None
        raw = value.encode("ascii")
        tail = len(raw) % 4
        if tail == 1 or raw.translate(None, _BASE64URL):
            return None  # no base64 is one character past a whole group
        if tail and _BASE64URL.index(raw[-1]) & (0x0F if tail == 2 else 0x03):
            return None  # bits past the last byte set: only one spelling of a value opens
        token = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
        form = token[:1]
        head = _HEADS.get(form)
        if len(token) < 1 + _NONCE_BYTES + _TAG_BYTES or head is None:
            return None
        nonce, sealed = token[1 : 1 + _NONCE_BYTES], token[1 + _NONCE_BYTES :]
        associated = self._associated(form)
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(nonce, sealed, associated)
            except InvalidTag:
                continue
            return _record(plain, head)
        return None

    def _associated(self, form: bytes) -> bytes:
        # The first format's is the name alone, as every earlier release sealed it.
        return self._name if form == _FORMAT else form + self._name


def _record(plain: bytes, head: struct.Struct) -> tuple[str, SessionRecord] | None:
    """Rebuild what :meth:`CookieSealer.seal` wrote; None if it is not that shape.

    Only our own key can have sealed it, so a bad shape means a bug or an old format,
    never an attack; it is still checked, since a 500 is never the answer to a cookie.
    """
    try:
        raw_id, created, last_seen, expires, remember, version, public_size, user_size, *rest = (
            head.unpack_from(plain)
        )
        at = head.size + public_size
        public_id = plain[head.size : at].decode()
        user_id = None
        if user_size:
            user_id = plain[at : at + user_size - 1].decode()
            at += user_size - 1
        session_id = raw_id.decode("ascii")
    except (struct.error, UnicodeDecodeError):
        return None
    key = key_of(session_id)
    if key is None or len(plain) < at:
        return None
    # By position, in SessionRecord's field order (no user agent or address in a cookie):
    # the keyword-taking constructor costs several times more, on every read.
    record = SessionRecord._make(
        (
            key,
            public_id,
            plain[at:],
            user_id,
            created,
            last_seen,
            expires,
            remember,
            "",  # user_agent
            version,
            "",  # ip_address
            rest[0] if rest else implied_login_time(created, user_id is not None),
            rest[1] if len(rest) > 1 else 0,
            rest[2] if len(rest) > 1 else 0,
        )
    )
    return session_id, record
