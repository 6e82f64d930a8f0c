"""Prometheus series fed from run records, API requests, commits and the engine."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from forsun_box.metrics import Metrics
from forsun_box.stats import Stats
from forsun_box.store.base import Batch, Run


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_runs_become_firings_lateness_and_retries() -> None:
    m = Metrics()
    m.record_run(Run("a", 1000, 1250, 5, 1, 1, "", "shell"))
    m.record_run(Run("b", 1000, 1000, 5, 1, 2, "boom", "http"))
    m.record_run(Run("b", 1000, 9000, 5, 2, -1, "boom", "http"))
    s = samples(m)
    assert s[("forsun_box_firings_total", (("action", "shell"), ("result", "ok")))] == 1
    assert s[("forsun_box_firings_total", (("action", "http"), ("result", "retrying")))] == 1
    assert s[("forsun_box_retries_total", (("action", "http"), ("result", "failed")))] == 1
    assert s[("forsun_box_firing_lateness_seconds_count", ())] == 2
    assert s[("forsun_box_firing_lateness_seconds_sum", ())] == 0.25
    assert s[("forsun_box_firing_lateness_seconds_bucket", (("le", "0.1"),))] == 1


def test_api_requests_by_interface_and_outcome_including_forsun_counters() -> None:
    stats = Stats()
    stats.incr("http_requested_count", 5)
    stats.incr("http_requested_error_count", 2)
    stats.incr("requested_count", 4)
    m = Metrics(stats)
    m.api_request("http_v2", "ok")
    m.api_request("http_v2", "client_error")
    m.api_request("http_v2", "client_error")
    s = samples(m)
    key = "forsun_box_api_requests_total"
    assert s[(key, (("interface", "http_v2"), ("outcome", "client_error")))] == 2
    assert s[(key, (("interface", "http_v2"), ("outcome", "ok")))] == 1
    legacy = "forsun_box_legacy_api_requests_total"
    assert s[(legacy, (("interface", "http_v1"), ("outcome", "ok")))] == 3
    assert s[(legacy, (("interface", "http_v1"), ("outcome", "error")))] == 2
    assert s[(legacy, (("interface", "thrift"), ("outcome", "ok")))] == 4


def test_store_commits_are_timed_and_engine_gauges_read() -> None:
    class FakeStore:
        def __init__(self) -> None:
            self.applied = 0

        async def apply(self, batch: Batch) -> None:
            self.applied += 1

    class FakeEngine:
        async def plan_count(self) -> int:
            return 42

        def window_size(self) -> int:
            return 7

        def inflight_count(self) -> int:
            return 1

    async def go() -> dict:
        m = Metrics()
        store = FakeStore()
        m.instrument_store(store)
        m.instrument_store(store)  # idempotent: one observation per commit
        await store.apply(Batch())
        await store.apply(Batch())
        await m.refresh(FakeEngine())
        assert store.applied == 2
        return samples(m)

    s = asyncio.run(go())
    assert s[("forsun_box_store_commit_seconds_count", ())] == 2
    assert s[("forsun_box_pending_plans", ())] == 42
    assert s[("forsun_box_window_plans", ())] == 7
    assert s[("forsun_box_inflight_firings", ())] == 1
