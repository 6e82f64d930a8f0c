"""The shell burst without the engine: the firing process next to a bare spawn loop.

    .venv/bin/python bench/shell_ab.py            # 2,000 commands, 3 alternating rounds
    .venv/bin/python bench/shell_ab.py --n 10000 --rounds 5

Both sides run ``/bin/sh -c "echo KEY 0 >FIFO"`` N times, the command lines and
environments built before the instant; a thread of this script reads the FIFO and stamps
each line. The limit is a loop of ``os.posix_spawn`` then ``waitpid`` of them all; the
other side prepares the commands in a firing process (:mod:`forsun_box.firing`) and starts
them all at the instant, as the service does at a burst, with its limits (256 running,
8 per core starting). Printed per round: p99 of the arrivals after the instant on each
side and their ratio; at the end the median ratio. What ``bench/burst.py``'s shell ratio
adds on top of this one is the service's own work during the burst (its API, its records).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forsun_box.actions.base import ActionSettings
from forsun_box.firing.client import FiringProcess, limits_of


class FifoReader(threading.Thread):
    """Stamps every ``KEY ...`` line written to the FIFO with its arrival time."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.arrivals: dict[str, float] = {}

    def run(self) -> None:
        fd = os.open(self.path, os.O_RDWR)  # (read-write: never an end of file)
        rest = b""
        while True:
            chunk = os.read(fd, 65536)
            now = time.time()
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                self.arrivals[line.split()[0].decode()] = now

    def p99(self, keys: list[str], t0: float, deadline_s: float = 60) -> float:
        end = time.time() + deadline_s
        while time.time() < end and sum(k in self.arrivals for k in keys) < len(keys):
            time.sleep(0.05)
        late = sorted(self.arrivals[k] - t0 for k in keys if k in self.arrivals)
        if len(late) < len(keys):
            raise RuntimeError(f"{len(keys) - len(late)} of {len(keys)} never arrived")
        return late[max(0, -(-len(late) * 99 // 100) - 1)] * 1000


def bare(reader: FifoReader, keys: list[str]) -> float:
    env = dict(os.environ)
    argvs = [["/bin/sh", "-c", f"echo {k} 0 >{reader.path}"] for k in keys]
    t0 = time.time()
    pids = [os.posix_spawn("/bin/sh", argv, env) for argv in argvs]
    for pid in pids:
        os.waitpid(pid, 0)
    return reader.p99(keys, t0)


async def firing_process(reader: FifoReader, keys: list[str]) -> float:
    loop = asyncio.get_running_loop()
    process = FiringProcess(loop, limits_of(ActionSettings()))
    try:
        ids = [
            process.prepare_command(["/bin/sh", "-c", f"echo {k} 0 >{reader.path}"], {}, 600)
            for k in keys
        ]
        await asyncio.sleep(1.0)  # set up there, as a second of preparing ahead does
        ended = loop.create_future()
        left = [len(ids)]

        def exited(status: int, output: str, state: int) -> None:
            left[0] -= 1
            if not left[0]:
                ended.set_result(None)

        t0 = time.time()
        for id_ in ids:
            process.start_command(id_, exited)
        await asyncio.wait_for(ended, 120)
        return reader.p99(keys, t0)
    finally:
        process.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-shell-ab-")
    try:
        fifo = os.path.join(workdir, "fifo")
        os.mkfifo(fifo)
        reader = FifoReader(fifo)
        reader.start()
        ratios = []
        for r in range(args.rounds):
            limit = bare(reader, [f"b{r}-{i}" for i in range(args.n)])
            box = asyncio.run(firing_process(reader, [f"f{r}-{i}" for i in range(args.n)]))
            ratios.append(box / limit)
            print(
                f"round {r}: limit p99 {limit:.0f} ms, firing process p99 {box:.0f} ms, "
                f"ratio {box / limit:.2f}, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        print(f"median ratio over {args.rounds} rounds: {statistics.median(ratios):.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
