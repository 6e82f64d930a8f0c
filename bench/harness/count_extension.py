"""Bench extension: the ``bench_count`` action, which only counts and records lateness.

Copied into a bench server's extensions folder by ``bench/scale.py``. Each firing
appends its lateness (ms from the plan's due instant to the action's start) to an
in-memory array; the samples are flushed, a few times a second, to the file named
by the ``BENCH_LATENESS_FILE`` environment variable (raw float64, native order), so
the harness reads how many fired and how late without any network traffic.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array

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


class BenchCountExtension(Extension):
    name = "bench_count"

    def register(self) -> None:
        self.register_action("bench_count", BenchCountAction)

    def uninit(self) -> None:
        _Samples.flush()
