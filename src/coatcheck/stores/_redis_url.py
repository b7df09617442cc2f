"""Building a redis-py client from a store URL: single node, Cluster or Sentinel.

Timeouts and retries are chosen here, for the store's sake: an outage must become a
quick 503 with Retry-After, never a request that hangs.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..exceptions import ConfigurationError
from . import REDIS_SCHEMES
from ._redact import redact
from ._redis_connections import own_connections

DEFAULT_TIMEOUT = 1.0
# The package names them without importing redis-py, so store_from_url knows them all.
URL_SCHEMES = REDIS_SCHEMES

RedisClient = Redis | RedisCluster

# Options a store URL may carry besides ?prefix= and ?timeout=; redis-py parses them.
_PASSED_OPTIONS = frozenset(
    {
        "db",
        "password",  # redis-py's form for a unix socket, where a URL has no userinfo
        "max_connections",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
    }
)


# What redis-py's ssl_cert_reqs takes; "none" is how Heroku Redis's self-signed
# certificate is accepted, where ?ssl_ca_certs= cannot name its CA.
_CERT_REQS = ("none", "optional", "required")
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENCODE_HINT = "a password holding # ? / or @ must be percent-encoded in a URL (%23 %3F %2F %40)"


def client_from_url(url: str, timeout: float | None) -> tuple[RedisClient, str | None]:
    """The client a URL describes, and the key prefix it asks for (``?prefix=``).

    ``timeout`` (seconds, for connecting and for each command) wins over ``?timeout=``;
    without either it is :data:`DEFAULT_TIMEOUT`. Nothing connects until first use.
    """
    raw, parts = url, urlsplit(url)
    url = redact(url)  # from here on, the URL is only ever shown
    if parts.scheme not in URL_SCHEMES:
        raise ConfigurationError(
            f"not a Redis URL {url!r}; use one of "
            + ", ".join(f"{scheme}://" for scheme in URL_SCHEMES)
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = options.pop("prefix", None)
    url_timeout = options.pop("timeout", None)
    unknown = sorted(set(options) - _PASSED_OPTIONS)
    if unknown:
        if not all(_OPTION_NAME.fullmatch(name) for name in unknown):
            # Not a name: the rest of a password that holds a "?", cut there.
            raise ConfigurationError(f"store URL {url!r} cannot be read: {_ENCODE_HINT}")
        known = ", ".join(sorted({"prefix", "timeout", *_PASSED_OPTIONS}))
        raise ConfigurationError(
            f"unknown option(s) {unknown} in store URL {url!r}; a Redis URL takes {known}"
        )
    requirement = options.get("ssl_cert_reqs")
    if requirement is not None and requirement not in _CERT_REQS:
        # redis-py takes any text here and refuses it at every connection: a 503 for ever.
        raise ConfigurationError(
            f"?ssl_cert_reqs={requirement} is none of {', '.join(_CERT_REQS)} "
            "(none skips checking the server's certificate)"
        )
    tls = sorted(name for name in options if name.startswith("ssl_"))
    if tls and not parts.scheme.startswith("rediss"):
        # redis-py would take them, and fail at every command: an outage without end.
        raise ConfigurationError(
            f"option(s) {tls} need TLS: use rediss:// (or rediss+cluster://, "
            f"rediss+sentinel://) in store URL {url!r}"
        )
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        # Missing, it fails each connection as if the server were down: a 503 for ever.
        if options.get(name) and not os.path.isfile(options[name]):
            raise ConfigurationError(f"?{name}= names no file: {options[name]!r}")
    seconds = _timeout(timeout if timeout is not None else url_timeout, url)
    settings: dict[str, Any] = {
        "socket_timeout": seconds,
        "socket_connect_timeout": seconds,
        "decode_responses": False,
    }
    try:
        client = _client(parts, options, settings, url)
    except ConfigurationError:
        raise
    except (ValueError, TypeError, RedisClusterException) as exc:
        # redis-py quotes what it could not read, which after a "#" in a password is
        # part of that password.
        told = _ENCODE_HINT if "#" in raw else str(exc)
        raise ConfigurationError(f"invalid Redis URL {url!r}: {told}") from None
    own_connections(client)
    return client, prefix


def _client(
    parts: SplitResult, options: dict[str, str], settings: dict[str, Any], url: str
) -> RedisClient:
    """The client of a URL already checked, with ``settings`` for its connections."""
    if parts.scheme.endswith("+cluster"):
        return _cluster_client(parts, options, settings, url)
    if parts.scheme.endswith("+sentinel"):
        return _sentinel_client(parts, options, settings, url)
    if parts.scheme != "unix" and not re.fullmatch(r"/?\d*", parts.path):
        hint = f"; {_ENCODE_HINT}" if "@" in parts.path else ""
        raise ConfigurationError(f"the path of a Redis URL is a database number, got {url!r}{hint}")
    path_db = parts.path.strip("/")
    if parts.scheme != "unix" and path_db and options.get("db", path_db) != path_db:
        raise ConfigurationError(f"the path and ?db= name two databases: {url!r}")
    plain = urlunsplit(parts._replace(query=urlencode(options)))
    # One quick retry on a broken connection (a server restart leaves the pooled
    # ones dead); none on a timeout, which has already waited.
    settings["retry"] = Retry(NoBackoff(), 1, (RedisConnectionError,))
    if "max_connections" in options:
        # redis-py's default pool refuses at once past its size; this one makes a
        # burst wait for a free connection, up to the timeout.
        pool = BlockingConnectionPool.from_url(
            plain, timeout=settings["socket_timeout"], **settings
        )
        return Redis.from_pool(pool)
    return Redis.from_url(plain, **settings)


def _cluster_client(
    parts: SplitResult, options: dict[str, str], settings: dict[str, Any], url: str
) -> RedisCluster:
    """``redis+cluster://[user:password@]host:port,host:port,...``: any reachable nodes."""
    if parts.path not in ("", "/", "/0") or "db" in options:
        raise ConfigurationError(f"Redis Cluster has only database 0, got {url!r}")
    nodes = [ClusterNode(host, port) for host, port in _servers(parts, settings, url)]
    if parts.scheme == "rediss+cluster":
        settings["ssl"] = True
    for name, value in options.items():
        settings[name] = _OPTION_TYPES.get(name, str)(value)
    # Few, quick retries: a failover takes the cluster seconds, longer than a request
    # should wait; the 503 with Retry-After is the honest answer meanwhile.
    settings["retry"] = Retry(ExponentialBackoff(cap=0.2, base=0.05), 2)
    return _Cluster(startup_nodes=nodes, **settings)


def _sentinel_client(
    parts: SplitResult, options: dict[str, str], settings: dict[str, Any], url: str
) -> Redis:
    """``redis+sentinel://[user:password@]host:port,host:port,.../service[/db]``: the
    Sentinels to ask, and the name of the master they watch. The credentials are the
    master's; the Sentinels are asked without them, within the same timeout. With
    ``rediss+sentinel://``, Sentinels and master alike are reached over TLS, checked
    with the same ``ssl_*`` options."""
    service, _, db = parts.path.strip("/").partition("/")
    if not service or "/" in db or not re.fullmatch(r"\d*", db) or (db and "db" in options):
        raise ConfigurationError(
            f"a Redis Sentinel URL ends in /service_name or /service_name/db, got {url!r}"
        )
    sentinels = _servers(parts, settings, url)
    if parts.scheme == "rediss+sentinel":
        settings["ssl"] = True
    for name, value in options.items():
        settings[name] = _OPTION_TYPES.get(name, str)(value)
    asked = {name: value for name, value in settings.items() if name.startswith(("socket_", "ssl"))}
    # A hung Sentinel is asked once, within the timeout (redis-py's default retries it
    # three times with growing pauses: a minute); a broken connection, once more.
    asked["retry"] = Retry(NoBackoff(), 1, (RedisConnectionError,))
    settings["db"] = int(db or settings.get("db", 0))
    # As for a single node: one quick retry, which asks the Sentinels where the master
    # is now, so requests find a promoted replica by themselves after a failover.
    settings["retry"] = Retry(NoBackoff(), 1, (RedisConnectionError,))
    sentinel = Sentinel(sentinels, sentinel_kwargs=asked, **settings)  # type: ignore[no-untyped-call]
    client: _SentinelMaster = sentinel.master_for(service, redis_class=_SentinelMaster)
    client.sentinels = sentinel
    for asking in sentinel.sentinels:  # asked again for each new connection to the master
        own_connections(asking)
    return client


class _SentinelMaster(Redis):
    """The master's client, which also closes the connections to the Sentinels."""

    sentinels: Sentinel

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            # One by one: Sentinel.aclose() is newer than the oldest redis-py allowed.
            for sentinel in self.sentinels.sentinels:
                await sentinel.aclose()


def _servers(parts: SplitResult, settings: dict[str, Any], url: str) -> list[tuple[str, int]]:
    """The ``host:port`` list of a Cluster or Sentinel URL; its credentials go to
    ``settings``, percent-decoded."""
    credentials, _, hosts = parts.netloc.rpartition("@")
    if credentials:
        username, has_password, password = credentials.partition(":")
        if username:
            settings["username"] = unquote(username)
        if has_password:
            settings["password"] = unquote(password)
    return [_host_port(address, url) for address in hosts.split(",")]


class _Cluster(RedisCluster):
    """Retries a broken connection or a moved slot, as redis-py's Cluster client does,
    but not a command that timed out (each attempt would wait the whole timeout again)
    nor a cluster that says it is down (a failover outlasts any request): an outage
    must become a quick 503."""

    # redis-py types this as its own four-error tuple; a shorter one is what is meant.
    ERRORS_ALLOW_RETRY = tuple(  # type: ignore[assignment]
        error
        for error in RedisCluster.ERRORS_ALLOW_RETRY
        if error not in (RedisTimeoutError, ClusterDownError)
    )

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Learn the slots before routing a command. redis-py routes a command sent
        before it has (at start-up, or after an error made it start over) to any
        node; a burst of them meets as many MOVED replies, which make it start over
        again, closing the connections of every command in flight."""
        await self.initialize()  # returns at once when the slots are known
        return await super().execute_command(*args, **kwargs)


def _flag(value: str) -> bool:
    """A boolean query option, read as redis-py reads one in a single-node URL."""
    return value.upper() not in ("", "0", "F", "FALSE", "N", "NO")


# Query options that Cluster clients need typed; redis-py parses them for single nodes.
_OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "db": int,
    "max_connections": int,
    "ssl_check_hostname": _flag,
}


def _host_port(address: str, url: str) -> tuple[str, int]:
    address = address.strip()
    if address.startswith("["):  # [IPv6]:port
        host, _, rest = address[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = address.partition(":")
    if not host:
        raise ConfigurationError(
            f"a Redis Cluster or Sentinel URL lists host:port pairs, got {url!r}"
        )
    return host, int(port_text or 6379)


def _timeout(value: float | str | None, url: str) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 3600:  # also rejects NaN and infinity
        raise ConfigurationError(
            f"Redis timeout must be over 0 and at most 3600 seconds, got {value!r} in {url!r}"
        )
    return seconds
