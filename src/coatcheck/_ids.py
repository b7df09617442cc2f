"""Session IDs: minted from ``secrets``, checked strictly, stored only as hashes."""

from __future__ import annotations

import hashlib
import importlib
import secrets
from collections.abc import Callable
from typing import Protocol

ID_BYTES = 32  # 256 bits
ID_LENGTH = 43  # len(token_urlsafe(32))
PUBLIC_ID_LENGTH = 16  # len(token_urlsafe(12))
# What token_urlsafe() draws from; a well-formed ID is nothing else.
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class _Hash(Protocol):
    def hexdigest(self) -> str: ...


def _own_sha256() -> Callable[[bytes], _Hash]:
    """CPython's built-in SHA-256, or OpenSSL's where a build leaves it out.

    Both give the same digest. For a 43-byte ID the hashing is the least of the work:
    OpenSSL's set-up of each hash runs through far more code and memory, which a
    request finds out of the CPU's caches, and that cost it about 3 µs on every read.
    """
    for name in ("_sha2", "_sha256"):  # Python 3.12 and later; 3.10 and 3.11
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        sha256: Callable[[bytes], _Hash] = module.sha256
        return sha256
    return hashlib.sha256


_sha256 = _own_sha256()


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
    return _sha256(session_id.encode("ascii")).hexdigest()


def key_of(value: str) -> str | None:
    """The store key for a cookie's value, or None when no ID of ours looks like it.

    Only IDs this library could have minted ever reach a store.
    """
    raw = _minted(value, ID_LENGTH)
    return None if raw is None else _sha256(raw).hexdigest()


def _minted(value: str, length: int) -> bytes | None:
    """``value`` as bytes if ``token_urlsafe`` could have made it at this length."""
    if len(value) != length or not value.isascii():
        return None
    raw = value.encode("ascii")
    return None if raw.translate(None, _ALPHABET) else raw  # anything left is not ours
