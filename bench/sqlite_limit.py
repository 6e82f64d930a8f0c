"""The floor under bulk creates: SQLite's own batch insert rate for forsun-box's schema.

Inserts N plans in transactions of 10,000 rows straight through the sqlite3 module, with
the store's settings (WAL, synchronous NORMAL, exclusive locking, its page cache) and its
statement and row encoding, with no HTTP, validation or engine: the rate the server's
bulk create can approach but not pass. Plans are the ones `scale.py` creates (monotonic
due times, keys `scale-<i>`). Prints the rate of each fifth of the way.

With ``--single N``, then N one-plan commits, with and without the plan-count row, and N
appends of the same plan to the store's ack log: what a lone create costs each way.

    .venv/bin/python bench/sqlite_limit.py [--plans 1000000] [--single 20000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from zoneinfo import ZoneInfo

from forsun_box.plan import DELAY, Plan, build_plan
from forsun_box.store.base import Batch
from forsun_box.store.sqlite import opening, rows, schema, transaction
from forsun_box.store.sqlite.acklog import AckLog

BATCH = 10_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None, help="where the database goes (a temp dir)")
    ap.add_argument("--single", type=int, default=0, help="one-plan commits to time after")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="sqlite-limit-") as tmp:
        path = os.path.join(tmp, "plans.db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{opening.CACHE_KIB}")
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        for migration in schema.MIGRATIONS:
            for statement in schema.split_sql(migration):
                conn.execute(statement)
        proto = build_plan(
            key="x",
            kind=DELAY,
            now_ms=1_700_000_000_000,
            default_tz=ZoneInfo("UTC"),
            action="http",
            params={"url": "http://127.0.0.1:9/never"},
            second=30000,
            count=1,
        )
        fifth = max(args.plans // 5, BATCH)
        done, spent = 0, 0.0
        while done < args.plans:
            plans = []
            for i in range(done, min(done + BATCH, args.plans)):
                p = proto.copy(key=f"scale-{i}")
                p.next_time = proto.next_time + i // 40  # about as a 40k/s fill spreads them
                plans.append(p)
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            transaction.write_plans(conn, "INSERT OR IGNORE", list(map(rows.plan_row, plans)))
            conn.execute("COMMIT")
            spent += time.perf_counter() - t0
            done += len(plans)
            if done % fifth == 0 or done == args.plans:
                print(
                    f"{done:>11,} plans  {done / spent:>9,.0f}/s cumulative  "
                    f"({spent * 1e6 / done:.2f} µs a row)",
                    flush=True,
                )
        if args.single:
            single(conn, proto, args.single, os.path.join(tmp, "plans.db-acklog"))
        conn.close()


def single(conn: sqlite3.Connection, proto: Plan, n: int, log_path: str) -> None:
    """Time n one-plan commits (with and without the count row) and n log appends."""
    for with_count in (True, False):
        t0 = time.perf_counter()
        for i in range(n):
            p = proto.copy(key=f"single-{with_count}-{i}")
            conn.execute("BEGIN IMMEDIATE")
            transaction.write_plans(conn, "INSERT OR IGNORE", [rows.plan_row(p)])
            if with_count:
                conn.execute(transaction.META, (schema.PLAN_COUNT, str(i)))
            conn.execute("COMMIT")
        took = (time.perf_counter() - t0) * 1e6 / n
        print(
            f"one-plan commit{' with the count row' if with_count else ''}: {took:.1f} µs",
            flush=True,
        )
    ack = AckLog(log_path)
    ack.open()
    t0 = time.perf_counter()
    for i in range(n):
        p = proto.copy(key=f"logged-{i}")
        ack.append(rows.Rows(Batch(ops={p.key: p})).encode())
    print(
        f"ack-log append (rows, checks, encoding, write): "
        f"{(time.perf_counter() - t0) * 1e6 / n:.1f} µs",
        flush=True,
    )
    ack.close()


if __name__ == "__main__":
    main()
