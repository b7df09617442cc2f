"""Per-request cost of coatcheck's session middleware, measured in-process.

Every variant is a real ASGI app called directly (``await app(scope, receive, send)``)
on one event loop: no sockets, no HTTP parsing, no test client. Variants run in
interleaved rounds: each round times every variant once, cut into a few slices that
each visit all variants in a fresh random order, so drift and bursts of load on the
machine hit variants and baselines alike. The reported cost is the median over
rounds; each ratio is the median over rounds of variant / baseline, the baseline
being a bare endpoint timed in the same round.

    python benchmarks/overhead.py                              # about 1.5-2 minutes
    python benchmarks/overhead.py --rounds 10 --requests 500   # a quick look
    python benchmarks/overhead.py --clock cpu --json results.json

See benchmarks/README.md for what each variant means.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.openapi.models import APIKey
from fastapi.security.base import SecurityBase
from starlette.middleware.sessions import SessionMiddleware as StarletteSessionMiddleware

import coatcheck
from coatcheck import MemoryStore, SessionConfig, SessionMiddleware, SQLiteStore
from coatcheck.fastapi import SessionDep
from coatcheck.serializers import HAVE_ORJSON

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

BARE = "fastapi bare"
NOOP = "fastapi no-op dependency"
LITESTAR_BARE = "litestar bare"

# Targets for coatcheck: (variant, highest acceptable median ratio to bare FastAPI).
TARGETS = (
    ("coatcheck memory read", 1.10),
    ("coatcheck memory untouched", 1.02),
    ("coatcheck sqlite read", 2.0),
)

# Headers a browser would plausibly send; the session cookie is appended per variant.
BASE_HEADERS: Headers = [
    (b"host", b"bench.local"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"accept", b"application/json"),
    (b"accept-encoding", b"gzip, deflate, br"),
]


class BenchmarkError(RuntimeError):
    """A variant does not do what it claims; timing it would be meaningless."""


# -- a minimal in-process ASGI client ---------------------------------------------------


def make_scope(path: str, headers: Headers) -> Scope:
    """The template of an HTTP GET scope; each request gets a shallow copy."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("bench.local", 443),
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class StatusSink:
    """The timed ``send``: remembers only how many responses were not 200."""

    __slots__ = ("bad",)

    def __init__(self) -> None:
        self.bad = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            self.bad += 1


@dataclass
class Response:
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    def header_values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self, name: str) -> str | None:
        for raw in self.header_values(b"set-cookie"):
            jar: SimpleCookie = SimpleCookie()
            jar.load(raw.decode("latin-1"))
            if name in jar:
                return jar[name].value
        return None


async def request(app: ASGIApp, path: str, headers: Headers) -> Response:
    """One full request that records everything, for set-up and verification."""
    response = Response()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    await app({**make_scope(path, headers), "state": {}}, receive, send)
    return response


class Lifespan:
    """Runs an app's ASGI lifespan protocol, as a server would around the requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self.outbox.put)
        except Exception as exc:  # an app without lifespan support may raise
            await self.outbox.put({"type": "lifespan.failed", "message": repr(exc)})

    async def _step(self, event: str) -> None:
        await self.inbox.put({"type": f"lifespan.{event}"})
        message = await asyncio.wait_for(self.outbox.get(), timeout=10)
        if message["type"] != f"lifespan.{event}.complete":
            raise BenchmarkError(f"lifespan {event} failed: {message}")

    async def startup(self) -> None:
        self.task = asyncio.create_task(self._run())
        await self._step("startup")

    async def shutdown(self) -> None:
        await self._step("shutdown")
        if self.task is not None:
            await self.task


# -- the variants -----------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    app: ASGIApp
    path: str
    headers: Headers
    baselines: tuple[str, ...] = (BARE,)
    set_cookie: bool = False  # observed during verification
    samples: list[float] = field(default_factory=list)  # ns per request, one per round
    ratios: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples) / 1000

    def ratio(self, baseline: str) -> float:
        return statistics.median(self.ratios[baseline])

    def ratio_iqr(self, baseline: str) -> tuple[float, float]:
        """The middle half of the per-round ratios: how much a ratio moves between rounds."""
        ratios = self.ratios[baseline]
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        low, _, high = statistics.quantiles(ratios, n=4)
        return low, high


@dataclass
class Suite:
    variants: list[Variant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lifespans: list[Lifespan] = field(default_factory=list)

    def add(self, variant: Variant) -> None:
        self.variants.append(variant)

    def __getitem__(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(variant.name == name for variant in self.variants)

    async def start(self, app: ASGIApp) -> None:
        lifespan = Lifespan(app)
        await lifespan.startup()
        self.lifespans.append(lifespan)


def cookie_headers(name: str, value: str) -> Headers:
    return [*BASE_HEADERS, (b"cookie", f"{name}={value}".encode("latin-1"))]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkError(message)


def ok(response: Response, variant: str) -> Response:
    expect(response.status == 200, f"{variant}: status {response.status}, body {response.body!r}")
    return response


class CallCounter:
    """Counts calls of some async methods of a store, only while verifying."""

    def __init__(self, target: object, *methods: str) -> None:
        self.target = target
        self.methods = methods
        self.calls = dict.fromkeys(methods, 0)

    @contextmanager
    def counting(self) -> Iterator[dict[str, int]]:
        self.calls = dict.fromkeys(self.methods, 0)
        for method in self.methods:
            original = getattr(self.target, method)
            setattr(self.target, method, self._wrap(method, original))
        try:
            yield self.calls
        finally:
            for method in self.methods:
                delattr(self.target, method)  # back to the class attribute

    def _wrap(
        self, method: str, original: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls[method] += 1
            return await original(*args, **kwargs)

        return wrapped


class NoopCookieScheme(SecurityBase):
    """Shaped like coatcheck's OpenAPI cookie scheme, but with no session behind it."""

    def __init__(self) -> None:
        self.model = APIKey.model_validate({"type": "apiKey", "in": "cookie", "name": "session"})
        self.scheme_name = "noop"

    async def __call__(self) -> None:
        return None


noop_scheme = NoopCookieScheme()


async def noop_dependency(request: Request, _: Annotated[None, Security(noop_scheme)]) -> None:
    """The dependency graph of ``SessionDep`` (Request plus a Security sub-dependency)."""


NoopDep = Annotated[None, Depends(noop_dependency)]


def fastapi_app() -> FastAPI:
    """The bare baseline, plus a reference endpoint that only resolves a no-op dependency.

    ``/bare`` and ``/noop-dep`` are the first and second routes, like ``/untouched`` and
    ``/read`` in the session apps, so each pair pays for the same route matching.
    """
    app = FastAPI()

    @app.get("/bare")
    async def bare() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/noop-dep")
    async def noop(_: NoopDep) -> dict[str, Any]:
        return {"n": 1}

    return app


async def add_fastapi_bare(suite: Suite) -> None:
    app = fastapi_app()
    await suite.start(app)
    headers = [*BASE_HEADERS, (b"cookie", b"theme=dark")]
    response = ok(await request(app, "/bare", headers), BARE)
    expect(response.json() == {"ok": True}, f"{BARE}: body {response.body!r}")
    suite.add(Variant(BARE, app, "/bare", headers))
    response = ok(await request(app, "/noop-dep", headers), NOOP)
    expect(response.json() == {"n": 1}, f"{NOOP}: body {response.body!r}")
    suite.add(Variant(NOOP, app, "/noop-dep", headers))


def coatcheck_app(store: MemoryStore | SQLiteStore) -> tuple[ASGIApp, str]:
    inner = FastAPI()

    # ``/untouched`` is registered first, where ``/bare`` is in the bare app, so both
    # pay for exactly the same route matching.
    @inner.get("/untouched")
    async def untouched() -> dict[str, bool]:
        return {"ok": True}

    @inner.get("/read")
    async def read(session: SessionDep) -> dict[str, Any]:
        return {"n": session.get("n")}

    @inner.get("/write")
    async def write(session: SessionDep) -> dict[str, Any]:
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    config = SessionConfig()  # production defaults: the cookie is ``__Host-session``
    return SessionMiddleware(inner, store=store, config=config), config.cookie.name


async def add_coatcheck(suite: Suite, label: str, store: MemoryStore | SQLiteStore) -> None:
    app, cookie = coatcheck_app(store)
    await suite.start(app)
    prefix = f"coatcheck {label}"
    counter = CallCounter(store, "load", "save", "delete")

    async def new_session() -> str:
        response = ok(await request(app, "/write", BASE_HEADERS), prefix)
        value = response.cookie(cookie)
        expect(value is not None, f"{prefix}: no {cookie} cookie from /write: {response.headers}")
        assert value is not None
        return value

    reader = cookie_headers(cookie, await new_session())  # holds {"n": 1}
    writer = cookie_headers(cookie, await new_session())

    with counter.counting() as calls:
        response = ok(await request(app, "/read", reader), f"{prefix} read")
    expect(response.json() == {"n": 1}, f"{prefix} read: body {response.body!r}, want n=1")
    expect(not response.header_values(b"set-cookie"), f"{prefix} read: sets a cookie")
    expect(calls == {"load": 1, "save": 0, "delete": 0}, f"{prefix} read: store calls {calls}")
    suite.add(Variant(f"{prefix} read", app, "/read", reader, baselines=(BARE, NOOP)))

    with counter.counting() as calls:
        first = ok(await request(app, "/write", writer), f"{prefix} write").json()
        second = ok(await request(app, "/write", writer), f"{prefix} write")
    expect(
        first == {"n": 2} and second.json() == {"n": 3},
        f"{prefix} write: got {first} then {second.body!r}, want n=2 then n=3",
    )
    expect(not second.header_values(b"set-cookie"), f"{prefix} write: rotates the cookie")
    expect(calls == {"load": 2, "save": 2, "delete": 0}, f"{prefix} write: store calls {calls}")
    suite.add(Variant(f"{prefix} write", app, "/write", writer, baselines=(BARE, NOOP)))

    with counter.counting() as calls:
        response = ok(await request(app, "/untouched", reader), f"{prefix} untouched")
    expect(response.json() == {"ok": True}, f"{prefix} untouched: body {response.body!r}")
    expect(not response.header_values(b"set-cookie"), f"{prefix} untouched: sets a cookie")
    expect(not any(calls.values()), f"{prefix} untouched: store calls {calls}")
    suite.add(Variant(f"{prefix} untouched", app, "/untouched", reader))

    # Reading must still see the value written at set-up, not a changed session.
    response = ok(await request(app, "/read", reader), f"{prefix} read")
    expect(response.json() == {"n": 1}, f"{prefix} read: session changed to {response.body!r}")


def starlette_app() -> ASGIApp:
    inner = FastAPI()

    @inner.get("/untouched")
    async def untouched() -> dict[str, bool]:
        return {"ok": True}

    @inner.get("/read")
    async def read(request: Request) -> dict[str, Any]:
        return {"n": request.session.get("n")}

    @inner.get("/write")
    async def write(request: Request) -> dict[str, Any]:
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    secret = "benchmark-secret-" + "x" * 32
    return StarletteSessionMiddleware(inner, secret_key=secret, https_only=True)


async def add_cookie_peer(
    suite: Suite, prefix: str, app: ASGIApp, cookie: str, *, stateless: bool
) -> None:
    """Read, write and untouched variants of a peer whose read endpoint is ``/read``.

    ``stateless`` peers keep the data in the cookie itself, so the timed write
    requests replay one cookie (same work every time) while verification follows
    the cookie the server sent back.
    """
    await suite.start(app)
    response = ok(await request(app, "/write", BASE_HEADERS), prefix)
    value = response.cookie(cookie)
    expect(value is not None, f"{prefix}: no {cookie} cookie from /write: {response.headers}")
    assert value is not None
    reader = cookie_headers(cookie, value)

    response = ok(await request(app, "/read", reader), f"{prefix} read")
    expect(response.json() == {"n": 1}, f"{prefix} read: body {response.body!r}, want n=1")
    read_sets = bool(response.header_values(b"set-cookie"))
    suite.add(Variant(f"{prefix} read", app, "/read", reader, set_cookie=read_sets))

    if stateless:
        writer = reader
        first = ok(await request(app, "/write", writer), f"{prefix} write")
        following = first.cookie(cookie)
        expect(following is not None, f"{prefix} write: no new cookie")
        assert following is not None
        second = ok(await request(app, "/write", cookie_headers(cookie, following)), prefix)
    else:
        response = ok(await request(app, "/write", BASE_HEADERS), prefix)
        fresh = response.cookie(cookie)
        expect(fresh is not None, f"{prefix}: no {cookie} cookie from /write")
        assert fresh is not None
        writer = cookie_headers(cookie, fresh)
        first = ok(await request(app, "/write", writer), f"{prefix} write")
        second = ok(await request(app, "/write", writer), f"{prefix} write")
    expect(
        first.json() == {"n": 2} and second.json() == {"n": 3},
        f"{prefix} write: got {first.body!r} then {second.body!r}, want n=2 then n=3",
    )
    write_sets = bool(second.header_values(b"set-cookie"))
    suite.add(Variant(f"{prefix} write", app, "/write", writer, set_cookie=write_sets))

    response = ok(await request(app, "/untouched", reader), f"{prefix} untouched")
    expect(response.json() == {"ok": True}, f"{prefix} untouched: body {response.body!r}")
    untouched_sets = bool(response.header_values(b"set-cookie"))
    suite.add(Variant(f"{prefix} untouched", app, "/untouched", reader, set_cookie=untouched_sets))

    response = ok(await request(app, "/read", reader), f"{prefix} read")
    expect(response.json() == {"n": 1}, f"{prefix} read: session changed to {response.body!r}")


def starsessions_app() -> ASGIApp:
    from starsessions import InMemoryStore, load_session
    from starsessions import SessionMiddleware as StarsessionsMiddleware

    inner = FastAPI()

    @inner.get("/untouched")
    async def untouched() -> dict[str, bool]:
        return {"ok": True}

    @inner.get("/read")
    async def read(request: Request) -> dict[str, Any]:
        await load_session(request)
        return {"n": request.session.get("n")}

    @inner.get("/write")
    async def write(request: Request) -> dict[str, Any]:
        await load_session(request)
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    return StarsessionsMiddleware(inner, store=InMemoryStore())


def litestar_apps() -> tuple[ASGIApp, ASGIApp]:
    """A bare Litestar app and one with server-side sessions in Litestar's memory store."""
    from litestar import Litestar, get
    from litestar import Request as LitestarRequest
    from litestar.middleware.session.server_side import ServerSideSessionConfig

    namespace = {"LitestarRequest": LitestarRequest}

    @get("/bare", signature_namespace=namespace)
    async def bare() -> dict[str, bool]:
        return {"ok": True}

    @get("/untouched", signature_namespace=namespace)
    async def untouched() -> dict[str, bool]:
        return {"ok": True}

    @get("/read", signature_namespace=namespace)
    async def read(request: LitestarRequest) -> dict[str, Any]:
        return {"n": request.session.get("n")}

    @get("/write", signature_namespace=namespace)
    async def write(request: LitestarRequest) -> dict[str, Any]:
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    bare_app = Litestar(route_handlers=[bare], logging_config=None)
    config = ServerSideSessionConfig(secure=True)
    session_app = Litestar(
        route_handlers=[untouched, read, write], middleware=[config.middleware], logging_config=None
    )
    return bare_app, session_app


async def add_litestar(suite: Suite) -> None:
    bare_app, session_app = litestar_apps()
    await suite.start(bare_app)
    headers = [*BASE_HEADERS, (b"cookie", b"theme=dark")]
    response = ok(await request(bare_app, "/bare", headers), LITESTAR_BARE)
    expect(response.json() == {"ok": True}, f"{LITESTAR_BARE}: body {response.body!r}")
    suite.add(Variant(LITESTAR_BARE, bare_app, "/bare", headers))
    before = len(suite.variants)
    await add_cookie_peer(suite, "litestar sessions", session_app, "session", stateless=False)
    for variant in suite.variants[before:]:
        variant.baselines = (BARE, LITESTAR_BARE)


async def build(suite: Suite, workdir: Path) -> None:
    await add_fastapi_bare(suite)
    await add_coatcheck(suite, "memory", MemoryStore())
    await add_coatcheck(suite, "sqlite", SQLiteStore(workdir / "sessions.db"))
    await add_cookie_peer(suite, "starlette cookie", starlette_app(), "session", stateless=True)
    peers: tuple[tuple[str, Callable[[Suite], Awaitable[None]]], ...] = (
        ("starsessions", _add_starsessions),
        ("litestar", add_litestar),
    )
    for name, add in peers:
        before = len(suite.variants)
        try:
            await add(suite)
        except Exception as exc:  # a peer that cannot run is reported, not hidden
            del suite.variants[before:]
            suite.notes.append(f"skipped {name}: {type(exc).__name__}: {exc}")
            print(f"NOTE: skipping {name}: {type(exc).__name__}: {exc}", file=sys.stderr)


async def _add_starsessions(suite: Suite) -> None:
    await add_cookie_peer(suite, "starsessions", starsessions_app(), "session", stateless=False)


# -- timing -----------------------------------------------------------------------------


CLOCKS: dict[str, Callable[[], int]] = {
    "wall": time.perf_counter_ns,
    # CPU time of the whole process (SQLite's worker threads included): it ignores
    # time spent descheduled, so it is steadier on a shared machine, but it does not
    # count waiting, e.g. for a thread hand-off or the disk.
    "cpu": time.process_time_ns,
}


async def time_batch(variant: Variant, requests: int, clock: Callable[[], int]) -> int:
    """Nanoseconds for ``requests`` sequential requests, garbage collector off."""
    app = variant.app
    template = make_scope(variant.path, variant.headers)
    sink = StatusSink()
    gc.collect()
    gc.disable()
    try:
        start = clock()
        for _ in range(requests):
            await app({**template, "state": {}}, receive, sink)
        elapsed = clock() - start
    finally:
        gc.enable()
    if sink.bad:
        raise BenchmarkError(f"{variant.name}: {sink.bad} of {requests} responses were not 200")
    return elapsed


async def measure(suite: Suite, args: argparse.Namespace) -> None:
    """Time every variant ``args.rounds`` times; one sample per variant per round.

    A round is cut into ``args.slices`` passes, each over all variants in a fresh
    random order, so a variant and its baseline are timed close together and a
    burst of load elsewhere on the machine lands on both.
    """
    clock = CLOCKS[args.clock]
    shuffler = random.Random(args.seed)
    order = list(suite.variants)
    for variant in order:
        await time_batch(variant, args.warmup, clock)
    # Everything alive now (the apps, the imported modules) moves to a generation the
    # collector never scans, so the collection before each batch takes microseconds
    # instead of tens of milliseconds.
    gc.collect()
    gc.freeze()
    share, rest = divmod(args.requests, args.slices)
    sizes = [share + (1 if index < rest else 0) for index in range(args.slices)]
    started = time.monotonic()
    for number in range(1, args.rounds + 1):
        elapsed = dict.fromkeys((v.name for v in order), 0)
        for size in sizes:
            shuffler.shuffle(order)
            for variant in order:
                elapsed[variant.name] += await time_batch(variant, size, clock)
        per_request = {name: total / args.requests for name, total in elapsed.items()}
        for variant in suite.variants:
            variant.samples.append(per_request[variant.name])
            for baseline in variant.baselines:
                ratio = per_request[variant.name] / per_request[baseline]
                variant.ratios.setdefault(baseline, []).append(ratio)
        if number == 1 or number % 5 == 0 or number == args.rounds:
            seconds = time.monotonic() - started
            print(f"  round {number}/{args.rounds} ({seconds:.0f}s)", file=sys.stderr, flush=True)


# -- reporting --------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "sqlite": sqlite3.sqlite_version,
        "coatcheck": coatcheck.__version__,
    }
    packages = (
        "fastapi",
        "starlette",
        "pydantic",
        "starsessions",
        "litestar",
        "msgspec",
        "itsdangerous",
        "orjson",
    )
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["coatcheck serializer"] = "orjson" if HAVE_ORJSON else "json (stdlib)"
    return found


def report(suite: Suite, args: argparse.Namespace, load: tuple[float, float]) -> dict[str, Any]:
    info = versions()
    info["load average"] = f"{load[0]:.2f} before, {load[1]:.2f} after (1 min)"
    info["method"] = (
        f"{args.rounds} rounds x {args.requests} requests per variant in {args.slices}"
        f" shuffled slices, {args.clock} clock, GC off while timing; medians over rounds"
    )
    width = max(len(key) for key in info)
    print()
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    print()

    name_width = max(len(v.name) for v in suite.variants)
    has_litestar = suite.has(LITESTAR_BARE)
    header = f"{'variant':<{name_width}}  {'µs/req':>7}  {'× fastapi bare':>14}  {'(IQR)':>13}"
    if has_litestar:
        header += f"  {'× litestar bare':>15}"
    header += "  Set-Cookie"
    print(header)
    print("-" * len(header))
    rows = []
    for variant in suite.variants:
        low, high = variant.ratio_iqr(BARE)
        line = f"{variant.name:<{name_width}}  {variant.median_us:>7.2f}  "
        line += f"{variant.ratio(BARE):>13.3f}×  {f'{low:.3f}-{high:.3f}':>13}"
        if has_litestar:
            cell = (
                f"{variant.ratio(LITESTAR_BARE):.3f}×" if LITESTAR_BARE in variant.baselines else ""
            )
            line += f"  {cell:>15}"
        line += f"  {'yes' if variant.set_cookie else 'no'}"
        print(line)
        rows.append(
            {
                "variant": variant.name,
                "path": variant.path,
                "median_us": round(variant.median_us, 3),
                "ratios": {b: round(variant.ratio(b), 4) for b in variant.baselines},
                "ratio_iqr": {
                    b: [round(r, 4) for r in variant.ratio_iqr(b)] for b in variant.baselines
                },
                "sets_cookie": variant.set_cookie,
                "ns_per_request_by_round": [round(s, 1) for s in variant.samples],
            }
        )

    print()
    print("coatcheck targets (median ratio to fastapi bare, same rounds):")
    targets = []
    for name, limit in TARGETS:
        ratio = suite[name].ratio(BARE)
        passed = ratio <= limit
        targets.append({"variant": name, "limit": limit, "ratio": round(ratio, 4), "pass": passed})
        verdict = "PASS" if passed else "FAIL"
        print(f"  {name:<{name_width}}  {ratio:6.3f}×  target <= {limit:.2f}×  {verdict}")
    print()
    print(f"for context, coatcheck against {NOOP!r} (same dependency graph, no session):")
    for variant in suite.variants:
        if NOOP in variant.baselines:
            pairs = zip(variant.samples, suite[NOOP].samples, strict=True)
            extra = statistics.median(mine - theirs for mine, theirs in pairs) / 1000
            print(f"  {variant.name:<{name_width}}  {variant.ratio(NOOP):6.3f}×  ({extra:+.2f} µs)")
    for note in suite.notes:
        print(f"NOTE: {note}")
    return {
        "environment": info,
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "slices": args.slices,
        "clock": args.clock,
        "seed": args.seed,
        "results": rows,
        "targets": targets,
        "notes": suite.notes,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    suite = Suite()
    with tempfile.TemporaryDirectory(prefix="coatcheck-bench-") as workdir:
        await build(suite, Path(workdir))
        print(
            f"verified {len(suite.variants)} variants; timing {args.rounds} rounds"
            f" x {args.requests} requests each",
            file=sys.stderr,
        )
        before = os.getloadavg()[0]
        try:
            await measure(suite, args)
        finally:
            for lifespan in suite.lifespans:
                await lifespan.shutdown()  # closes the SQLite store's threads
    return report(suite, args, (before, os.getloadavg()[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (30)")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per variant per round (2000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=500, help="untimed requests per variant first (500)"
    )
    parser.add_argument("--slices", type=int, default=4, help="interleaved passes per round (4)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: perf_counter_ns (default); cpu: process CPU time, steadier when shared",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for the variant order (1)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slices < 1 or args.requests < args.slices or args.warmup < 0:
        parser.error("need --rounds >= 1, --slices >= 1, --requests >= --slices, --warmup >= 0")
    try:
        results = asyncio.run(run(args))
    except BenchmarkError as exc:
        print(f"ABORTED: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
