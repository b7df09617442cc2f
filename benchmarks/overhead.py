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
import os
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from _harness import (
    BARE,
    BASE_HEADERS,
    LITESTAR_BARE,
    ASGIApp,
    BenchmarkError,
    Message,
    Receive,
    Scope,
    Send,
    Suite,
    Variant,
    add_coatcheck,
    add_cookie_peer,
    add_optional,
    add_timing_arguments,
    check_timing_arguments,
    coatcheck_app,
    expect,
    lead_with,
    litestar_apps,
    machine,
    measure,
    ok,
    package_versions,
    print_info,
    request,
    run_record,
    starsessions_app,
    timing_method,
    write_json,
)
from fastapi import Depends, FastAPI, Request
from starlette.middleware.sessions import SessionMiddleware as StarletteSessionMiddleware

import coatcheck
from coatcheck import MemoryStore, SessionConfig, SQLiteStore
from coatcheck.serializers import HAVE_ORJSON
from coatcheck.stores.cookie import CookieStore

NOOP = "fastapi no-op dependency"
PASS_THROUGH = "asgi pass-through"  # noqa: S105 (a variant name)
SEND_WRAPPER = "asgi send wrapper"

# Targets for coatcheck: (variant, highest acceptable median ratio to bare FastAPI).
TARGETS = (
    ("coatcheck memory read", 1.10),
    ("coatcheck memory read in body", 1.10),
    ("coatcheck memory untouched", 1.02),
    ("coatcheck sqlite read", 2.0),
)


async def noop_dependency() -> None:
    """Shaped like ``SessionDep``'s dependency (async, no parameters), with no session."""


NoopDep = Annotated[None, Depends(noop_dependency)]


class PassThrough:
    """A pure ASGI middleware that only calls the app: what a layer costs at all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class SendWrapper(PassThrough):
    """A middleware that wraps ``send`` and does nothing else.

    Any middleware that may add a ``Set-Cookie`` to a response has to see its start,
    so this is the least a session middleware costs on a route that ignores it.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, receive, send_wrapper)


def fastapi_app(first: str) -> FastAPI:
    """The bare baseline, plus a reference endpoint that only resolves a no-op dependency."""
    app = FastAPI()

    @app.get("/bare")
    async def bare() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/noop-dep")
    async def noop(_: NoopDep) -> dict[str, Any]:
        return {"n": 1}

    return lead_with(app, first)


async def add_fastapi_bare(suite: Suite) -> None:
    app, noop_app = fastapi_app("/bare"), fastapi_app("/noop-dep")
    await suite.start(app)
    headers = [*BASE_HEADERS, (b"cookie", b"theme=dark")]
    response = ok(await request(app, "/bare", headers), BARE)
    expect(response.json() == {"ok": True}, f"{BARE}: body {response.body!r}")
    suite.add(Variant(BARE, app, "/bare", headers))
    response = ok(await request(noop_app, "/noop-dep", headers), NOOP)
    expect(response.json() == {"n": 1}, f"{NOOP}: body {response.body!r}")
    suite.add(Variant(NOOP, noop_app, "/noop-dep", headers))
    for name, layer in ((PASS_THROUGH, PassThrough), (SEND_WRAPPER, SendWrapper)):
        wrapped = layer(fastapi_app("/bare"))
        response = ok(await request(wrapped, "/bare", headers), name)
        expect(response.json() == {"ok": True}, f"{name}: body {response.body!r}")
        suite.add(Variant(name, wrapped, "/bare", headers))


def starlette_app(first: str) -> ASGIApp:
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
    return StarletteSessionMiddleware(lead_with(inner, first), secret_key=secret, https_only=True)


def coatcheck_cookie_app(first: str) -> ASGIApp:
    """coatcheck with the session sealed in its cookie: the peer of Starlette's."""
    config = SessionConfig(secret_keys=["benchmark-secret-" + "x" * 32])
    app, _ = coatcheck_app(CookieStore(), first, config=config)
    return app


def _starsessions_memory() -> Any:
    from starsessions import InMemoryStore

    return InMemoryStore()


async def add_litestar(suite: Suite) -> None:
    bare_app, session_app = litestar_apps()
    await suite.start(bare_app)
    headers = [*BASE_HEADERS, (b"cookie", b"theme=dark")]
    response = ok(await request(bare_app, "/bare", headers), LITESTAR_BARE)
    expect(response.json() == {"ok": True}, f"{LITESTAR_BARE}: body {response.body!r}")
    suite.add(Variant(LITESTAR_BARE, bare_app, "/bare", headers))
    before = len(suite.variants)
    # Litestar matches routes in a tree, not in order: one app serves every variant.
    await add_cookie_peer(
        suite, "litestar sessions", lambda _: session_app, "session", stateless=False
    )
    for variant in suite.variants[before:]:
        variant.baselines = (BARE, LITESTAR_BARE)


async def build(suite: Suite, workdir: Path) -> None:
    await add_fastapi_bare(suite)
    await add_coatcheck(suite, "memory", MemoryStore(), baselines=(BARE, NOOP))
    await add_coatcheck(
        suite, "sqlite", SQLiteStore(workdir / "sessions.db"), baselines=(BARE, NOOP)
    )
    # The same with each session's data sealed before it reaches the file.
    sealed = SessionConfig(secret_keys=["benchmark-secret-" + "x" * 32], encrypt_data=True)
    await add_coatcheck(
        suite,
        "sqlite sealed",
        SQLiteStore(workdir / "sealed.db"),
        baselines=(BARE, NOOP),
        config=sealed,
    )
    await add_cookie_peer(suite, "starlette cookie", starlette_app, "session", stateless=True)
    await add_cookie_peer(
        suite, "coatcheck cookie", coatcheck_cookie_app, "__Host-session", stateless=True
    )
    peers: tuple[tuple[str, Callable[[Suite], Awaitable[None]]], ...] = (
        ("starsessions", _add_starsessions),
        ("litestar", add_litestar),
    )
    for name, add in peers:
        await add_optional(suite, name, add)


async def _add_starsessions(suite: Suite) -> None:
    store = _starsessions_memory()
    await add_cookie_peer(
        suite, "starsessions", partial(starsessions_app, store), "session", stateless=False
    )


# -- reporting --------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {
        **machine(),
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
        "cryptography",
        "orjson",
    )
    found.update(package_versions(packages))
    found["coatcheck serializer"] = "orjson" if HAVE_ORJSON else "json (stdlib)"
    return found


def report(suite: Suite, args: argparse.Namespace, load: tuple[float, float]) -> dict[str, Any]:
    info = versions()
    info["load average"] = f"{load[0]:.2f} before, {load[1]:.2f} after (1 min)"
    info["method"] = timing_method(args)
    print_info(info)

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
        rows.append(variant.as_json())

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
    print(f"for context, coatcheck against {NOOP!r} (what FastAPI charges for SessionDep):")
    for variant in suite.variants:
        if NOOP in variant.baselines:
            pairs = zip(variant.samples, suite[NOOP].samples, strict=True)
            extra = statistics.median(mine - theirs for mine, theirs in pairs) / 1000
            print(f"  {variant.name:<{name_width}}  {variant.ratio(NOOP):6.3f}×  ({extra:+.2f} µs)")
    print()
    print(f"untouched routes against {SEND_WRAPPER!r} (the least a cookie-setting layer costs):")
    floor = suite[SEND_WRAPPER].samples
    for variant in suite.variants:
        if variant.name.endswith(" untouched"):
            pairs = list(zip(variant.samples, floor, strict=True))
            extra = statistics.median(mine - theirs for mine, theirs in pairs) / 1000
            ratio = statistics.median(mine / theirs for mine, theirs in pairs)
            print(f"  {variant.name:<{name_width}}  {ratio:6.3f}×  ({extra:+.2f} µs)")
    for note in suite.notes:
        print(f"NOTE: {note}")
    return run_record(args, info, rows, targets, suite.notes)


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
            await suite.shutdown()  # closes the SQLite store's threads
    return report(suite, args, (before, os.getloadavg()[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_timing_arguments(parser, rounds=30, requests=2000, warmup=500)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--base",
        metavar="REV",
        help="instead, compare this checkout with commit REV side by side (see versions.py)",
    )
    args = parser.parse_args(argv)
    check_timing_arguments(parser, args)
    if args.base is not None:
        import versions

        asyncio.run(versions.main(args))
        return 0
    try:
        results = asyncio.run(run(args))
    except BenchmarkError as exc:
        print(f"ABORTED: {exc}", file=sys.stderr)
        return 2
    write_json(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
