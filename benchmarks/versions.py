"""Compare the session hot path of this checkout with an earlier commit, in one run.

    python benchmarks/versions.py --base REV [--rounds 20 --requests 2000]

The package as it was at ``REV`` is extracted from git into a temporary folder and
imported under another name (``coatcheck_base``: the package uses only relative
imports, so it loads side by side with the current one). Both versions then serve
the same FastAPI endpoints from the same process, in interleaved rounds, and each
variant is reported as its median cost and as the median per-round ratio of the
current version to the base. This is how a change to the write path (say, versioned
compare-and-set saves) proves it costs the conflict-free path no more than it should.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import io
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi import Depends, FastAPI

ROOT = Path(__file__).resolve().parent.parent
Message = MutableMapping[str, Any]
KINDS = ("memory", "sqlite", "sealed")  # sealed: SQLite with encrypt_data=True
SECRET = "versions-benchmark-" + "k" * 32
App = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def extract(rev: str, into: Path) -> ModuleType:
    """Import ``src/coatcheck`` as it was at ``rev`` under the name ``coatcheck_base``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src/coatcheck"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    shutil.move(into / "src" / "coatcheck", into / "coatcheck_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("coatcheck_base")


def build(package: ModuleType, store: Any, *, sealed: bool = False) -> FastAPI:
    # A Depends() default, not an Annotated alias: this module's annotations are
    # strings that FastAPI could not resolve to a local name.
    get_session = importlib.import_module(f"{package.__name__}.fastapi").get_session
    app = FastAPI()

    @app.get("/read")
    async def read(session: Any = Depends(get_session)) -> dict[str, Any]:  # noqa: B008
        return {"n": session.get("n")}

    @app.get("/write")
    async def write(session: Any = Depends(get_session)) -> dict[str, Any]:  # noqa: B008
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    config = package.SessionConfig(
        cookie=package.CookieConfig(secure=False),
        secret_keys=[SECRET] if sealed else (),
        encrypt_data=sealed,
    )
    app.add_middleware(package.SessionMiddleware, store=store, config=config)
    return app


class Client:
    """Calls one ASGI app in-process, carrying one session cookie."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.cookie = b""
        self.status = 0
        self.body = b""

    async def call(self, path: str) -> None:
        headers = [(b"host", b"bench.local")]
        if self.cookie:
            headers.append((b"cookie", self.cookie))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("bench.local", 80),
        }  # fmt: skip

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                for name, value in message.get("headers", []):
                    if name == b"set-cookie":
                        self.cookie = value.split(b";", 1)[0]
            elif message["type"] == "http.response.body":
                self.body = message.get("body", b"")

        await self.app(scope, receive, send)


async def main(args: argparse.Namespace) -> None:
    import coatcheck

    with tempfile.TemporaryDirectory(prefix="coatcheck-versions-") as folder:
        base = extract(args.base, Path(folder))
        variants: dict[str, tuple[Client, str]] = {}
        for label, package in (("base", base), ("current", coatcheck)):
            for kind in KINDS:
                store = (
                    package.MemoryStore()
                    if kind == "memory"
                    else package.SQLiteStore(Path(folder) / f"{label}-{kind}.db")
                )
                client = Client(build(package, store, sealed=kind == "sealed"))
                await client.call("/write")  # the session every timed request reuses
                if client.status != 200 or not client.cookie:
                    raise SystemExit(f"{label} {kind}: no session was created ({client.body!r})")
                for path in ("/read", "/write"):
                    variants[f"{kind} {path[1:]} {label}"] = (client, path)
        for name, (client, path) in variants.items():
            for _ in range(args.warmup):
                await client.call(path)
            if client.status != 200:
                raise SystemExit(f"{name}: status {client.status} ({client.body!r})")

        timings: dict[str, list[float]] = {name: [] for name in variants}
        order = list(variants)
        rng = random.Random(args.seed)
        for _ in range(args.rounds):
            rng.shuffle(order)
            for name in order:
                client, path = variants[name]
                gc.collect()
                gc.disable()
                started = time.perf_counter_ns()
                for _ in range(args.requests):
                    await client.call(path)
                elapsed = time.perf_counter_ns() - started
                gc.enable()
                timings[name].append(elapsed / args.requests / 1000)

    print(f"base {args.base} vs the working tree; {args.rounds} rounds x {args.requests} requests")
    print(f"{'variant':<16}{'base µs':>10}{'current µs':>12}{'current/base':>14}")
    verdicts = []
    for kind in KINDS:
        for action in ("read", "write"):
            old = timings[f"{kind} {action} base"]
            new = timings[f"{kind} {action} current"]
            ratio = statistics.median(n / o for n, o in zip(new, old, strict=True))
            print(
                f"{kind + ' ' + action:<16}{statistics.median(old):>10.2f}"
                f"{statistics.median(new):>12.2f}{ratio:>13.3f}x"
            )
            if action == "write":
                verdicts.append((f"{kind} write", ratio))
    for name, ratio in verdicts:
        mark = "PASS" if ratio <= 1.05 else "FAIL"
        print(f"  {name}: conflict-free write costs {ratio:.3f}x the base (target <= 1.05x) {mark}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
