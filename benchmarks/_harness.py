"""What the in-process benchmarks share: a minimal ASGI client, variants, timing.

``overhead.py`` and ``redis.py`` both call real ASGI apps directly
(``await app(scope, receive, send)``) on one event loop, check every variant before
timing it, and time all variants in interleaved rounds; this module holds that
machinery so the two measure in exactly the same way.
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
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Annotated, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

from coatcheck import SessionConfig, SessionMiddleware, Store
from coatcheck.fastapi import RequiredUser, SessionDep, get_session, session_model

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

BARE = "fastapi bare"
LITESTAR_BARE = "litestar bare"

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


async def request(app: ASGIApp, path: str, headers: Headers, method: str = "GET") -> Response:
    """One full request that records everything, for set-up and verification."""
    response = Response()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    await app({**make_scope(path, headers), "method": method, "state": {}}, receive, send)
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


# -- variants ---------------------------------------------------------------------------


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

    def as_json(self) -> dict[str, Any]:
        """The variant's results for ``--json``."""
        return {
            "variant": self.name,
            "path": self.path,
            "median_us": round(self.median_us, 3),
            "ratios": {b: round(self.ratio(b), 4) for b in self.baselines},
            "ratio_iqr": {b: [round(r, 4) for r in self.ratio_iqr(b)] for b in self.baselines},
            "sets_cookie": self.set_cookie,
            "ns_per_request_by_round": [round(s, 1) for s in self.samples],
        }


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

    async def shutdown(self) -> None:
        """End every app's lifespan; coatcheck closes its store there."""
        for lifespan in self.lifespans:
            await lifespan.shutdown()
        self.lifespans.clear()


def cookie_headers(name: str, value: str) -> Headers:
    return [*BASE_HEADERS, (b"cookie", f"{name}={value}".encode("latin-1"))]


# The routes FastAPI adds to every app (/openapi.json, /docs ...), ahead of the app's own.
_FASTAPI_ROUTES = len(FastAPI().router.routes)


def lead_with(app: FastAPI, path: str) -> FastAPI:
    """Move the route for ``path`` ahead of the app's other routes.

    FastAPI tries routes in order and pays for every pattern that fails before the one
    that matches, about a microsecond each in these runs. Every timed route therefore
    comes first among its app's own, where ``/bare`` is in the bare app: each app is
    built once per timed route, so no variant pays for its neighbours.
    """
    routes = app.router.routes
    chosen = next(route for route in routes if getattr(route, "path", None) == path)
    routes.remove(chosen)
    routes.insert(_FASTAPI_ROUTES, chosen)
    return app


AppFactory = Callable[[str], ASGIApp]
"""Builds a fresh app whose route for the given path is matched first."""


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


# -- the session variants both benchmarks build -----------------------------------------


class Tally(BaseModel):
    """The typed value the *typed read* variant reads."""

    n: int = 0


TallyDep = Annotated[Tally, session_model("tally", Tally)]


def coatcheck_app(
    store: Store,
    first: str,
    *,
    read_in_body: bool = False,
    config: SessionConfig | None = None,
) -> tuple[ASGIApp, str]:
    """The session app, ``first`` matched first; ``read_in_body`` makes ``/read`` call
    ``get_session()`` itself.

    That read resolves no dependency: it shows what coatcheck costs when FastAPI has
    nothing to resolve for it, as a hot path may choose.
    """
    inner = FastAPI()

    @inner.get("/untouched")
    async def untouched() -> dict[str, bool]:
        return {"ok": True}

    if read_in_body:

        @inner.get("/read")
        async def read_without_dependency() -> dict[str, Any]:
            session = await get_session()
            return {"n": session.get("n")}

    else:

        @inner.get("/read")
        async def read(session: SessionDep) -> dict[str, Any]:
            return {"n": session.get("n")}

    @inner.get("/write")
    async def write(session: SessionDep) -> dict[str, Any]:
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    @inner.get("/tally")
    async def typed_read(tally: TallyDep) -> dict[str, Any]:
        return {"n": tally.n}

    @inner.post("/tally")
    async def typed_write(tally: TallyDep) -> dict[str, Any]:
        tally.n += 1
        return {"n": tally.n}

    @inner.post("/login")
    async def login(session: SessionDep) -> dict[str, bool]:
        session.login("alice")
        return {"ok": True}

    @inner.get("/me")
    async def me(user: RequiredUser) -> dict[str, str]:
        return {"user": user}

    lead_with(inner, first)
    config = config or SessionConfig()  # production defaults: the cookie is ``__Host-session``
    return SessionMiddleware(inner, store=store, config=config), config.cookie.name


async def add_coatcheck(
    suite: Suite,
    label: str,
    store: Store,
    *,
    baselines: tuple[str, ...] = (BARE,),
    config: SessionConfig | None = None,
) -> None:
    """``coatcheck <label> read|read in body|write|untouched``, checked down to the store calls.

    Each variant is checked on the very app that is timed, one app per variant, all on
    ``store`` (and ``config``, if given). The read and write variants are compared with
    ``baselines``; the untouched one, which should cost what a bare endpoint does, with
    ``fastapi bare`` only.
    """
    app, cookie = coatcheck_app(store, "/untouched", config=config)
    await suite.start(app)
    read_app, _ = coatcheck_app(store, "/read", config=config)
    write_app, _ = coatcheck_app(store, "/write", config=config)
    in_body, _ = coatcheck_app(store, "/read", read_in_body=True, config=config)
    prefix = f"coatcheck {label}"
    counter = CallCounter(store, "load", "save", "delete")

    async def new_session() -> str:
        response = ok(await request(write_app, "/write", BASE_HEADERS), prefix)
        value = response.cookie(cookie)
        expect(value is not None, f"{prefix}: no {cookie} cookie from /write: {response.headers}")
        assert value is not None
        return value

    reader = cookie_headers(cookie, await new_session())  # holds {"n": 1}
    writer = cookie_headers(cookie, await new_session())

    with counter.counting() as calls:
        response = ok(await request(read_app, "/read", reader), f"{prefix} read")
    expect(response.json() == {"n": 1}, f"{prefix} read: body {response.body!r}, want n=1")
    expect(not response.header_values(b"set-cookie"), f"{prefix} read: sets a cookie")
    expect(calls == {"load": 1, "save": 0, "delete": 0}, f"{prefix} read: store calls {calls}")
    suite.add(Variant(f"{prefix} read", read_app, "/read", reader, baselines=baselines))

    # The same store and session, read by an app whose /read resolves no dependency.
    with counter.counting() as calls:
        response = ok(await request(in_body, "/read", reader), f"{prefix} read in body")
    expect(response.json() == {"n": 1}, f"{prefix} read in body: body {response.body!r}")
    expect(not response.header_values(b"set-cookie"), f"{prefix} read in body: sets a cookie")
    expect(calls == {"load": 1, "save": 0, "delete": 0}, f"{prefix} read in body: calls {calls}")
    suite.add(Variant(f"{prefix} read in body", in_body, "/read", reader))

    with counter.counting() as calls:
        first = ok(await request(write_app, "/write", writer), f"{prefix} write").json()
        second = ok(await request(write_app, "/write", writer), f"{prefix} write")
    expect(
        first == {"n": 2} and second.json() == {"n": 3},
        f"{prefix} write: got {first} then {second.body!r}, want n=2 then n=3",
    )
    expect(not second.header_values(b"set-cookie"), f"{prefix} write: rotates the cookie")
    expect(calls == {"load": 2, "save": 2, "delete": 0}, f"{prefix} write: store calls {calls}")
    suite.add(Variant(f"{prefix} write", write_app, "/write", writer, baselines=baselines))

    # A typed value (a Pydantic model) read through its dependency: validated on the
    # way in, and its dump compared on the way out, where it finds nothing to write.
    typed_app, _ = coatcheck_app(store, "/tally", config=config)
    same_origin = [*BASE_HEADERS, (b"sec-fetch-site", b"same-origin")]
    seeded = ok(await request(typed_app, "/tally", same_origin, method="POST"), f"{prefix} typed")
    tallied = seeded.cookie(cookie)
    expect(tallied is not None, f"{prefix} typed: no {cookie} cookie: {seeded.headers}")
    assert tallied is not None
    typed_reader = cookie_headers(cookie, tallied)  # holds {"tally": {"n": 1}}
    with counter.counting() as calls:
        response = ok(await request(typed_app, "/tally", typed_reader), f"{prefix} typed read")
    expect(response.json() == {"n": 1}, f"{prefix} typed read: body {response.body!r}")
    expect(not response.header_values(b"set-cookie"), f"{prefix} typed read: sets a cookie")
    expect(calls == {"load": 1, "save": 0, "delete": 0}, f"{prefix} typed read: calls {calls}")
    suite.add(
        Variant(f"{prefix} typed read", typed_app, "/tally", typed_reader, baselines=baselines)
    )

    # A logged-in user, checked by the dependency that guards most authenticated routes.
    me_app, _ = coatcheck_app(store, "/me", config=config)
    login = ok(await request(me_app, "/login", same_origin, method="POST"), f"{prefix} login")
    user = login.cookie(cookie)
    expect(user is not None, f"{prefix} login: no {cookie} cookie: {login.headers}")
    assert user is not None
    signed_in = cookie_headers(cookie, user)
    with counter.counting() as calls:
        response = ok(await request(me_app, "/me", signed_in), f"{prefix} user check")
    expect(response.json() == {"user": "alice"}, f"{prefix} user check: {response.body!r}")
    expect(calls == {"load": 1, "save": 0, "delete": 0}, f"{prefix} user check: calls {calls}")
    suite.add(Variant(f"{prefix} user check", me_app, "/me", signed_in, baselines=baselines))

    with counter.counting() as calls:
        response = ok(await request(app, "/untouched", reader), f"{prefix} untouched")
    expect(response.json() == {"ok": True}, f"{prefix} untouched: body {response.body!r}")
    expect(not response.header_values(b"set-cookie"), f"{prefix} untouched: sets a cookie")
    expect(not any(calls.values()), f"{prefix} untouched: store calls {calls}")
    suite.add(Variant(f"{prefix} untouched", app, "/untouched", reader))

    # Reading must still see the value written at set-up, not a changed session.
    response = ok(await request(read_app, "/read", reader), f"{prefix} read")
    expect(response.json() == {"n": 1}, f"{prefix} read: session changed to {response.body!r}")


async def add_cookie_peer(
    suite: Suite, prefix: str, make_app: AppFactory, cookie: str, *, stateless: bool
) -> None:
    """Read, write and untouched variants of a peer whose read endpoint is ``/read``.

    ``make_app(path)`` builds the peer's app with that path matched first; each
    variant is checked on the app that is timed. ``stateless`` peers keep the data in
    the cookie itself, so the timed write requests replay one cookie (same work every
    time) while verification follows the cookie the server sent back.
    """
    apps = {path: make_app(path) for path in ("/read", "/write", "/untouched")}
    started: set[int] = set()
    for app in apps.values():
        if id(app) not in started:  # a factory may hand back one app for every path
            started.add(id(app))
            await suite.start(app)
    read_app, write_app, untouched_app = apps["/read"], apps["/write"], apps["/untouched"]
    response = ok(await request(write_app, "/write", BASE_HEADERS), prefix)
    value = response.cookie(cookie)
    expect(value is not None, f"{prefix}: no {cookie} cookie from /write: {response.headers}")
    assert value is not None
    reader = cookie_headers(cookie, value)

    response = ok(await request(read_app, "/read", reader), f"{prefix} read")
    expect(response.json() == {"n": 1}, f"{prefix} read: body {response.body!r}, want n=1")
    read_sets = bool(response.header_values(b"set-cookie"))
    suite.add(Variant(f"{prefix} read", read_app, "/read", reader, set_cookie=read_sets))

    if stateless:
        writer = reader
        first = ok(await request(write_app, "/write", writer), f"{prefix} write")
        following = first.cookie(cookie)
        expect(following is not None, f"{prefix} write: no new cookie")
        assert following is not None
        second = ok(await request(write_app, "/write", cookie_headers(cookie, following)), prefix)
    else:
        response = ok(await request(write_app, "/write", BASE_HEADERS), prefix)
        fresh = response.cookie(cookie)
        expect(fresh is not None, f"{prefix}: no {cookie} cookie from /write")
        assert fresh is not None
        writer = cookie_headers(cookie, fresh)
        first = ok(await request(write_app, "/write", writer), f"{prefix} write")
        second = ok(await request(write_app, "/write", writer), f"{prefix} write")
    expect(
        first.json() == {"n": 2} and second.json() == {"n": 3},
        f"{prefix} write: got {first.body!r} then {second.body!r}, want n=2 then n=3",
    )
    write_sets = bool(second.header_values(b"set-cookie"))
    suite.add(Variant(f"{prefix} write", write_app, "/write", writer, set_cookie=write_sets))

    response = ok(await request(untouched_app, "/untouched", reader), f"{prefix} untouched")
    expect(response.json() == {"ok": True}, f"{prefix} untouched: body {response.body!r}")
    untouched_sets = bool(response.header_values(b"set-cookie"))
    suite.add(
        Variant(
            f"{prefix} untouched", untouched_app, "/untouched", reader, set_cookie=untouched_sets
        )
    )

    response = ok(await request(read_app, "/read", reader), f"{prefix} read")
    expect(response.json() == {"n": 1}, f"{prefix} read: session changed to {response.body!r}")


async def add_optional(
    suite: Suite, name: str, add: Callable[[Suite], Awaitable[None]]
) -> list[Variant]:
    """Build a peer's variants; a peer that cannot run is reported and skipped, not hidden."""
    before = len(suite.variants)
    try:
        await add(suite)
    except Exception as exc:
        del suite.variants[before:]
        suite.notes.append(f"skipped {name}: {type(exc).__name__}: {exc}")
        print(f"NOTE: skipping {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []
    return suite.variants[before:]


# -- timing -----------------------------------------------------------------------------


CLOCKS: dict[str, Callable[[], int]] = {
    "wall": time.perf_counter_ns,
    # CPU time of the whole process (SQLite's worker threads included): it ignores
    # time spent descheduled, so it is steadier on a shared machine, but it does not
    # count waiting, e.g. for a thread hand-off, the disk or another server.
    "cpu": time.process_time_ns,
}


def starsessions_app(store: Any, first: str) -> ASGIApp:
    """starsessions' middleware over the same three endpoints, with any of its stores."""
    from starsessions import SessionMiddleware as StarsessionsMiddleware
    from starsessions import load_session

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

    lead_with(inner, first)
    return StarsessionsMiddleware(inner, store=store)


def litestar_apps(store: Any = None) -> tuple[ASGIApp, ASGIApp]:
    """A bare Litestar app, and one with Litestar's server-side sessions over the same
    three endpoints, kept in ``store`` (one of Litestar's stores; its memory store if None).
    """
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
    async def read(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        return {"n": request.session.get("n")}

    @get("/write", signature_namespace=namespace)
    async def write(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    bare_app = Litestar(route_handlers=[bare], logging_config=None)
    config = ServerSideSessionConfig(secure=True)
    session_app = Litestar(
        route_handlers=[untouched, read, write],
        middleware=[config.middleware],
        stores=None if store is None else {config.store: store},
        logging_config=None,
    )
    return bare_app, session_app  # type: ignore[return-value]


def add_timing_arguments(
    parser: argparse.ArgumentParser, *, rounds: int, requests: int, warmup: int
) -> None:
    """The flags every benchmark takes, with its own defaults."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"interleaved rounds ({rounds})")
    parser.add_argument(
        "--requests",
        type=int,
        default=requests,
        help=f"requests per variant per round ({requests})",
    )
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed requests per variant first ({warmup})"
    )
    parser.add_argument("--slices", type=int, default=4, help="interleaved passes per round (4)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: perf_counter_ns (default); cpu: process CPU time, steadier when shared",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for the variant order (1)")


def check_timing_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rounds < 1 or args.slices < 1 or args.requests < args.slices or args.warmup < 0:
        parser.error("need --rounds >= 1, --slices >= 1, --requests >= --slices, --warmup >= 0")


async def run_batch(variant: Variant, requests: int) -> None:
    """``requests`` sequential requests exactly as timed, untimed (for counting)."""
    template = make_scope(variant.path, variant.headers)
    sink = StatusSink()
    for _ in range(requests):
        await variant.app({**template, "state": {}}, receive, sink)
    if sink.bad:
        raise BenchmarkError(f"{variant.name}: {sink.bad} of {requests} responses were not 200")


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


def machine() -> dict[str, str]:
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
    }


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def print_info(info: dict[str, str]) -> None:
    width = max(len(key) for key in info)
    print()
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    print()


def run_record(
    args: argparse.Namespace,
    info: dict[str, str],
    rows: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    notes: list[str],
) -> dict[str, Any]:
    """What ``--json`` writes: the environment, how the run was timed, and its results."""
    return {
        "environment": info,
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "slices": args.slices,
        "clock": args.clock,
        "seed": args.seed,
        "results": rows,
        "targets": targets,
        "notes": notes,
    }


def timing_method(args: argparse.Namespace) -> str:
    """How a run was timed, in words, for the printed environment."""
    return (
        f"{args.rounds} rounds x {args.requests} requests per variant in {args.slices}"
        f" shuffled slices, {args.clock} clock, GC off while timing; medians over rounds"
    )


def write_json(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Write ``results`` to the ``--json`` path, when one was given."""
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


def ratio_row(variant: Variant, width: int, columns: list[tuple[str, str]]) -> str:
    """A result line: the variant, its µs per request, then its ratio to each baseline
    of ``columns`` (name, title) that it is compared with, right-aligned under the title."""
    line = f"{variant.name:<{width}}  {variant.median_us:>7.1f}"
    for baseline, title in columns:
        cell = f"{variant.ratio(baseline):.3f}×" if baseline in variant.baselines else ""
        line += f"  {cell:>{max(len(title), 9)}}"
    return line
