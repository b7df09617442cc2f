"""SHA-256 and HMAC-SHA256 for what requests hash: IDs, CSRF tokens, sealed data's keys.

CPython's own SHA-256 rather than OpenSSL's. Both give the same digests, and for the
few dozen bytes hashed here the hashing is the least of the work: OpenSSL's set-up of
each hash (a context, its provider's tables) runs through far more code and memory,
which a request finds out of the CPU's caches. That cost about 3 µs on every read, and
OpenSSL's HMAC costs twice what its SHA-256 does.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _hashlib import HASH


def _own_sha256() -> Callable[..., HASH]:
    """CPython's built-in SHA-256; OpenSSL's where a build leaves that out, or where
    OpenSSL runs in FIPS mode, whose validated module must then do all the hashing."""
    if _fips_mode():
        return hashlib.sha256
    for name in ("_sha2", "_sha256"):  # Python 3.12 and later; 3.10 and 3.11
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        sha256: Callable[..., HASH] = module.sha256
        return sha256
    return hashlib.sha256


def _fips_mode() -> bool:
    try:
        import _hashlib
    except ImportError:  # a Python built without OpenSSL
        return False
    return bool(_hashlib.get_fips_mode())


sha256 = _own_sha256()


class KeyedMac:
    """HMAC-SHA256 under one key, its two padded keys hashed once rather than per
    message: each message then costs two copies of a hash state."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=sha256)

    def digest(self, message: bytes) -> bytes:
        mac = self._base.copy()
        mac.update(message)
        return mac.digest()
