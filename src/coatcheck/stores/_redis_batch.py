"""Many Redis commands or scripts in one round trip, and SCAN over every primary.

Only the store's admin paths and Cluster saves batch; a request's load is one command.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from ._redis_codec import text
from ._redis_url import RedisClient

Call = tuple[AsyncScript, Sequence[str], Sequence[str | bytes]]


async def run_commands(client: RedisClient, commands: Sequence[tuple[str, ...]]) -> list[Any]:
    """Plain commands in one pipeline: one round trip, or one per node on Cluster."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    results: list[Any] = await pipe.execute()
    return results


async def run_scripts(client: RedisClient, calls: Sequence[Call]) -> list[Any]:
    """Scripts in one pipeline (per node at once on Cluster), loading any missing.

    A script whose connection broke is sent once more, on its own, as redis-py does
    for single commands: a pooled connection that the server or a proxy closed while
    idle fails only when used. Every script here is safe to run twice: saves recognise
    their own earlier write, the rest are idempotent.
    """
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        # Not pipe.evalsha(): redis-py's Cluster pipeline blocks that method, though
        # it routes the command itself by its keys like any other.
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for position, (result, (script, keys, args)) in enumerate(zip(results, calls, strict=True)):
        if isinstance(result, (NoScriptError, RedisConnectionError)):
            result = await script(keys=keys, args=args)  # loads it if need be, runs it
        elif isinstance(result, BaseException):
            raise result
        results[position] = result
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
