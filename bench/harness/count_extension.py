"""Bench extension: the ``bench_count`` action, which only counts and records lateness.

Copied into a bench server's extensions folder by ``bench/scale.py``. Each firing
appends its lateness (ms from the plan's due instant to the action's start) to an
in-memory array; the samples are flushed, a few times a second, to the file named
by the ``BENCH_LATENESS_FILE`` environment variable (raw float64, native order), so
the harness reads how many fired and how late without any network traffic. Garbage
collections of 10 ms or more are written to ``BENCH_GC_FILE`` at shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from array import array
from typing import ClassVar

from forsun_box.actions.base import Action
from forsun_box.extensions import Extension

FLUSH_SECONDS = 0.25


class _Samples:
    pending = array("d")
    armed = False

    @classmethod
    def add(cls, lateness_ms: float) -> None:
        cls.pending.append(lateness_ms)
        if not cls.armed:
            cls.armed = True
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, cls.flush)

    @classmethod
    def flush(cls) -> None:
        cls.armed = False
        path = os.environ.get("BENCH_LATENESS_FILE")
        samples, cls.pending = cls.pending, array("d")
        if path and samples:
            with open(path, "ab") as f:
                samples.tofile(f)


class BenchCountAction(Action):
    """Counts the firing; nothing else. A plain function: it returns at once, so the
    engine runs it inline, as it does any extension action written this way."""

    def execute(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        due = self.plan.next_time
        if due is not None:
            _Samples.add(time.time() * 1000.0 - due)


class _GcPauses:
    """Collections of 10 ms or more (generation, ms, wall time), for ``BENCH_GC_FILE``."""

    started = 0.0
    pauses: ClassVar[list[tuple[int, float, float]]] = []

    @classmethod
    def callback(cls, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            cls.started = time.perf_counter()
            return
        ms = (time.perf_counter() - cls.started) * 1000
        if ms >= 10:
            cls.pauses.append((info["generation"], round(ms, 1), round(time.time(), 3)))

    @classmethod
    def write(cls) -> None:
        path = os.environ.get("BENCH_GC_FILE")
        if path:
            with open(path, "w") as f:
                f.writelines(f"{g} {ms} {at}\n" for g, ms, at in cls.pauses)


class BenchCountExtension(Extension):
    name = "bench_count"

    def register(self) -> None:
        self.register_action("bench_count", BenchCountAction)

    def init(self) -> None:
        gc.callbacks.append(_GcPauses.callback)

    def uninit(self) -> None:
        _Samples.flush()
        _GcPauses.write()
