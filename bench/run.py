"""Run forsun-box and forsun 0.1.4 side by side and compare them.

    python bench/run.py [--quick] [--only NAME...] [--server NAME...] [--peer-dir DIR]

Each measurement gets a fresh server of each kind on free loopback ports in a temp dir;
everything stops by itself. Prints a table and writes a JSON file (see bench/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.firing import measure_fire
from harness.load import measure_bulk, measure_create, measure_rss
from harness.metrics import Metric, Outcome
from harness.report import table
from harness.servers import (
    FORSUN,
    SERVER_NAMES,
    Server,
    ServerConfig,
    running_server,
)

MEASUREMENTS: dict[str, Callable[[Server, bool], Outcome]] = {
    "create": measure_create,
    "bulk": measure_bulk,
    "rss": measure_rss,
    "fire": measure_fire,
}
BENCH_DIR = Path(__file__).resolve().parent


def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    return (
        (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.stdout or proc.stderr else ""
    )


def _machine(config: ServerConfig) -> dict[str, object]:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "harness_python": sys.version.split()[0],
        "wrk": _version(["wrk", "--version"]),
        "forsun": _version(
            [str(config.peer_dir / "bin" / "python"), "-c", "import forsun; print(forsun.version)"]
        ),
    }


def _metrics_document(
    results: dict[str, dict[str, Metric]], order: list[str]
) -> dict[str, dict[str, object]]:
    """Per metric: label, unit, direction and each server's value (or its display text)."""
    document: dict[str, dict[str, object]] = {}
    for key in order:
        per_server = {name: found[key] for name, found in results.items() if key in found}
        some = next(iter(per_server.values()))
        entry: dict[str, object] = {
            "label": some.label,
            "unit": some.unit,
            "higher_is_better": some.higher_is_better,
        }
        for name, metric in per_server.items():
            entry[name] = metric.value if metric.value is not None else metric.display
        document[key] = entry
    return document


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="forsun-box vs forsun benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller, shorter runs")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(MEASUREMENTS),
        metavar="NAME",
        help=f"run only these measurements ({', '.join(MEASUREMENTS)})",
    )
    parser.add_argument(
        "--server",
        nargs="+",
        choices=SERVER_NAMES,
        default=list(SERVER_NAMES),
        help="which servers to run (default: both)",
    )
    parser.add_argument(
        "--peer-dir",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "build" / "forsun-peer",
        help="venv holding forsun 0.1.4 (bin/forsund)",
    )
    parser.add_argument(
        "--box-python",
        default=sys.executable,
        help="python that runs `-m forsun_box serve` (default: this one)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="results file (default: bench/out/results-<time>.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' temp dirs")
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # unwinds through the `finally` blocks that stop the servers and the sink
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    config = ServerConfig(peer_dir=args.peer_dir, box_python=args.box_python)
    names = args.only or list(MEASUREMENTS)
    servers = [s for s in SERVER_NAMES if s in args.server]  # forsun-box first, always
    if FORSUN in servers and not (args.peer_dir / "bin" / "forsund").exists():
        print(
            f"no forsun at {args.peer_dir}: bash ../shared/peers/setup_forsun_peer.sh "
            f"{args.peer_dir}",
            file=sys.stderr,
        )
        return 2
    if "create" in names and shutil.which("wrk") is None:
        print("the create measurement needs wrk (apt-get install -y wrk)", file=sys.stderr)
        return 2

    started = datetime.datetime.now(datetime.UTC)
    results: dict[str, dict[str, Metric]] = {s: {} for s in servers}
    details: dict[str, dict[str, object]] = {s: {} for s in servers}
    errors: dict[str, dict[str, str]] = {s: {} for s in servers}
    order: list[str] = []
    for name in names:
        for server_name in servers:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {server_name} ...", flush=True)
            t0 = time.monotonic()
            load_before = os.getloadavg()[0]
            try:
                with running_server(config, server_name, keep=args.keep) as server:
                    outcome = MEASUREMENTS[name](server, args.quick)
            except Exception as exc:  # one failure must not lose the other figures
                errors[server_name][name] = f"{type(exc).__name__}: {exc}"
                print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
                if not isinstance(exc, (RuntimeError, OSError)):
                    traceback.print_exc()
                continue
            for metric in outcome.metrics:
                results[server_name][metric.key] = metric
                if metric.key not in order:
                    order.append(metric.key)
            # other work on the machine is the main source of noise: keep a trace of it
            outcome.details["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0]]
            details[server_name][name] = outcome.details
            print(f"  done in {time.monotonic() - t0:.0f} s", flush=True)

    print()
    print(table(results, order))
    for server_name, failed in errors.items():
        for name, message in failed.items():
            print(f"{server_name} {name}: FAILED: {message.splitlines()[0]}")

    out_path = args.json or BENCH_DIR / "out" / f"results-{started:%Y%m%d-%H%M%S}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "machine": _machine(config),
        "metrics": _metrics_document(results, order),
        "details": details,
        "errors": errors,
    }
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults: {out_path}")
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
