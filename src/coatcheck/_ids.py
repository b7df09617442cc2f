"""Session IDs: minted from ``secrets``, checked strictly, stored only as hashes."""

from __future__ import annotations

import hashlib
import re
import secrets

ID_BYTES = 32  # 256 bits
ID_LENGTH = 43  # len(token_urlsafe(32))
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")


def new_session_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def new_public_id() -> str:
    """A random handle for device lists: safe to show, useless as a credential."""
    return secrets.token_urlsafe(12)


def store_key(session_id: str) -> str:
    """The key a store files a session under: a dump of the store cannot be replayed."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def key_of(value: str) -> str | None:
    """The store key for a cookie's value, or None when no ID of ours looks like it.

    Only IDs this library could have minted ever reach a store.
    """
    if len(value) != ID_LENGTH or _ID_PATTERN.fullmatch(value) is None:
        return None
    return hashlib.sha256(value.encode("ascii")).hexdigest()
