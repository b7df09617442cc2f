"""Real uvicorn servers running the reference app, and a browser-like HTTP client.

Cookies are handled by hand, never by httpx's jar: the jar drops ``Secure`` cookies
over plain HTTP and hides attributes, while these tests must see exactly the
``Set-Cookie`` headers a browser would get and send exactly the ``Cookie`` header
a browser (or an attacker) would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

STARTUP_TIMEOUT = 20.0
STOP_GRACE = 5.0
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
USERS = {"alice": "wonderland", "bob": "builder"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def served_here(app: Any) -> AsyncIterator[int]:
    """``app`` served by uvicorn on this test's event loop, on a free loopback port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    try:
        for _ in range(500):  # up to 5 s
            if running.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not running.started:
            pytest.fail("uvicorn did not start")
        yield port
    finally:
        running.should_exit = True
        await task


# -- Set-Cookie, parsed as a browser would see it ----------------------------------------


@dataclass(frozen=True)
class SetCookie:
    """One ``Set-Cookie`` header: name, value and attributes (keys lower-cased)."""

    raw: str
    name: str
    value: str
    attributes: dict[str, str] = field(default_factory=dict)

    def has(self, attribute: str) -> bool:
        return attribute.lower() in self.attributes

    def get(self, attribute: str) -> str | None:
        return self.attributes.get(attribute.lower())

    @property
    def max_age(self) -> int | None:
        value = self.get("max-age")
        return None if value is None else int(value)

    @property
    def clears(self) -> bool:
        """True when a browser would delete the cookie on receiving this header."""
        if self.max_age is not None:
            return self.max_age <= 0
        expires = self.get("expires")
        return expires is not None and parsedate_to_datetime(expires).timestamp() < time.time()


def parse_set_cookie(header: str) -> SetCookie:
    pair, *rest = header.split(";")
    name, sep, value = pair.partition("=")
    assert sep, f"Set-Cookie without '=': {header!r}"
    attributes: dict[str, str] = {}
    for part in rest:
        key, _, attr_value = part.strip().partition("=")
        assert key.lower() not in attributes, f"attribute {key} repeated in {header!r}"
        attributes[key.lower()] = attr_value.strip()
    return SetCookie(header, name.strip(), value.strip(), attributes)


def set_cookies(response: httpx.Response) -> list[SetCookie]:
    return [parse_set_cookie(value) for value in response.headers.get_list("set-cookie")]


# -- a browser with a hand-managed cookie ---------------------------------------------------

HeaderList = list[tuple[str | bytes, str | bytes]]


class Browser:
    """One user agent talking to one server, keeping one cookie jar of its own.

    Every response is checked for 5xx (the server must never fail on client input).
    ``headers`` given to a request replace the automatic ``Cookie`` header entirely,
    so a test can send malformed, repeated or raw-byte cookies.
    """

    def __init__(
        self,
        base_url: str,
        cookie_name: str = "session",
        *,
        user_agent: str = "coatcheck-e2e",
        fresh_connections: bool = False,
    ) -> None:
        self.base_url = base_url
        self.cookie_name = cookie_name
        self.user_agent = user_agent
        self.fresh_connections = fresh_connections
        self.jar: dict[str, str] = {}
        self.responses: list[httpx.Response] = []
        # Like a browser on the app's own page: its unsafe requests pass the CSRF check.
        self._client = httpx.Client(
            base_url=base_url,
            timeout=10.0,
            follow_redirects=False,
            headers={"sec-fetch-site": "same-origin"},
        )

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    @property
    def session_id(self) -> str | None:
        return self.jar.get(self.cookie_name)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: HeaderList | None = None,
        use_jar: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        sent: HeaderList = [("user-agent", self.user_agent)]
        if self.fresh_connections:
            sent.append(("connection", "close"))
        if headers is not None:
            sent.extend(headers)
        elif use_jar and self.jar:
            sent.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.jar.items())))
        self._client.cookies.clear()  # never let httpx's own jar add or keep anything
        response = self._client.request(method, path, headers=sent, **kwargs)
        self._client.cookies.clear()
        self.responses.append(response)
        assert response.status_code < 500, (
            f"{method} {path} -> {response.status_code}: {response.text[:500]}"
        )
        if use_jar:
            for cookie in set_cookies(response):
                if cookie.clears:
                    self.jar.pop(cookie.name, None)
                else:
                    self.jar[cookie.name] = cookie.value
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    # conveniences for the demo's JSON API

    def login(self, user: str = "alice", *, remember: bool = False) -> httpx.Response:
        body: dict[str, Any] = {"username": user, "password": USERS[user]}
        if remember:
            body["remember"] = True
        response = self.post("/login", json=body)
        assert response.status_code == 200, response.text
        assert response.json() == {"user": user}
        return response

    def me(self) -> httpx.Response:
        return self.get("/me")

    def cart(self) -> list[Any]:
        response = self.get("/cart")
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert isinstance(items, list)
        return items

    def add(self, item: Any) -> httpx.Response:
        return self.post("/cart/items", json={"item": item})


def echoes_part_of(secret: str, text: str, width: int = 12) -> bool:
    """Whether ``text`` holds any ``width`` characters of ``secret`` in a row: a public
    id cut from the session ID would leak it just as surely as the whole ID."""
    return any(secret[at : at + width] in text for at in range(len(secret) - width + 1))


# -- the server ----------------------------------------------------------------------------


def run_cli(*args: str, fails: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m coatcheck ARGS`` in a process of its own, as an operator runs it;
    it must succeed, or with ``fails`` exit with an error."""
    result = subprocess.run(
        [sys.executable, "-m", "coatcheck", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if fails:
        assert result.returncode != 0, result.stdout
    else:
        assert result.returncode == 0, result.stderr
    return result


class DemoServer:
    """``python -m coatcheck demo`` on a loopback port, in its own process group."""

    def __init__(
        self, workdir: Path, args: Sequence[str], name: str, *, pass_store: bool = True
    ) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.pass_store = pass_store
        self.port = free_port()
        self.db = workdir / f"{name}.db"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.secure = "--secure-cookies" in self.args
        self.cookie_name = "__Host-session" if self.secure else "session"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.db}"  # self.db is absolute: sqlite:////abs/path.db

    @property
    def pid(self) -> int:
        assert self.process is not None, "server not running"
        return self.process.pid

    def argv(self) -> list[str]:
        store = ["--store", self.store_url] if self.pass_store else []
        return [
            sys.executable,
            "-m",
            "coatcheck",
            "demo",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *store,
            *self.args,
        ]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def browser(self, **kwargs: Any) -> Browser:
        return Browser(self.url, self.cookie_name, **kwargs)

    def worker_pids(self) -> list[int]:
        """uvicorn's worker processes (with ``--workers``), as they are now."""
        return [pid for pid in child_pids(self.pid) if "spawn_main" in " ".join(cmdline(pid))]

    def started_workers(self, count: int) -> list[int]:
        """The ``count`` workers, once each of them has said it serves."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            pids = self.worker_pids()
            log = self.log()
            if len(pids) == count and all(f"Started server process [{pid}]" in log for pid in pids):
                return pids
            assert time.monotonic() < deadline, (pids, log)
            time.sleep(0.1)

    @contextlib.contextmanager
    def served_by(self, worker: int) -> Iterator[None]:
        """Every other worker stopped meanwhile: only ``worker`` accepts connections.

        The workers share one listening socket, and which of them accepts a connection
        is up to the kernel and the scheduler; this takes the choice away."""
        others = [pid for pid in self.worker_pids() if pid != worker]
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)

    def start(self) -> None:
        assert self.db.is_absolute()
        assert self.process is None, "already running"
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start: {' '.join(self.argv())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: workers die with it
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last_error = "no attempt"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    code = self.process.returncode
                    self.stop()
                    pytest.fail(f"demo server exited with {code} at start-up; log:\n{self.log()}")
                try:
                    response = client.get(f"{self.url}/cart", headers={"connection": "close"})
                except httpx.TransportError as exc:
                    last_error = repr(exc)
                else:
                    if response.status_code == 200:
                        return
                    last_error = f"GET /cart -> {response.status_code}"
                time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"demo server not ready within {STARTUP_TIMEOUT}s ({last_error}); log:\n{self.log()}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole process group after a grace period."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait(STOP_GRACE)
        # Whatever the parent did, leave no worker of ours behind.
        _kill_group(process.pid)

    def restart(self) -> None:
        self.stop()
        self.start()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after it
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


StartServer = Callable[..., DemoServer]


class _Servers:
    def __init__(self, workdir: Callable[[], Path]) -> None:
        self._workdir = workdir
        self._started: list[DemoServer] = []

    def __call__(self, *args: str, name: str = "demo", pass_store: bool = True) -> DemoServer:
        workdir, label = self._workdir(), f"{name}-{len(self._started)}"
        server = DemoServer(workdir, args, label, pass_store=pass_store)
        self._started.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in reversed(self._started):
            server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start demo servers (extra CLI args as positional arguments); all stop at teardown.

    Each gets ``--store sqlite:////<tmp>/<name>.db`` unless ``pass_store=False``.
    """
    servers = _Servers(lambda: tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Like ``start_server``, for servers shared by the tests of one module."""
    workdir = tmp_path_factory.mktemp("e2e")
    servers = _Servers(lambda: workdir)
    try:
        yield servers
    finally:
        servers.stop_all()
