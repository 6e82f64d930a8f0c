"""Prometheus metrics (``GET /metrics``), through prometheus_client.

Each :class:`Metrics` has its own registry, so several services in one
process (tests) don't share series. Sources:

* run records (the dispatcher's run callback, :meth:`Metrics.record_run`):
  firings by action and result, firing lateness, retries;
* the v2 API (:meth:`Metrics.api_request`) and forsun's counters in
  :class:`~forsun_box.stats.Stats` for HTTP v1 and Thrift, read at scrape time;
* the store's commit latency, timed around the driver's ``apply``
  (:meth:`Metrics.instrument_store`);
* gauges read from the engine at scrape time (:meth:`Metrics.refresh`):
  pending plans, window size, firings in flight;
* event-loop stalls counted by :mod:`forsun_box.watchdog` (:meth:`Metrics.watch_loop`).
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from forsun_box.enums import RunResult
from forsun_box.stats import Stats

if TYPE_CHECKING:
    from forsun_box.store.base import Batch, Run, Store
    from forsun_box.watchdog import LoopWatch

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENESS_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _StatsCollector(Collector):
    """forsun's request counters (HTTP v1, Thrift) as API request series."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        fam = CounterMetricFamily(
            "forsun_box_legacy_api_requests",
            "Requests on forsun's interfaces (HTTP v1 and console, Thrift) by outcome",
            labels=["interface", "outcome"],
        )
        get = self._stats.get
        for interface, total, failed in (
            ("http_v1", "http_requested_count", "http_requested_error_count"),
            ("thrift", "requested_count", "requested_error_count"),
        ):
            t, f = get(total), get(failed)
            fam.add_metric([interface, "ok"], max(0, t - f))
            fam.add_metric([interface, "error"], f)
        yield fam

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


class _RunCollector(Collector):
    """Firings, retries and lateness, counted in plain Python on the firing path.

    prometheus_client's own Counter and Histogram take a lock and look labels
    up on every call; per firing that cost as much as the rest of the
    bookkeeping, so the counts live here and become series at scrape time.
    """

    def __init__(self) -> None:
        self.firings: dict[tuple[str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        self.buckets = [0] * (len(LATENESS_BUCKETS) + 1)  # the last one is +Inf
        self.lateness_sum = 0.0

    def record(self, action: str, result: str, attempt: int, late_s: float) -> None:
        if attempt == 1:
            key = (action, result)
            self.firings[key] = self.firings.get(key, 0) + 1
            self.buckets[bisect.bisect_left(LATENESS_BUCKETS, late_s)] += 1
            self.lateness_sum += late_s
        else:
            key = (action, result)
            self.retries[key] = self.retries.get(key, 0) + 1

    def collect(self) -> Iterator[Any]:
        for name, doc, counts in (
            ("forsun_box_firings", "Firings (first attempts) by action and result", self.firings),
            ("forsun_box_retries", "Retry attempts by action and result", self.retries),
        ):
            fam = CounterMetricFamily(name, doc, labels=["action", "result"])
            for (action, result), n in sorted(counts.items()):
                fam.add_metric([action, result], n)
            yield fam
        cumulative = 0
        buckets = []
        for bound, n in zip((*LATENESS_BUCKETS, float("inf")), self.buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "forsun_box_firing_lateness_seconds",
            "How long after its due time a firing's first attempt started",
            buckets=buckets,
            sum_value=self.lateness_sum,
        )

    def describe(self) -> Iterator[Any]:
        return iter(())


class _LoopWatchCollector(Collector):
    """Event-loop stalls seen by a :class:`~forsun_box.watchdog.LoopWatch`."""

    def __init__(self, watch: Any) -> None:
        self._watch = watch

    def collect(self) -> Iterator[CounterMetricFamily]:
        fam = CounterMetricFamily(
            "forsun_box_event_loop_stalls",
            "Times the event loop went unanswered for the stall threshold or longer",
        )
        fam.add_metric([], self._watch.stalls)
        yield fam
        fam = CounterMetricFamily(
            "forsun_box_event_loop_stalled_seconds",
            "Total length of those stalls (counted when the loop answers again)",
        )
        fam.add_metric([], self._watch.stalled_s)
        yield fam

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


class EngineGauges(Protocol):
    """Where the engine's gauges are read (the service answers them)."""

    async def plan_count(self) -> int: ...

    def window_size(self) -> int: ...

    def inflight_count(self) -> int: ...


class Metrics:
    """The service's Prometheus series; see the module docstring."""

    def __init__(self, stats: Stats | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = _RunCollector()
        r.register(self.runs)
        self.api_requests = Counter(
            "forsun_box_api_requests",
            "API requests by interface and outcome",
            ["interface", "outcome"],
            registry=r,
        )
        self.commit_latency = Histogram(
            "forsun_box_store_commit_seconds",
            "Duration of one store commit (group commit)",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.pending = Gauge("forsun_box_pending_plans", "Plans stored", registry=r)
        self.window = Gauge(
            "forsun_box_window_plans", "Plans held in the engine's in-memory window", registry=r
        )
        self.inflight = Gauge(
            "forsun_box_inflight_firings", "Firings whose action is running", registry=r
        )
        if stats is not None:
            r.register(_StatsCollector(stats))

    def watch_loop(self, watch: LoopWatch) -> None:
        """Expose the stall counts of ``watch``."""
        self.registry.register(_LoopWatchCollector(watch))

    def record_run(self, run: Run) -> None:
        """Count one attempt."""
        self.runs.record(
            run.action or "unknown",
            RunResult.label_of(run.result),
            run.attempt,
            max(0, run.started_ms - run.due_ms) / 1000,
        )

    def api_request(self, interface: str, outcome: str) -> None:
        """Count one request; ``outcome`` is ``ok``, ``client_error`` or ``server_error``."""
        self.api_requests.labels(interface, outcome).inc()

    def instrument_store(self, store: Store) -> None:
        """Time every ``store.apply`` (one per group commit) into the latency histogram.

        Wraps the instance's method, so the engine needs no knowledge of
        Prometheus; idempotent.
        """
        apply = store.apply
        if getattr(apply, "_forsun_box_timed", False):
            return
        observe = self.commit_latency.observe

        @functools.wraps(apply)
        async def timed(batch: Batch) -> None:
            started = time.perf_counter()
            try:
                await apply(batch)
            finally:
                observe(time.perf_counter() - started)

        timed._forsun_box_timed = True  # type: ignore[attr-defined]
        store.apply = timed  # type: ignore[method-assign]  # this instance's, timed

    async def refresh(self, engine: EngineGauges) -> None:
        """Read the engine's gauges (call before :meth:`render`)."""
        self.pending.set(await engine.plan_count())
        self.window.set(engine.window_size())
        self.inflight.set(engine.inflight_count())

    def render(self) -> bytes:
        """The text exposition of every series."""
        return generate_latest(self.registry)
