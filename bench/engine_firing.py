"""Engine-only firing: bursts at whole seconds, or a sustained rate; a no-op action.

Runs forsun-box in-process on its default SQLite store and fires plans with an
action that only counts (and notes when it started). This isolates the engine
and dispatcher from HTTP; there is no forsun counterpart (forsun has no
in-process action API to compare with).

Burst mode (default): N plans due over a window of whole seconds::

    .venv/bin/python bench/engine_firing.py [--plans 20000] [--window 10]

Sustained mode: ``--rate`` plans due per second, spread evenly at millisecond
resolution, for ``--seconds``; all of them ("at" plans) are created before the
engine's window reaches the first one. ``--pending N`` first fills the database
with N far-future plans (straight into SQLite, in one statement), so the engine
works over a big table; ``--data-dir`` keeps that database between runs::

    .venv/bin/python bench/engine_firing.py --rate 20000 --seconds 60 --pending 1000000

Prints fired / missed / duplicates, lateness p50 / p99 / max (action start minus
due time) and the process CPU per firing over the measured stretch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from array import array

from forsun_box.actions.base import Action, register_action
from forsun_box.app import App
from forsun_box.config import load_config
from forsun_box.plan import AT, build_plan

# Arrays, not lists: the garbage collector does not walk them, so the
# bench's own bookkeeping adds nothing to the collector's pauses.
started = array("d")  # lateness of each firing, ms
keys = array("q")  # sustained mode: number of each fired plan
PENDING_PREFIX = "pend"
LOAD_PREFIX = "s"


class Noop(Action):
    def execute(self) -> None:
        # a plain function: the dispatcher calls it without awaiting anything
        plan = self.plan
        started.append(time.time() * 1000 - (plan.next_time or 0))
        if plan.key[0] == LOAD_PREFIX:
            keys.append(int(plan.key[1:]))


def _config(data: str) -> object:
    return load_config(["--http", "", "--port", "0", "--data-dir", data, "--log-level", "WARNING"])


async def burst(plans: int, window: int) -> None:
    register_action("bench_noop", Noop)
    data = tempfile.mkdtemp(prefix="engine-firing-")
    app = App(_config(data))
    await app.start()
    assert app.scheduler is not None
    first = int(time.time()) + 3
    now = int(time.time() * 1000)
    batch = [
        build_plan(
            key=f"b{i}",
            kind=AT,
            at_ms=(first + i * window // plans) * 1000,
            now_ms=now,
            default_tz=app.scheduler.tz,
            action="bench_noop",
        )
        for i in range(plans)
    ]
    await app.scheduler.create(batch)
    deadline = time.monotonic() + window + 30
    # a bench polls its counter: an event per firing would cost what it measures
    while len(started) < plans and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await app.stop()
    late = sorted(started)
    n = len(late)
    print(f"plans {plans} in {window} s ({plans // window} due at each whole second)")
    print(f"fired {n}, missed {plans - n}")
    if n:
        print(
            f"lateness ms: p50 {late[n // 2]:.1f}  p99 {late[int(n * 0.99)]:.1f}  "
            f"max {late[-1]:.1f}"
        )


def prefill(path: str, pending: int) -> None:
    """Make sure ``path`` holds ``pending`` far-future plans (keys ``pend...``).

    One INSERT ... SELECT over a recursive counter, with a template row read
    back from the table itself, so the fill follows whatever the schema is.
    """
    if not pending:
        return
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        have = conn.execute(
            "SELECT count(*) FROM plans WHERE key >= ? AND key < ?",
            (PENDING_PREFIX, PENDING_PREFIX[:-1] + chr(ord(PENDING_PREFIX[-1]) + 1)),
        ).fetchone()[0]
        if have >= pending:
            print(f"pending: {have} plans already in {path}")
            return
        t0 = time.perf_counter()
        cols = [r[1] for r in conn.execute("PRAGMA table_info(plans)")]
        template = conn.execute(
            f"SELECT {', '.join(cols)} FROM plans WHERE key = ?", (PENDING_PREFIX + "template",)
        ).fetchone()
        assert template is not None, "the template plan is missing"
        far = int(time.time() * 1000) + 30 * 86_400_000
        exprs, args = [], []
        for name, value in zip(cols, template, strict=True):
            if name == "key":
                exprs.append(f"'{PENDING_PREFIX}' || printf('%010d', i)")
            elif name in ("next_time", "anchor_ms"):
                exprs.append(f"{far} + i")
            else:
                exprs.append("?")
                args.append(value)
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("BEGIN")
        conn.execute(
            f"WITH RECURSIVE c(i) AS (SELECT {have} UNION ALL SELECT i + 1 FROM c "
            f"WHERE i < {pending - 1}) "
            f"INSERT OR REPLACE INTO plans ({', '.join(cols)}) SELECT {', '.join(exprs)} FROM c",
            args,
        )
        # the store keeps a plan count in meta: have it counted again at open
        conn.execute("DELETE FROM meta WHERE name = 'plan_count'")
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"pending: filled {pending - have} plans in {time.perf_counter() - t0:.1f} s")
    finally:
        conn.close()


async def sustained(
    rate: int, seconds: int, pending: int, data: str, verbose: bool = False
) -> None:
    register_action("bench_noop", Noop)
    config = _config(data)
    if pending:
        # Open once so the schema exists, store the template plan, then fill.
        app = App(config)
        await app.start()
        assert app.scheduler is not None
        tpl = build_plan(
            key=PENDING_PREFIX + "template",
            kind=AT,
            at_ms=int(time.time() * 1000) + 30 * 86_400_000,
            now_ms=int(time.time() * 1000),
            default_tz=app.scheduler.tz,
            action="bench_noop",
        )
        await app.scheduler.create([tpl])
        await app.stop()
        prefill(config.sqlite_path, pending)  # type: ignore[attr-defined]
    path = config.sqlite_path  # type: ignore[attr-defined]
    if os.path.exists(path):
        # A kept database: start from no run history and no load plans of an
        # earlier run (same keys), so runs are comparable.
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("DELETE FROM runs")
            conn.execute(
                "DELETE FROM plans WHERE key >= ? AND key < ?",
                (LOAD_PREFIX, chr(ord(LOAD_PREFIX) + 1)),
            )
            conn.execute("DELETE FROM meta WHERE name = 'plan_count'")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    app = App(config)
    t_open = time.perf_counter()
    await app.start()
    sched = app.scheduler
    assert sched is not None
    print(f"started in {time.perf_counter() - t_open:.1f} s")
    total = rate * seconds
    window_ms = sched.options.window_ms
    now = int(time.time() * 1000)
    template = build_plan(
        key="x",
        kind=AT,
        at_ms=now + 86_400_000,
        now_ms=now,
        default_tz=sched.tz,
        action="bench_noop",
    )
    # The first due instant is placed once creation is done; create them far
    # out, then shift: cheaper to compute the real instants up front instead.
    t_create = time.perf_counter()
    create_budget_ms = max(5_000, total // 50)  # ~50 plans/ms is comfortably above the pace
    first = now + create_budget_ms + window_ms + 1_000
    chunk = 20_000
    for lo in range(0, total, chunk):
        batch = []
        for i in range(lo, min(total, lo + chunk)):
            due = first + i * 1000 // rate
            batch.append(template.copy(key=f"{LOAD_PREFIX}{i:09d}", anchor_ms=due, next_time=due))
        await sched.create(batch)
    created_ms = (time.perf_counter() - t_create) * 1000
    if int(time.time() * 1000) + window_ms >= first:
        print(f"warning: creation took {created_ms:.0f} ms, past the start of the window")
    print(
        f"created {total} plans in {created_ms / 1000:.1f} s; first due in "
        f"{(first - time.time() * 1000) / 1000:.1f} s"
    )
    await asyncio.sleep(max(0.0, (first - time.time() * 1000) / 1000))
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    end_due = first + seconds * 1000
    deadline = end_due + 30_000
    ticks = 0
    while len(started) < total and time.time() * 1000 < deadline:
        await asyncio.sleep(0.2)
        ticks += 1
        if verbose and ticks % 10 == 0:
            w = sched._writer
            print(
                f"  t+{ticks / 5:.0f}s fired {len(started)} window {sched.window_size()} "
                f"in flight {sched.inflight_count()} writer queue {len(w)} "
                f"commits {w.commits} last commit {w.last_commit_ms:.0f} ms"
            )
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    window_peak = sched.window_size()
    await app.stop()
    late = sorted(started)
    n = len(late)
    unique = len(set(keys))
    assert len(keys) == n
    print(f"rate {rate}/s for {seconds} s = {total} plans, {pending} other plans pending")
    print(f"fired {n}, missed {total - unique}, duplicates {n - unique}")
    if n:
        print(
            f"lateness ms: p50 {late[n // 2]:.1f}  p99 {late[int(n * 0.99)]:.1f}  "
            f"max {late[-1]:.1f}"
        )
        print(
            f"process CPU {cpu:.1f} s over {wall:.1f} s: {cpu / n * 1e6:.1f} us per firing "
            f"({cpu / wall * 100:.0f} % of a core); window at end {window_peak}"
        )
        # Where the lateness is: the worst seconds of the run (by due time).
        per_second: dict[int, list[float]] = {}
        for key, lateness in zip(keys, started, strict=True):
            per_second.setdefault(key // rate, []).append(lateness)
        worst = sorted(per_second.items(), key=lambda kv: -max(kv[1]))[:5]
        print(
            "worst seconds (second: max ms, firings > 50 ms): "
            + ", ".join(f"{sec}: {max(v):.0f}, {sum(1 for x in v if x > 50)}" for sec, v in worst)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--plans", type=int, default=20_000, help="burst mode: plans")
    ap.add_argument("--window", type=int, default=10, help="burst mode: seconds")
    ap.add_argument("--rate", type=int, default=0, help="sustained mode: firings per second")
    ap.add_argument("--seconds", type=int, default=60, help="sustained mode: duration")
    ap.add_argument("--pending", type=int, default=0, help="far-future plans stored first")
    ap.add_argument("--data-dir", default="", help="database directory (kept); default: temp")
    ap.add_argument("--verbose", action="store_true", help="print the engine's state every 2 s")
    args = ap.parse_args()
    if args.rate:
        data = args.data_dir or tempfile.mkdtemp(prefix="engine-firing-")
        os.makedirs(data, exist_ok=True)
        coro = sustained(args.rate, args.seconds, args.pending, data, args.verbose)
    else:
        coro = burst(args.plans, args.window)
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
