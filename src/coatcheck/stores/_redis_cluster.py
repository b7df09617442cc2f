"""Writes on Redis Cluster, where a session and its user's index may live on different
nodes, so no single script can change both.

Each step touches one slot, and the steps are ordered so that a crash half-way can only
lose a session (the user logs in again), never leave one alive that revocation cannot
reach. Reads need no such care: a session's record says who owns it.
"""

from __future__ import annotations

import asyncio

from . import _redis_codec as codec
from ._redis_batch import Call, run_commands, run_scripts
from ._redis_codec import KeyNames
from ._redis_scripts import Scripts
from ._redis_url import RedisClient
from .base import SessionRecord

# Passes of delete_user: each one catches sessions filed while the last ran.
_REVOKE_PASSES = 5


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
    ) -> bool | SessionRecord:
        """Save across slots, in an order that fails safe.

        1. A rotation first checks and deletes the old session on its slot; only if that
           succeeded is the new one written. A crash in between loses the session (the
           user logs in again) but can never bring back one that a logout ended.
        2. The session is filed in its user's index *before* it is written (alongside
           step 1 when rotating), so a session that exists is always reachable by
           :meth:`delete_user`. An entry whose write then fails points at nothing and is
           dropped by ``list_user`` once its deadline passes.
        3. Only after the write is the key removed from a previous user's index; if that
           step is lost, the stale entry is harmless because revocation and listing
           check who owns each session.
        """
        key, user = record.key, record.user_id
        old = replaces if replaces is not None and replaces != key else None
        first: list[Call] = []
        if old is not None:
            first.append(
                (
                    self.scripts.take,
                    [self.names.session(old)],
                    [expected, repr(record.last_seen_at)],
                )
            )
        if user is not None:
            first.append(
                (
                    self.scripts.index_add,
                    [self.names.index(user)],
                    [key, repr(record.expires_at), index_ttl],
                )
            )
        # Side by side rather than in a pipeline: redis-py retries a Cluster pipeline
        # on a timeout, waiting the whole timeout again each time. Both are awaited
        # before a failure is raised, so neither is left running after the request.
        done = await asyncio.gather(
            *(script(keys=k, args=a) for script, k, a in first), return_exceptions=True
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        unindex: list[tuple[str, ...]] = []
        if old is not None:
            if not codec.done(done[0]):
                return codec.refusal(old, done[0])
            owner = codec.owner(done[0])
            if owner is not None:
                unindex.append(("ZREM", self.names.index(owner), old))
        written = await self.scripts.write(
            keys=[self.names.session(key)],
            args=[
                "" if old is not None else expected,
                repr(record.last_seen_at),
                ttl,
                *codec.encode_fields(record),
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
        taken = await self.scripts.take(keys=[self.names.session(key)], args=["", "0"])
        owner = codec.owner(taken)
        if owner is not None:
            await self.client.execute_command("ZREM", self.names.index(owner), key)

    async def delete_user(self, user_id: str, keep: str | None, now: float) -> int:
        """Delete the user's sessions slot by slot, repeating while the index grows, and
        count those live at ``now``.

        Only sessions the user still owns are deleted, and only their entries removed:
        an entry pointing at nothing may be a save in flight (see :meth:`save`).
        """
        index = self.names.index(user_id)
        removed = 0
        for _ in range(_REVOKE_PASSES):
            members = [m for m, _ in await self.scripts.entries(index) if m != keep]
            if not members:
                break
            results = await run_scripts(
                self.client,
                [
                    (self.scripts.delete_if_owned, [self.names.session(m)], [user_id, repr(now)])
                    for m in members
                ],
            )
            deleted = [member for member, done in zip(members, results, strict=True) if int(done)]
            if not deleted:
                break
            removed += sum(int(done) == 2 for done in results)
            await run_commands(self.client, [("ZREM", index, *deleted)])
        return removed

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
