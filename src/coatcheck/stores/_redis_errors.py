"""redis-py's many exceptions, as the two kinds the middleware tells apart.

An outage (refused connection, timeout, failover, a node still loading) is
"try again later": :class:`StoreUnavailableError`, answered with a 503 and Retry-After.
Anything else is a :class:`StoreError`, a bug or a misconfiguration: the middleware
still answers 503, but logs it as an error for the operator to fix.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MaxConnectionsError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..exceptions import StoreError, StoreFullError, StoreUnavailableError

_TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    TryAgainError,
    MaxConnectionsError,
    SlotNotCoveredError,
    OutOfMemoryError,
    ReadOnlyError,
    # A failover empties the new primary's script cache; redis-py loads them again.
    NoScriptError,
    OSError,
    asyncio.TimeoutError,
)
_CREDENTIALS = (AuthenticationError, AuthorizationError)
# What redis-py lets out, unwrapped, when a connection is closed under a command in
# flight: its own writer gone, or asyncio's transport torn down (redis/redis-py#4287),
# or under uvloop (uvicorn's default loop) a RuntimeError that "the handler is closed".
_LEAKS = (AttributeError, TypeError, RuntimeError)
# Everything a call through redis-py may raise; a hot path catches these itself.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    *_TRANSIENT,
    RedisError,
    RedisClusterException,
    *_LEAKS,
)
_CONNECTION_CODE = (
    *(os.path.dirname(module.__file__ or "") + os.sep for module in (redis, asyncio)),
    "uvloop" + os.sep,  # how uvloop's compiled frames name their files
)


# A primary without enough replicas in reach (min-replicas-to-write), a replica cut off
# from its primary, a server busy with a long script: each passes by itself.
_PASSING = ("NOREPLICAS", "MASTERDOWN", "BUSY ")
_CLIENT_REPR = re.compile(r" : <redis\..*>(?= - |$)", re.DOTALL)


def translate(exc: BaseException, retry_after: int | None) -> StoreError:
    """The store error to raise (``from exc``) for one of :data:`REDIS_ERRORS`.

    An ``AttributeError`` or ``TypeError`` is a broken connection only when it was
    raised inside redis-py or asyncio; from anywhere else it is a bug, raised again
    as it is.
    """
    if isinstance(exc, _LEAKS):
        if not broken_under_us(exc):
            raise exc
        return StoreUnavailableError(
            f"Redis session store connection broke: {exc!r}", retry_after=retry_after
        )
    # redis-py's Cluster client reports refused credentials at start-up as "cannot be
    # connected", and a unix socket's client as a ConnectionError, each with the
    # AuthenticationError in its chain: a misconfiguration, which waiting will not
    # cure, so it must not pass for an outage.
    refused = _cause(exc, _CREDENTIALS)
    if refused is not None:
        return StoreError(
            "Redis session store refused the credentials (a wrong password, or none where "
            f"one is required): {refused}"
        )
    denied = _cause(exc, NoPermissionError)
    if denied is not None:
        # redis-py's Cluster client reports a refused CLUSTER SLOTS as "not a Cluster".
        return StoreError(
            "Redis session store's user lacks a permission (see the README for the ACL "
            f"the store needs): {denied}"
        )
    if isinstance(exc, RedisClusterException) and "mode is not enabled" in str(exc):
        # The URL names a server that is not a Cluster node: no wait will make it one.
        return StoreError(f"Redis session store is not a Cluster, use redis://: {exc}")
    # A server certificate the client cannot verify (another CA, a wrong name, or a
    # man in the middle) stays unverifiable however long one waits. redis-py raises it
    # as a ConnectionError, with the SSL error in its chain.
    if _cause(exc, ssl.SSLCertVerificationError) is not None:
        return StoreError(
            f"Redis session store's TLS certificate was not accepted: {exc}; name the CA "
            "that signed it with ?ssl_ca_certs=/path/to/ca.pem (or, for a provider whose "
            "certificate no CA file covers, ?ssl_cert_reqs=none, which skips the check)"
        )
    if (
        isinstance(exc, _TRANSIENT)
        or (isinstance(exc, RedisClusterException) and "connect" in str(exc).lower())
        or (isinstance(exc, ResponseError) and str(exc).startswith(_PASSING))
    ):
        # redis-py's Cluster raises a pool at its size without a word, and Sentinel names
        # a lost primary with the whole repr of its client (a thousand characters).
        told = _CLIENT_REPR.sub("", str(exc)) or (
            f"{type(exc).__name__} (every connection of max_connections in use)"
        )
        kind = StoreFullError if isinstance(exc, OutOfMemoryError) else StoreUnavailableError
        return kind(f"Redis session store is unavailable: {told}", retry_after=retry_after)
    return StoreError(f"Redis session store failed: {exc}")


def broken_under_us(exc: BaseException) -> bool:
    """Whether ``exc`` is what redis-py lets out of a connection closed under a command:
    the command went unanswered, so a read or a delete may simply be made again."""
    if isinstance(exc, RuntimeError) and "handler is closed" not in str(exc):
        return False
    return isinstance(exc, _LEAKS) and _raised_in_connection_code(exc)


def _raised_in_connection_code(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback.tb_frame.f_code.co_filename.startswith(_CONNECTION_CODE)


def _cause(
    exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """``exc``, or the first of the errors it was raised from or during, that is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def translated(retry_after: int | None) -> Iterator[None]:
    """Raise redis-py's errors inside the block as store errors."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise translate(exc, retry_after) from exc
