"""Crash test driver: load over HTTP and Thrift while the server is SIGKILLed.

Each round starts forsun-box on the same data directory, runs three load
threads (one HTTP v1 client, one Thrift client through the generated
``Forsun.Client``, both creating and removing plans, and one HTTP v1 client
creating arrays of BULK_PLANS plans, big enough for the create worker to
build them), and SIGKILLs the server at a random moment. Every request whose answer arrived is *acknowledged*;
requests cut off by the kill are *unknown* and promise nothing either way.

Plans are of two kinds:

- ``far``: due in an hour, checked for presence after every restart;
- ``near``: due 0.5-2.5 s after creation, with an ``http`` action calling a
  :class:`tests.helpers.Sink` at ``/fire/<key>``: each must fire at least
  once by the end of the run (before the kill or by catch-up after it).

Some acknowledged plans of both kinds are removed; an acknowledged remove
must stay removed. With the ``mem`` store a kill loses what was acknowledged
after the last snapshot written took its copy of the state (the snapshot's
header says when, ``taken_ms``) and nothing older: :class:`Report` separates
those from real losses, and says how far behind the kills the snapshots were.

Run the full variant (20 rounds per store) with::

    .venv/bin/python -m tests.chaos --full
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from forsun_box.thrift.forsun import Forsun
from tests.helpers import Server, Sink, call, wait_until

FAR_S = 3600
BULK_PLANS = 300  # about 40 KiB of JSON: built in the create worker
BULK_PAUSE_S = 0.5  # between two arrays (the mem store snapshots every plan every 0.2 s)


@dataclass
class Ack:
    """An acknowledged operation: key, what, and when the answer arrived (ms)."""

    key: str
    op: str  # "create", "remove", or "unknown" (a remove cut off by the kill)
    kind: str  # "far" or "near"
    at_ms: int
    due_ms: int = 0
    round_no: int = 0  # the round it was made in: the kill ending that round follows it


@dataclass
class Report:
    """What a crash run saw; ``failures`` empty means every promise held."""

    driver: str
    rounds: int = 0
    acked_creates: int = 0
    acked_removes: int = 0
    unknown: int = 0
    near_acked: int = 0
    fired_keys: int = 0
    duplicates: int = 0
    excused: int = 0  # mem only: acknowledgements after the last snapshot before a kill
    #: mem only: per kill, how long before it the state in the last snapshot was taken (ms)
    snapshot_lags_ms: list[int] = field(default_factory=list)
    #: mem only: kills whose last snapshot was taken after that round's first acknowledgement
    snapshots_under_load: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.driver}: {self.rounds} rounds, {self.acked_creates} acked creates, "
            f"{self.acked_removes} acked removes, {self.unknown} cut off by the kill, "
            f"{self.near_acked} due plans -> {self.fired_keys} fired, "
            f"{self.duplicates} duplicate firings, {self.excused} lost after the last snapshot, "
            f"{len(self.failures)} failures"
            + (
                f"; snapshots taken {min(self.snapshot_lags_ms)}-{max(self.snapshot_lags_ms)} ms "
                f"before the kills, {self.snapshots_under_load} of them under load"
                if self.snapshot_lags_ms
                else ""
            )
        )


@dataclass
class Kill:
    """A SIGKILL (ms) and, for mem, when the last snapshot took the state a restart
    finds (None for the durable stores: the state at the kill)."""

    at_ms: int
    state_ms: int | None = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Load:
    """Both load threads of one round, sharing the ledger of acknowledgements."""

    def __init__(
        self,
        server: Server,
        sink: Sink,
        round_no: int,
        rng: random.Random,
        ledger: dict[str, list[Ack]],
        lock: threading.Lock,
    ) -> None:
        self.server = server
        self.sink = sink
        self.round_no = round_no
        self.seed = rng.random()
        self.ledger = ledger
        self.lock = lock
        self.stop = threading.Event()
        self.unknown = 0
        self.live: dict[str, list[str]] = {"http": [], "thrift": []}

    def _body(self, key: str, kind: str) -> tuple[int, dict[str, str]]:
        if kind == "far":
            return FAR_S * 1000, {"url": self.sink.url(f"/far/{key}")}
        return 0, {"url": self.sink.url(f"/fire/{key}")}

    def _record(self, ack: Ack) -> None:
        ack.round_no = self.round_no
        with self.lock:
            self.ledger.setdefault(ack.key, []).append(ack)

    def run_http(self) -> None:
        rng = random.Random(self.seed)
        i = 0
        while not self.stop.is_set():
            i += 1
            live = self.live["http"]
            if live and rng.random() < 0.25:
                key = live.pop(rng.randrange(len(live)))
                try:
                    status, body = call(
                        self.server.http_port, "DELETE", f"/v1/plan?key={key}", timeout=5
                    )
                except OSError:
                    # cut off by the kill: it may or may not have been committed
                    self._record(Ack(key, "unknown", _kind(key), _now_ms()))
                    self.unknown += 1
                    return
                if status == 200 and body["errcode"] in (0, 1003):
                    self._record(Ack(key, "remove", _kind(key), _now_ms()))
                continue
            kind = "near" if rng.random() < 0.4 else "far"
            key = f"h{self.round_no}:{i}:{kind}"
            delay_ms = rng.randint(500, 2500) if kind == "near" else FAR_S * 1000
            body = {
                "key": key,
                "seconds": delay_ms // 1000,
                "count": 1,
                "action": "http",
                "params": self._body(key, kind)[1],
            }
            if kind == "near":
                # sub-second delays: v1 takes whole seconds, so round up
                body["seconds"] = max(1, round(delay_ms / 1000))
                delay_ms = body["seconds"] * 1000
            sent = _now_ms()
            try:
                status, reply = call(self.server.http_port, "PUT", "/v1/plan", body, timeout=5)
            except OSError:
                self.unknown += 1
                return
            if status == 200 and reply["errcode"] == 0:
                self._record(Ack(key, "create", kind, _now_ms(), sent + delay_ms))
                live.append(key)

    def run_bulk(self) -> None:
        """Arrays of BULK_PLANS plans, far and near; an answer acknowledges every one."""
        rng = random.Random(self.seed + 2)
        i = 0
        while not self.stop.is_set():
            i += 1
            plans = []
            delays: dict[str, tuple[str, int]] = {}
            for j in range(BULK_PLANS):
                kind = "near" if rng.random() < 0.2 else "far"
                key = f"b{self.round_no}:{i}:{j}:{kind}"
                seconds = rng.randint(1, 3) if kind == "near" else FAR_S
                plans.append(
                    {
                        "key": key,
                        "seconds": seconds,
                        "count": 1,
                        "action": "http",
                        "params": self._body(key, kind)[1],
                    }
                )
                delays[key] = (kind, seconds * 1000)
            sent = _now_ms()
            try:
                status, reply = call(self.server.http_port, "PUT", "/v1/plan", plans, timeout=10)
            except OSError:
                self.unknown += 1  # cut off by the kill: these promise nothing
                return
            if status == 200 and reply["errcode"] == 0:
                now = _now_ms()
                for key, (kind, delay_ms) in delays.items():
                    self._record(Ack(key, "create", kind, now, sent + delay_ms))
            self.stop.wait(BULK_PAUSE_S)

    def run_thrift(self) -> None:
        rng = random.Random(self.seed + 1)
        try:
            sock = TSocket.TSocket("127.0.0.1", self.server.thrift_port)
            sock.setTimeout(5000)
            transport = TTransport.TBufferedTransport(sock)
            client = Forsun.Client(TBinaryProtocol.TBinaryProtocol(transport))
            transport.open()
        except Exception:
            return
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                live = self.live["thrift"]
                if live and rng.random() < 0.25:
                    key = live.pop(rng.randrange(len(live)))
                    try:
                        client.remove(key)
                    except Exception as e:
                        if type(e).__name__ != "ForsunPlanError":
                            self._record(Ack(key, "unknown", _kind(key), _now_ms()))
                            self.unknown += 1
                            return
                    self._record(Ack(key, "remove", _kind(key), _now_ms()))
                    continue
                kind = "near" if rng.random() < 0.4 else "far"
                key = f"t{self.round_no}:{i}:{kind}"
                seconds = rng.randint(1, 2) if kind == "near" else FAR_S
                sent = _now_ms()
                try:
                    client.createTimeout(
                        key, seconds, 0, 0, 0, 0, 0, 1, "http", self._body(key, kind)[1]
                    )
                except Exception:
                    self.unknown += 1
                    return
                self._record(Ack(key, "create", kind, _now_ms(), sent + seconds * 1000))
                live.append(key)
        finally:
            transport.close()


def _kind(key: str) -> str:
    return key.rsplit(":", 1)[1]


def _final_state(ledger: dict[str, list[Ack]]) -> dict[str, Ack]:
    """The last acknowledged operation of every key."""
    return {key: acks[-1] for key, acks in ledger.items()}


def run_crash(
    data_dir: Path,
    driver: str,
    rounds: int,
    seed: int = 1,
    extra: tuple[str, ...] = (),
    log: bool = False,
) -> Report:
    """``rounds`` rounds of load + SIGKILL on ``driver``; then a final check."""
    rng = random.Random(seed)
    report = Report(driver)
    sink = Sink()
    ledger: dict[str, list[Ack]] = {}
    lock = threading.Lock()
    kills: list[Kill] = []
    args = ("--driver", driver, "--catchup", "fire_once", *extra)
    try:
        for round_no in range(rounds):
            server = Server(data_dir, *args).start()
            # after a restart, check what the previous rounds promised
            _check_store(server, ledger, kills, report)
            started_ms = _now_ms()
            load = _Load(server, sink, round_no, rng, ledger, lock)
            threads = [
                threading.Thread(target=load.run_http, daemon=True),
                threading.Thread(target=load.run_thrift, daemon=True),
                threading.Thread(target=load.run_bulk, daemon=True),
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))  # a random gap between faults
            server.kill()
            killed_ms = _now_ms()
            load.stop.set()
            for t in threads:
                t.join(10)
            if driver == "mem":
                taken_ms = _snapshot_taken_ms(data_dir / "forsun-box.mem")
                kills.append(Kill(killed_ms, taken_ms))
                report.snapshot_lags_ms.append(killed_ms - taken_ms)
                first_ack = min(
                    (a.at_ms for acks in ledger.values() for a in acks if a.at_ms > started_ms),
                    default=killed_ms,
                )
                report.snapshots_under_load += taken_ms > first_ack
            else:
                kills.append(Kill(killed_ms))
            report.unknown += load.unknown
            report.rounds += 1
            if log:
                print(f"round {round_no}: {len(ledger)} keys so far", file=sys.stderr)
        # the last restart: everything due fires by catch-up, then check it all
        server = Server(data_dir, *args).start()
        try:
            last_due = max(
                (a.due_ms for acks in ledger.values() for a in acks if a.kind == "near"), default=0
            )
            wait_s = max(0.0, (last_due - _now_ms()) / 1000) + 3
            expected = _expected_fired(ledger, kills)
            wait_until(lambda: expected <= _fired_keys(sink), timeout=wait_s + 10, interval=0.1)
            _check_store(server, ledger, kills, report)
            fired = _fired_counts(sink)
            missing = [k for k in expected if k not in fired]
            for key in missing[:5]:
                report.failures.append(
                    f"{key} in the store: {server.call('GET', f'/v1/plan?key={key}')[1]}"
                )
        finally:
            server.stop()
        fired = _fired_counts(sink)
        report.fired_keys = len(fired)
        report.duplicates = sum(n - 1 for n in fired.values())
        report.acked_creates = sum(1 for acks in ledger.values() for a in acks if a.op == "create")
        report.acked_removes = sum(1 for acks in ledger.values() for a in acks if a.op == "remove")
        near = [
            k
            for k, acks in ledger.items()
            if acks[0].op == "create"
            and acks[0].kind == "near"
            and not any(a.op in ("remove", "unknown") for a in acks)
        ]
        report.near_acked = len(near)
        for key in near:
            if key not in fired:
                if _excused(ledger[key][0], kills):
                    report.excused += 1
                else:
                    report.failures.append(f"due plan {key} never fired")
    finally:
        sink.close()
    return report


def _snapshot_taken_ms(path: Path) -> int:
    """When the state in the mem snapshot at ``path`` was taken (0: no snapshot)."""
    with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
        return int(orjson.loads(f.readline())["taken_ms"])
    return 0


def _excused(ack: Ack, kills: list[Kill]) -> bool:
    """Whether ``ack`` may be lost: the state a restart after the kill that followed it
    found was taken before it arrived (mem only). Both are whole ms: a snapshot taken in
    the ms the answer arrived may lack the change."""
    if ack.round_no >= len(kills):
        return False
    state_ms = kills[ack.round_no].state_ms
    return state_ms is not None and state_ms <= ack.at_ms


def _expected_fired(ledger: dict[str, list[Ack]], kills: list[Kill]) -> set[str]:
    return {
        k
        for k, acks in ledger.items()
        if acks[0].kind == "near"
        and not any(a.op in ("remove", "unknown") for a in acks)
        and not _excused(acks[0], kills)
    }


def _fired_counts(sink: Sink) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, path, _ in list(sink.hits):
        if path.startswith("/fire/"):
            key = path[len("/fire/") :]
            counts[key] = counts.get(key, 0) + 1
    return counts


def _fired_keys(sink: Sink) -> set[str]:
    return set(_fired_counts(sink))


def _check_store(
    server: Server,
    ledger: dict[str, list[Ack]],
    kills: list[Kill],
    report: Report,
) -> None:
    """Far plans acknowledged as created are there; acknowledged removes are gone."""
    present = set(server.ok("GET", "/v1/keys?prefix="))
    for key, last in _final_state(ledger).items():
        if last.kind != "far":
            continue
        if last.op == "create" and key not in present:
            if _excused(last, kills):
                continue
            report.failures.append(f"acknowledged create {key} lost")
        elif last.op == "remove" and key in present:
            if _excused(last, kills):
                continue
            report.failures.append(f"acknowledged remove {key} came back")
    # keep the ledger in step with what survived, so later rounds judge the present
    if any(k.state_ms is not None for k in kills):
        for key, last in _final_state(ledger).items():
            if last.kind == "far" and last.op == "create" and key not in present:
                ledger[key].append(Ack(key, "remove", "far", _now_ms(), round_no=len(kills)))
            elif last.kind == "far" and last.op == "remove" and key in present:
                ledger[key].append(Ack(key, "create", "far", _now_ms(), round_no=len(kills)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="20 rounds per store")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--driver", choices=("sqlite", "mem", "both"), default="both")
    opts = parser.parse_args(argv)
    rounds = opts.rounds or (20 if opts.full else 4)
    drivers = ("sqlite", "mem") if opts.driver == "both" else (opts.driver,)
    failed = False
    for driver in drivers:
        tmp = Path(tempfile.mkdtemp(prefix=f"forsun-box-crash-{driver}-"))
        try:
            report = run_crash(
                tmp, driver, rounds, seed=opts.seed, extra=mem_options(driver), log=True
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"seed {opts.seed}: {report.summary()}")
        for f in report.failures[:20]:
            print("  FAIL", f)
        failed |= bool(report.failures)
    return 1 if failed else 0


MEM_TIME_RATE_S = 0.2


def mem_options(driver: str) -> tuple[str, ...]:
    """Extra flags for ``driver``: mem snapshots every 0.2 s."""
    if driver != "mem":
        return ()
    return ("--conf", _mem_conf())


def _mem_conf() -> str:
    path = Path(tempfile.gettempdir()) / f"forsun-box-chaos-mem-{MEM_TIME_RATE_S}.conf"
    path.write_text(f"[store]\nmem_time_rate = {MEM_TIME_RATE_S}\n")
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
