"""Bursts at one instant: forsun-box's lateness next to the machine's own limit, in one run.

    .venv/bin/python bench/burst.py                       # all scenarios, 3 rounds, ~8 minutes
    .venv/bin/python bench/burst.py --sizes 2000 --kinds http-close --rounds 1
    .venv/bin/python bench/burst.py --profile DIR         # py-spy of forsun-box's bursts
    .venv/bin/python bench/burst.py --cpu DIR             # perf: where each burst's CPU went
    .venv/bin/python bench/burst.py --pin-sink 0          # the receivers on the first CPU only
    .venv/bin/python bench/burst.py --pin-sink 0 --pin-sender 1   # ... and http's senders on the second

Every scenario fires N plans (``--sizes``, default 2,000 and 10,000) due at the same whole
second, once through a bare client that is the machine's limit and once through a running
forsun-box server (``python -m forsun_box serve``, default SQLite store), into the same
receiver, alternating, ``--rounds`` times (default 3). Kinds:

- ``http-close``: the ``http`` action into ``harness/fast_sink.py --close`` (every answer
  closes its connection, so every request opens one). Limit: libcurl's multi interface
  (pycurl ``CurlMulti``, the library the action uses) with every easy handle set up before
  the instant, 256 of them added at it and each of the others as one ends: at most
  ``http_max_clients`` (256) connections and transfers at once, as the action has.
- ``http-keepalive``: the same into the keep-alive sink; both sides first send 256
  requests (a couple of seconds before the burst) so that their connections are open.
- ``shell``: the ``shell`` action running ``echo KEY DUE >FIFO``; the sink reads the named
  pipe and stamps each line. Limit: a loop of ``os.posix_spawn`` of the same
  ``/bin/sh -c`` command lines, argv and environment built before the instant, then
  ``waitpid`` of them all.
- ``inproc``: an in-process action (``harness/count_extension.py``, which records its own
  start minus the due instant). Limit: a plain loop calling a function N times at the instant.

Lateness = arrival at the receiver minus the due instant. Printed per scenario: the medians
over the rounds of p50 / p99 / max of each side, the median of the rounds' p99 ratios
(forsun-box ÷ limit), forsun-box's missed plans (not arrived by due + 30 s) and the p99 of
single v1 creates sent one at a time on one connection from a second before the burst to
its end (the API's latency during the burst). A JSON file has every round.

Before the rounds one http plan is fired, so that the firing process (started with the
service's first request) runs when the first round comes. ``--pin-sink CPU`` runs the
receivers on one CPU, ``--pin-sender CPU`` the sender of the http bursts on another: the
bare client's thread for its burst, forsun-box's firing process for its own; the service
and the create probe stay where the kernel puts them, on both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pycurl

from forsun_box.actions.base import ActionSettings
from forsun_box.firing.curl import Request, setup_handle

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from harness import cpu_split  # noqa: E402
from harness.client import V1Client, encode  # noqa: E402
from harness.servers import (  # noqa: E402
    BOX,
    HOST,
    Server,
    ServerConfig,
    free_port,
    running_process,
    start_server,
)

HARNESS = BENCH_DIR / "harness"
SINK = HARNESS / "fast_sink.py"
KINDS = ("http-close", "http-keepalive", "shell", "inproc")
GRACE_S = 30  # not arrived by due + 30 s: missed
MAX_CLIENTS = 256  # the http action's default http_max_clients
WARM = 256  # keep-alive: requests sent first, to open the connections
CREATE_BATCH = 2_000


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=60) as resp:
        return json.loads(resp.read())


def _sleep_until(at_s: float) -> None:
    while True:
        left = at_s - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.05) if left < 0.2 else left - 0.1)


class Sink:
    """A fast_sink process; records are read from where the last read stopped."""

    def __init__(self, port: int, pid: int, fifo: str = "") -> None:
        self.port = port
        self.pid = pid
        self.fifo = fifo
        self.seen = 0

    def count(self) -> int:
        return int(_get(self.port, "/count")["count"])

    def take(self) -> list[list[Any]]:
        records: list[list[Any]] = _get(self.port, f"/dump?since={self.seen}")
        self.seen += len(records)
        return records

    def wait(self, n: int, deadline: float) -> None:
        target = self.seen + n
        while time.time() < deadline and self.count() < target:
            time.sleep(0.2)


@contextlib.contextmanager
def sink(
    budget_s: float, close: bool = False, fifo: str = "", cpu: int | None = None
) -> Iterator[Sink]:
    """A sink process (``cpu``: run only on that CPU)."""
    port = free_port()
    args = [sys.executable, str(SINK), "--port", str(port), "--max-seconds", str(budget_s)]
    if close:
        args.append("--close")
    if fifo:
        args += ["--fifo", fifo]
    with running_process(args, port, "/count", "the sink", ready_timeout=15) as proc:
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        yield Sink(port, proc.pid, fifo)


def lateness(records: list[list[Any]], keys: set[str]) -> tuple[list[float], int]:
    """Sorted lateness (ms) of the first arrival of each key in ``keys``; and the missed."""
    first: dict[str, float] = {}
    for key, due, arrival in records:
        if key in keys and key not in first:
            first[key] = arrival - due
    late = sorted(v for v in first.values() if v <= GRACE_S * 1000)
    return late, len(keys) - len(late)


def summary(late: list[float], missed: int) -> dict[str, Any]:
    total = len(late) + missed

    def pct(p: float) -> float | None:
        rank = max(1, -(-total * p // 100))
        return late[int(rank) - 1] if rank <= len(late) else None

    return {"n": total, "missed": missed, "p50": pct(50), "p99": pct(99), "max": pct(100)}


# -- the limits ------------------------------------------------------------------------


def _curl_handle(url: str, ts: int, key: str) -> pycurl.Curl:
    """A handle for the same request the http action sends: the same options (as its
    client sets them) and headers."""
    request = Request(
        url,
        headers=[("X-Forsun-Timestamp", str(ts)), ("X-Forsun-Firing-Id", f"0:{ts * 1000}:{key}")],
        user_agent=ActionSettings().http_user_agent,
    )
    curl = pycurl.Curl()
    setup_handle(curl, request)
    curl.setopt(pycurl.WRITEFUNCTION, lambda data: None)
    return curl


def _drive(multi: pycurl.CurlMulti, handles: list[pycurl.Curl]) -> None:
    """Send every handle, at most ``MAX_CLIENTS`` in libcurl at once, the next added as
    one ends (libcurl's own queue of handles waiting for a connection costs more the
    longer it is: all 10,000 added at once make a slower client)."""
    waiting = iter(handles)
    running = 0
    for curl in itertools.islice(waiting, MAX_CLIENTS):
        multi.add_handle(curl)
        running += 1
    deadline = time.monotonic() + GRACE_S
    while running and time.monotonic() < deadline:
        ret, _ = multi.perform()
        while ret == pycurl.E_CALL_MULTI_PERFORM:
            ret, _ = multi.perform()
        added = False
        while True:
            queued, ok, failed = multi.info_read()
            for curl in [*ok, *(f[0] for f in failed)]:
                multi.remove_handle(curl)
                running -= 1
                following = next(waiting, None)
                if following is not None:
                    multi.add_handle(following)
                    running += 1
                    added = True
            if not queued:
                break
        if not added:
            multi.select(0.1)
    for curl in handles:
        with contextlib.suppress(pycurl.error):
            multi.remove_handle(curl)
        curl.close()


def bare_http(sink: Sink, n: int, tag: str, keepalive: bool, due_s: int) -> dict[str, Any]:
    multi = pycurl.CurlMulti()
    multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, MAX_CLIENTS)
    multi.setopt(pycurl.M_MAXCONNECTS, MAX_CLIENTS)
    base = f"http://{HOST}:{sink.port}/hit"
    due_ms = due_s * 1000
    keys = [f"{tag}-{i}" for i in range(n)]
    if keepalive:
        _drive(multi, [_curl_handle(f"{base}?key=warm&due=0", 0, "warm") for _ in range(WARM)])
        sink.wait(WARM, time.time() + 10)
        sink.take()
    handles = [_curl_handle(f"{base}?key={k}&due={due_ms}", due_s, k) for k in keys]
    _sleep_until(due_s)
    _drive(multi, handles)
    multi.close()
    sink.wait(n, due_s + GRACE_S)
    return {**summary(*lateness(sink.take(), set(keys))), "due_s": due_s}


def bare_shell(sink: Sink, n: int, tag: str, due_s: int) -> dict[str, Any]:
    due_ms = due_s * 1000
    keys = [f"{tag}-{i}" for i in range(n)]
    env = dict(os.environ)
    argvs = [["/bin/sh", "-c", f"echo {k} {due_ms} >{sink.fifo}"] for k in keys]
    _sleep_until(due_s)
    spawn = os.posix_spawn
    pids = [spawn("/bin/sh", argv, env) for argv in argvs]
    for pid in pids:
        os.waitpid(pid, 0)
    sink.wait(n, due_s + GRACE_S)
    return {**summary(*lateness(sink.take(), set(keys))), "due_s": due_s}


def bare_inproc(n: int, due_s: int) -> dict[str, Any]:
    due_ms = due_s * 1000.0
    samples = array("d")
    add = samples.append

    def action() -> None:
        add(time.time() * 1000.0 - due_ms)

    _sleep_until(due_s)
    for _ in range(n):
        action()
    return {**summary(sorted(samples), 0), "due_s": due_s}


# -- forsun-box ------------------------------------------------------------------------


def _calendar(key: str, due_s: int, action: str, params: dict[str, str]) -> dict[str, Any]:
    tm = time.localtime(due_s)
    return {
        "key": key,
        "seconds": tm.tm_sec,
        "minute": tm.tm_min,
        "hour": tm.tm_hour,
        "day": tm.tm_mday,
        "month": tm.tm_mon,
        "week": -1,
        "count": 1,
        "action": action,
        "params": params,
    }


def _create(server: Server, plans: list[dict[str, Any]]) -> None:
    client = V1Client(server.http_port)
    try:
        for i in range(0, len(plans), CREATE_BATCH):
            chunk = plans[i : i + CREATE_BATCH]
            client.create_many("POST", encode(chunk), len(chunk))
    finally:
        client.close()


class CreateProbe:
    """``harness/create_probe.py`` against ``server`` from ``start_s`` until :meth:`stop`."""

    def __init__(self, server: Server, start_s: float, tag: str) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, str(HARNESS / "create_probe.py")),
                *("--port", str(server.http_port), "--start", str(start_s), "--tag", tag),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.samples: list[tuple[float, float]] = []  # (sent at, ms)
        self.errors = 0

    def stop(self) -> None:
        try:
            out, _ = self.proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError("the create probe did not stop") from None
        found = json.loads(out)
        self.samples = [(at, ms) for at, ms in found["samples"]]
        self.errors = found["errors"]

    def p99(self, since_s: float) -> float | None:
        values = sorted(ms for at, ms in self.samples if at >= since_s)
        return values[min(len(values) - 1, int(len(values) * 0.99))] if values else None

    def into(self, result: dict[str, Any], since_s: float) -> None:
        """The probe's figures into a burst's ``result``."""
        result["create_p99_ms"] = self.p99(since_s)
        result["create_errors"] = self.errors
        result["creates"] = len(self.samples)


@contextlib.contextmanager
def profiled(server: Server, out: Path | None, seconds: float) -> Iterator[None]:
    """py-spy on the server for ``seconds`` (collapsed stacks in ``out``), if asked."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [
            *(spy, "record", "--pid", str(server.pid), "--rate", "250", "--format", "raw"),
            *("--duration", str(int(seconds) + 1), "--output", str(out), "--nonblocking"),
            "--subprocesses",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def box_burst(
    server: Server,
    kind: str,
    n: int,
    tag: str,
    target: Sink | None,
    samples_file: Path,
    profile: Path | None,
) -> dict[str, Any]:
    due_s = int(time.time()) + 5 + n // 2000
    due_ms = due_s * 1000
    keys = [f"{tag}-{i}" for i in range(n)]
    if kind == "inproc":
        plans = [_calendar(k, due_s, "bench_count", {}) for k in keys]
    elif kind == "shell":
        assert target is not None
        plans = [
            _calendar(k, due_s, "shell", {"cmd": f"echo {k} {due_ms} >{target.fifo}"}) for k in keys
        ]
    else:
        assert target is not None
        base = f"http://{HOST}:{target.port}/hit"
        plans = [_calendar(k, due_s, "http", {"url": f"{base}?key={k}&due={due_ms}"}) for k in keys]
        if kind == "http-keepalive":
            warm_s = due_s - 2
            plans += [
                _calendar(f"{tag}-warm-{i}", warm_s, "http", {"url": f"{base}?key=warm&due=0"})
                for i in range(WARM)
            ]
    offset = samples_file.stat().st_size if samples_file.exists() else 0
    _create(server, plans)
    margin = due_s - time.time()
    probe = CreateProbe(server, due_s - 1, tag)
    load0 = os.getloadavg()
    if profile is not None:
        _sleep_until(due_s - 0.5)
    with profiled(server, profile, 2 + n / 2000):
        if kind == "inproc":
            deadline = time.time() + (due_s - time.time()) + GRACE_S
            while time.time() < deadline:
                size = samples_file.stat().st_size if samples_file.exists() else 0
                if (size - offset) // 8 >= n:
                    break
                time.sleep(0.2)
        else:
            assert target is not None
            if kind == "http-keepalive":
                target.wait(WARM, due_s + GRACE_S)
                target.take()
            target.wait(n, due_s + GRACE_S)
    probe.stop()
    if kind == "inproc":
        with open(samples_file, "rb") as f:
            f.seek(offset)
            got = array("d")
            got.frombytes(f.read())
        late = sorted(v for v in got if v <= GRACE_S * 1000)
        result = summary(late[:n], max(0, n - len(late)))
    else:
        assert target is not None
        result = summary(*lateness(target.take(), set(keys)))
    probe.into(result, due_s - 1)
    result["created_s_before_due"] = round(margin, 2)
    result["due_s"] = due_s
    result["loadavg"] = [round(v, 2) for v in load0]
    return result


# -- the run ---------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "missed" if v is None else f"{v:.0f}"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


@contextlib.contextmanager
def cpu_recorded(directory: Path | None, name: str) -> Iterator[None]:
    """``perf record -a`` of the block into DIRECTORY/NAME.data, if asked."""
    if directory is None:
        yield
        return
    with cpu_split.recorded(directory / f"{name}.data"):
        yield


def cpu_of(
    path: Path, result: dict[str, Any], roles: dict[int, str], before_s: float = 0.0
) -> dict[str, float]:
    """The CPU split of a burst from its due instant to its last arrival, or of the
    ``before_s`` seconds before the instant."""
    due = result["due_s"] - time.time() + time.monotonic()
    start, end = due, due + (result["max"] or GRACE_S * 1000) / 1000
    if before_s:
        start, end = due - before_s, due
    return cpu_split.split(path, start, end, {**roles, os.getpid(): "bench"})


@contextlib.contextmanager
def pinned(pids: list[int], cpu: int | None) -> Iterator[None]:
    """``pids`` run on ``cpu`` only for the block (nothing changes when ``cpu`` is None)."""
    if cpu is None:
        yield
        return
    before = {pid: os.sched_getaffinity(pid) for pid in pids}
    for pid in pids:
        os.sched_setaffinity(pid, {cpu})
    try:
        yield
    finally:
        for pid, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, cpus)


def _sender_cpu(kind: str, args: argparse.Namespace) -> int | None:
    """The CPU ``--pin-sender`` puts the sender of a ``kind`` burst on (http only: a shell
    burst's commands would inherit it), or None."""
    return args.pin_sender if kind.startswith("http") else None


def _bare(
    server: Server, kind: str, n: int, tag: str, target: Sink, args: argparse.Namespace
) -> dict[str, Any]:
    """One burst of the bare limit, with the same create probe beside it as forsun-box's
    (against the server, idle meanwhile)."""
    due_s = int(time.time()) + (2 if kind == "inproc" else 3)
    probe = CreateProbe(server, due_s - 1, "bare-" + tag)
    try:
        # (pid 0: the thread that sends, this one)
        with cpu_recorded(args.cpu, f"bare-{tag}"), pinned([0], _sender_cpu(kind, args)):
            if kind == "inproc":
                result = bare_inproc(n, due_s)
            elif kind == "shell":
                result = bare_shell(target, n, "bare-" + tag, due_s)
            else:
                result = bare_http(target, n, "bare-" + tag, kind == "http-keepalive", due_s)
    finally:
        probe.stop()
    probe.into(result, due_s - 1)
    return result


def _box(
    server: Server,
    kind: str,
    n: int,
    tag: str,
    target: Sink,
    samples_file: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One burst of forsun-box."""
    out = args.profile / f"box-{tag}.txt" if args.profile else None
    cpu = _sender_cpu(kind, args)
    sender = [firing_process(server)] if cpu is not None else []
    with cpu_recorded(args.cpu, f"box-{tag}"), pinned(sender, cpu):
        return box_burst(server, kind, n, "box-" + tag, target, samples_file, out)


def firing_process(server: Server) -> int:
    """The pid of the server's firing process."""
    for child in psutil.Process(server.pid).children():
        with contextlib.suppress(psutil.Error):
            if "firing.worker" in " ".join(child.cmdline()):
                return child.pid
    raise RuntimeError("forsun-box has no firing process")


def first_firing(server: Server, target: Sink) -> None:
    """One http plan fired before the rounds: the firing process starts with the
    service's first request or command, and the first round is to find it running."""
    due_s = int(time.time()) + 2
    url = f"http://{HOST}:{target.port}/hit?key=first&due={due_s * 1000}"
    _create(server, [_calendar("first", due_s, "http", {"url": url})])
    target.wait(1, due_s + GRACE_S)
    target.take()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # unwinds through the `finally` blocks that stop the server and the sinks
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000, 10_000])
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR", help="py-spy output")
    ap.add_argument(
        "--cpu", type=Path, default=None, metavar="DIR", help="perf record -a of every burst"
    )
    ap.add_argument(
        "--pin-sink",
        type=int,
        default=None,
        metavar="CPU",
        help="run the receivers on this CPU only (both sides alike)",
    )
    ap.add_argument(
        "--pin-sender",
        type=int,
        default=None,
        metavar="CPU",
        help="http bursts: the sender (the bare client, the firing process) on this CPU only",
    )
    ap.add_argument("--json", type=Path, default=None, help="results file")
    ap.add_argument("--keep", action="store_true", help="keep the server's temp dir")
    args = ap.parse_args(argv)

    for flag, cpu in (("--pin-sink", args.pin_sink), ("--pin-sender", args.pin_sender)):
        if cpu is not None and cpu not in os.sched_getaffinity(0):
            ap.error(f"{flag} {cpu}: not one of this machine's CPUs we may use")
    workdir = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    (workdir / "data" / "extensions").mkdir(parents=True)
    shutil.copy(HARNESS / "count_extension.py", workdir / "data" / "extensions")
    samples_file = workdir / "lateness.f64"
    os.environ["BENCH_LATENESS_FILE"] = str(samples_file)
    fifo = str(workdir / "shell.fifo")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        why = cpu_split.available()
        if why is not None:
            ap.error(f"--cpu needs perf record -a: {why}")
        args.cpu.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(peer_dir=Path("/nonexistent"), box_python=sys.executable)
    started = datetime.datetime.now(datetime.UTC)
    budget = 3600.0
    rows: list[dict[str, Any]] = []
    server = start_server(config, BOX, workdir=workdir)
    try:
        with (
            sink(budget, close=True, cpu=args.pin_sink) as close_sink,
            sink(budget, fifo=fifo, cpu=args.pin_sink) as keep_sink,
        ):
            first_firing(server, keep_sink)
            for n in args.sizes:
                for kind in args.kinds:
                    target = close_sink if kind == "http-close" else keep_sink
                    rounds = []
                    for r in range(args.rounds):
                        tag = f"{kind}-{n}-{r}"
                        # odd rounds run forsun-box first: whatever one burst leaves the
                        # next (closed connections' ports, caches) falls on both sides
                        box_first = r % 2 == 1
                        print(
                            f"[{time.strftime('%H:%M:%S')}] {tag}"
                            + (" (forsun-box first)" if box_first else ""),
                            flush=True,
                        )
                        if box_first:
                            box = _box(server, kind, n, tag, target, samples_file, args)
                        bare = _bare(server, kind, n, tag, target, args)
                        if not box_first:
                            box = _box(server, kind, n, tag, target, samples_file, args)
                        if args.cpu:
                            sinks = {close_sink.pid: "sink", keep_sink.pid: "sink"}
                            bare["cpu"] = cpu_of(args.cpu / f"bare-{tag}.data", bare, sinks)
                            firing = {firing_process(server): "firing process"}
                            roles = {**sinks, **firing, server.pid: "service"}
                            box_data = args.cpu / f"box-{tag}.data"
                            box["cpu"] = cpu_of(box_data, box, roles)
                            box["cpu_lead"] = cpu_of(box_data, box, roles, before_s=1.0)
                            for side, split in (
                                ("limit", bare["cpu"]),
                                ("forsun-box", box["cpu"]),
                                ("forsun-box, the second before", box["cpu_lead"]),
                            ):
                                shares = ", ".join(f"{k} {v}" for k, v in split.items())
                                print(f"  cpu % {side}: {shares}", flush=True)
                        ratio = box["p99"] / bare["p99"] if box["p99"] and bare["p99"] else None
                        print(
                            f"  limit p99 {_fmt(bare['p99'])} ms, forsun-box p99 "
                            f"{_fmt(box['p99'])} ms (ratio {ratio or 0:.2f}), missed "
                            f"{box['missed']}, create p99 {_fmt(box['create_p99_ms'])} ms, "
                            f"load {box['loadavg'][0]}",
                            flush=True,
                        )
                        rounds.append({"limit": bare, "box": box, "ratio": ratio})
                    rows.append({"kind": kind, "n": n, "rounds": rounds})
                    if not server.alive():
                        raise RuntimeError("forsun-box died")
    finally:
        server.stop(timeout=60)
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    head = (
        f"{'scenario':<22} {'limit p50/p99/max':>20} {'forsun-box p50/p99/max':>24} "
        f"{'p99 ratio':>9} {'missed':>6} {'create p99':>10}"
    )
    print(
        f"\nmedians of {args.rounds} rounds (ms); load average at start: "
        f"{os.getloadavg()[0]:.2f} now"
    )
    print(head)
    for row in rows:
        rs = row["rounds"]

        def med(side: str, field: str, rs: list[dict[str, Any]] = rs) -> str:
            return _fmt(_median([x[side][field] for x in rs]))

        ratio = _median([x["ratio"] for x in rs])
        missed = sum(x["box"]["missed"] for x in rs)
        create = _median([x["box"]["create_p99_ms"] for x in rs])
        print(
            f"{row['kind'] + ' ' + str(row['n']):<22} "
            f"{med('limit', 'p50') + '/' + med('limit', 'p99') + '/' + med('limit', 'max'):>20} "
            f"{med('box', 'p50') + '/' + med('box', 'p99') + '/' + med('box', 'max'):>24} "
            f"{'-' if ratio is None else f'{ratio:.2f}':>9} {missed:>6} {_fmt(create):>10}"
        )
    out_path = args.json or BENCH_DIR / "out" / f"burst-{started:%Y%m%d-%H%M%S}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps(
            {
                "started": started.isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "cpus": os.cpu_count(),
                "pin_sink": args.pin_sink,
                "pin_sender": args.pin_sender,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nresults: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
