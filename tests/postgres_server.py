"""A real PostgreSQL server for the tests, started on first use and stopped by PID.

``initdb`` makes a throwaway cluster in a temporary directory; the postmaster runs as a
child process on a free loopback port, with durability switched off (sessions of a test
run need not survive a power cut). PostgreSQL refuses to run as root, so as root both
run as the ``postgres`` user that Debian's package creates. Tests stay apart by table
name, not by server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .redis_servers import free_port

START_TIMEOUT = 30.0
_NO_SERVER = (
    "PostgreSQL's initdb and postgres are needed for the PostgreSQL store tests but are not"
    " installed; run `make test`, which installs them (Debian package postgresql)"
)


def _binaries() -> Path:
    """The newest installed server's bin directory (Debian keeps them per version)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail(_NO_SERVER, pytrace=False)
    return Path(initdb).parent


@dataclass
class PostgresServer:
    """One postmaster; ``start`` again after ``stop`` brings it back on the same port."""

    directory: Path
    extra: tuple[str, ...] = ()  # more server options, e.g. ("-c", "ssl=on")
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def _data(self) -> Path:
        return self.directory / "data"

    @property
    def _log(self) -> Path:
        return self.directory / "postgres.log"

    def _as_owner(self) -> dict[str, Any]:
        """Run as ``postgres`` when we are root: the server will not run as root."""
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, but there is no postgres user to run PostgreSQL")
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def start(self) -> PostgresServer:
        binaries = _binaries()
        owner = self._as_owner()
        if not self._data.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            if owner:
                shutil.chown(self.directory, "postgres", "postgres")
            subprocess.run(
                [
                    binaries / "initdb", "-D", str(self._data), "--username=postgres",
                    "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions",
                ],
                check=True, capture_output=True, cwd=self.directory, **owner,
            )  # fmt: skip
        if self.port == 0:
            self.port = free_port()
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binaries / "postgres", "-D", str(self._data), "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", f"unix_socket_directories={self.directory}",
                    "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                    *self.extra,
                ],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                **owner,
            )  # fmt: skip
        self._wait_until_ready()
        return self

    def stop(self, how: int = signal.SIGINT) -> None:
        """Stop by PID: SIGINT is PostgreSQL's fast shutdown, which ends every session."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(how)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def signal_all(self, how: int) -> None:
        """Signal the postmaster and every backend: SIGSTOP freezes the whole server.

        Each backend is the leader of a process group of its own, so they are found
        as the postmaster's children rather than by group."""
        assert self.process is not None
        pids = [self.process.pid]
        for pid in pids:  # grows as children are found
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                pids.extend(int(child) for child in task.read_text().split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, how)

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A synchronous connection for poking at the server from a test; close it after use."""
        return psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = self._log.read_text(errors="replace")[-2000:]
                pytest.fail(f"postgres on port {self.port} exited at start-up:\n{tail}")
            try:
                with self.connect() as probe:
                    probe.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"postgres on port {self.port} did not accept connections")
            time.sleep(0.05)


class PostgresServers:
    """The run's server, started the first time a test needs it and stopped at the end."""

    def __init__(self, tls: Path | None = None) -> None:
        self._server: PostgresServer | None = None
        self._directory: str | None = None
        self.tls = tls  # a folder with server.pem and server.key: serve TLS too

    def server(self) -> PostgresServer:
        if self._server is None:
            # Not under pytest's base temp: that is private to root, and the server may
            # run as another user. A short path also keeps the socket under its limit.
            self._directory = tempfile.mkdtemp(prefix="coatcheck-pg-")
            os.chmod(self._directory, 0o755)  # noqa: S103 - postgres must traverse it
            folder = Path(self._directory) / "pg"
            self._server = PostgresServer(folder, extra=self._tls_options(folder)).start()
        return self._server

    def _tls_options(self, folder: Path) -> tuple[str, ...]:
        """PostgreSQL reads its key only if the server's user owns it, mode 0600."""
        if self.tls is None:
            return ()
        keys = folder.parent / "tls"
        keys.mkdir()
        for name in ("server.pem", "server.key"):
            shutil.copy(self.tls / name, keys / name)
            (keys / name).chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(keys / name, "postgres", "postgres")
        return (
            "-c", "ssl=on",
            "-c", f"ssl_cert_file={keys / 'server.pem'}",
            "-c", f"ssl_key_file={keys / 'server.key'}",
        )  # fmt: skip

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


_active: PostgresServers | None = None


def activate(servers: PostgresServers | None) -> None:
    """Set by the session fixture, so code without fixture access finds the server."""
    global _active
    _active = servers


def active() -> PostgresServers:
    if _active is None:
        raise RuntimeError("the postgres_servers session fixture is not active")
    return _active
