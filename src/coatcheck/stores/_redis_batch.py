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
# Commands of one batch in flight at once on one Cluster node.
_PER_NODE = 4


async def run_commands(client: RedisClient, commands: Sequence[tuple[str, ...]]) -> list[Any]:
    """Plain commands in one round trip: a pipeline, or side by side on Cluster."""
    if isinstance(client, RedisCluster):
        calls = [(c[1], partial(client.execute_command, *c)) for c in commands]
        return await _side_by_side(client, calls)
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
        singles = [(keys[0], partial(s, keys=keys, args=a)) for s, keys, a in calls]
        return await _side_by_side(client, singles)
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


async def _side_by_side(
    client: RedisCluster, calls: Sequence[tuple[str, Callable[[], Awaitable[Any]]]]
) -> list[Any]:
    """Calls, each given with a key it touches, as single commands: every node's in
    turn, a few at once, and the nodes all at once.

    Not redis-py's Cluster pipeline: it retries a batch that timed out, waiting the
    whole timeout again each time, where single commands follow the client's rules
    (retry a broken connection, never a timeout). At most ``_PER_NODE`` are in flight
    on a node, so a batch takes no more of its connections than a few requests would
    (redis-py's Cluster pool fails, rather than waits, past its size). Everything
    started is awaited before a failure is raised, so nothing is left running.
    """
    by_node: dict[str, list[int]] = {}
    # A pool smaller than that (``?max_connections=2``) gets at most half its size, so
    # a batch leaves room for the requests that run beside it.
    width = _PER_NODE
    for position, (key, _) in enumerate(calls):
        node = client.get_node_from_key(key)
        if node is not None:
            width = min(width, max(1, node.max_connections // 2))
        by_node.setdefault("" if node is None else node.name, []).append(position)
    results: list[Any] = [None] * len(calls)

    async def run(positions: list[int]) -> None:
        for start in range(0, len(positions), width):
            chunk = positions[start : start + width]
            done = await asyncio.gather(*(calls[i][1]() for i in chunk), return_exceptions=True)
            for position, result in zip(chunk, done, strict=True):
                if isinstance(result, BaseException):
                    raise result
                results[position] = result

    if width < _PER_NODE:
        # A small pool: one node at a time, since a script missing from a node is
        # loaded onto every node, and would take a connection of each.
        for positions in by_node.values():
            await run(positions)
        return results
    failures = await asyncio.gather(*(run(p) for p in by_node.values()), return_exceptions=True)
    for failure in failures:
        if isinstance(failure, BaseException):
            raise failure
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
