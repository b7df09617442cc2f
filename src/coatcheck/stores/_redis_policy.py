"""A look at the server's eviction policy, once per store: a warning, never an error.

A user's sessions are found through an index kept in a key of its own. Under any
``maxmemory-policy`` but ``noeviction``, Redis may drop that index under memory pressure
while the sessions stay (each key's TTL makes it a candidate even for ``volatile-*``),
and "log out everywhere" then misses them. Managed services often forbid ``CONFIG``: the
look is then skipped, as it is on any error.
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
        if isinstance(client, RedisCluster):
            answers: dict[Any, Any] = await client.config_get(
                "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
            )
            policies = {text(v) for answer in answers.values() for v in answer.values()}
        else:
            answer = await client.config_get("maxmemory-policy")
            policies = {text(value) for value in answer.values()}
    except REDIS_ERRORS as exc:
        logger.debug("could not read Redis's maxmemory-policy: %s", exc)
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
