"""The reference app across time and processes: expiry, restarts, several workers."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from .conftest import Browser, DemoServer, StartServer, child_pids, run_cli

pytestmark = pytest.mark.e2e


def _session_times(browser: Browser) -> tuple[datetime, datetime]:
    response = browser.me()
    assert response.status_code == 200, response.text
    session = response.json()["session"]
    created = datetime.fromisoformat(session["created_at"])
    expires = datetime.fromisoformat(session["expires_at"])
    assert created.tzinfo is not None
    assert expires.tzinfo is not None
    return created, expires


def test_idle_session_expires(start_server: StartServer) -> None:
    server = start_server("--idle-timeout", "2", "--absolute-timeout", "60", name="idle")
    with server.browser() as b:
        b.add("apple")
        b.login("alice")
        created, expires = _session_times(b)
        assert 1.0 <= (expires - created).total_seconds() <= 2.5
        time.sleep(1.2)
        assert b.me().status_code == 200
        time.sleep(1.2)
        # 2.4 s after login: alive only because the request at 1.2 s slid the window
        assert b.me().status_code == 200
        time.sleep(3.0)
        response = b.me()
        assert response.status_code == 401
        assert b.get("/cart").json() == {"items": []}


def test_absolute_lifetime_ends_an_active_session(start_server: StartServer) -> None:
    server = start_server("--idle-timeout", "2", "--absolute-timeout", "4", name="absolute")
    with server.browser() as b:
        before = time.monotonic()
        b.login("alice")
        after = time.monotonic()
        created, _ = _session_times(b)
        log: list[tuple[float, float, int]] = []  # (since login sent, since answered, status)
        while time.monotonic() - after < 7.0:
            sent = time.monotonic()
            response = b.me()
            log.append((sent - before, sent - after, response.status_code))
            if response.status_code == 401:
                break
            _, expires = _session_times(b)
            assert (expires - created).total_seconds() <= 4.001, "expiry beyond absolute limit"
            time.sleep(0.8)
        statuses = [status for *_, status in log]
        assert statuses[-1] == 401, log
        assert all(status == 200 for status in statuses[:-1]), log
        # never idle for the 2 s idle timeout, yet it died
        gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(log)]
        assert max(gaps, default=0) < 1.9, log
        for since_sent, since_answered, status in log:
            if since_sent < 3.6:
                assert status == 200, log
            if since_answered > 4.2:
                assert status == 401, log
        assert log[-1][1] <= 4.0 + 1.2, log  # it died on time, not merely eventually


def test_sessions_survive_a_restart(start_server: StartServer) -> None:
    server = start_server(name="restart")
    with server.browser() as b:
        b.add("apple")
        b.login("alice")
        b.add("pear")
        cookie = b.session_id
        public_id = b.me().json()["session"]["id"]
        port, pid = server.port, server.pid

        server.stop()
        assert server.process is None
        assert server.db.exists()
        assert child_pids(pid) == []

        server.start()
        assert server.port == port
        assert server.pid != pid
        me = b.me()
        assert me.status_code == 200, server.log()
        assert me.json()["user"] == "alice"
        assert me.json()["session"]["id"] == public_id
        assert b.cart() == ["apple", "pear"]
        assert b.session_id == cookie
    # --store was honoured: nothing was written to the default file in the working folder
    assert not (server.workdir / "coatcheck-demo.db").exists()


def test_default_store_is_a_sqlite_file_in_the_working_folder(start_server: StartServer) -> None:
    server = start_server(name="default-store", pass_store=False)
    default = server.workdir / "coatcheck-demo.db"
    with server.browser() as b:
        b.login("bob")
        b.add("hammer")
        assert default.is_file()
        server.restart()
        assert b.me().json()["user"] == "bob"
        assert b.cart() == ["hammer"]
    assert not server.db.exists()


def _holds_connection(pid: int, server_port: int, client_port: int) -> bool:
    """Whether process ``pid`` holds the server end of the TCP connection from
    ``client_port``: its socket's inode, found in /proc/net/tcp, is among pid's files.

    Exact where counting the process's sockets is not: a connection closed just before
    may still be on its books, and leave the count unchanged."""
    wanted = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            inodes.add(f"socket:[{fields[9]}]")
    assert inodes, f"no connection from port {client_port} to {server_port}"
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                return True
    return False


def _served_alone(server: DemoServer, cookie: str, worker: int) -> list[str]:
    """Add an item to the cart through ``worker`` alone; returns the cart it answers."""
    with server.served_by(worker), Browser(server.url) as b:
        b.jar["session"] = cookie
        response = b.add(f"from-{worker}")
        # The keep-alive connection is still open: see which process holds its far end.
        _, client_port = response.extensions["network_stream"].get_extra_info("client_addr")
        held = _holds_connection(worker, server.port, client_port)
    assert response.status_code == 201, response.text
    assert held, f"worker {worker} did not hold the connection"
    items: list[str] = response.json()["items"]
    return items


def test_two_workers_share_one_sqlite_file(start_server: StartServer) -> None:
    server = start_server("--workers", "2", name="workers")
    workers = server.started_workers(2)

    with server.browser(fresh_connections=True) as alice:
        alice.login("alice")
        expected: list[str] = []
        # sequential writes, each on a new connection: whichever worker answers sees the last
        for i in range(16):
            item = f"item-{i}"
            expected.append(item)
            response = alice.add(item)
            assert response.status_code == 201, server.log()
            assert response.json() == {"items": expected}
        cookie = alice.session_id

    def read_me(_: int) -> tuple[int, str]:
        with Browser(server.url, fresh_connections=True) as b:
            b.jar["session"] = str(cookie)
            response = b.me()
            return response.status_code, response.json().get("user", "")

    def own_cart(n: int) -> list[str]:
        # one anonymous visitor per thread: sequential per session, parallel across sessions
        with Browser(server.url, fresh_connections=True) as b:
            for i in range(4):
                assert b.add(f"v{n}-{i}").status_code == 201
            return b.cart()

    with ThreadPoolExecutor(max_workers=6) as pool:
        reads = pool.map(read_me, range(16))
        carts = pool.map(own_cart, range(4))
        assert list(reads) == [(200, "alice")] * 16
        assert list(carts) == [[f"v{n}-{i}" for i in range(4)] for n in range(4)]

    with Browser(server.url, fresh_connections=True) as b:
        b.jar["session"] = str(cookie)
        assert b.cart() == expected
        assert b.me().json()["user"] == "alice"

        # each worker in turn serves this session alone, and sees what the other wrote
        first, second = workers
        assert _served_alone(server, str(cookie), first) == [*expected, f"from-{first}"]
        assert _served_alone(server, str(cookie), second) == [
            *expected,
            f"from-{first}",
            f"from-{second}",
        ]

    assert sorted(server.worker_pids()) == sorted(workers), "a worker died or was replaced"


def test_parallel_logins_on_two_workers_never_pass_the_session_limit(
    start_server: StartServer,
) -> None:
    """Eight API clients log in as alice at once, on two workers sharing one SQLite file,
    with ``--max-sessions 2``: each login answered 200 holds a live session, and they are
    never more than two."""
    server = start_server("--workers", "2", "--max-sessions", "2", name="limit")
    server.started_workers(2)
    credentials = {"username": "alice", "password": "wonderland"}

    def log_in(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as own:
            return own.post("/login", json=credentials, headers={"x-session-token": "new"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(log_in, range(8)))
    assert {answer.status_code for answer in answers} <= {200, 403}, server.log()
    tickets = [answer.headers["x-session-token"] for answer in answers if answer.is_success]
    assert len(tickets) <= 2
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while len(tickets) < 2:  # racing logins may all have been refused: now one at a time
            login = client.post("/login", json=credentials, headers={"x-session-token": "new"})
            assert login.status_code == 200, login.text
            tickets.append(login.headers["x-session-token"])
        for ticket in tickets:
            assert client.get("/me", headers={"x-session-token": ticket}).json()["user"] == "alice"
        devices = client.get("/sessions", headers={"x-session-token": tickets[0]})
        assert len(devices.json()["sessions"]) == 2
        third = client.post("/login", json=credentials, headers={"x-session-token": "new"})
    assert third.status_code == 403
    assert "too many devices" in third.json()["detail"]


def test_revoke_all_from_the_shell_logs_everyone_out(start_server: StartServer) -> None:
    """The command runs in its own process, on the file the running server uses."""
    server = start_server(name="revoke-all")
    with server.browser() as alice, server.browser() as bob, server.browser() as visitor:
        alice.login("alice")
        bob.login("bob")
        visitor.add("apple")  # an anonymous session with a cart
        result = run_cli("sessions", "revoke-all", "--store", server.store_url, "--yes")
        assert result.stdout.strip() == "Revoked 3 live sessions; everyone must sign in again."

        assert alice.me().status_code == 401
        assert bob.me().status_code == 401
        assert visitor.cart() == []
        alice.login("alice")
        assert alice.me().json()["user"] == "alice"
