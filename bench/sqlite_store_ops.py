"""The sqlite store's own operations, in-process: what a store change may move.

Writes 200,000 delay plans in batches of 5,000 (a bulk load's commits),
reads them back through ``due`` 50,000 at a time (window refills), applies
2,000 one-plan batches (acknowledged from the ack log) and 100,000 advances
in batches of 5,000 (firing records). Prints the time of each::

    .venv/bin/python bench/sqlite_store_ops.py [--plans 200000] [--dir DIR]

Run it against another checkout with ``PYTHONPATH=OTHER`` to compare two
versions of the store on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from zoneinfo import ZoneInfo

from forsun_box.plan import DELAY, build_plan
from forsun_box.store.base import Advance, Batch
from forsun_box.store.sqlite import SqliteStore

T0 = 1_700_000_000_000
BATCH = 5_000
REFILL = 50_000


async def run(path: str, n: int) -> None:
    store = SqliteStore(path)
    await store.open()
    utc = ZoneInfo("UTC")
    plans = [
        build_plan(
            key=f"k{i:07d}", kind=DELAY, now_ms=T0, default_tz=utc, second=30 + i % 1000, count=1
        )
        for i in range(n)
    ]
    t = time.perf_counter()
    for lo in range(0, n, BATCH):
        await store.apply(Batch(ops={p.key: p for p in plans[lo : lo + BATCH]}))
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    read, after = 0, None
    while True:
        rows = await store.due(after, T0 + 10**9, REFILL)
        read += len(rows)
        if len(rows) < REFILL:
            break
        last = rows[-1]
        assert last.next_time is not None
        after = (last.next_time, last.key)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(2000):
        p = plans[i].copy(key=f"small{i}")
        await store.apply(Batch(ops={p.key: p}))
    small_us = (time.perf_counter() - t) / 2000 * 1e6
    half = plans[: n // 2]
    t = time.perf_counter()
    for lo in range(0, len(half), BATCH):
        await store.apply(
            Batch(
                advances=[
                    Advance(p.key, p.version, (p.next_time or 0) + 1000, 1, p.next_time or 0, 1)
                    for p in half[lo : lo + BATCH]
                ]
            )
        )
    advance_s = time.perf_counter() - t
    await store.close()
    print(
        f"write {n:,}: {write_s:.2f} s  due read {read:,}: {read_s:.2f} s  "
        f"one-plan apply: {small_us:.1f} µs  advances {len(half):,}: {advance_s:.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=200_000)
    ap.add_argument("--dir", default=None, help="where the database goes (a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="sqlite-ops-") as tmp:
        asyncio.run(run(os.path.join(tmp, "plans.db"), args.plans))


if __name__ == "__main__":
    main()
