"""Thrift create rate: forsun-box side by side with forsun 0.1.4.

Each client process opens one connection (TSocket + TBufferedTransport +
accelerated TBinaryProtocol, the generated client) and calls
``createTimeout`` with distinct keys, one at a time, for ``--seconds``.
Reported: creates per second summed over 1 and over 4 client processes.

    python bench/thrift_bench.py [--seconds 5] [--rounds 1] [--forsun-peer build/forsun-peer]

forsun-box runs on its default (durable) SQLite store; forsun runs its
``mem`` store. Each server is warmed up before it is measured (forsun answers
its first call only after a few seconds of lazy start-up, which would
otherwise be counted against its 1-client rate). With ``--rounds N`` the
servers are measured alternately N times, each on a fresh server, and the
median is reported: on a shared machine, background load then falls on both
alike. The forsun peer is installed by
``bash ../shared/peers/setup_forsun_peer.sh build/forsun-peer``; without
it only forsun-box is measured.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def client(port: int, tag: str, seconds: float, start_at: float, out: mp.Queue) -> None:
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport

    from forsun_box.thrift.forsun import Forsun

    transport = TTransport.TBufferedTransport(TSocket.TSocket("127.0.0.1", port))
    c = Forsun.Client(TBinaryProtocol.TBinaryProtocolAccelerated(transport))
    transport.open()
    params = {"cmd": "true"}
    while time.time() < start_at:
        time.sleep(0.001)
    n = 0
    end = start_at + seconds
    while time.time() < end:
        c.createTimeout(f"{tag}-{n}", 3600, 0, 0, 0, 0, 0, 1, "shell", params)
        n += 1
    transport.close()
    out.put(n)


def warm_up(port: int, seconds: float = 0.5, timeout: float = 60.0) -> None:
    """Call until the server answers, then for ``seconds`` more (not measured)."""
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport

    from forsun_box.thrift.forsun import Forsun

    sock = TSocket.TSocket("127.0.0.1", port)
    sock.setTimeout(timeout * 1000)
    transport = TTransport.TBufferedTransport(sock)
    c = Forsun.Client(TBinaryProtocol.TBinaryProtocolAccelerated(transport))
    transport.open()
    try:
        c.createTimeout("warm-up-0", 3600, 0, 0, 0, 0, 0, 1, "shell", {"cmd": "true"})
        end = time.monotonic() + seconds
        n = 1
        while time.monotonic() < end:
            c.createTimeout(f"warm-up-{n}", 3600, 0, 0, 0, 0, 0, 1, "shell", {"cmd": "true"})
            n += 1
    finally:
        transport.close()


def measure(port: int, procs: int, seconds: float, tag: str) -> float:
    out: mp.Queue = mp.Queue()
    start_at = time.time() + 1.0
    ps = [
        mp.Process(target=client, args=(port, f"{tag}-{i}", seconds, start_at, out))
        for i in range(procs)
    ]
    for p in ps:
        p.start()
    total = sum(out.get(timeout=seconds + 60) for _ in ps)
    for p in ps:
        p.join()
    return total / seconds


def start(name: str, peer: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, http = free_port(), free_port()
    if name == "forsun-box":
        argv = [
            sys.executable,
            "-m",
            "forsun_box",
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            f"127.0.0.1:{http}",
            "--data-dir",
            str(workdir / "box"),
            "--log-level",
            "WARNING",
        ]
    else:
        # its dump-on-exit file in the run's directory: the default, in $HOME, is
        # loaded by every later forsun and grows with each run
        argv = [
            str(peer / "bin" / "forsund"),
            "--nodemon",
            "--driver",
            "mem",
            "--driver-mem-store-file",
            str(workdir / "forsun.dump"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            f"127.0.0.1:{http}",
            "--log-level",
            "WARNING",
        ]
    with open(workdir / f"{name}.log", "wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(workdir), start_new_session=True
        )
    wait_port(port, proc)
    return proc, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the servers alternately this many times; report the median",
    )
    ap.add_argument("--forsun-peer", type=Path, default=ROOT / "build" / "forsun-peer")
    args = ap.parse_args()
    names = ["forsun-box"]
    if (args.forsun_peer / "bin" / "forsund").exists():
        names.append("forsun")
    else:
        print(f"forsun peer not found at {args.forsun_peer}: measuring forsun-box only")
    runs: dict[str, dict[int, list[float]]] = {name: {1: [], 4: []} for name in names}
    workdir = Path(tempfile.mkdtemp(prefix="thrift-bench-"))
    try:
        for r in range(args.rounds):
            for name in names:
                rundir = workdir / f"{name}-{r}"
                rundir.mkdir()
                proc, port = start(name, args.forsun_peer, rundir)
                try:
                    warm_up(port)
                    for n in (1, 4):
                        runs[name][n].append(measure(port, n, args.seconds, f"{name}-{r}-{n}"))
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
            if args.rounds > 1:
                print(
                    f"round {r + 1}: "
                    + "; ".join(
                        f"{name} {runs[name][1][-1]:,.0f} / {runs[name][4][-1]:,.0f}"
                        for name in names
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {name: {n: statistics.median(v) for n, v in r.items()} for name, r in runs.items()}
    print(f"{'server':<12} {'1 client':>12} {'4 clients':>12}   (createTimeout/s)")
    for name, r in results.items():
        print(f"{name:<12} {r[1]:>12,.0f} {r[4]:>12,.0f}")
    if "forsun" in results:
        box, ref = results["forsun-box"], results["forsun"]
        print(
            f"{'ratio':<12} {box[1] / ref[1]:>11.2f}x {box[4] / ref[4]:>11.2f}x"
            "   (targets: >= 1.2x, >= 1.5x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
