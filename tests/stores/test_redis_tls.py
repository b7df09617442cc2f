"""``rediss://``, ``rediss+cluster://`` and ``rediss+sentinel://`` against real
redis-servers speaking TLS, with
certificates made here: sessions go over TLS, and a server whose certificate the client
cannot verify is refused, not trusted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coatcheck.exceptions import ConfigurationError, StoreError, StoreUnavailableError
from coatcheck.stores.redis import RedisStore

from ..certificates import make_certificates
from ..redis_servers import RedisClusterServers, RedisSentinelServers, RedisServer
from .conftest import NOW, make_record, unique_prefix

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    make_certificates(directory)
    return directory


@pytest.fixture(scope="module")
def tls_server(certificates: Path) -> Iterator[tuple[RedisServer, int]]:
    directory = certificates
    server = RedisServer(
        directory / "server",
        own_ports=("--tls-port",),
        extra=(
            "--tls-cert-file", str(directory / "server.pem"),
            "--tls-key-file", str(directory / "server.key"),
            "--tls-ca-cert-file", str(directory / "ca.pem"),
            "--tls-auth-clients", "no",
        ),
    ).start()  # fmt: skip
    yield server, server.ports["--tls-port"]
    server.stop()


async def test_sessions_travel_over_tls(tls_server: tuple[RedisServer, int]) -> None:
    server, port = tls_server
    ca = server.directory.parent / "ca.pem"
    store = RedisStore.from_url(
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", prefix=unique_prefix()
    )
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        assert await store.load(record.key, NOW) == record
        assert await store.list_user("alice", NOW) == [record]
    finally:
        await store.aclose()
    # The port speaks only TLS: the same URL without it gets nowhere.
    plain = RedisStore.from_url(f"redis://127.0.0.1:{port}/0?timeout=0.5", prefix="p")
    try:
        with pytest.raises(StoreError):
            await plain.load(record.key, NOW)
    finally:
        await plain.aclose()


async def test_a_server_the_client_cannot_verify_is_refused(
    tls_server: tuple[RedisServer, int],
) -> None:
    server, port = tls_server
    other = server.directory.parent / "other-ca.pem"
    store = RedisStore.from_url(
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={other}", prefix=unique_prefix()
    )
    try:
        await expect_certificate_refused(store)
    finally:
        await store.aclose()


async def expect_certificate_refused(store: RedisStore) -> None:
    """Refused, and as a store error rather than an outage: no wait will make the
    certificate acceptable, so the operator must hear of it as an error."""
    with pytest.raises(StoreError, match=r"(?i)certificate") as refused:
        await store.load(make_record().key, NOW)
    assert not isinstance(refused.value, StoreUnavailableError), refused.value
    assert "?ssl_ca_certs=" in str(refused.value)  # the cure, for a provider's own CA


async def test_a_self_signed_provider_is_reached_without_checking_when_told(
    tls_server: tuple[RedisServer, int],
) -> None:
    """Heroku Redis serves a certificate no CA file covers; its docs' cure is to skip
    the check, which must be spelt as redis-py takes it, or every request fails."""
    _, port = tls_server
    store = RedisStore.from_url(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none", prefix="h")
    try:
        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()
    with pytest.raises(ConfigurationError, match="is none of none, optional, required"):
        RedisStore.from_url(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=None")


@pytest.fixture(scope="module")
def tls_cluster(certificates: Path) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(certificates / "cluster", tls=certificates)
    cluster.start()
    yield cluster
    cluster.stop()


def clients_by_port(node: RedisServer) -> dict[int, int]:
    """How many clients are connected to each of the node's listening ports."""
    with node.client() as probe:
        clients = probe.client_list()
    ports: dict[int, int] = {}
    for client in clients:
        port = int(client["laddr"].rpartition(":")[2])
        ports[port] = ports.get(port, 0) + 1
    return ports


def tls_cluster_url(cluster: RedisClusterServers, ca: Path) -> str:
    """The cluster over TLS, with time to connect: redis-py builds an SSL context for
    each new connection, loading the system's CA bundle in the event loop (some 40 ms
    here), and a batch that opens a dozen at once, while the Sentinel and replica
    servers of the other tests still run, can outlast the default second."""
    plain = cluster.url.removeprefix("redis+cluster://")
    return f"rediss+cluster://{plain}?ssl_ca_certs={ca}&timeout=5"


async def test_a_cluster_is_reached_over_tls_on_every_node(
    tls_cluster: RedisClusterServers, certificates: Path
) -> None:
    store = RedisStore.from_url(
        tls_cluster_url(tls_cluster, certificates / "ca.pem"), prefix=unique_prefix()
    )
    try:
        # Enough sessions that every node holds some: slots are spread over all three.
        records = [make_record(user_id="alice") for _ in range(12)]
        for record in records:
            await store.save(record)
        for record in records:
            assert await store.load(record.key, NOW) == record
        assert len(await store.list_user("alice", NOW)) == len(records)
        # Every node served the store on its TLS port (the plain ones stay open only for
        # this test's probes, and a TLS client cannot talk to them anyway).
        for node, tls_port in zip(tls_cluster.nodes, tls_cluster.client_ports, strict=True):
            ports = clients_by_port(node)
            assert ports.get(tls_port, 0) >= 1, ports
        assert await store.delete_user("alice", now=NOW) == len(records)
        assert await store.list_user("alice", NOW) == []
        for record in records:
            assert await store.load(record.key, NOW) is None
    finally:
        await store.aclose()


async def test_a_cluster_the_client_cannot_verify_is_refused(
    tls_cluster: RedisClusterServers, certificates: Path
) -> None:
    store = RedisStore.from_url(
        tls_cluster_url(tls_cluster, certificates / "other-ca.pem"), prefix=unique_prefix()
    )
    try:
        await expect_certificate_refused(store)
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def tls_sentinel(certificates: Path) -> Iterator[RedisSentinelServers]:
    servers = RedisSentinelServers(certificates / "sentinel", tls=certificates)
    servers.start()
    yield servers
    servers.stop()


async def test_sentinel_and_master_are_reached_over_tls(
    tls_sentinel: RedisSentinelServers, certificates: Path
) -> None:
    store = RedisStore.from_url(
        f"{tls_sentinel.url}?ssl_ca_certs={certificates / 'ca.pem'}", prefix=unique_prefix()
    )
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        assert await store.load(record.key, NOW) == record
        # Both the Sentinel and the master it named served the store on their TLS ports.
        for server in (tls_sentinel.sentinel, tls_sentinel.master):
            ports = clients_by_port(server)
            assert ports.get(tls_sentinel.client_port(server), 0) >= 1, ports
    finally:
        await store.aclose()


async def test_a_sentinel_the_client_cannot_verify_is_refused(
    tls_sentinel: RedisSentinelServers, certificates: Path
) -> None:
    store = RedisStore.from_url(
        f"{tls_sentinel.url}?ssl_ca_certs={certificates / 'other-ca.pem'}&timeout=1",
        prefix=unique_prefix(),
    )
    try:
        # Refused, never trusted. redis-py's Sentinel client keeps only "no master
        # found" of the errors it met, so this one reads as an outage, not as a
        # certificate error.
        with pytest.raises(StoreUnavailableError, match="No master found"):
            await store.load(make_record().key, NOW)
    finally:
        await store.aclose()
