"""Service counters (forsun's ``info`` names) and firing lateness.

Cheap enough to touch on every request and every firing: counters are a
dict of ints, lateness samples go into a bounded ring and are only sorted
when someone asks for percentiles.
"""

from __future__ import annotations

import math
from collections import deque

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
)

LATENESS_SAMPLES = 10_000


class Stats:
    """Named integer counters plus a ring of recent firing lateness (ms).

    Known counters read as attributes (``stats.created_count``); extensions
    may :meth:`incr` names of their own, which then appear in :meth:`as_dict`.
    """

    __slots__ = ("_counters", "_lateness", "_lateness_max")

    def __init__(self, lateness_samples: int = LATENESS_SAMPLES) -> None:
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._lateness: deque[int] = deque(maxlen=lateness_samples)
        self._lateness_max = 0

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


def _rank(n: int, q: float) -> int:
    """Index of the nearest-rank ``q`` quantile in a sorted list of ``n`` items."""
    # round() first so 0.99 * 100 (= 99.00000000000001) ranks 99, not 100
    idx = math.ceil(round(q * n, 9)) - 1
    return min(max(idx, 0), n - 1)
