"""Single v1 creates, one at a time on one connection, in a process of its own.

Run as a script: ``python bench/harness/create_probe.py --port N --start UNIX_S --tag T``.
From ``--start`` on it sends ``PUT /v1/plan`` (a plan 8 h away, key ``T-probe-I``), waits
for the answer, then 5 ms, until its standard input closes; then it writes one JSON
object to standard output: ``{"samples": [[sent_at_s, ms], ...], "errors": n}``.

A process, not a thread of the benchmark, so that its work never shares an interpreter
lock with a bare client bursting in the benchmark's own process: the same probe runs
beside both sides of a burst.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.client import far_plan
from harness.servers import HOST

GAP_S = 0.005


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--tag", required=True)
    args = ap.parse_args()
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    samples: list[tuple[float, float]] = []
    errors = 0
    if not stop.wait(max(0.0, args.start - time.time())):
        conn = http.client.HTTPConnection(HOST, args.port, timeout=30)
        i = 0
        while not stop.is_set():
            body = json.dumps(far_plan(f"{args.tag}-probe-{i}"))
            i += 1
            t0 = time.time()
            try:
                conn.request("PUT", "/v1/plan", body, {"Content-Type": "application/json"})
                if json.loads(conn.getresponse().read()).get("errcode") != 0:
                    errors += 1
            except (OSError, http.client.HTTPException, ValueError):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, args.port, timeout=30)
            samples.append((t0, (time.time() - t0) * 1000))
            stop.wait(GAP_S)
        conn.close()
    json.dump({"samples": samples, "errors": errors}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
