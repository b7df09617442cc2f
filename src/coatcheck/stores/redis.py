"""Sessions in Redis or Redis Cluster, shared by any number of workers and hosts.

Each session is one hash, ``{prefix}:s:{<key>}`` (``key`` is the SHA-256 hex of the
session ID, so Redis never holds a usable credential); each user has a sorted set
``{prefix}:u:{<user>}`` of their session keys, which is what makes "log out everywhere"
possible. The braces are Cluster hash tags: a session and its index entry may live on
different nodes, but every script touches a single slot.

Expiry is enforced by Redis itself, so nothing needs purging. The TTL is the record's
remaining lifetime by the caller's clock (``expires_at - last_seen_at``), not an
absolute ``PEXPIREAT``: the caller's clock rules everywhere else in the store contract,
an app server whose clock runs apart from Redis's then neither loses sessions early nor
keeps them much late, and tests with a frozen clock work. ``load`` still checks
``expires_at`` against ``now``, so a record is never served past its deadline.

Standalone, ``load`` is one ``HGET`` of the packed record and ``save`` one script call
that also keeps the user index and the TTLs. On Cluster a save is split by slot and
ordered so that a crash half-way can only lose a session, never leave one alive that
revocation cannot reach; see :meth:`RedisStore._save_cluster`.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator

from ..exceptions import ConfigurationError, MissingDependencyError, SessionConflictError
from . import _redis_codec as codec
from . import _redis_scripts as lua
from .base import Merge, SessionRecord

try:
    from redis.asyncio.cluster import RedisCluster

    from ._redis_batch import Call, run_commands, run_scripts, scan_tagged
    from ._redis_errors import REDIS_ERRORS, translate, translated
    from ._redis_url import RedisClient, client_from_url
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("redis", "redis") from exc

__all__ = ["RedisStore"]

DEFAULT_PREFIX = "coatcheck"

# A record already dead when written still lives this long, so the write behaves like
# any other: it replaces what was there and stays visible to purge_expired and count.
_MIN_TTL_MS = 1000
# A user's index outlives its sessions by this much: on Cluster it is written first,
# and its TTL must still cover the session written a round trip later.
_INDEX_GRACE_MS = 60_000
_SCAN_BATCH = 500
# Merges before a save gives up with a 409: each lost race means another save landed.
_MAX_MERGES = 32
# Passes of delete_user on Cluster: each one catches sessions filed while the last ran.
_REVOKE_PASSES = 5
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class RedisStore:
    """Sessions in Redis (standalone, TLS, Unix socket) or Redis Cluster.

    ``client`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``
    made with ``decode_responses=False``, since session data is bytes. The store closes
    it in :meth:`aclose` only when ``owns_client`` is true, as it is for
    :meth:`from_url`. Give every application its own ``prefix``.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        owns_client: bool = False,
        retry_after: int | None = None,
    ) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"Redis key prefix {prefix!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -"
            )
        if client.get_encoder().decode_responses:
            raise ConfigurationError("RedisStore needs a client with decode_responses=False")
        self.client = client
        self.prefix = prefix
        self.owns_client = owns_client
        self.retry_after = retry_after
        self.cluster = isinstance(client, RedisCluster)
        register = client.register_script
        self._save_script = register(lua.STANDALONE_SAVE)
        self._delete_script = register(lua.STANDALONE_DELETE)
        self._delete_user_script = register(lua.STANDALONE_DELETE_USER)
        self._purge_script = register(lua.STANDALONE_PURGE)
        self._take = register(lua.TAKE)
        self._write = register(lua.WRITE)
        self._index_add = register(lua.INDEX_ADD)
        self._members = register(lua.MEMBERS)
        self._unindex = register(lua.UNINDEX_IF_UNCHANGED)
        self._delete_if_owned = register(lua.DELETE_IF_OWNED)
        self._purge = register(lua.PURGE)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str | None = None, timeout: float | None = None
    ) -> RedisStore:
        """Build a store that owns its client; nothing connects until first use.

        ``redis://host:6379/0``, ``rediss://`` (TLS), ``unix:///run/redis.sock?db=0``, and
        for Cluster ``redis+cluster://host:port,host:port,...`` (or ``rediss+cluster://``)
        listing any reachable nodes. ``?prefix=`` and ``?timeout=`` (seconds, for both
        connecting and each command; 1 s by default, so an outage becomes a quick 503
        rather than a hung request) apply unless the keywords are given.
        """
        client, url_prefix = client_from_url(url, timeout)
        if prefix is None:
            prefix = DEFAULT_PREFIX if url_prefix is None else url_prefix
        return cls(client, prefix=prefix, owns_client=True)

    # -- the store contract -------------------------------------------------------------

    async def load(self, key: str, now: float) -> SessionRecord | None:
        # try/except rather than ``with translated(...)``: this runs on every read, and a
        # generator-based context manager costs more than the rest of this method.
        try:
            packed = await self.client.execute_command("HGET", f"{self.prefix}:s:{{{key}}}", "b")
        except REDIS_ERRORS as exc:
            raise translate(exc, self.retry_after) from exc
        record = codec.unpack(key, packed)
        return record if record is not None and record.expires_at > now else None

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        # Optimistic: the script refuses a stale version and hands back the winner in
        # the same reply, so a merge costs no extra read; then try again on top of it.
        for _ in range(_MAX_MERGES):
            with translated(self.retry_after):
                outcome = await self._save_once(record, replaces, expected_version)
            if isinstance(outcome, bool):
                return outcome
            if merge is None:
                return False
            record, expected_version = merge(outcome), outcome.version
        raise SessionConflictError(
            f"gave up after {_MAX_MERGES} parallel saves of the same session won the race"
        )

    async def _save_once(
        self, record: SessionRecord, replaces: str | None, expected: int | None
    ) -> bool | SessionRecord:
        ttl_ms = max(math.ceil((record.expires_at - record.last_seen_at) * 1000), _MIN_TTL_MS)
        ttl, index_ttl = str(ttl_ms), str(ttl_ms + _INDEX_GRACE_MS)
        expected_arg = "" if expected is None else str(expected)
        if self.cluster:
            return await self._save_cluster(record, replaces, expected_arg, ttl, index_ttl)
        previous = replaces or record.key
        user = record.user_id
        reply = await self._save_script(
            keys=[self._session_key(record.key), self._session_key(previous)],
            args=[
                self.prefix,
                record.key,
                previous,
                expected_arg,
                repr(record.last_seen_at),
                ttl,
                repr(record.expires_at),
                "0" if user is None else "1",
                user or "",
                index_ttl,
                *codec.encode_fields(record),
            ],
        )
        return codec.refusal(previous, reply) if not codec.done(reply) else True

    async def delete(self, key: str) -> None:
        with translated(self.retry_after):
            if not self.cluster:
                await self._delete_script(keys=[self._session_key(key)], args=[self.prefix, key])
                return
            taken = await self._take(keys=[self._session_key(key)], args=["", "0"])
            owner = codec.owner(taken)
            if owner is not None:
                await self.client.execute_command("ZREM", self._index_key(owner), key)

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        index = self._index_key(user_id)
        with translated(self.retry_after):
            entries = await self._entries(index)
            if not entries:
                return []
            found = await run_commands(
                self.client, [("HGET", self._session_key(member), "b") for member, _ in entries]
            )
            live: list[SessionRecord] = []
            stale: list[str] = []
            for (member, score), packed in zip(entries, found, strict=True):
                record = codec.unpack(member, packed)
                if record is not None and record.user_id == user_id:
                    if record.expires_at > now:
                        live.append(record)
                elif float(score) <= now:
                    # Gone, or moved to another user, and past its deadline. An entry with
                    # a future score may belong to a Cluster save still in flight: kept.
                    stale += [member, score]
            if stale:
                await self._unindex(keys=[index], args=stale)
        return sorted(live, key=lambda record: (record.created_at, record.key))

    async def delete_user(self, user_id: str, *, keep: str | None = None) -> int:
        index = self._index_key(user_id)
        with translated(self.retry_after):
            if not self.cluster:
                removed = await self._delete_user_script(
                    keys=[index], args=[self.prefix, user_id, keep or ""]
                )
                return int(removed)
            return await self._delete_user_cluster(index, user_id, keep)

    async def purge_expired(self, now: float) -> int:
        """Delete records dead by ``now`` that Redis has not expired yet.

        Never needed for correctness (Redis drops every record at its TTL, and nothing
        dead is ever served); it is an admin sweep that SCANs the whole keyspace.
        """
        removed = 0
        with translated(self.retry_after):
            async for batch in self._scan_sessions():
                if not self.cluster:
                    calls: list[Call] = [
                        (self._purge_script, [key], [self.prefix, member, repr(now)])
                        for key, member in batch
                    ]
                    removed += sum(int(done) for done in await run_scripts(self.client, calls))
                    continue
                results = await run_scripts(
                    self.client, [(self._purge, [key], [repr(now)]) for key, _ in batch]
                )
                unindex: list[tuple[str, ...]] = []
                for (_, member), result in zip(batch, results, strict=True):
                    if codec.done(result):
                        removed += 1
                        owner = codec.owner(result)
                        if owner is not None:
                            unindex.append(("ZREM", self._index_key(owner), member))
                if unindex:
                    await run_commands(self.client, unindex)
        return removed

    async def count(self, now: float) -> int:
        """Live records: a SCAN of every primary, meant for admin tools, not requests."""
        total = 0
        with translated(self.retry_after):
            async for batch in self._scan_sessions():
                deadlines = await run_commands(
                    self.client, [("HGET", key, "e") for key, _ in batch]
                )
                total += sum(1 for e in deadlines if e is not None and float(e) > now)
        return total

    async def aclose(self) -> None:
        """Close the connections of an owned client; its pool reconnects on next use."""
        if self.owns_client:
            with translated(self.retry_after):
                await self.client.aclose()

    # -- Cluster ------------------------------------------------------------------------

    async def _save_cluster(
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
           ``delete_user``. An entry whose write then fails points at nothing and is
           dropped by ``list_user`` once its deadline passes.
        3. Only after the write is the key removed from a previous user's index; if that
           step is lost, the stale entry is harmless because revocation and listing
           check who owns each session.
        """
        key, user = record.key, record.user_id
        rotating = replaces is not None and replaces != key
        first: list[Call] = []
        if rotating:
            assert replaces is not None
            first.append(
                (
                    self._take,
                    [self._session_key(replaces)],
                    [expected, repr(record.last_seen_at)],
                )
            )
        if user is not None:
            first.append(
                (
                    self._index_add,
                    [self._index_key(user)],
                    [key, repr(record.expires_at), index_ttl],
                )
            )
        done = await run_scripts(self.client, first) if first else []
        unindex: list[tuple[str, ...]] = []
        if rotating:
            assert replaces is not None
            if not codec.done(done[0]):
                return codec.refusal(replaces, done[0])
            owner = codec.owner(done[0])
            if owner is not None:
                assert replaces is not None
                unindex.append(("ZREM", self._index_key(owner), replaces))
        written = await self._write(
            keys=[self._session_key(key)],
            args=[
                "" if rotating else expected,
                repr(record.last_seen_at),
                ttl,
                *codec.encode_fields(record),
            ],
        )
        if not codec.done(written):
            return codec.refusal(key, written)
        previous = codec.owner(written)
        if previous is not None and previous != user:
            unindex.append(("ZREM", self._index_key(previous), key))
        if unindex:
            await run_commands(self.client, unindex)
        return True

    async def _delete_user_cluster(self, index: str, user_id: str, keep: str | None) -> int:
        """Delete the user's sessions slot by slot, repeating while the index grows.

        Only sessions the user still owns are deleted, and only their entries removed:
        an entry pointing at nothing may be a save in flight (see ``_save_cluster``).
        """
        removed = 0
        for _ in range(_REVOKE_PASSES):
            members = [member for member, _ in await self._entries(index) if member != keep]
            if not members:
                break
            results = await run_scripts(
                self.client,
                [(self._delete_if_owned, [self._session_key(m)], [user_id]) for m in members],
            )
            deleted = [member for member, done in zip(members, results, strict=True) if int(done)]
            if not deleted:
                break
            removed += len(deleted)
            await run_commands(self.client, [("ZREM", index, *deleted)])
        return removed

    # -- mechanics ----------------------------------------------------------------------

    def _session_key(self, key: str) -> str:
        return f"{self.prefix}:s:{{{key}}}"

    def _index_key(self, user_id: str) -> str:
        return f"{self.prefix}:u:{{{user_id}}}"

    async def _entries(self, index: str) -> list[tuple[str, str]]:
        flat = [codec.text(item) for item in await self._members(keys=[index])]
        return list(zip(flat[::2], flat[1::2], strict=True))

    def _scan_sessions(self) -> AsyncIterator[list[tuple[str, str]]]:
        """Batches of (redis key, session key) over the whole keyspace."""
        return scan_tagged(self.client, f"{self.prefix}:s:", _SCAN_BATCH)
