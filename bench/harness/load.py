"""Create-rate and memory measurements: wrk single creates, bulk creates, RSS per plan."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from harness.client import V1Client, encode, far_plan
from harness.metrics import Outcome
from harness.servers import Server, ServerError, settle_rss

LUA_SCRIPT = Path(__file__).with_name("create_plan.lua")
BULK_BATCH = 10_000
MB = 1024 * 1024


def run_wrk(base_url: str, connections: int, seconds: float, prefix: str) -> dict[str, int]:
    """One wrk run of ``create_plan.lua``; returns the script's BENCH-JSON counters."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package: wrk)")
    threads = min(connections, 2)  # 2 cores: more wrk threads would only steal the server's CPU
    cmd = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        base_url + "/v1/plan",
        "--",
        prefix,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            return dict(json.loads(line[len("BENCH-JSON ") :]))
    raise RuntimeError(f"wrk gave no result (rc {proc.returncode}): {proc.stdout}{proc.stderr}")


def measure_create(server: Server, quick: bool) -> Outcome:
    """HTTP single-plan create rate with wrk at 1 and at 32 connections."""
    seconds, warmup = (3.0, 1.0) if quick else (10.0, 2.0)
    out = Outcome()
    errors = 0
    for conns in (1, 32):
        run_wrk(server.base_url, conns, warmup, f"warm{conns}")
        cpu0 = server.cpu_seconds()
        res = run_wrk(server.base_url, conns, seconds, f"c{conns}")
        cpu = server.cpu_seconds() - cpu0
        if not server.alive():
            raise ServerError(f"{server.name} died during the {conns}-connection create run")
        duration = res["duration_us"] / 1e6
        bad = (
            res["errcode_bad"]
            + res["status_bad"]
            + res["connect_errors"]
            + res["read_errors"]
            + res["write_errors"]
            + res["timeouts"]
        )
        errors += bad
        rate = res["ok"] / duration if duration > 0 else 0.0
        out.details[f"c{conns}"] = {
            **res,
            "threads": min(conns, 2),
            "seconds": seconds,
            "server_cpu_seconds": round(cpu, 2),
        }
        out.add(f"create_c{conns}_rate", f"HTTP create, {conns} conn", "plans/s", True, rate)
        out.add(
            f"create_c{conns}_p99_ms",
            f"HTTP create p99 latency, {conns} conn",
            "ms",
            False,
            res["latency_p99_us"] / 1000,
        )
    out.add(
        "create_errors", "HTTP create errors (non-200, errcode!=0, socket)", "count", False, errors
    )
    return out


def _bulk_create(client: V1Client, prefix: str, start: int, count: int) -> tuple[float, float]:
    """Create plans ``start``..``start+count`` in PUT arrays of BULK_BATCH.

    Returns (seconds spent waiting for answers, wall seconds including body encoding).
    """
    waited = 0.0
    wall0 = time.perf_counter()
    done = 0
    while done < count:
        size = min(BULK_BATCH, count - done)
        first = start + done
        body = encode([far_plan(f"{prefix}-{i}") for i in range(first, first + size)])
        elapsed, _ = client.create_many("PUT", body, size)
        waited += elapsed
        done += size
    return waited, time.perf_counter() - wall0


def measure_bulk(server: Server, quick: bool) -> Outcome:
    """Bulk create rate: JSON arrays of 10,000 delay plans, 200,000 plans (quick: 50,000)."""
    total = 50_000 if quick else 200_000
    client = V1Client(server.http_port)
    try:
        cpu0 = server.cpu_seconds()
        waited, wall = _bulk_create(client, "bulk", 0, total)
        cpu = server.cpu_seconds() - cpu0
    finally:
        client.close()
    out = Outcome()
    out.add(
        "bulk_rate",
        f"Bulk create ({BULK_BATCH:,}/request, {total:,} plans)",
        "plans/s",
        True,
        total / waited,
    )
    out.details.update(
        plans=total,
        batch=BULK_BATCH,
        seconds_waiting=round(waited, 3),
        seconds_wall=round(wall, 3),
        server_cpu_seconds=round(cpu, 2),
    )
    return out


def _count_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def measure_rss(server: Server, quick: bool) -> Outcome:
    """Server RSS with 100k and 1M pending plans (quick: 10k and 50k), created in bulk."""
    checkpoints = (10_000, 50_000) if quick else (100_000, 1_000_000)
    out = Outcome()
    base = settle_rss(server)
    out.details["rss_empty_bytes"] = base
    out.add("rss_empty_mb", "RSS, no plans", "MB", False, base / MB)
    client = V1Client(server.http_port)
    created = 0
    try:
        for target in checkpoints:
            waited, _ = _bulk_create(client, "rss", created, target - created)
            created = target
            rss = settle_rss(server)
            label = _count_label(target)
            info = client.info()
            out.details[label] = {
                "rss_bytes": rss,
                "bytes_per_plan": (rss - base) / target,
                "seconds_waiting_for_creates": round(waited, 3),
                "info_plan_count": info.get("plan_count"),
                "disk_bytes": server.data_bytes(),
            }
            out.add(f"rss_{label}_mb", f"RSS, {label} pending plans", "MB", False, rss / MB)
            out.add(
                f"rss_{label}_bpp",
                f"RSS growth per plan, {label}",
                "bytes/plan",
                False,
                (rss - base) / target,
            )
    finally:
        client.close()
    return out
