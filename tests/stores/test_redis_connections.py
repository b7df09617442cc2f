"""The connections of a store's own client: commands packed by hiredis into the bytes
redis-py's Python packer makes, on every kind of client a URL gives; sessions
round-trip through them on real servers. (That they keep no request's session alive:
tests/stores/test_nothing_kept.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from coatcheck.stores._redis_connections import _StoreConnection, own_connections, store_connection
from coatcheck.stores.redis import RedisStore

from ..redis_servers import RedisClusterServers, RedisServer
from .conftest import NOW, make_record, unique_prefix

pytestmark = pytest.mark.anyio

ARGUMENTS = [
    ("GET", "coatcheck:s:key"),
    ("CONFIG GET", "maxmemory-policy"),  # a subcommand given with its command
    (b"CLIENT SETNAME", b"worker"),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", "", "1790000000.25", 1.5, -7, 10**30),
    ("HSET", "h", "u", "Zoë ☃", "b", bytes(range(256)) * 40),  # past the 6000-byte cutoff
    ("SET", "m", memoryview(b"view")),
    ("SET", "a", bytearray(b"array")),
]


@pytest.mark.parametrize("args", ARGUMENTS, ids=lambda args: str(args[0]))
def test_the_same_bytes_as_redis_pys_packer(args: tuple[Any, ...]) -> None:
    fast = store_connection(Connection)()
    assert issubclass(type(fast), _StoreConnection)
    assert b"".join(fast.pack_command(*args)) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("value", [None, True, {"a": 1}])
def test_what_redis_py_refuses_is_refused_alike(value: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", value)
    with pytest.raises(DataError, match="cannot send"):
        store_connection(Connection)().pack_command("SET", "k", value)


def test_each_connection_class_is_made_once_and_keeps_its_kind() -> None:
    for kind in (Connection, SSLConnection, UnixDomainSocketConnection):
        fast = store_connection(kind)
        assert issubclass(fast, kind)
        assert fast.__name__ == kind.__name__
        assert store_connection(kind) is fast
        assert store_connection(fast) is fast


async def test_a_client_handed_to_the_store_is_left_alone(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    store = RedisStore(client, prefix=unique_prefix())
    try:
        await round_trip(store)
        assert client.connection_pool.connection_class is Connection
    finally:
        await client.aclose()


async def round_trip(store: RedisStore) -> None:
    """A session with a large value saved, read back, and saved again on top."""
    data = b'{"blob": "' + b"x" * 200_000 + b'", "name": "Zo\xc3\xab"}'
    record = make_record(data=data)
    user = f"zoë {record.public_id}"
    record = record._replace(user_id=user, authenticated_at=record.created_at)
    assert await store.save(record)
    loaded = await store.load(record.key, NOW)
    assert loaded is not None
    assert loaded.data == data
    assert loaded.user_id == user
    changed = record._replace(data=b'{"n": 2}', version=record.version + 1)
    assert await store.save(changed, expected_version=record.version)
    again = await store.load(record.key, NOW)
    assert again is not None
    assert again.data == b'{"n": 2}'
    assert [entry.key for entry in await store.list_user(user, NOW)] == [record.key]


@pytest.fixture
async def from_url(request: pytest.FixtureRequest) -> AsyncIterator[RedisStore]:
    servers = request.getfixturevalue(request.param)
    store = RedisStore.from_url(servers.url, prefix=unique_prefix())
    yield store
    await store.aclose()


@pytest.mark.parametrize("from_url", ["redis_server", "redis_sentinel"], indirect=True)
async def test_a_single_node_client_uses_the_stores_connections(from_url: RedisStore) -> None:
    await round_trip(from_url)
    client = from_url.client
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert issubclass(pool.connection_class, _StoreConnection)
    assert pool._in_use_connections or pool._available_connections
    for connection in [*pool._available_connections, *pool._in_use_connections]:
        assert isinstance(connection, _StoreConnection)


async def test_a_cluster_client_uses_the_stores_connections_on_every_node(
    redis_cluster: RedisClusterServers,
) -> None:
    store = RedisStore.from_url(redis_cluster.url, prefix=unique_prefix())
    try:
        for _ in range(3):  # keys, users and receipts spread over the nodes
            await round_trip(store)
        client = store.client
        assert isinstance(client, RedisCluster)
        nodes = client.get_nodes()
        assert len(nodes) == 3
        opened = [connection for node in nodes for connection in node._connections]
        assert opened
        for node in nodes:
            assert issubclass(node.connection_class, _StoreConnection)
        assert all(isinstance(connection, _StoreConnection) for connection in opened)
    finally:
        await store.aclose()


def test_a_cluster_client_of_another_shape_is_left_as_it_is() -> None:
    """redis-py's Cluster internals renamed by a later release: the store still builds."""

    class Renamed:
        def __init__(self) -> None:
            self.nodes = {"127.0.0.1:7000": object()}

    client = Renamed()
    own_connections(client)
    assert list(vars(client)) == ["nodes"]
