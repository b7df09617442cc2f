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
revocation cannot reach; see ``_redis_cluster``.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

from .._user_ids import user_text
from ..exceptions import (
    ConfigurationError,
    MissingDependencyError,
    SessionConflictError,
    StoreUnavailableError,
)
from . import _redis_codec as codec
from ._loops import PerLoop
from ._redis_codec import KeyNames
from ._turns import Turns
from .base import MOVED_FOR, Merge, SessionRecord, checked_retry_after

try:
    from redis.asyncio.cluster import RedisCluster

    from ._redis_batch import Call, run_commands, run_scripts, scan_tagged
    from ._redis_cluster import ClusterWrites
    from ._redis_errors import REDIS_ERRORS, broken_under_us, translate, translated
    from ._redis_policy import warn_if_evicting
    from ._redis_scripts import Scripts
    from ._redis_url import RedisClient, client_from_url
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("redis", "redis") from exc

__all__ = ["RedisStore"]

T = TypeVar("T")

DEFAULT_PREFIX = "coatcheck"

# A record already dead when written still lives this long, so the write behaves like
# any other: it replaces what was there and stays visible to purge_expired and count.
_MIN_TTL_MS = 1000
# A user's index outlives its sessions by this much: on Cluster it is written first,
# and its TTL must still cover the session written a round trip later.
_INDEX_GRACE_MS = 60_000
_SCAN_BATCH = 500
# The expected version of a save that creates its session: refused if one lives there.
_CREATE = "new"
_UNCHECKED = ("", _CREATE)  # saves that keep their token for revocations to note
# Sessions one script of "revoke all of a user's sessions" ends: about 10 ms of the
# server's time, which every other client waits for.
_REVOKE_BATCH = 500
# Merges before a save gives up with a 409: each lost race means another save landed.
_MAX_MERGES = 32
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# How many sweeps "end every session" makes on Cluster before a reshard that goes on
# makes it give up, and the pause before each sweep after the first.
_SETTLED_SWEEPS = 5
_SETTLE_PAUSE = 0.2


class _Bound:
    """What the store connects with in one event loop, whose connections they are: a
    client, its scripts, and the turns of that loop's saves."""

    __slots__ = ("client", "on_cluster", "scripts", "turns")

    def __init__(self, client: RedisClient, names: KeyNames) -> None:
        self.client = client
        self.scripts = Scripts(client)
        # The fail-safe ordering Cluster needs; standalone, every write is one script.
        self.on_cluster = (
            ClusterWrites(client, self.scripts, names) if isinstance(client, RedisCluster) else None
        )
        self.turns = Turns()


async def _close_client(bound: _Bound) -> None:
    await bound.client.aclose()


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
        self.prefix = prefix
        self.owns_client = owns_client
        self.retry_after = checked_retry_after(retry_after)
        self._names = KeyNames(prefix)
        self._policy_checked = False  # the eviction policy, looked at after a first login
        self._first = _Bound(client, self._names)
        # A client given is the app's, for the loop it uses it in: the same for every
        # loop; from_url() makes one for each loop instead.
        self._bound: PerLoop[_Bound] = PerLoop(
            lambda: self._first, _close_client if owns_client else None
        )

    def _one_per_loop(self, make: Callable[[], RedisClient]) -> None:
        """Give each event loop a client of its own, made with ``make`` (the first loop
        takes the one the store was built with)."""
        self._bound = PerLoop(lambda: _Bound(make(), self._names), _close_client, self._first)

    def _here(self) -> _Bound:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside any loop: not to connect with, only to look at
            return self._first
        return self._bound.here(loop)

    @property
    def client(self) -> RedisClient:
        """The redis-py client of the running event loop."""
        return self._here().client

    @property
    def _scripts(self) -> Scripts:
        return self._here().scripts

    @property
    def _on_cluster(self) -> ClusterWrites | None:
        return self._here().on_cluster

    @property
    def _turns(self) -> Turns:
        return self._here().turns

    def __repr__(self) -> str:
        # Not the client's: redis-py's shows its connection settings, password included.
        kind = "Cluster" if self.cluster else "server"
        return f"<RedisStore prefix={self.prefix!r} on a Redis {kind}>"

    @property
    def cluster(self) -> bool:
        """Whether the client is a Redis Cluster client."""
        return self._on_cluster is not None

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str | None = None, timeout: float | None = None
    ) -> RedisStore:
        """Build a store that owns its client; nothing connects until first use.

        ``redis://host:6379/0``, ``rediss://`` (TLS), ``unix:///run/redis.sock?db=0``;
        for Cluster ``redis+cluster://host:port,host:port,...`` (or ``rediss+cluster://``)
        listing any reachable nodes; for Sentinel
        ``redis+sentinel://host:port,host:port,.../service[/db]`` (or ``rediss+sentinel://``)
        listing the Sentinels.
        ``?prefix=`` and ``?timeout=`` (seconds, for both connecting and each command;
        1 s by default, so an outage becomes a quick 503 rather than a hung request)
        apply unless the keywords are given.
        """
        client, url_prefix = client_from_url(url, timeout)
        if prefix is None:
            prefix = DEFAULT_PREFIX if url_prefix is None else url_prefix
        store = cls(client, prefix=prefix, owns_client=True)
        store._one_per_loop(lambda: client_from_url(url, timeout)[0])
        return store

    # -- the store contract -------------------------------------------------------------

    async def load(self, key: str, now: float) -> SessionRecord | None:
        # try/except rather than ``with translated(...)``: this runs on every read, and a
        # generator-based context manager costs more than the rest of this method.
        name = self._names.session(key)
        try:
            packed = await self.client.execute_command("HGET", name, "b")
        except REDIS_ERRORS as exc:
            if not broken_under_us(exc):
                raise translate(exc, self.retry_after) from exc
            with translated(self.retry_after):
                packed = await self.client.execute_command("HGET", name, "b")
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
        saved = await self._save(record, replaces, expected_version, merge)
        if not self._policy_checked and record.user_id is not None:
            # Once, after the save rather than beside it: a Cluster pool of one
            # connection per node fails a second command at once.
            self._policy_checked = True
            await warn_if_evicting(self.client)
        return saved

    async def _save(
        self,
        record: SessionRecord,
        replaces: str | None,
        expected_version: int | None,
        merge: Merge | None,
    ) -> bool:
        # One token per save, the same in every copy sent: see _again_if_broken.
        token = codec.save_token()
        if expected_version is None:
            again = partial(self._save_once, record, replaces, None, token)
            return await self._again_if_broken(again) is True
        # Optimistic: the script refuses a stale version and hands back the winner in
        # the same reply, so a merge costs no extra read; then try again on top of it.
        continued = replaces or record.key
        turn = await self._turns.take(continued)
        try:
            for lost in range(_MAX_MERGES):
                if lost > 1:
                    # Taking turns rules out rivals in this process: the rest is
                    # another process's burst, which a short random pause lets pass.
                    await asyncio.sleep(random.uniform(0, min(0.0005 * 2**lost, 0.016)))
                    # What won during the pause: the winner seen before it is likely
                    # stale, and a try on top of it sure to lose again.
                    latest = await self.load(continued, record.last_seen_at)
                    if latest is not None and latest.version != expected_version:
                        assert merge is not None
                        record, expected_version = merge(latest), latest.version
                outcome = await self._again_if_broken(
                    partial(self._save_once, record, replaces, expected_version, token)
                )
                if isinstance(outcome, bool):
                    return outcome
                if merge is None:
                    return False
                record, expected_version = merge(outcome), outcome.version
        finally:
            self._turns.give_back(continued, turn)
        raise SessionConflictError(
            f"gave up after {_MAX_MERGES} parallel saves of the same session won the race"
        )

    async def create(self, record: SessionRecord) -> bool:
        """Write ``record`` only if no live record holds its key; False when one does."""
        token = codec.save_token()
        again = partial(self._save_once, record, None, _CREATE, token)
        return await self._again_if_broken(again) is True

    async def _save_once(
        self, record: SessionRecord, replaces: str | None, expected: int | str | None, token: str
    ) -> bool | SessionRecord:
        """One attempt. Every copy of it carries ``token``; a write without a version
        check (or a creation) also keeps it for revocations to note (see ``_REVOKED``)."""
        ttl_ms = max(math.ceil((record.expires_at - record.last_seen_at) * 1000), _MIN_TTL_MS)
        ttl, index_ttl = str(ttl_ms), str(ttl_ms + _INDEX_GRACE_MS)
        expected_arg = "" if expected is None else str(expected)
        if self._on_cluster is not None:
            return await self._on_cluster.save(
                record, replaces, expected_arg, ttl, index_ttl, token
            )
        previous = replaces or record.key
        user = record.user_id
        reply = await self._scripts.standalone_save(
            keys=[self._names.session(record.key), self._names.session(previous)],
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
                token,
                *codec.encode_fields(record, token if expected_arg in _UNCHECKED else ""),
            ],
        )
        return codec.refusal(previous, reply) if not codec.done(reply) else True

    async def _again_if_broken(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, made once more if redis-py let out a connection broken under it.

        redis-py sends a command again by itself after a connection error, but not after
        the bare ``AttributeError`` it lets out when another task closed the connection
        mid-command (redis/redis-py#4287; parallel requests on Cluster meet it when the
        scripts must be loaded again). Every call that comes here does, made twice, what
        it does once: reads, deletes (of one session or of a user's), and saves, which
        carry a token that lets the scripts recognise a copy that had landed. A second
        failure is an outage like any other.
        """
        with translated(self.retry_after):
            try:
                return await call()
            except REDIS_ERRORS as exc:
                if not broken_under_us(exc):
                    raise
            return await call()

    async def delete(self, key: str) -> None:
        await self._again_if_broken(lambda: self._delete(key))

    async def moved_at(self, key: str, now: float) -> float | None:
        """When a save moved the session under ``key`` to a new key, if less than
        ``MOVED_FOR`` seconds before ``now`` (see :func:`~coatcheck.stores.base.mover_of`)."""
        moved_at, _ = await self._move(key, now)
        return moved_at

    async def moved_to(self, key: str, now: float) -> str | None:
        """The key that move went to (see :func:`~coatcheck.stores.base.follower_of`);
        None for a mark an earlier coatcheck made, which did not keep it."""
        _, to = await self._move(key, now)
        return to

    async def _move(self, key: str, now: float) -> tuple[float | None, str | None]:
        receipt = self._names.receipt(key)
        moved_at, to = await self._again_if_broken(
            lambda: self.client.execute_command("HMGET", receipt, "m", "t")
        )
        if moved_at is None or now >= float(moved_at) + MOVED_FOR:
            return None, None
        return float(moved_at), None if to is None else codec.text(to)

    async def _delete(self, key: str) -> None:
        if self._on_cluster is not None:
            await self._on_cluster.delete(key)
        else:
            script, keys, args = self._standalone_delete(key)
            await script(keys=keys, args=args)

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        user_id = user_text(user_id)
        return await self._again_if_broken(lambda: self._list_user(user_id, now))

    async def _list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        index = self._names.index(user_id)
        entries = await self._scripts.entries(index)
        if not entries:
            return []
        found = await run_commands(
            self.client, [("HGET", self._names.session(member), "b") for member, _ in entries]
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
            await self._scripts.unindex(keys=[index], args=stale)
        return sorted(live, key=lambda record: (record.created_at, record.key))

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        user_id = user_text(user_id)
        # Made once more after redis-py's leaked error, like a delete: what the first
        # attempt ended stays ended, though the count then leaves those out.
        moment = time.time() if now is None else now
        return await self._again_if_broken(partial(self._delete_user, user_id, keep, moment))

    async def _delete_user(self, user_id: str, keep: str | None, now: float) -> int:
        if self._on_cluster is not None:
            return await self._on_cluster.delete_user(user_id, keep, now)
        removed, left = 0, 1
        while left > 0:
            reply = await self._scripts.standalone_delete_user(
                keys=[self._names.index(user_id)],
                args=[self.prefix, user_id, keep or "", repr(now), str(_REVOKE_BATCH)],
            )
            removed, left = removed + int(reply[0]), int(reply[1])
        return removed

    async def delete_all(self, now: float) -> int:
        """End every session under this prefix: a SCAN of every primary, each session
        deleted as :meth:`delete` does, so a save still in flight cannot bring it back.

        On Cluster, a key moved by a reshard from a node not yet scanned to one already
        scanned would be missed: the sweep counts only when no slot moved while it ran,
        and is made again until one did not. A reshard that goes on past a few sweeps
        is a ``StoreUnavailableError``, so that nobody is told everyone is signed out.
        """
        if self._on_cluster is None:
            return await self._sweep(now)
        ended = 0
        for _ in range(_SETTLED_SWEEPS):
            before = await self._slot_map()
            ended += await self._sweep(now)
            if before is not None and before == await self._slot_map():
                return ended
            await asyncio.sleep(_SETTLE_PAUSE)
        raise StoreUnavailableError(
            f"Redis Cluster is moving slots: {ended} sessions ended, others may have been"
            " missed; end them again once the move is done",
            retry_after=self.retry_after,
        )

    async def _sweep(self, now: float) -> int:
        ended = 0
        with translated(self.retry_after):
            async for batch in self._scan_sessions():
                deadlines = await run_commands(
                    self.client, [("HGET", name, "e") for name, _ in batch]
                )
                members = [member for _, member in batch]
                if self._on_cluster is not None:
                    deleted = await self._on_cluster.delete_many(members)
                else:
                    calls = [self._standalone_delete(member) for member in members]
                    deleted = [bool(int(n)) for n in await run_scripts(self.client, calls)]
                ended += sum(
                    1
                    for deadline, gone in zip(deadlines, deleted, strict=True)
                    if gone and deadline is not None and float(deadline) > now
                )
        return ended

    async def _slot_map(self) -> list[str] | None:
        """Which primary holds which slots, or None while a slot is being moved."""
        with translated(self.retry_after):
            answers = await self.client.execute_command(
                "CLUSTER NODES", target_nodes=RedisCluster.PRIMARIES
            )
        owned = []
        for view in answers.values():  # each primary's view, parsed by redis-py
            for node in view.values():
                if "myself" not in node["flags"]:
                    continue
                if node["migrations"]:
                    return None  # a slot it is handing over or taking in
                owned.append(f"{node['node_id']} {node['slots']}")
        return sorted(owned)

    async def purge_expired(self, now: float) -> int:
        """Delete records dead by ``now`` that Redis has not expired yet.

        Never needed for correctness (Redis drops every record at its TTL, and nothing
        dead is ever served); it is an admin sweep that SCANs the whole keyspace.
        """
        removed = 0
        with translated(self.retry_after):
            async for batch in self._scan_sessions():
                if self._on_cluster is not None:
                    removed += await self._on_cluster.purge(batch, now)
                    continue
                calls: list[Call] = [
                    (self._scripts.standalone_purge, [name], [self.prefix, member, repr(now)])
                    for name, member in batch
                ]
                removed += sum(int(done) for done in await run_scripts(self.client, calls))
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
        """Close the connections of an owned client in this event loop; a later use
        connects again. Other loops' clients close as their loops end."""
        bound = self._bound.leave(asyncio.get_running_loop())
        if bound is not None and self.owns_client:
            with translated(self.retry_after):
                await bound.client.aclose()

    # -- mechanics ----------------------------------------------------------------------

    def _standalone_delete(self, key: str) -> Call:
        return (
            self._scripts.standalone_delete,
            [self._names.session(key), self._names.receipt(key)],
            [self.prefix, key],
        )

    def _scan_sessions(self) -> AsyncIterator[list[tuple[str, str]]]:
        """Batches of (redis key, session key) over the whole keyspace."""
        return scan_tagged(self.client, self._names.sessions, _SCAN_BATCH)
