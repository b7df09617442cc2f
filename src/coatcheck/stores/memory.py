"""A bounded in-process store for tests and single-process development."""

from __future__ import annotations

import time
from collections import OrderedDict

from .._user_ids import user_text
from .base import MOVED_FOR, Merge, SessionRecord


class MemoryStore:
    """Keeps records in a dict; loses them on restart and is not shared between workers.

    At ``max_entries`` it first drops expired records, then the least recently
    written anonymous ones, so an anonymous flood cannot grow memory without bound,
    and signs nobody out while it has anonymous records to drop; a signed-in session
    goes only when none is left. Expired
    records are looked for at most once a second: a full store under a flood of new
    sessions would otherwise read every record at every save.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        # Ordered, so the oldest write is found at once: a plain dict skips every slot
        # freed at its front, which at capacity is one more for each save.
        self._records: OrderedDict[str, SessionRecord] = OrderedDict()
        self._by_user: dict[str, set[str]] = {}
        self._anonymous: OrderedDict[str, None] = OrderedDict()  # keys, in write order
        self._swept_at = float("-inf")  # when _make_room last looked for expired records
        # Keys that saves moved to new ones, in the order moved, with when they ended
        # and the key each moved to.
        self._moved: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._records)} of at most {self.max_entries} records>"

    async def load(self, key: str, now: float) -> SessionRecord | None:
        record = self._records.get(key)
        if record is None or record.expires_at <= now:
            return None
        return record

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        if expected_version is not None:
            base = self._records.get(replaces or record.key)
            if base is None or base.expires_at <= record.last_seen_at:
                return False
            if base.version != expected_version:
                if merge is None:
                    return False
                record = merge(base)  # no await since the read: nothing can interleave
        if replaces is not None and replaces != record.key:
            self._remove(replaces)
            self._note_move(replaces, record.last_seen_at, record.key)
        self._remove(record.key)
        if len(self._records) >= self.max_entries:
            self._make_room(record.last_seen_at)
        # A copy of exactly its size: orjson's result may hold a far larger buffer, kept
        # here for as long as the record is.
        self._records[record.key] = record._replace(data=bytes(memoryview(record.data)))
        if record.user_id is not None:
            self._by_user.setdefault(record.user_id, set()).add(record.key)
        else:
            self._anonymous[record.key] = None
        return True

    async def create(self, record: SessionRecord) -> bool:
        """Write ``record`` only if no live record holds its key; False when one does."""
        existing = self._records.get(record.key)
        if existing is not None and existing.expires_at > record.last_seen_at:
            return False
        return await self.save(record)

    async def delete(self, key: str) -> None:
        self._remove(key)

    async def moved_at(self, key: str, now: float) -> float | None:
        """When a save moved the session under ``key`` to a new key, if less than
        ``MOVED_FOR`` seconds before ``now`` (see :func:`~coatcheck.stores.base.mover_of`)."""
        move = self._moved.get(key)
        return move[0] if move is not None and now < move[0] + MOVED_FOR else None

    async def moved_to(self, key: str, now: float) -> str | None:
        """The key that move went to (see :func:`~coatcheck.stores.base.follower_of`)."""
        move = self._moved.get(key)
        return move[1] if move is not None and now < move[0] + MOVED_FOR else None

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        user_id = user_text(user_id)
        records = (self._records[key] for key in self._by_user.get(user_id, ()))
        live = [record for record in records if record.expires_at > now]
        return sorted(live, key=lambda record: record.created_at)

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        user_id = user_text(user_id)
        moment = time.time() if now is None else now
        doomed = [key for key in self._by_user.get(user_id, ()) if key != keep]
        live = sum(1 for key in doomed if self._records[key].expires_at > moment)
        for key in doomed:
            self._remove(key)
        return live

    async def delete_all(self, now: float) -> int:
        live = sum(1 for record in self._records.values() if record.expires_at > now)
        self._records.clear()
        self._by_user.clear()
        self._anonymous.clear()
        self._moved.clear()
        return live

    async def purge_expired(self, now: float) -> int:
        doomed = [key for key, record in self._records.items() if record.expires_at <= now]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def count(self, now: float) -> int:
        return sum(1 for record in self._records.values() if record.expires_at > now)

    async def aclose(self) -> None:
        return None

    def _remove(self, key: str) -> None:
        record = self._records.pop(key, None)
        if record is None:
            return
        if record.user_id is None:
            self._anonymous.pop(key, None)
            return
        keys = self._by_user.get(record.user_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[record.user_id]

    def _note_move(self, key: str, now: float, to: str) -> None:
        """Remember ``key`` as moved to ``to`` at ``now``; forget moves long past, and the
        oldest beyond ``max_entries``, so that a flood of logins cannot grow this either."""
        moves = self._moved
        moves[key] = (now, to)
        moves.move_to_end(key)
        while moves:
            oldest, (moved_at, _) = next(iter(moves.items()))
            if moved_at + MOVED_FOR > now and len(moves) <= self.max_entries:
                break
            del moves[oldest]

    def _make_room(self, now: float) -> None:
        if not now - 1.0 < self._swept_at <= now:
            self._swept_at = now
            expired = [key for key, record in self._records.items() if record.expires_at <= now]
            for key in expired:
                self._remove(key)
        while len(self._records) >= self.max_entries:
            self._remove(next(iter(self._anonymous or self._records)))
