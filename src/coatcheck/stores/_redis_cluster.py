"""Writes on Redis Cluster, where a session and its user's index may live on different
nodes, so no single script can change both.

Each step touches one slot, and the steps are ordered so that a crash half-way can only
lose a session (the user logs in again), never leave one alive that revocation cannot
reach. Reads need no such care: a session's record says who owns it.
"""

from __future__ import annotations

from . import _redis_codec as codec
from ._redis_batch import run_commands, run_scripts
from ._redis_codec import KeyNames
from ._redis_scripts import Scripts
from ._redis_url import RedisClient
from .base import SessionRecord

# Passes of delete_user: each one catches sessions filed while the last ran.
_REVOKE_PASSES = 5
# How long a key barred by delete_user stays barred: far longer than any save's steps.
_BAR_MS = 60_000


class ClusterWrites:
    """The Cluster side of :class:`~coatcheck.stores.redis.RedisStore`'s writes."""

    def __init__(self, client: RedisClient, scripts: Scripts, names: KeyNames) -> None:
        self.client = client
        self.scripts = scripts
        self.names = names

    async def save(
        self,
        record: SessionRecord,
        replaces: str | None,
        expected: str,
        ttl: str,
        index_ttl: str,
        token: str,
    ) -> bool | SessionRecord:
        """Save across slots, in an order that fails safe.

        1. The session is filed in its user's index first, so a session that exists is
           always reachable by :meth:`delete_user`, which bars an entry that points at
           nothing yet from being written. An entry whose write fails points at nothing
           and is dropped by ``list_user`` once its deadline passes.
        2. A rotation then checks and deletes the old session on its slot; only if that
           succeeded is the new one written. A crash in between loses the session (the
           user logs in again) but can never bring back one that a logout ended.
        3. Only after the write is the key removed from a previous user's index; if that
           step is lost, the stale entry is harmless because revocation and listing
           check who owns each session.

        The steps run one after another: a revocation that starts while they do either
        deletes the old session before step 2 (which is then refused), or finds the new
        entry filed in step 1 on its next pass.
        """
        key, user = record.key, record.user_id
        old = replaces if replaces is not None and replaces != key else None
        # Single script calls rather than pipelines: redis-py retries a Cluster pipeline
        # on a timeout, waiting the whole timeout again each time.
        # A record already dead (an end: see coatcheck._devices.dead_record) is not filed:
        # its deadline, in the past, would drop the live session's entry, which must
        # stay if this save fails.
        if user is not None and record.expires_at > record.last_seen_at:
            await self.scripts.index_add(
                keys=[self.names.index(user)],
                args=[key, repr(record.expires_at), index_ttl, repr(record.last_seen_at)],
            )
        unindex: list[tuple[str, ...]] = []
        if old is not None:
            taken = await self.scripts.take(
                keys=self._keys(old),
                args=[expected, repr(record.last_seen_at), key],
            )
            if not codec.done(taken):
                return codec.refusal(old, taken)
            owner = codec.owner(taken)
            if owner is not None:
                unindex.append(("ZREM", self.names.index(owner), old))
        # A rotation's write needs no version check: the take above made it.
        checked = "" if old is not None else expected
        written = await self.scripts.write(
            keys=self._keys(key),
            args=[
                checked,
                repr(record.last_seen_at),
                ttl,
                token,
                *codec.encode_fields(record, token if checked in ("", "new") else ""),
            ],
        )
        if not codec.done(written):
            return codec.refusal(key, written)
        previous = codec.owner(written)
        if previous is not None and previous != user:
            unindex.append(("ZREM", self.names.index(previous), key))
        if unindex:
            await run_commands(self.client, unindex)
        return True

    async def delete(self, key: str) -> None:
        taken = await self.scripts.take(keys=self._keys(key), args=["", "0", ""])
        owner = codec.owner(taken)
        if owner is not None:
            await self.client.execute_command("ZREM", self.names.index(owner), key)

    async def delete_many(self, keys: list[str]) -> list[bool]:
        """:meth:`delete` for each of ``keys`` at once; whether each was there to delete."""
        taken = await run_scripts(
            self.client, [(self.scripts.take, self._keys(key), ["", "0", ""]) for key in keys]
        )
        unindex = [
            ("ZREM", self.names.index(owner), key)
            for key, result in zip(keys, taken, strict=True)
            if (owner := codec.owner(result)) is not None
        ]
        if unindex:
            await run_commands(self.client, unindex)
        return [codec.done(result) for result in taken]

    async def delete_user(self, user_id: str, keep: str | None, now: float) -> int:
        """Delete the user's sessions slot by slot, and count those live at ``now``.

        Only sessions the user still owns are deleted; an entry pointing at nothing is
        a save in flight, and its key is barred (see ``REVOKE_MEMBER``). Each pass
        reads the index again, until one finds nothing new: a save that got past its
        check while a pass ran has filed its entry by then (see :meth:`save`).
        """
        index = self.names.index(user_id)
        removed = 0
        bar = str(_BAR_MS)
        for _ in range(_REVOKE_PASSES):
            entries = [(m, score) for m, score in await self.scripts.entries(index) if m != keep]
            if not entries:
                break
            members = [member for member, _ in entries]
            results = await run_scripts(
                self.client,
                [
                    (self.scripts.revoke_member, self._keys(m), [user_id, repr(now), bar, score])
                    for m, score in entries
                ],
            )
            handled = [member for member, done in zip(members, results, strict=True) if int(done)]
            if not handled:
                break
            removed += sum(int(done) == 2 for done in results)
            await run_commands(self.client, [("ZREM", index, *handled)])
        return removed

    def _keys(self, key: str) -> list[str]:
        """A session's name and its receipt's: the keys of every script that writes or
        ends a session on Cluster."""
        return [self.names.session(key), self.names.receipt(key)]

    async def purge(self, batch: list[tuple[str, str]], now: float) -> int:
        """Delete the dead among ``batch`` ((redis key, session key) pairs), then unindex them."""
        results = await run_scripts(
            self.client, [(self.scripts.purge, [name], [repr(now)]) for name, _ in batch]
        )
        removed = 0
        unindex: list[tuple[str, ...]] = []
        for (_, member), result in zip(batch, results, strict=True):
            if codec.done(result):
                removed += 1
                owner = codec.owner(result)
                if owner is not None:
                    unindex.append(("ZREM", self.names.index(owner), member))
        if unindex:
            await run_commands(self.client, unindex)
        return removed
