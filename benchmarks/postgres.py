"""Per-request cost of coatcheck's PostgreSQL store, next to hand-written psycopg floors.

One process, one throwaway PostgreSQL cluster made here with ``initdb`` (as the
``postgres`` user when run as root) on a free loopback port, stopped by PID at the end.
Every variant is a real ASGI app called in-process; the only I/O is PostgreSQL. The
floors use a psycopg pool of their own with the same settings as the store's: one
``SELECT`` of a row by primary key, and that ``SELECT`` plus an ``UPDATE``.

    python benchmarks/postgres.py                             # about a minute on 2 cores
    python benchmarks/postgres.py --rounds 5 --requests 300   # a quick look
    python benchmarks/postgres.py --url postgresql://me@db/bench   # a server of your own
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from _harness import (
    BARE,
    BenchmarkError,
    Suite,
    Variant,
    add_coatcheck,
    add_timing_arguments,
    check_timing_arguments,
    cookie_headers,
    expect,
    lead_with,
    machine,
    measure,
    ok,
    package_versions,
    print_info,
    ratio_row,
    request,
    run_record,
    timing_method,
    write_json,
)
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from coatcheck.stores.postgres import PostgresStore

SELECT_FLOOR = "psycopg SELECT floor"
UPDATE_FLOOR = "psycopg SELECT+UPDATE floor"
COATCHECK = "coatcheck postgres"
FLOOR_TABLE = "bench_floor"
FLOOR_KEY = "0" * 64


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """A new cluster in a temporary folder; yields its URL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        raise BenchmarkError("no initdb: apt-get install postgresql, or pass --url")
    bin_dir = Path(initdb).parent
    owner: dict[str, Any] = {}
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        pwd.getpwnam("postgres")
        owner = {"user": "postgres", "group": "postgres", "extra_groups": []}
    folder = Path(tempfile.mkdtemp(prefix="coatcheck-bench-pg-"))
    folder.chmod(0o755)
    data = folder / "data"
    if owner:
        shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = None
    try:
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "--username=postgres", "--auth=trust", "--no-sync"],
            check=True, capture_output=True, **owner,
        )  # fmt: skip
        process = subprocess.Popen(
            [
                bin_dir / "postgres", "-D", data, "-p", str(port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **owner,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while subprocess.run(
            [bin_dir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        ).returncode:
            if time.monotonic() > deadline or process.poll() is not None:
                raise BenchmarkError("the throwaway PostgreSQL server did not start")
            time.sleep(0.05)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # fast shutdown
            process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def floors_app(pool: AsyncConnectionPool[Any], first: str) -> FastAPI:
    """A bare endpoint and the least any PostgreSQL-backed session could do per request."""
    app = FastAPI()
    select = f"SELECT n FROM {FLOOR_TABLE} WHERE key = %s AND expires_at > %s"  # noqa: S608
    update = f"UPDATE {FLOOR_TABLE} SET n = %s, expires_at = %s WHERE key = %s"  # noqa: S608

    @app.get("/bare")
    async def bare() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/select")
    async def select_floor() -> dict[str, Any]:
        async with pool.connection() as db:
            row = await (await db.execute(select, (FLOOR_KEY, time.time()))).fetchone()
        return {"n": None if row is None else row[0]}

    @app.get("/update")
    async def update_floor() -> dict[str, Any]:
        async with pool.connection() as db:
            now = time.time()
            row = await (await db.execute(select, (FLOOR_KEY + "w", now))).fetchone()
            n = (0 if row is None else row[0]) + 1
            await db.execute(update, (n, now + 3600, FLOOR_KEY + "w"))
        return {"n": n}

    return lead_with(app, first)


async def add_floors(suite: Suite, pool: AsyncConnectionPool[Any]) -> None:
    async with pool.connection() as db:
        await db.execute(f"DROP TABLE IF EXISTS {FLOOR_TABLE}")
        await db.execute(
            f"CREATE TABLE {FLOOR_TABLE} (key text PRIMARY KEY, n bigint, expires_at float8)"
        )
        insert = f"INSERT INTO {FLOOR_TABLE} VALUES (%s, 1, %s), (%s, 0, %s)"  # noqa: S608
        later = time.time() + 86400
        await db.execute(insert, (FLOOR_KEY, later, FLOOR_KEY + "w", later))
    headers = cookie_headers("__Host-session", "x" * 43)
    for name, path, want in (
        (BARE, "/bare", {"ok": True}),
        (SELECT_FLOOR, "/select", {"n": 1}),
        (UPDATE_FLOOR, "/update", {"n": 1}),
    ):
        app = floors_app(pool, path)
        await suite.start(app)
        response = ok(await request(app, path, headers), name)
        expect(response.json() == want, f"{name}: body {response.body!r}, want {want}")
        suite.add(Variant(name, app, path, headers))


def report(suite: Suite, args: argparse.Namespace, info: dict[str, str]) -> dict[str, Any]:
    print_info(info)
    columns = [(BARE, "× bare"), (SELECT_FLOOR, "× SELECT"), (UPDATE_FLOOR, "× SELECT+UPDATE")]
    width = max(len(v.name) for v in suite.variants)
    header = f"{'variant':<{width}}  {'µs/req':>7}"
    header += "".join(f"  {title:>{max(len(title), 9)}}" for _, title in columns)
    print(header)
    print("-" * len(header))
    rows = []
    for variant in suite.variants:
        print(ratio_row(variant, width, columns))
        rows.append(variant.as_json())
    for note in suite.notes:
        print(f"NOTE: {note}")
    return run_record(args, info, rows, [], suite.notes)


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    store = PostgresStore(url, table="bench_coatcheck")
    # The floors' pool has the store's settings: autocommit, the same bounds.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, kwargs={"autocommit": True}, min_size=1, max_size=10, open=False
    )
    await pool.open()
    suite = Suite()
    try:
        await add_floors(suite, pool)
        await add_coatcheck(suite, "postgres", store)
        floors = (BARE, SELECT_FLOOR, UPDATE_FLOOR)
        for variant in suite.variants:
            variant.baselines = floors
        print(f"verified {len(suite.variants)} variants", file=sys.stderr)
        async with pool.connection() as db:
            server = await (await db.execute("SHOW server_version")).fetchone()
        info = {
            **machine(),
            **package_versions(["coatcheck", "fastapi", "starlette", "psycopg", "psycopg-pool"]),
            "postgresql": str(server[0] if server else "?"),
            "method": timing_method(args),
        }
        await measure(suite, args)
    finally:
        await suite.shutdown()  # closes coatcheck's store
        await store.aclose()
        await pool.close()
    return report(suite, args, info)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_timing_arguments(parser, rounds=20, requests=500, warmup=200)
    parser.add_argument("--url", help="an existing server to use instead of a throwaway one")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    check_timing_arguments(parser, args)
    # SIGTERM unwinds as Ctrl-C does, through the ``finally`` that stops the server.
    signal.signal(signal.SIGTERM, _exit)
    try:
        with contextlib.ExitStack() as stack:
            url = args.url or stack.enter_context(throwaway_server())
            results = asyncio.run(run(args, url))
    except BenchmarkError as exc:
        print(f"ABORTED: {exc}", file=sys.stderr)
        return 2
    write_json(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
