"""Switching stores without signing anyone out: sessions move as they are used.

An app that outgrows its SQLite file for Redis, or moves from one Redis to another,
would otherwise log every user out at the switch. :class:`MovingStore` serves the
sessions still kept in the old store and moves each to the new one the first time a
request loads it; everything written goes to the new store, and a user's device list
and revocations reach both. Once the old store holds no live session (the absolute
timeout at the latest), the app drops it.
"""

from __future__ import annotations

import contextlib

from ..exceptions import ConfigurationError, StoreUnavailableError
from .base import (
    Create,
    Merge,
    SessionRecord,
    Store,
    check_store,
    cookie_sealer_of,
    creator_of,
    follower_of,
    mover_of,
)


class MovingStore:
    """``new`` for everything, and ``old`` for the sessions still kept there.

    A session moves by ``create()`` into ``new``, which writes only where no record is,
    so that of two requests moving it at once, or a move and a save of the copy, the
    first stands; then it is deleted from ``old``. A revocation that ran between the
    read from ``old`` and the copy is found by reading ``old`` again, and the copy goes;
    revocations end sessions in ``old`` first, so that none moves past them.
    """

    def __init__(self, new: Store, old: Store) -> None:
        check_store(new)
        check_store(old)
        for store in (new, old):
            if cookie_sealer_of(store) is not None:
                # Its sessions are in the browsers, sealed: no key finds them in a store.
                raise ConfigurationError(
                    "MovingStore moves sessions between server-side stores; the cookie "
                    "store keeps each in its browser's cookie, where no key finds it"
                )
        create = creator_of(new)
        if create is None:
            raise ConfigurationError(
                f"MovingStore needs a new store with create() (as coatcheck's own have), "
                f"which {type(new).__name__} lacks: without it, two requests moving one "
                "session at once could write over each other"
            )
        self.new = new
        self.old = old
        self._create: Create = create

    def __repr__(self) -> str:
        return f"MovingStore(new={self.new!r}, old={self.old!r})"

    async def load(self, key: str, now: float) -> SessionRecord | None:
        record = await self.new.load(key, now)
        if record is not None:
            return record
        record = await self.old.load(key, now)
        if record is None:
            # Moved meanwhile by a parallel request of the same browser (the first page
            # after the switch fetches several things at once): it is in the new store.
            return await self.new.load(key, now)
        return await self._move(record, now)

    async def _move(self, record: SessionRecord, now: float) -> SessionRecord | None:
        if not await self._create(record):
            # Moved, and maybe saved since, by a parallel request: that copy stands,
            # unless a login there retired its ID (a SQL store keeps the mark as a row).
            if await self._retired(record.key, now):
                return None
            return await self.new.load(record.key, now)
        try:
            if await self.old.load(record.key, now) is None:
                # Ended in the old store after it was read (a revocation, a logout that
                # found it there): the copy must not bring it back.
                await self.new.delete(record.key)
                return None
            if await self._retired(record.key, now):
                return None
            await self.old.delete(record.key)
        except BaseException:
            # The old store's delete may or may not have been carried out (a reply that
            # timed out, a cancel). Left in both, the session would be moved back from
            # the old store after a logout ended it in the new one: the copy stays only
            # where the old store is known to hold it no more.
            try:
                gone = await self.old.load(record.key, now) is None
            except Exception:
                gone = False
            if not gone:
                await self.new.delete(record.key)
            raise
        return record

    async def _retired(self, key: str, now: float) -> bool:
        """Whether a login in the new store gave the session under ``key`` a new ID,
        after a parallel request brought it over while the old store still held it.
        Then the retired ID ends in the old store too; a copy of it made meanwhile (in
        a store that keeps its marks apart from its records) goes, the mark stays."""
        moved_at = mover_of(self.new)
        if moved_at is None or await moved_at(key, now) is None:
            return False
        if await self.new.load(key, now) is not None:
            await self.new.delete(key)
        await self.old.delete(key)
        return True

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        if await self.new.save(
            record, replaces=replaces, expected_version=expected_version, merge=merge
        ):
            if replaces is not None and expected_version is None:
                # A new ID for a session this store never loaded, which may be in the
                # old one: its old ID must end there too.
                await self.old.delete(replaces)
            return True
        if expected_version is None:
            return False
        # The session continued may still be in the old store, one that no request
        # loaded through this one (a device revoked from another's list): moved, and
        # the save tried again on it.
        found = await self.old.load(replaces or record.key, record.last_seen_at)
        if found is None or await self._move(found, record.last_seen_at) is None:
            return False
        return await self.new.save(
            record, replaces=replaces, expected_version=expected_version, merge=merge
        )

    async def create(self, record: SessionRecord) -> bool:
        if await self.old.load(record.key, record.last_seen_at) is not None:
            return False  # a live record holds the key, in the store it has not left
        return await self._create(record)

    # Ends run through the old store first: a move that reads the session there after
    # that finds nothing and drops its copy, and one that read it before has copied it
    # into the new store before the end gets there. The other order misses a session
    # moved in between (a click while "sign everyone out" sweeps the old store).

    async def delete(self, key: str) -> None:
        # A session is deleted once loaded, so moved: the old store no longer holds it,
        # and its outage must not stop a logout. Revocations, which reach sessions that
        # have not moved, do wait for it (below).
        with contextlib.suppress(StoreUnavailableError):
            await self.old.delete(key)
        await self.new.delete(key)

    async def moved_at(self, key: str, now: float) -> float | None:
        for store in (self.new, self.old):  # a login in the old store, just before the switch
            moved_at = mover_of(store)
            if moved_at is not None and (at := await moved_at(key, now)) is not None:
                return at
        return None

    async def moved_to(self, key: str, now: float) -> str | None:
        for store in (self.new, self.old):
            moved_to = follower_of(store)
            if moved_to is not None and (to := await moved_to(key, now)) is not None:
                return to
        return None

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        records = {record.key: record for record in await self.old.list_user(user_id, now)}
        records.update((record.key, record) for record in await self.new.list_user(user_id, now))
        return sorted(records.values(), key=lambda record: record.created_at)

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        ended = await self.old.delete_user(user_id, keep=keep, now=now)
        return ended + await self.new.delete_user(user_id, keep=keep, now=now)

    async def delete_all(self, now: float) -> int:
        return await self.old.delete_all(now) + await self.new.delete_all(now)

    async def purge_expired(self, now: float) -> int:
        return await self.new.purge_expired(now) + await self.old.purge_expired(now)

    async def count(self, now: float) -> int:
        return await self.new.count(now) + await self.old.count(now)

    async def aclose(self) -> None:
        try:
            await self.new.aclose()
        finally:
            await self.old.aclose()
