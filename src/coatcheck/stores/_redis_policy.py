"""A look at the server's eviction policy, once per store: a warning, never an error.

A user's sessions are found through an index kept in a key of its own. Under any
``maxmemory-policy`` but ``noeviction``, Redis may drop that index under memory pressure
while the sessions stay (each key's TTL makes it a candidate even for ``volatile-*``),
and "log out everywhere" then misses them. Managed services often forbid ``CONFIG``: the
policy is then read from ``INFO memory``, and the look skipped if that is refused too.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster

from ._redis_codec import text
from ._redis_errors import REDIS_ERRORS
from ._redis_url import RedisClient

logger = logging.getLogger("coatcheck")


async def warn_if_evicting(client: RedisClient) -> None:
    """Log a warning when a primary may evict keys; say nothing otherwise."""
    try:
        policies = await _from_config(client)
    except REDIS_ERRORS as exc:
        # Forbidden where it matters most: ElastiCache and Azure evict by default
        # (volatile-lru) and refuse CONFIG, but INFO tells the policy too.
        logger.debug("could not read Redis's maxmemory-policy with CONFIG: %s", exc)
        try:
            policies = await _from_info(client)
        except REDIS_ERRORS as again:
            logger.debug("could not read Redis's maxmemory-policy with INFO: %s", again)
            return
    evicting = sorted(policies - {"noeviction"})
    if evicting:
        logger.warning(
            "Redis's maxmemory-policy is %s: under memory pressure Redis may drop a "
            "user's index of sessions while the sessions stay, and signing that user "
            "out everywhere would miss them; set maxmemory-policy noeviction for the "
            "sessions' server",
            ", ".join(evicting),
        )


async def _from_config(client: RedisClient) -> set[str]:
    if isinstance(client, RedisCluster):
        answers: dict[Any, Any] = await client.config_get(
            "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
        )
        return {text(v) for answer in answers.values() for v in answer.values()}
    answer = await client.config_get("maxmemory-policy")
    return {text(value) for value in answer.values()}


async def _from_info(client: RedisClient) -> set[str]:
    if isinstance(client, RedisCluster):
        answers: dict[Any, Any] = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        sections = list(answers.values())
    else:
        sections = [await client.info("memory")]
    return {text(section["maxmemory_policy"]) for section in sections}
