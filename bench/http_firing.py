"""Firings with the http action to a local keep-alive sink: lateness, misses and CPU per firing.

Runs forsun-box in-process (uvloop) on its default SQLite store in a temporary directory and
the fast sink (``bench/harness/fast_sink.py``) as a subprocess on a free loopback port. Before
the window starts it creates RATE x SECONDS one-shot plans (kind ``at``, ms resolution, spread
evenly over the window), each with an ``http`` action to
``http://127.0.0.1:PORT/hit?key=K&due=D``. It then waits for the window (plus a grace period)
and prints fired / missed / duplicates, the lateness (sink arrival - due) percentiles and the
server's CPU seconds per firing (this process's CPU over the window; the sink is another
process).

    .venv/bin/python bench/http_firing.py [--rate 5000] [--seconds 60]
    .venv/bin/python bench/http_firing.py --rate 1000 --seconds 5        # a quick run

``--micro N`` measures the action alone instead: N requests through ``HttpAction.execute``
(``--concurrency`` at once) to the sink, no engine, and prints the CPU per request.

Everything is bounded in time: the sink stops by itself, the wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from harness.servers import HOST, free_port, running_process  # noqa: E402

SINK = ROOT / "bench" / "harness" / "fast_sink.py"
#: after the last due instant, how long to wait for stragglers
GRACE_S = 20.0


def sink_get(port: int, path: str) -> object:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


# -- the action alone ---------------------------------------------------------------


async def micro(port: int, n: int, concurrency: int, max_clients: int) -> None:
    from forsun_box.actions import ActionSettings, HttpAction, configure_actions
    from forsun_box.plan import Plan

    configure_actions(ActionSettings(http_max_clients=max_clients))
    url = f"http://{HOST}:{port}/hit?key=m&due=0"
    params = {"url": url}
    plan = Plan(key="m", kind="at", action="http", params=params)
    errors = 0

    async def worker(count: int) -> None:
        nonlocal errors
        for _ in range(count):
            try:
                await HttpAction(int(time.time()), plan, "http", params).execute()
            except Exception:
                errors += 1

    async def run(total: int) -> None:
        per = total // concurrency
        await asyncio.gather(*(worker(per) for _ in range(concurrency)))

    await run(min(n, 2000))  # warm up: connections opened, code paths hot
    cpu0, t0 = time.process_time(), time.perf_counter()
    await run(n)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    done = n // concurrency * concurrency
    await HttpAction.close_shared()
    print(
        f"action alone: {done} requests, concurrency {concurrency}, "
        f"http_max_clients {max_clients}, errors {errors}"
    )
    print(
        f"CPU {cpu * 1e6 / done:.1f} us/request, {done / wall:.0f} requests/s "
        f"(wall {wall:.2f} s, CPU {cpu:.2f} s)"
    )


# -- firings ------------------------------------------------------------------------


async def firing(
    port: int, rate: int, seconds: int, lead_s: float, keep: bool, series: bool, refill_limit: int
) -> int:
    from forsun_box.app import App
    from forsun_box.config import load_config
    from forsun_box.plan import AT, build_plan

    data = tempfile.mkdtemp(prefix="http-firing-")
    app = App(
        load_config(
            [
                "--http",
                "",
                "--port",
                "0",
                "--bind",
                HOST,
                "--data-dir",
                data,
                "--log-level",
                "WARNING",
            ]
        )
    )
    await app.start()
    try:
        assert app.scheduler is not None
        if refill_limit:
            # an engine experiment: how many plans one refill reads from the store at most
            app.scheduler.options.refill_limit = refill_limit
        total = rate * seconds
        now = int(time.time() * 1000)
        start = now + int(lead_s * 1000)
        dues = [start + i * 1000 // rate for i in range(total)]
        t0 = time.monotonic()
        batch = [
            build_plan(
                key=f"h{i}",
                kind=AT,
                at_ms=due,
                now_ms=now,
                default_tz=app.scheduler.tz,
                action="http",
                params={"url": f"http://{HOST}:{port}/hit?key=h{i}&due={due}"},
            )
            for i, due in enumerate(dues)
        ]
        for i in range(0, total, 10_000):
            await app.scheduler.create(batch[i : i + 10_000])
        del batch
        created_s = time.monotonic() - t0
        spare = (start - time.time() * 1000) / 1000
        print(f"created {total} plans in {created_s:.1f} s; window starts in {spare:.1f} s")
        if spare < 0.5:
            print("creation ran into the window: raise --lead")
            return 1
        await asyncio.sleep(max(0.0, (start - time.time() * 1000) / 1000))
        cpu0 = time.process_time()
        end = start + seconds * 1000
        deadline = end / 1000 + GRACE_S
        count = 0
        await asyncio.sleep(seconds)
        while time.time() < deadline:
            got = await asyncio.to_thread(sink_get, port, "/count")
            count = int(got["count"])  # type: ignore[index]
            if count >= total:
                break
            await asyncio.sleep(0.5)
        cpu = time.process_time() - cpu0
        records = await asyncio.to_thread(sink_get, port, "/dump")
    finally:
        await app.stop()
        if keep:
            print(f"data directory kept: {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)

    first: dict[str, float] = {}
    per_second: dict[int, list[float]] = {}
    duplicates = 0
    for key, due, arrival in records:  # type: ignore[union-attr]
        if key in first:
            duplicates += 1
        else:
            first[key] = arrival - due
            per_second.setdefault((due - start) // 1000, []).append(arrival - due)
    if series:
        print("second  fired  p50  p99  max (lateness ms)")
        for second in sorted(per_second):
            v = sorted(per_second[second])
            print(f"{second:6d} {len(v):6d} {pct(v, 0.5):4.0f} {pct(v, 0.99):4.0f} {v[-1]:4.0f}")
    fired = len(first)
    late = sorted(first.values())
    print(f"plans {total}: {rate}/s for {seconds} s")
    print(f"fired {fired}, missed {total - fired}, duplicates {duplicates}")
    if late:
        print(
            f"lateness ms (arrival - due): p50 {pct(late, 0.5):.1f}  p99 {pct(late, 0.99):.1f}"
            f"  max {late[-1]:.1f}"
        )
    if fired:
        print(f"server CPU {cpu:.2f} s over the window: {cpu * 1e6 / fired:.0f} us per firing")
    return 0 if fired == total and not duplicates else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=5000, help="firings per second")
    ap.add_argument("--seconds", type=int, default=60, help="length of the window")
    ap.add_argument(
        "--lead",
        type=float,
        default=0.0,
        help="seconds from now to the window's start (default: from the plan count)",
    )
    ap.add_argument(
        "--micro",
        type=int,
        default=0,
        metavar="N",
        help="measure N requests of the action alone instead",
    )
    ap.add_argument("--concurrency", type=int, default=64, help="--micro: requests at once")
    ap.add_argument("--max-clients", type=int, default=256, help="--micro: http_max_clients")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--series", action="store_true", help="print the lateness of every second")
    ap.add_argument(
        "--refill-limit",
        type=int,
        default=0,
        help="engine experiment: most plans one refill loads (default: the engine's)",
    )
    args = ap.parse_args()
    total = args.rate * args.seconds
    # the plans are created before the firing starts: a lead time that grows with
    # their number, with room for a busy machine
    lead = args.lead or max(5.0, total / 20_000)
    budget = 300 if args.micro else lead + args.seconds + GRACE_S + 60
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    port = free_port()
    sink = [sys.executable, str(SINK), "--port", str(port), "--max-seconds", str(budget)]
    with running_process(sink, port, "/count", "the sink", ready_timeout=10):
        if args.micro:
            runner(micro(port, args.micro, args.concurrency, args.max_clients))
            return 0
        return runner(
            firing(port, args.rate, args.seconds, lead, args.keep, args.series, args.refill_limit)
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
