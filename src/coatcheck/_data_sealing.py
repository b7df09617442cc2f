"""Session data encrypted at rest: ``SessionConfig(encrypt_data=True)``.

A server-side store keeps only a hash of each session ID, so a dump of it cannot be
replayed; with this, the data in it (a cart, an OAuth state, whatever the app keeps)
cannot be read either without the app's ``secret_keys``. Each record's data is sealed
with AES-256-GCM before it reaches the store, under a fresh nonce and a key of its own,
derived from the app's key and the record's: data copied into another record does not
open, and a random nonce repeats, if ever, only among one session's saves, however
many sessions the app key seals in its lifetime. The rest of the record
(user, times, device) stays readable, since listing and revoking a user's sessions
and the CLI need it, and none of it is what the app put in the session.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ._hashing import KeyedMac
from ._keys import Keyring
from .config import SecretKey
from .exceptions import MissingDependencyError
from .stores.base import Merge, SessionRecord, Store, creator_of, follower_of, mover_of

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("cryptography", "cookie") from exc

# What sealed data starts with. Data a serializer wrote is a mapping and never starts
# with a NUL byte, so records stored before encryption was turned on still read.
_SEALED = b"\x00\x01"
_NONCE_BYTES = 12


def sealing_data(store: Store, secret_keys: Sequence[SecretKey]) -> DataSealingStore:
    """``store``, sealing the data of every session under keys derived from these."""
    return DataSealingStore(store, Keyring(secret_keys).derive("session-data"))


class DataSealingStore:
    """Wraps a store so that what it keeps of each session's data is sealed.

    Records come out of it as they went in: only the wrapped store sees ciphertext.
    Every key of the keyring opens, the first seals, so a key is rotated without
    losing a session.
    """

    def __init__(self, inner: Store, keys: Sequence[bytes]) -> None:
        self.inner = inner
        self._macs = [KeyedMac(key) for key in keys]

    def __repr__(self) -> str:
        return f"DataSealingStore({self.inner!r})"

    async def load(self, key: str, now: float) -> SessionRecord | None:
        record = await self.inner.load(key, now)
        return None if record is None else self._open(record)

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        sealed_merge = None
        if merge is not None:

            def sealed_merge(base: SessionRecord) -> SessionRecord:
                return self._seal(merge(self._open(base)))

        return await self.inner.save(
            self._seal(record),
            replaces=replaces,
            expected_version=expected_version,
            merge=sealed_merge,
        )

    async def create(self, record: SessionRecord) -> bool:
        create = creator_of(self.inner)
        if create is None:
            return await self.inner.save(self._seal(record))
        return await create(self._seal(record))

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def moved_at(self, key: str, now: float) -> float | None:
        moved_at = mover_of(self.inner)
        return None if moved_at is None else await moved_at(key, now)

    async def moved_to(self, key: str, now: float) -> str | None:
        moved_to = follower_of(self.inner)
        return None if moved_to is None else await moved_to(key, now)

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        return [self._open(record) for record in await self.inner.list_user(user_id, now)]

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        return await self.inner.delete_user(user_id, keep=keep, now=now)

    async def delete_all(self, now: float) -> int:
        return await self.inner.delete_all(now)

    async def purge_expired(self, now: float) -> int:
        return await self.inner.purge_expired(now)

    async def count(self, now: float) -> int:
        return await self.inner.count(now)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _seal(self, record: SessionRecord) -> SessionRecord:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = _cipher(self._macs[0], record.key).encrypt(nonce, record.data, None)
        return record._replace(data=_SEALED + nonce + sealed)

    def opened(self, record: SessionRecord) -> bytes:
        """The data of ``record``, opened if it is sealed: empty if no key opens it."""
        return self._open(record).data

    def _open(self, record: SessionRecord) -> SessionRecord:
        data = record.data
        if not data.startswith(_SEALED):
            return record  # stored before encryption was turned on: read as it is
        nonce, sealed = data[2 : 2 + _NONCE_BYTES], data[2 + _NONCE_BYTES :]
        for mac in self._macs:
            try:
                opened = _cipher(mac, record.key).decrypt(nonce, sealed, None)
                return record._replace(data=opened)
            except (InvalidTag, ValueError):  # ValueError: a nonce cut short
                continue
        # Not sealed for this record by any key of ours: a key dropped too soon, or data
        # moved from another record. Empty data, which the session refuses to decode
        # (and logs, a few times a minute at most).
        return record._replace(data=b"")


def _cipher(mac: KeyedMac, record_key: str) -> AESGCM:
    """The cipher of one record: its own key, the HMAC of the record's under a key of
    the app's."""
    return AESGCM(mac.digest(record_key.encode()))
