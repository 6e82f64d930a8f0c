"""Service counters (forsun's ``info`` names) and firing lateness.

Cheap enough to touch on every request and every firing: counters are a
dict of ints, lateness samples go into a bounded ring and are only sorted
when someone asks for percentiles.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forsun_box.store.base import Run

#: forsun's ``info`` counters, in forsun's order
COUNTER_NAMES: tuple[str, ...] = (
    "connecting_count",
    "connected_count",
    "requesting_count",
    "requested_count",
    "requested_error_count",
    "http_connecting_count",
    "http_connected_count",
    "http_requesting_count",
    "http_requested_count",
    "http_requested_error_count",
    "created_count",
    "create_timeouted_count",
    "removed_count",
    "plan_count",
    "timeout_handling_count",
    "timeout_handled_count",
    "action_executing_count",
    "action_executed_count",
    "action_executed_error_count",
    "action_retried_count",
    "timer_loop_count",
    "timer_loop_ready_error_count",
)

LATENESS_SAMPLES = 10_000
MINUTE_MS = 60_000
#: lateness samples kept per minute bucket (a uniform reservoir beyond that)
MINUTE_SAMPLES = 2_000


class Stats:
    """Named integer counters plus a ring of recent firing lateness (ms).

    Known counters read as attributes (``stats.created_count``); extensions
    may :meth:`incr` names of their own, which then appear in :meth:`as_dict`.
    """

    __slots__ = ("_counters", "_lateness", "_lateness_max", "minutes")

    def __init__(self, lateness_samples: int = LATENESS_SAMPLES) -> None:
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._lateness: deque[int] = deque(maxlen=lateness_samples)
        self._lateness_max = 0
        self.minutes = MinuteSeries()

    def __getattr__(self, name: str) -> int:
        # Only called for names that aren't slots: look the counter up.
        try:
            return self._counters[name]
        except KeyError:
            raise AttributeError(name) from None

    def incr(self, name: str, n: int = 1) -> None:
        """Add ``n`` (may be negative, for gauges) to counter ``name``."""
        self._counters[name] = self._counters.get(name, 0) + n

    def decr(self, name: str, n: int = 1) -> None:
        """Subtract ``n`` from counter ``name`` (gauges such as ``action_executing_count``)."""
        self._counters[name] = self._counters.get(name, 0) - n

    def set(self, name: str, value: int) -> None:
        """Set counter ``name`` (gauges the owner recomputes, such as ``plan_count``)."""
        self._counters[name] = value

    def get(self, name: str) -> int:
        """Counter ``name``, 0 if never touched."""
        return self._counters.get(name, 0)

    def as_dict(self) -> dict[str, int]:
        """A copy of every counter."""
        return dict(self._counters)

    def record_lateness(self, ms: int) -> None:
        """Note that a firing started ``ms`` after it was due (negative counts as 0)."""
        ms = ms if ms > 0 else 0
        self._lateness.append(ms)
        if ms > self._lateness_max:
            self._lateness_max = ms

    def lateness_percentiles(self) -> dict[str, int]:
        """``count``, ``p50``, ``p99``, ``max`` over the recent samples; plus
        ``max_ever`` since start. All 0 when nothing has fired yet."""
        samples = sorted(self._lateness)
        n = len(samples)
        if not n:
            return {"count": 0, "p50": 0, "p99": 0, "max": 0, "max_ever": self._lateness_max}
        return {
            "count": n,
            "p50": samples[_rank(n, 0.50)],
            "p99": samples[_rank(n, 0.99)],
            "max": samples[-1],
            "max_ever": self._lateness_max,
        }


class _Minute:
    __slots__ = ("failed", "fired", "samples", "seen")

    def __init__(self) -> None:
        self.fired = 0
        self.failed = 0
        self.samples: list[int] = []
        self.seen = 0


class MinuteSeries:
    """Firings, failures and lateness per wall-clock minute, for the last hour.

    Fed one run record at a time (:meth:`record_run`, the dispatcher's run
    callback); memory is bounded: ``keep`` buckets of at most
    :data:`MINUTE_SAMPLES` lateness samples each.
    """

    def __init__(self, keep: int = 60) -> None:
        self.keep = keep
        self._buckets: dict[int, _Minute] = {}

    def record_run(self, run: Run) -> None:
        """Count one attempt: a first attempt is a firing
        and gives a lateness sample; any attempt that failed is a failure."""
        minute = run.started_ms // MINUTE_MS
        b = self._buckets.get(minute)
        if b is None:
            b = self._buckets[minute] = _Minute()
            if len(self._buckets) > self.keep:
                for old in sorted(self._buckets)[: len(self._buckets) - self.keep]:
                    del self._buckets[old]
        if run.result != 1:
            b.failed += 1
        if run.attempt == 1:
            b.fired += 1
            late = max(0, run.started_ms - run.due_ms)
            b.seen += 1
            if len(b.samples) < MINUTE_SAMPLES:
                b.samples.append(late)
            else:
                j = random.randrange(b.seen)
                if j < MINUTE_SAMPLES:
                    b.samples[j] = late

    def series(self, now_ms: int, minutes: int = 60) -> dict[str, list[int]]:
        """The last ``minutes`` minutes up to now's: ``start_ms``, ``fired``,
        ``failed``, ``p50`` and ``p99`` (lateness ms), oldest first."""
        last = now_ms // MINUTE_MS
        out: dict[str, list[int]] = {
            "start_ms": [],
            "fired": [],
            "failed": [],
            "p50": [],
            "p99": [],
        }
        for m in range(last - minutes + 1, last + 1):
            b = self._buckets.get(m)
            out["start_ms"].append(m * MINUTE_MS)
            if b is None:
                for name in ("fired", "failed", "p50", "p99"):
                    out[name].append(0)
                continue
            samples = sorted(b.samples)
            n = len(samples)
            out["fired"].append(b.fired)
            out["failed"].append(b.failed)
            out["p50"].append(samples[_rank(n, 0.50)] if n else 0)
            out["p99"].append(samples[_rank(n, 0.99)] if n else 0)
        return out

    def percentiles(self, now_ms: int, minutes: int = 60) -> dict[str, int]:
        """Lateness ``p50``/``p99``/``max`` (ms) and ``count`` of firings over the
        last ``minutes`` minutes (percentiles over the kept samples)."""
        first = now_ms // MINUTE_MS - minutes + 1
        samples: list[int] = []
        count = 0
        for m, b in self._buckets.items():
            if m >= first:
                samples.extend(b.samples)
                count += b.fired
        samples.sort()
        n = len(samples)
        if not n:
            return {"count": count, "p50": 0, "p99": 0, "max": 0}
        return {
            "count": count,
            "p50": samples[_rank(n, 0.50)],
            "p99": samples[_rank(n, 0.99)],
            "max": samples[-1],
        }


def _rank(n: int, q: float) -> int:
    """Index of the nearest-rank ``q`` quantile in a sorted list of ``n`` items."""
    # round() first so 0.99 * 100 (= 99.00000000000001) ranks 99, not 100
    idx = math.ceil(round(q * n, 9)) - 1
    return min(max(idx, 0), n - 1)
