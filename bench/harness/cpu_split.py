"""Where a burst's CPU time went, by process and thread: ``perf record -a`` around it.

A burst that saturates the cores is as fast as the work beside it is small; this says how
big that work is. ``recorded(path)`` samples every CPU (499 Hz, timestamps on
CLOCK_MONOTONIC, so they compare with ``time.monotonic()``) while its block runs;
``split(path, start, end, roles)`` counts the samples between ``start`` and ``end`` by
the role of the thread they fell in: ``roles`` maps a pid (its main thread) or a tid to a
name, a pid's other threads count as ``NAME threads``, pid 0 is ``idle`` and every other
process (the commands a shell burst runs, whatever else ran) is ``other``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

RATE_HZ = 499
_SAMPLE = re.compile(rb"^\s*(\d+)/(\d+)\s+(\d+\.\d+):")


def available() -> str | None:
    """None when ``perf record -a`` can run here, else why not."""
    if shutil.which("perf") is None:
        return "perf is not installed"
    probe = subprocess.run(
        ["perf", "record", "-a", "-o", os.devnull, "--", "true"],
        capture_output=True,
        check=False,
    )
    return None if probe.returncode == 0 else probe.stderr.decode(errors="replace").strip()


@contextlib.contextmanager
def recorded(path: Path) -> Iterator[None]:
    """Every CPU sampled into ``path`` while the block runs."""
    proc = subprocess.Popen(
        [
            *("perf", "record", "-a", "-F", str(RATE_HZ), "-k", "CLOCK_MONOTONIC"),
            *("-o", str(path), "--quiet"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def split(path: Path, start: float, end: float, roles: dict[int, str]) -> dict[str, float]:
    """Shares (%) of the samples in ``path`` between ``start`` and ``end`` (monotonic
    seconds) by role, largest first; ``samples`` holds their count."""
    out = subprocess.run(
        ["perf", "script", "-i", str(path), "-F", "pid,tid,time"],
        capture_output=True,
        check=False,
    ).stdout
    return shares(out.splitlines(), start, end, roles)


def shares(
    lines: Iterable[bytes], start: float, end: float, roles: dict[int, str]
) -> dict[str, float]:
    """:func:`split` of ``perf script -F pid,tid,time`` lines."""
    counts: collections.Counter[str] = collections.Counter()
    for line in lines:
        m = _SAMPLE.match(line)
        if m is None or not start <= float(m.group(3)) < end:
            continue
        pid, tid = int(m.group(1)), int(m.group(2))
        if pid == 0:
            role = "idle"
        elif tid in roles:
            role = roles[tid]
        elif pid in roles:
            role = roles[pid] + " threads"
        else:
            role = "other"
        counts[role] += 1
    total = sum(counts.values())
    found = {role: round(100 * n / total, 1) for role, n in counts.most_common()} if total else {}
    return {**found, "samples": total}
