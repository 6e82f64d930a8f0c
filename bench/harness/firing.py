"""Firing lateness: many plans due inside one short window, each calling an HTTP sink.

Plans are calendar-mode plans naming one whole second (all of second..month set), so the
due instant is exact on both servers (forsun is second-granular). The due second each
server reports back as ``next_time`` is what lateness is measured against; a plan whose
``next_time`` differs from the second we asked for is counted, not silently trusted.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.client import V1Client, encode
from harness.metrics import Outcome, percentile
from harness.servers import HOST, Server, ServerError, free_port, running_process

SINK_SCRIPT = Path(__file__).with_name("sink.py")
CREATE_BATCH = 2_000
GRACE_SECONDS = 30  # a plan that has not arrived by due + 30 s is missed
DUPLICATE_WAIT = 1.0  # after the last expected arrival, how long to watch for repeats


def _sink_get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def running_sink(max_seconds: float) -> Iterator[int]:
    """A sink process on a free port for the duration of the block; yields its port."""
    port = free_port()
    args = [
        sys.executable,
        str(SINK_SCRIPT),
        "--port",
        str(port),
        "--max-seconds",
        str(max_seconds),
    ]
    with running_process(args, port, "/count", "the firing sink", ready_timeout=15):
        yield port


def _calendar_plan(key: str, due: int, sink_port: int) -> dict[str, Any]:
    """A calendar plan firing once at unix second ``due`` (fields in the local zone)."""
    tm = time.localtime(due)
    return {
        "key": key,
        "seconds": tm.tm_sec,
        "minute": tm.tm_min,
        "hour": tm.tm_hour,
        "day": tm.tm_mday,
        "month": tm.tm_mon,
        "week": -1,
        "count": 1,
        "action": "http",
        "params": {"url": f"http://{HOST}:{sink_port}/hit?key={key}&due={due}"},
        # forsun picks each array element's mode from this field (default: delay mode),
        # whatever the HTTP method; forsun-box takes the mode from the method
        "method": "create",
    }


def _action_counters(server: Server) -> dict[str, Any]:
    """The server's own firing counters from /v1/info (both servers keep forsun's names)."""
    client = V1Client(server.http_port, timeout=30)
    try:
        info = client.info()
    except (OSError, RuntimeError, ValueError) as exc:
        return {"error": str(exc)}
    finally:
        client.close()
    return {k: v for k, v in info.items() if k.startswith(("action_", "timeout_"))}


def measure_fire(server: Server, quick: bool) -> Outcome:
    """20,000 plans due within 10 s (quick: 2,000 in 4 s) to a local sink; lateness in ms."""
    total, window, lead = (2_000, 4, 6) if quick else (20_000, 10, 10)
    with running_sink(max_seconds=lead + window + GRACE_SECONDS + 120) as sink_port:
        return _fire(server, sink_port, total, window, lead)


def _fire(server: Server, sink_port: int, total: int, window: int, lead: int) -> Outcome:
    first_due = int(time.time()) + lead
    due_of = {f"fire-{i}": first_due + (i * window) // total for i in range(total)}
    keys = list(due_of)
    next_time: dict[str, int] = {}
    client = V1Client(server.http_port)
    try:
        for start in range(0, total, CREATE_BATCH):
            chunk = keys[start : start + CREATE_BATCH]
            body = encode([_calendar_plan(k, due_of[k], sink_port) for k in chunk])
            _, plans = client.create_many("POST", body, len(chunk))
            for plan in plans:
                next_time[str(plan["key"])] = int(plan["next_time"])
    finally:
        client.close()
    created_at = time.time()
    cpu0 = server.cpu_seconds()

    # bounded by the due seconds we asked for: a wrong next_time must not stretch the wait
    deadline = max(due_of.values()) + GRACE_SECONDS
    while time.time() < deadline:
        if not server.alive():
            raise ServerError(f"{server.name} died while firing")
        if _sink_get(sink_port, "/count")["count"] >= total:
            time.sleep(DUPLICATE_WAIT)
            break
        time.sleep(0.5)
    arrivals: list[list[Any]] = _sink_get(sink_port, "/dump")
    cpu = server.cpu_seconds() - cpu0
    counters = _action_counters(server)

    first_arrival: dict[str, int] = {}
    duplicates = 0
    for key, at_ms in arrivals:
        if key in first_arrival:
            duplicates += 1
            first_arrival[key] = min(first_arrival[key], at_ms)
        else:
            first_arrival[key] = at_ms
    unknown = sum(1 for k in first_arrival if k not in due_of)
    due_ms = {k: next_time.get(k, due_of[k]) * 1000 for k in keys}
    late_ms = sorted(first_arrival[k] - due_ms[k] for k in keys if k in first_arrival)
    on_time = [v for v in late_ms if v <= GRACE_SECONDS * 1000]
    missed = total - len(on_time)

    def pct(p: float) -> float | None:
        # over all plans, a missed plan counting as infinitely late: a percentile that
        # falls among the missed ones has no value (shown as "missed")
        rank = -(-total * p // 100)
        return on_time[int(rank) - 1] if rank <= len(on_time) else None

    out = Outcome()
    label = f"{total:,} in {window} s"
    miss = f"> {GRACE_SECONDS} s"
    out.add("fire_p50_ms", f"Firing lateness p50 ({label})", "ms", False, pct(50), miss)
    out.add("fire_p99_ms", f"Firing lateness p99 ({label})", "ms", False, pct(99), miss)
    out.add("fire_max_ms", f"Firing lateness max ({label})", "ms", False, pct(100), miss)
    out.add(
        "fire_missed",
        f"Firing missed (not arrived by due + {GRACE_SECONDS} s)",
        "plans",
        False,
        missed,
    )
    out.details.update(
        plans=total,
        window_seconds=window,
        first_due=first_due,
        creation_finished_before_first_due_s=round(first_due - created_at, 3),
        next_time_mismatches=sum(1 for k in keys if next_time.get(k) != due_of[k]),
        arrivals=len(arrivals),
        duplicates=duplicates,
        unknown_keys=unknown,
        early=sum(1 for v in late_ms if v < 0),
        min_ms=late_ms[0] if late_ms else None,
        p90_ms=pct(90),
        arrived_p50_ms=percentile(late_ms, 50),
        arrived_max_ms=late_ms[-1] if late_ms else None,
        server_cpu_seconds=round(cpu, 2),
        server_counters=counters,
    )
    if created_at > first_due:
        out.details["warning"] = "plans were still being created when the first came due"
    return out
