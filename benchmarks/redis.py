"""Per-request cost of coatcheck's Redis store, next to raw redis-py floors and peers.

One process, one ``redis-server`` started here on a free loopback port (no
persistence) and stopped by PID at the end. Every variant is a real ASGI app called
in-process (``await app(scope, receive, send)``): the only I/O is Redis itself. The
floors and the peers share one plain redis-py asyncio client, as an app would build
it, with the settings coatcheck's ``RedisStore.from_url`` uses (timeouts, one retry);
coatcheck's rows use the client its store builds, whose connections also pack
commands with hiredis. Variants run in the interleaved rounds of ``overhead.py`` and
are checked first, down to the Redis commands each request sends.

    python benchmarks/redis.py                              # about 1.5-2 minutes on 2 cores
    python benchmarks/redis.py --rounds 5 --requests 300    # a quick look
    python benchmarks/redis.py --json redis.json --redis-server /usr/bin/redis-server

See benchmarks/README.md for what each variant means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, cast
from uuid import uuid4

from _harness import (
    BARE,
    LITESTAR_BARE,
    AppFactory,
    ASGIApp,
    BenchmarkError,
    Headers,
    Suite,
    Variant,
    add_coatcheck,
    add_cookie_peer,
    add_optional,
    add_timing_arguments,
    check_timing_arguments,
    cookie_headers,
    expect,
    lead_with,
    litestar_apps,
    machine,
    measure,
    ok,
    package_versions,
    print_info,
    ratio_row,
    request,
    run_batch,
    run_record,
    starsessions_app,
    timing_method,
    write_json,
)
from fastapi import Depends, FastAPI

import coatcheck

if TYPE_CHECKING:
    from redis.asyncio import Redis


def load_redis_py() -> ModuleType:
    """redis-py itself, although this file shares its name and its folder is on sys.path."""
    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path[:] = [entry for entry in saved if Path(entry or os.curdir).resolve() != here]
    try:
        return importlib.import_module("redis")
    finally:
        sys.path[:] = saved


if __name__ == "redis":
    # ``import redis`` found this file because benchmarks/ is on sys.path (Python puts
    # a script's folder first): stand aside, so that the importer gets redis-py.
    del sys.modules[__name__]
    sys.modules[__name__] = load_redis_py()


GET_FLOOR = "redis-py GET floor"
GETSET_FLOOR = "redis-py GET+SET floor"
# Not a floor: the single GET made in a FastAPI dependency, where SessionDep loads.
GET_DEPENDENCY = "redis-py GET in a dependency"
COATCHECK = "coatcheck redis"
STARSESSIONS = "starsessions redis"
LITESTAR = "litestar redis"
OPERATIONS = ("read", "write", "untouched")

# coatcheck's idle timeout (SessionConfig default), the expiry the GET+SET floor sets.
IDLE_MS = 30 * 60 * 1000
# Every session-ish key and cookie has a session's shape: 32 random bytes in base64url.
FAKE_SESSION_ID = "Zm9vYmFyYmF6cXV4LXNlc3Npb24tdGlja2V0LTQzY2g"
FLOOR_GET_KEY = f"bench:floor:get:{FAKE_SESSION_ID}"
FLOOR_SET_KEY = f"bench:floor:set:{FAKE_SESSION_ID}"

# What each coatcheck route may send to Redis per request: the untouched route
# nothing, a read one load (HGETALL), a write one load and one save script.
COATCHECK_COMMANDS = {"untouched": 0, "read": 1, "read in body": 1, "write": 2}
FLOOR_LIMITS = (
    ("read", GET_FLOOR, 1.10),
    ("read in body", GET_FLOOR, 1.10),
    ("write", GETSET_FLOOR, 1.10),
)
PEER_SPEEDUP = 1.6  # coatcheck's read must be at least this much faster than each peer's

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


# -- the Redis server -------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    """One ``redis-server`` child process without persistence, stopped by its PID."""

    binary: str
    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        for _ in range(3):  # another process may take the free port before Redis does
            self.port = free_port()
            argv = [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.log),
            ]  # fmt: skip
            self.process = subprocess.Popen(
                argv,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_until_ready():
                return
            self.stop()
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise BenchmarkError(f"redis-server did not start; its log ends with:\n{log}")

    def _wait_until_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return True
            time.sleep(0.05)
        return False

    def terminate(self) -> None:
        """SIGTERM to our own child by its PID, without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        """SIGTERM to our own child by PID, SIGKILL if it lingers; safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def redis_server(binary: str) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="coatcheck-bench-redis-") as directory:
        server = RedisServer(binary, Path(directory))
        try:
            server.start()
            yield server
        finally:
            server.stop()


def stop_on_signals(server: RedisServer) -> None:
    """Ctrl-C and SIGTERM stop Redis first, then unwind through every ``finally``.

    redis-py sometimes swallows a task's cancellation, which could let a run go on
    after asyncio.run cancels it; with the server gone it cannot go on for long.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        server.terminate()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    # Set before asyncio.run, which then leaves SIGINT alone instead of cancelling.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


# -- counting what reaches the server ---------------------------------------------------

# A MONITOR line: +<time> [<db> <client address, or "lua" inside a script>] "<command>" ...
MONITOR_LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ (?P<source>[^\]]+)\] "(?P<command>[^"]+)"')
ADMIN_COMMANDS = frozenset({"info", "echo", "ping", "client", "config"})


@dataclass
class Commands:
    """Redis commands per request of one variant, as the server counted them."""

    requests: int
    sent: Counter[str] = field(default_factory=Counter)  # from the client (round trips)
    scripted: Counter[str] = field(default_factory=Counter)  # run by Lua scripts
    commandstats: Counter[str] = field(default_factory=Counter)

    @property
    def sent_per_request(self) -> float:
        return sum(self.sent.values()) / self.requests

    @property
    def scripted_per_request(self) -> float:
        return sum(self.scripted.values()) / self.requests

    @property
    def consistent(self) -> bool:
        """MONITOR saw exactly what ``INFO commandstats`` counted."""
        return self.sent + self.scripted == self.commandstats

    def cell(self) -> str:
        text = f"{self.sent_per_request:g}"
        if self.scripted:
            text += f" (+{self.scripted_per_request:g})"
        return text

    def describe(self, counter: Counter[str]) -> str:
        return ", ".join(
            f"{name.upper()} {count / self.requests:g}" for name, count in sorted(counter.items())
        )

    def as_json(self) -> dict[str, Any]:
        def per_request(counter: Counter[str]) -> dict[str, float]:
            return {name: count / self.requests for name, count in sorted(counter.items())}

        return {
            "requests_counted": self.requests,
            "sent_per_request": self.sent_per_request,
            "sent": per_request(self.sent),
            "in_scripts_per_request": self.scripted_per_request,
            "in_scripts": per_request(self.scripted),
            "commandstats_per_request": per_request(self.commandstats),
            "monitor_matches_commandstats": self.consistent,
        }


class CommandCounter:
    """``INFO commandstats`` deltas around a batch, split by ``MONITOR`` into sent/scripted.

    commandstats counts the commands a Lua script runs as well as the script call
    itself; MONITOR tags those with ``lua``, which tells a round trip from work
    done inside the server. Both must agree, or the count is reported as suspect.
    Only used before timing: MONITOR slows the server down.
    """

    def __init__(self, admin: Redis, port: int) -> None:
        self.admin = admin
        self.port = port
        self.lines: list[bytes] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CommandCounter:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(b"MONITOR\r\n")
        await self.writer.drain()
        reply = await asyncio.wait_for(self.reader.readline(), timeout=5)
        expect(reply == b"+OK\r\n", f"MONITOR refused: {reply!r}")
        self.task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def _collect(self) -> None:
        assert self.reader is not None
        while line := await self.reader.readline():
            self.lines.append(line)

    async def _mark(self, token: str) -> None:
        """Send a marker through the server and wait until MONITOR has shown it."""
        await self.admin.echo(token)
        needle = token.encode()
        deadline = time.monotonic() + 10
        while not any(needle in line for line in self.lines[-50:]):
            expect(time.monotonic() < deadline, "MONITOR never showed the marker")
            await asyncio.sleep(0.001)

    async def _commandstats(self) -> Counter[str]:
        stats = await self.admin.info("commandstats")
        calls: Counter[str] = Counter()
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_").split("|")[0].lower()
            if name not in ADMIN_COMMANDS:
                calls[name] += int(value["calls"])
        return calls

    async def count(self, variant: Variant, requests: int) -> Commands:
        token = uuid4().hex
        before = await self._commandstats()
        await self._mark(f"start-{token}")
        start = len(self.lines)
        await run_batch(variant, requests)
        await self._mark(f"end-{token}")
        window = self.lines[start:]
        after = await self._commandstats()
        commands = Commands(requests, commandstats=after - before)
        for line in window:
            match = MONITOR_LINE.match(line)
            if match is None:
                continue
            name = match["command"].decode().lower()
            if name in ADMIN_COMMANDS:
                continue
            if match["source"] == b"lua":
                commands.scripted[name] += 1
            else:
                commands.sent[name] += 1
        return commands


# -- the variants -----------------------------------------------------------------------


def floors_app(client: Redis, first: str) -> FastAPI:
    """A bare endpoint and the least any Redis-backed session could do per request,
    ``first`` matched first.

    ``/get-dependency`` makes the floor's GET in a dependency, as ``SessionDep`` does:
    the difference is what FastAPI charges for a dependency.
    """
    app = FastAPI()

    @app.get("/bare")
    async def bare() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/get")
    async def get_floor() -> dict[str, Any]:
        raw = await client.get(FLOOR_GET_KEY)
        return {"n": None if raw is None else int(raw)}

    @app.get("/getset")
    async def getset_floor() -> dict[str, Any]:
        raw = await client.get(FLOOR_SET_KEY)
        n = (0 if raw is None else int(raw)) + 1
        await client.set(FLOOR_SET_KEY, str(n), px=IDLE_MS)
        return {"n": n}

    async def floor_get() -> bytes | None:
        """The floor's GET as a dependency shaped like ``SessionDep``'s: no parameters."""
        return cast("bytes | None", await client.get(FLOOR_GET_KEY))

    @app.get("/get-dependency")
    async def get_in_dependency(raw: bytes | None = Depends(floor_get)) -> dict[str, Any]:
        return {"n": None if raw is None else int(raw)}

    return lead_with(app, first)


async def add_floors(suite: Suite, client: Redis) -> None:
    app = floors_app(client, "/bare")
    await suite.start(app)
    headers = cookie_headers("__Host-session", FAKE_SESSION_ID)
    response = ok(await request(app, "/bare", headers), BARE)
    expect(response.json() == {"ok": True}, f"{BARE}: body {response.body!r}")
    suite.add(Variant(BARE, app, "/bare", headers))

    get_app = floors_app(client, "/get")
    await client.set(FLOOR_GET_KEY, "1", px=IDLE_MS)
    response = ok(await request(get_app, "/get", headers), GET_FLOOR)
    expect(response.json() == {"n": 1}, f"{GET_FLOOR}: body {response.body!r}, want n=1")
    suite.add(Variant(GET_FLOOR, get_app, "/get", headers))

    getset_app = floors_app(client, "/getset")
    await client.delete(FLOOR_SET_KEY)
    first = ok(await request(getset_app, "/getset", headers), GETSET_FLOOR).json()
    second = ok(await request(getset_app, "/getset", headers), GETSET_FLOOR).json()
    expect(
        first == {"n": 1} and second == {"n": 2},
        f"{GETSET_FLOOR}: got {first} then {second}, want n=1 then n=2",
    )
    ttl = await client.pttl(FLOOR_SET_KEY)
    expect(0 < ttl <= IDLE_MS, f"{GETSET_FLOOR}: key has PTTL {ttl}, want an expiry")
    suite.add(Variant(GETSET_FLOOR, getset_app, "/getset", headers))

    dependency_app = floors_app(client, "/get-dependency")
    response = ok(await request(dependency_app, "/get-dependency", headers), GET_DEPENDENCY)
    expect(response.json() == {"n": 1}, f"{GET_DEPENDENCY}: body {response.body!r}, want n=1")
    suite.add(Variant(GET_DEPENDENCY, dependency_app, "/get-dependency", headers))


def coatcheck_store(url: str) -> Any:
    """coatcheck's RedisStore as an application would build it (it owns the client)."""
    from coatcheck.stores.redis import RedisStore

    return RedisStore.from_url(url, prefix="bench-coatcheck", timeout=1.0)


def mirrored_client(url: str) -> Redis:
    """A plain redis-py client with the settings coatcheck's from_url uses: the floors'
    and the peers'."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        decode_responses=False,
        retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
    )


def starsessions_redis(client: Redis) -> AppFactory:
    from starsessions.stores.redis import RedisStore as StarsessionsRedisStore

    store = StarsessionsRedisStore(connection=client, prefix="bench-starsessions:")
    return partial(starsessions_app, store)


def litestar_redis(client: Redis) -> tuple[ASGIApp, ASGIApp]:
    """Litestar's apps (see ``litestar_apps``), the sessions in Litestar's Redis store."""
    from litestar.stores.redis import RedisStore as LitestarRedisStore

    # The client is shared and closed elsewhere, so the store must not close it.
    return litestar_apps(
        LitestarRedisStore(client, namespace="bench-litestar", handle_client_shutdown=False)
    )


def our_store(suite: Suite, url: str) -> Any:
    """coatcheck's store, or None (noted) when it cannot be built."""
    try:
        return coatcheck_store(url)
    except Exception as exc:  # report the missing rows rather than no rows at all
        suite.notes.append(f"coatcheck RedisStore unavailable: {type(exc).__name__}: {exc}")
        print(f"NOTE: coatcheck RedisStore unavailable: {exc}", file=sys.stderr)
        return None


async def build(suite: Suite, client: Redis, store: Any) -> None:
    """Every variant, verified: the floors and peers on ``client``, coatcheck's rows on
    ``store`` (if there is one)."""
    await add_floors(suite, client)
    if store is not None:
        await add_optional(suite, COATCHECK, lambda s: add_coatcheck(s, "redis", store))

    async def add_starsessions(s: Suite) -> None:
        await add_cookie_peer(
            s, STARSESSIONS, starsessions_redis(client), "session", stateless=False
        )

    async def add_litestar(s: Suite) -> None:
        bare_app, session_app = litestar_redis(client)
        await s.start(bare_app)
        response = ok(await request(bare_app, "/bare", litestar_headers()), LITESTAR_BARE)
        expect(response.json() == {"ok": True}, f"{LITESTAR_BARE}: body {response.body!r}")
        s.add(Variant(LITESTAR_BARE, bare_app, "/bare", litestar_headers()))
        # Litestar matches routes in a tree, not in order: one app serves every variant.
        await add_cookie_peer(s, LITESTAR, lambda _: session_app, "session", stateless=False)

    await add_optional(suite, "starsessions", add_starsessions)
    await add_optional(suite, "litestar", add_litestar)
    assign_baselines(suite)


def litestar_headers() -> Headers:
    return cookie_headers("session", FAKE_SESSION_ID)


def assign_baselines(suite: Suite) -> None:
    """Every row against the bare endpoint and both floors; Litestar's also against
    bare Litestar; a peer's session rows also against coatcheck doing the same thing."""
    floors = tuple(name for name in (GET_FLOOR, GETSET_FLOOR) if suite.has(name))
    for variant in suite.variants:
        baselines: tuple[str, ...] = (BARE, *floors)
        if variant.name.startswith("litestar"):
            baselines += (LITESTAR_BARE,)
        for peer in (STARSESSIONS, LITESTAR):
            operation = variant.name.removeprefix(f"{peer} ")
            if operation in OPERATIONS and suite.has(f"{COATCHECK} {operation}"):
                baselines += (f"{COATCHECK} {operation}",)
        variant.baselines = tuple(dict.fromkeys(baselines))


async def count_commands(
    suite: Suite, admin: Redis, port: int, requests: int
) -> dict[str, Commands]:
    counts: dict[str, Commands] = {}
    async with CommandCounter(admin, port) as counter:
        for variant in suite.variants:
            await run_batch(variant, 5)  # scripts loaded, pool connection open
            counts[variant.name] = await counter.count(variant, requests)
    return counts


# -- reporting --------------------------------------------------------------------------


def speedup(suite: Suite, peer: str, operation: str) -> tuple[float, float, float] | None:
    """Median and IQR over rounds of peer ÷ coatcheck for one operation."""
    name, baseline = f"{peer} {operation}", f"{COATCHECK} {operation}"
    if not (suite.has(name) and suite.has(baseline)):
        return None
    variant = suite[name]
    low, high = variant.ratio_iqr(baseline)
    return variant.ratio(baseline), low, high


def report(
    suite: Suite,
    counts: dict[str, Commands],
    args: argparse.Namespace,
    info: dict[str, str],
) -> dict[str, Any]:
    print_info(info)
    width = max(len(v.name) for v in suite.variants)
    columns = [(BARE, "× fastapi bare"), (GET_FLOOR, "× GET floor"), (GETSET_FLOOR, "× GET+SET")]
    if suite.has(LITESTAR_BARE):
        columns.append((LITESTAR_BARE, "× litestar bare"))
    header = f"{'variant':<{width}}  {'µs/req':>7}"
    for _, title in columns:
        header += f"  {title:>{max(len(title), 9)}}"
    header += f"  {'cmds/req':>10}  Set-Cookie"
    print(header)
    print("-" * len(header))
    rows = []
    for variant in suite.variants:
        line = ratio_row(variant, width, columns)
        commands = counts.get(variant.name)
        line += f"  {commands.cell() if commands else '?':>10}"
        line += f"  {'yes' if variant.set_cookie else 'no'}"
        print(line)
        rows.append(
            {**variant.as_json(), "redis_commands": commands.as_json() if commands else None}
        )
    print("cmds/req: commands each request sends to Redis (+ commands its Lua scripts run)")

    print()
    print_commands(suite, counts, args.count_requests)
    print()
    print_peers(suite)
    print()
    targets = print_targets(suite, counts)
    for note in suite.notes:
        print(f"NOTE: {note}")
    return run_record(args, info, rows, targets, suite.notes)


def print_commands(suite: Suite, counts: dict[str, Commands], requests: int) -> None:
    print(
        f"Redis commands per request ({requests} requests per variant;"
        " INFO commandstats deltas, split by MONITOR into sent and run inside Lua):"
    )
    width = max(len(v.name) for v in suite.variants)
    for variant in suite.variants:
        commands = counts[variant.name]
        line = f"  {variant.name:<{width}}  sends {commands.sent_per_request:g}"
        if commands.sent:
            line += f" ({commands.describe(commands.sent)})"
        if commands.scripted:
            line += f"; inside scripts {commands.scripted_per_request:g}"
            line += f" ({commands.describe(commands.scripted)})"
        if not commands.consistent:
            line += f"  [commandstats disagree: {commands.describe(commands.commandstats)}]"
        print(line)


def print_peers(suite: Suite) -> None:
    print("peer ÷ coatcheck, same operation (median over rounds, IQR; > 1: coatcheck is faster):")
    for operation in OPERATIONS:
        cells = []
        for peer in (STARSESSIONS, LITESTAR):
            found = speedup(suite, peer, operation)
            if found is not None:
                ratio, low, high = found
                cells.append(f"{peer} {ratio:5.2f}× ({low:.2f}-{high:.2f})")
        if cells:
            print(f"  {operation:<9}  " + "   ".join(cells))


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else "PASS" if passed else "FAIL"


def print_targets(suite: Suite, counts: dict[str, Commands]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def target(name: str, measured: str, goal: str, passed: bool | None, **extra: Any) -> None:
        targets.append(
            {"variant": name, "measured": measured, "target": goal, "pass": passed, **extra}
        )

    for operation, floor, limit in FLOOR_LIMITS:
        name = f"{COATCHECK} {operation}"
        goal = f"<= {limit:.2f}×"
        if suite.has(name) and suite.has(floor):
            ratio = suite[name].ratio(floor)
            low, high = suite[name].ratio_iqr(floor)
            measured = f"{ratio:.3f}× {floor.removeprefix('redis-py ')} (IQR {low:.2f}-{high:.2f})"
            target(name, measured, goal, ratio <= limit, ratio=round(ratio, 4))
        else:
            target(name, f"× {floor}: not measured", goal, None)
    for operation, expected in COATCHECK_COMMANDS.items():
        name = f"{COATCHECK} {operation}"
        commands = counts.get(name)
        goal = f"exactly {expected}"
        if commands is None:
            target(name, "Redis commands: not measured", goal, None)
            continue
        sent = commands.sent_per_request
        exact = sent == expected and commands.consistent
        if operation == "untouched":
            exact = exact and not commands.commandstats  # nothing at all reached Redis
        target(name, f"sends {sent:g} Redis commands/request", goal, exact, sent=sent)
    for peer in (STARSESSIONS, LITESTAR):
        name = f"{COATCHECK} read"
        goal = f">= {PEER_SPEEDUP:.2f}×"
        found = speedup(suite, peer, "read")
        if found is None:
            target(name, f"speed-up over {peer} read: not measured", goal, None)
            continue
        ratio, low, high = found
        measured = f"{ratio:.3f}× faster than {peer} read (IQR {low:.2f}-{high:.2f})"
        target(name, measured, goal, ratio >= PEER_SPEEDUP, peer=peer, ratio=round(ratio, 4))

    print("coatcheck targets:")
    name_width = max(len(t["variant"]) for t in targets)
    measured_width = max(len(t["measured"]) for t in targets)
    goal_width = max(len(t["target"]) for t in targets)
    for t in targets:
        print(
            f"  {t['variant']:<{name_width}}  {t['measured']:<{measured_width}}"
            f"  target {t['target']:<{goal_width}}  {verdict(t['pass'])}"
        )
    return targets


async def environment(admin: Redis, client: Redis, server: RedisServer) -> dict[str, str]:
    redis_info = await admin.info("server")
    pool = client.connection_pool
    settings = pool.connection_kwargs
    return {
        **machine(),
        "coatcheck": coatcheck.__version__,
        "redis-server": f"{redis_info['redis_version']} on 127.0.0.1:{server.port}"
        f" (pid {redis_info['process_id']}, no persistence)",
        **package_versions(
            ("redis", "hiredis", "fastapi", "starlette", "starsessions", "litestar", "orjson")
        ),
        "redis client": (
            f"one {type(client).__module__}.{type(client).__name__} for the floors and"
            f" peers (coatcheck: its store's own, with hiredis packing);"
            f" {type(pool).__name__}(max_connections={pool.max_connections}),"
            f" socket_timeout={settings.get('socket_timeout')},"
            f" connect_timeout={settings.get('socket_connect_timeout')}"
        ),
    }


async def close(suite: Suite, client: Redis, store: Any, admin: Redis) -> None:
    await suite.shutdown()  # coatcheck's app closes its store here, if it started
    if store is not None:
        await store.aclose()  # in case it never got that far; closing twice is fine
    await client.aclose()
    await admin.aclose()


async def run(args: argparse.Namespace, server: RedisServer) -> dict[str, Any]:
    from redis.asyncio import Redis

    admin = Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    suite = Suite()
    # Made here, so that an error while building the variants still closes them.
    client = mirrored_client(server.url)
    store = our_store(suite, server.url)
    try:
        await build(suite, client, store)
        counts = await count_commands(suite, admin, server.port, args.count_requests)
        print(
            f"verified {len(suite.variants)} variants; timing {args.rounds} rounds"
            f" x {args.requests} requests each",
            file=sys.stderr,
        )
        info = await environment(admin, client, server)
        before = os.getloadavg()[0]
        await measure(suite, args)
        after = os.getloadavg()[0]
        # The run must not have changed what the read variants see.
        for name in (f"{COATCHECK} read", f"{STARSESSIONS} read", f"{LITESTAR} read"):
            if suite.has(name):
                variant = suite[name]
                response = ok(await request(variant.app, variant.path, variant.headers), name)
                expect(response.json() == {"n": 1}, f"{name}: now reads {response.body!r}")
    except BaseException:
        with contextlib.suppress(Exception):  # the error that got us here matters more
            await close(suite, client, store, admin)
        raise
    await close(suite, client, store, admin)
    info["load average"] = f"{before:.2f} before, {after:.2f} after (1 min)"
    info["method"] = timing_method(args)
    return report(suite, counts, args, info)


def main(argv: list[str] | None = None) -> int:
    load_redis_py()  # before anything imports ``redis`` and finds this file instead
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_timing_arguments(parser, rounds=30, requests=1000, warmup=300)
    parser.add_argument(
        "--count-requests",
        type=int,
        default=200,
        help="requests per variant whose Redis commands are counted before timing (200)",
    )
    parser.add_argument(
        "--redis-server",
        default=shutil.which("redis-server"),
        metavar="PATH",
        help="the redis-server binary (default: the one on PATH)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    check_timing_arguments(parser, args)
    if args.count_requests < 1:
        parser.error("need --count-requests >= 1")
    if not args.redis_server:
        parser.error("no redis-server on PATH: apt-get install redis-server, or --redis-server")
    try:
        with redis_server(args.redis_server) as server:
            stop_on_signals(server)
            results = asyncio.run(run(args, server))
    except BenchmarkError as exc:
        print(f"ABORTED: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; redis-server stopped", file=sys.stderr)
        return 130
    write_json(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
