"""The scale harness (bench/scale.py) in its quick mode, so it can't rot.

The figures of a quick run are not targets (small numbers, a shared machine);
what is checked is that every phase ran against a real server and that the
outcome is consistent: every figure present, nothing missed, every plan
accounted for after the restarts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import need_binary

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_scale_harness_quick_mode_runs_every_phase(tmp_path: Path) -> None:
    need_binary("wrk", "wrk")  # the ops phase
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    values = doc["values"]
    sizes = doc["sizes"]
    assert "failed" not in values
    expected = {
        "fill_rate",
        "rss_mb",
        "create_c32_rate",
        "bare_c32_rate",
        "create_vs_bare",
        "remove_newest_rate",
        "remove_spread_rate",
        "keys_page_ms",
        "keys_v1_ms",
        "crontab_rate",
        "ndjson_rate",
        "fire_p99_ms",
        "trivial_p99_ms",
        "trivial_rate",
        "http_p99_ms",
        "start_sigterm_s",
        "start_sigkill_s",
        "rss_after_restart_mb",
    }
    assert expected <= set(values), expected - set(values)
    for phase in ("fire", "trivial", "http"):
        assert values[f"{phase}_missed"] == 0, phase
        assert values[f"{phase}_duplicates"] == 0, phase
    assert all(values[k] > 0 for k in ("fill_rate", "create_c32_rate", "crontab_rate"))
    # one-shot plans that fired are gone; the rest is accounted for after two restarts:
    # the fill, the two side bulk loads, the wrk creates, less the spread removes
    # (the "newest" keys are created and removed inside the ops phase)
    stored = values["count_after_restart"]
    at_least = sizes["plans"] + 2 * sizes["side_bulk"] - sizes["removes"] // 2
    assert stored >= at_least, (stored, at_least)
    assert values["start_sigkill_s"] < 10
