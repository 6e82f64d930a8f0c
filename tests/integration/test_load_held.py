"""Load held (tests/load_held.py): 10 s in CI; the full 60 s run is
``.venv/bin/python -m tests.load_held --full``. The lateness target (p99 <= 50 ms) is
reported, not asserted here: on a 2-core machine the 36 client threads share the CPU
with the server (see docs/RELIABILITY.md for the measured figures)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.load_held import run_load

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("FORSUN_BOX_LOAD_SECONDS", "10"))


def test_load_held_no_errors_every_firing(tmp_path: Path) -> None:
    report = run_load(tmp_path, SECONDS)
    print(report.summary())
    assert report.http_errors == 0 and report.thrift_errors == 0, report.errors[:10]
    assert report.http_requests > 100 * SECONDS and report.thrift_requests > 10 * SECONDS
    # 5,000 plans a second, every second of the run (minus the first, while they arm)
    assert report.firings >= 0.9 * 5000 * (SECONDS - 1), report.summary()
    assert report.p99_ms < 2000, report.summary()  # late, perhaps, but never stalled
