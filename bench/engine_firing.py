"""Engine-only firing lateness: a burst of plans due at whole seconds, a no-op action.

Runs forsun-box in-process on its default SQLite store (temporary directory) and
fires N plans due over a window of whole seconds with an action that only
records when it started; prints the lateness percentiles. This isolates the
engine and dispatcher from HTTP; there is no forsun counterpart (forsun has no
in-process action API to compare with).

    .venv/bin/python bench/engine_firing.py [--plans 20000] [--window 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from forsun_box.actions.base import Action, register_action
from forsun_box.app import App
from forsun_box.config import load_config
from forsun_box.plan import AT, build_plan

started: list[float] = []


class Noop(Action):
    async def execute(self) -> None:
        started.append(time.time() * 1000 - (self.plan.next_time or 0))


async def main(plans: int, window: int) -> None:
    register_action("bench_noop", Noop)
    data = tempfile.mkdtemp(prefix="engine-firing-")
    app = App(load_config(["--http", "", "--port", "0", "--data-dir", data,
                           "--log-level", "WARNING"]))
    await app.start()
    assert app.scheduler is not None
    first = int(time.time()) + 3
    now = int(time.time() * 1000)
    batch = [
        build_plan(key=f"b{i}", kind=AT, at_ms=(first + i * window // plans) * 1000, now_ms=now,
                   default_tz=app.scheduler.tz, action="bench_noop")
        for i in range(plans)
    ]
    await app.scheduler.create(batch)
    deadline = time.monotonic() + window + 30
    while len(started) < plans and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await app.stop()
    late = sorted(started)
    n = len(late)
    print(f"plans {plans} in {window} s ({plans // window} due at each whole second)")
    print(f"fired {n}, missed {plans - n}")
    if n:
        print(f"lateness ms: p50 {late[n // 2]:.1f}  p99 {late[int(n * 0.99)]:.1f}  "
              f"max {late[-1]:.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=10)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.plans, args.window))
    except ImportError:
        asyncio.run(main(args.plans, args.window))
