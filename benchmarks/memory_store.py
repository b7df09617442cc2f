"""The cost of a save to a full ``MemoryStore``, round after round.

At ``max_entries`` every save of a new session drops the oldest record. It must cost
the same in the last round as in the first: a plain dict made each drop skip the
slots freed before it, so the cost grew with every save until the dict was rebuilt.

    python benchmarks/memory_store.py                       # 200,000 entries, 16 rounds
    python benchmarks/memory_store.py --entries 10000 --rounds 8
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

from coatcheck import MemoryStore
from coatcheck.stores import SessionRecord


def record(now: float) -> SessionRecord:
    return SessionRecord(secrets.token_hex(32), "public", b"{}", None, now, now, now + 600)


async def main(entries: int, rounds: int, per_round: int) -> None:
    store = MemoryStore(max_entries=entries)
    now = time.time()
    for _ in range(entries):
        await store.save(record(now))
    costs = []
    for _ in range(rounds):
        batch = [record(now) for _ in range(per_round)]
        started = time.perf_counter()
        for new in batch:
            await store.save(new)
        costs.append((time.perf_counter() - started) / per_round * 1e6)
    print("µs per save at capacity, by round:", " ".join(f"{c:.1f}" for c in costs))
    first, last = statistics.median(costs[:3]), statistics.median(costs[-3:])
    print(f"median of the first three rounds {first:.1f} µs, of the last three {last:.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--per-round", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.rounds, args.per_round))
