"""Size and cold start-up time of the one-file executable ``dist/forsun-box``.

Start-up time: from launching ``forsun-box serve`` (a fresh, empty data
directory each run, so the database is created too) to the first answered
HTTP request (``GET /v1/ping``), polled every 2 ms. Every run of a
one-file executable unpacks itself anew, so each run is a cold start of
the program; ``--drop-caches`` (root) also empties the page cache first.

Usage: .venv/bin/python bench/binary_startup.py [--runs 9] [--binary dist/forsun-box]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answered(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/ping", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def one_run(exe: Path, home: Path, drop_caches: bool) -> float:
    """Seconds from launch to the first answered request."""
    if drop_caches:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    http_port, thrift_port = free_port(), free_port()
    env = dict(
        os.environ, HOME=str(home), HTTP_BIND=f"127.0.0.1:{http_port}", PORT=str(thrift_port)
    )
    env.pop("XDG_DATA_HOME", None)
    began = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "serve"], env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not answered(http_port):
            if proc.poll() is not None:
                raise SystemExit(f"forsun-box exited with {proc.returncode}")
            if time.perf_counter() - began > 30:
                raise SystemExit("no answer within 30 s")
            time.sleep(0.002)
        return time.perf_counter() - began
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=str(ROOT / "dist" / "forsun-box"))
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="empty the page cache before each run (needs root)",
    )
    args = parser.parse_args()
    binary = Path(args.binary)
    size = binary.stat().st_size
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "forsun-box"
        shutil.copy2(binary, exe)
        for i in range(args.runs):
            home = Path(tmp) / f"home{i}"
            home.mkdir()
            times.append(one_run(exe, home, args.drop_caches))
    print(f"size: {size} bytes ({size / 1024 / 1024:.1f} MiB)")
    print(
        f"start-up to first answered request, {args.runs} runs: "
        f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
        f"max {max(times):.3f} s"
    )


if __name__ == "__main__":
    main()
