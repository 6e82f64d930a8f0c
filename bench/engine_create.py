"""CPU of one create through the engine, in-process: build, group commit, bookkeeping.

Creates 5 x 5,000 forsun delay plans one at a time through
``Scheduler.create`` on the default sqlite store (each acknowledged from the
ack log), then 200 x 32 at once (sharing commits), and prints the process
CPU time per create (``time.process_time``: it holds up better than wall
time on a busy machine)::

    .venv/bin/python bench/engine_create.py

Run it against another checkout with ``PYTHONPATH=OTHER`` to compare two
versions on the same machine.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from zoneinfo import ZoneInfo

from forsun_box.clock import LoopClock
from forsun_box.plan import Limits, Plan, build_forsun_plan
from forsun_box.scheduler import EngineOptions, Scheduler
from forsun_box.store.sqlite import SqliteStore

UTC = ZoneInfo("UTC")


def forsun_plan(key: str, now_ms: int) -> Plan:
    return build_forsun_plan(
        key, True, 3600, 0, 0, 0, 0, -1, 1, "shell", {"cmd": "true"}, now_ms, UTC, None, Limits()
    )


async def run(path: str) -> None:
    store = SqliteStore(path)
    await store.open()
    clock = LoopClock()
    sched = Scheduler(store, clock, UTC, options=EngineOptions())
    await sched.start()
    now = clock.now_ms()
    rounds: list[float] = []
    for r in range(5):
        t = time.process_time()
        for i in range(5000):
            await sched.create([forsun_plan(f"r{r}-{i}", now)])
        rounds.append((time.process_time() - t) / 5000 * 1e6)
    t = time.process_time()
    for r in range(200):
        plans = [forsun_plan(f"g{r}-{i}", now) for i in range(32)]
        await asyncio.gather(*(sched.create([p]) for p in plans))
    grouped = (time.process_time() - t) / 6400 * 1e6
    await sched.stop()
    await store.close()
    rounds.sort()
    print(
        f"one create at a time: best {rounds[0]:.1f} µs, median {rounds[2]:.1f} µs of CPU; "
        f"32 at once: {grouped:.1f} µs a create"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="engine-create-") as tmp:
        asyncio.run(run(os.path.join(tmp, "plans.db")))


if __name__ == "__main__":
    main()
