"""Secret keys: a list for rotation, one derived key per purpose, never in a ``repr``."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence

from starlette.datastructures import Secret

logger = logging.getLogger("coatcheck")

# Without configured keys: one random key for the whole process, made at first use, so
# that every middleware of it (sub-apps mounted side by side) accepts the others' tokens.
_process_key: bytes | None = None


def _random_process_key() -> bytes:
    global _process_key
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
    return _process_key


class Keyring:
    """Signs with the first key and verifies with all of them, so a key can be rotated
    without logging anyone out: add the new key first, drop the old one later.

    Each purpose (``"csrf"``, ``"cookie-store"``) gets its own key
    derived with HMAC, so a token made for one purpose is worthless for another.
    """

    def __init__(self, secrets_: Sequence[str | bytes | Secret]) -> None:
        if not secrets_:
            # Works in one process; several workers or a restart would not share it.
            logger.warning(
                "no secret_keys configured; using a random per-process key. "
                "Set SessionConfig(secret_keys=[...]) when running several workers."
            )
            secrets_ = [_random_process_key()]
        self._roots = [bytes(s) if isinstance(s, bytes) else str(s).encode() for s in secrets_]
        for root in self._roots:
            if len(root) < 16:
                raise ValueError("each secret key needs at least 16 bytes")

    def __repr__(self) -> str:
        return f"<Keyring with {len(self._roots)} key(s)>"

    def derive(self, purpose: str) -> list[bytes]:
        """This purpose's keys, newest (signing) first."""
        label = f"coatcheck:{purpose}".encode()
        return [hmac.new(root, label, hashlib.sha256).digest() for root in self._roots]
