"""Load held: HTTP and Thrift clients hammer the API while thousands of plans fire per second.

5,000 plans with a 1 s interval and ``count`` 0 fire 5,000 times a second
through ``probe`` (tests/load_ext/loadprobe.py, which only measures
lateness). They are created ``per_instant`` (100) to a request, the requests
spread over one second, so the plans fall due 100 at a time, 50 times a
second (``--per-instant 1000``: 1,000 at the same millisecond, five times a
second -- a burst whose last plan waits for the 999 before it). Meanwhile 32 HTTP v1 clients and 4 Thrift clients create, read
and remove plans in a loop. Reported: requests and errors per interface and
the firing lateness p50/p99/max. Target: no errors, p99 <= 50 ms.

CI runs 10 s at a fifth of the load (tests/integration/test_load_held.py); the full
60 s::

    .venv/bin/python -m tests.load_held --full
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from forsun_box.thrift.forsun import Forsun
from tests.helpers import ROOT, Server, call

EXT_DIR = ROOT / "tests" / "load_ext"


@dataclass
class LoadReport:
    seconds: float
    plans: int
    http_requests: int = 0
    http_errors: int = 0
    thrift_requests: int = 0
    thrift_errors: int = 0
    firings: int = 0
    p50_ms: int = 0
    p99_ms: int = 0
    max_ms: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.seconds:g} s, {self.plans} plans at 1/s: {self.firings} firings "
            f"({self.firings / self.seconds:.0f}/s), lateness p50 {self.p50_ms} ms, "
            f"p99 {self.p99_ms} ms, max {self.max_ms} ms; HTTP {self.http_requests} "
            f"requests, {self.http_errors} errors; Thrift {self.thrift_requests} "
            f"requests, {self.thrift_errors} errors"
        )


def run_load(
    data_dir: Path,
    seconds: float,
    plans: int = 5000,
    http_clients: int = 32,
    thrift_clients: int = 4,
    per_instant: int = 100,
) -> LoadReport:
    out = data_dir / "probe.json"
    srv = Server(
        data_dir,
        "--extension-path",
        str(EXT_DIR),
        "--extension",
        "loadprobe.ProbeExtension",
        env={"FORSUN_BOX_PROBE_OUT": str(out)},
    )
    srv.start()
    report = LoadReport(seconds, plans)
    lock = threading.Lock()
    stop = threading.Event()
    try:
        starts = range(0, plans, per_instant)
        began = time.monotonic()
        for n, start in enumerate(starts):
            # one request per due instant (a delay counts from the request's arrival)
            time.sleep(max(0.0, began + n / len(starts) - time.monotonic()))  # pacing
            batch = [
                {"key": f"fire:{i}", "seconds": 1, "count": 0, "action": "probe", "params": {}}
                for i in range(start, min(plans, start + per_instant))
            ]
            srv.ok("PUT", "/v1/plan", batch)

        def http_client(n: int) -> None:
            rng = random.Random(n)
            i = 0
            while not stop.is_set():
                i += 1
                key = f"h{n}:{i}"
                op = rng.random()
                try:
                    if op < 0.4:
                        status, body = call(
                            srv.http_port,
                            "PUT",
                            "/v1/plan",
                            {
                                "key": key,
                                "seconds": 3600,
                                "count": 1,
                                "action": "probe",
                                "params": {},
                            },
                            timeout=10,
                        )
                    elif op < 0.8:
                        status, body = call(
                            srv.http_port,
                            "GET",
                            f"/v1/plan?key=fire:{rng.randrange(plans)}",
                            timeout=10,
                        )
                    else:
                        status, body = call(
                            srv.http_port,
                            "DELETE",
                            f"/v1/plan?key=h{n}:{max(1, i - 1)}",
                            timeout=10,
                        )
                    # 1003: v1's answer to removing a key already gone (it fired or never was)
                    ok = status == 200 and body["errcode"] in (0, 1003, 1005)
                except OSError as e:
                    ok, body = False, str(e)
                with lock:
                    report.http_requests += 1
                    if not ok:
                        report.http_errors += 1
                        report.errors.append(f"http: {body!r}"[:200])

        def thrift_client(n: int) -> None:
            sock = TSocket.TSocket("127.0.0.1", srv.thrift_port)
            sock.setTimeout(10_000)
            transport = TTransport.TBufferedTransport(sock)
            client = Forsun.Client(TBinaryProtocol.TBinaryProtocol(transport))
            transport.open()
            i = 0
            try:
                while not stop.is_set():
                    i += 1
                    try:
                        if i % 3 == 0:
                            client.createTimeout(f"t{n}:{i}", 3600, 0, 0, 0, 0, 0, 1, "probe", {})
                        elif i % 3 == 1:
                            client.get(f"fire:{i % plans}")
                        else:
                            client.ping()
                        ok = True
                    except Exception as e:
                        ok = False
                        with lock:
                            report.errors.append(f"thrift: {e!r}"[:200])
                    with lock:
                        report.thrift_requests += 1
                        report.thrift_errors += 0 if ok else 1
            finally:
                transport.close()

        threads = [
            threading.Thread(target=http_client, args=(n,), daemon=True)
            for n in range(http_clients)
        ]
        threads += [
            threading.Thread(target=thrift_client, args=(n,), daemon=True)
            for n in range(thrift_clients)
        ]
        for t in threads:
            t.start()
        time.sleep(seconds)  # the load is held this long: the behaviour measured
        stop.set()
        for t in threads:
            t.join(15)
    finally:
        stop.set()
        srv.stop(timeout=30)
    summary = json.loads(out.read_text())
    report.firings = summary["count"]
    report.p50_ms, report.p99_ms, report.max_ms = summary["p50"], summary["p99"], summary["max"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="60 s instead of 10 s")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument(
        "--per-instant",
        type=int,
        default=100,
        help="plans falling due at the same instant (default 100)",
    )
    opts = parser.parse_args(argv)
    seconds = opts.seconds or (60.0 if opts.full else 10.0)
    tmp = Path(tempfile.mkdtemp(prefix="forsun-box-load-"))
    try:
        report = run_load(tmp, seconds, per_instant=opts.per_instant)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report.summary())
    for e in report.errors[:10]:
        print("  ", e)
    met = not report.http_errors and not report.thrift_errors and report.p99_ms <= 50
    print("target (no errors, p99 <= 50 ms):", "met" if met else "MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
