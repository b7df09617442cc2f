"""Many Redis commands or scripts in one round trip, and SCAN over every primary.

Only the device list, revocation, admin sweeps and the index clean-up after a Cluster
save batch; a request's load is one command, and a save one script.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ._redis_codec import text
from ._redis_url import RedisClient

Call = tuple[AsyncScript, Sequence[str], Sequence[str | bytes]]
# Cluster commands in flight at once per batch: enough for one round trip's worth of
# a user's sessions, few enough not to open a connection per key of a purge batch.
_GROUP = 64


async def run_commands(client: RedisClient, commands: Sequence[tuple[str, ...]]) -> list[Any]:
    """Plain commands in one round trip: a pipeline, or side by side on Cluster."""
    if isinstance(client, RedisCluster):
        return await _side_by_side([partial(client.execute_command, *c) for c in commands])
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    results: list[Any] = await pipe.execute()
    return results


async def run_scripts(client: RedisClient, calls: Sequence[Call]) -> list[Any]:
    """Scripts in one round trip, loading any missing: a pipeline, or side by side on
    Cluster. The scripts batched here (revocation, purge, index clean-up) are safe to
    run twice, as redis-py does after a broken connection."""
    if isinstance(client, RedisCluster):
        return await _side_by_side([partial(s, keys=k, args=a) for s, k, a in calls])
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for position, (result, (script, keys, args)) in enumerate(zip(results, calls, strict=True)):
        if isinstance(result, NoScriptError):
            result = await script(keys=keys, args=args)  # loads it, then runs it
        elif isinstance(result, BaseException):
            raise result
        results[position] = result
    return results


async def _side_by_side(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Each call on its own, a group at a time, all of a group at once.

    Not redis-py's Cluster pipeline: it retries a batch that timed out, waiting the
    whole timeout again each time, where single commands follow the client's rules
    (retry a broken connection, never a timeout). A group is awaited whole before a
    failure is raised, so nothing is left running.
    """
    results: list[Any] = []
    for start in range(0, len(calls), _GROUP):
        group = await asyncio.gather(
            *(call() for call in calls[start : start + _GROUP]), return_exceptions=True
        )
        for result in group:
            if isinstance(result, BaseException):
                raise result
        results += group
    return results


async def scan_tagged(
    client: RedisClient, prefix: str, size: int
) -> AsyncIterator[list[tuple[str, str]]]:
    """Batches of (name, tag) for every key named ``{prefix}{tag}``, from all primaries.

    SCAN may return a key twice while Redis resizes a table; the names seen are
    remembered so that a count stays exact, at the cost of memory for each.
    """
    start = len(prefix) + 1
    seen: set[str] = set()
    batch: list[tuple[str, str]] = []
    async for raw in client.scan_iter(match=f"{_glob_escape(prefix)}{{*", count=size):
        name = text(raw)
        if name in seen:
            continue
        seen.add(name)
        batch.append((name, name[start:-1]))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
