"""Session IDs: minted from ``secrets``, checked strictly, stored only as hashes."""

from __future__ import annotations

import secrets

from ._hashing import sha256

ID_BYTES = 32  # 256 bits
ID_LENGTH = 43  # len(token_urlsafe(32))
PUBLIC_ID_LENGTH = 16  # len(token_urlsafe(12))
# What token_urlsafe() draws from; a well-formed ID is nothing else.
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def new_session_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def new_public_id() -> str:
    """A random handle for device lists: safe to show, useless as a credential."""
    return secrets.token_urlsafe(12)


def is_public_id(value: str) -> bool:
    """Whether ``value`` has the shape of a public id (so it may be shown back)."""
    return _minted(value, PUBLIC_ID_LENGTH) is not None


def store_key(session_id: str) -> str:
    """The key a store files a session under: a dump of the store cannot be replayed."""
    return sha256(session_id.encode("ascii")).hexdigest()


def key_of(value: str) -> str | None:
    """The store key for a cookie's value, or None when no ID of ours looks like it.

    Only IDs this library could have minted ever reach a store.
    """
    raw = _minted(value, ID_LENGTH)
    return None if raw is None else sha256(raw).hexdigest()


def _minted(value: str, length: int) -> bytes | None:
    """``value`` as bytes if ``token_urlsafe`` could have made it at this length."""
    if len(value) != length or not value.isascii():
        return None
    raw = value.encode("ascii")
    return None if raw.translate(None, _ALPHABET) else raw  # anything left is not ours
