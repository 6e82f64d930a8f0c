"""bench/harness/cpu_split.py: perf samples counted by the thread they fell in."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from harness.cpu_split import shares

LINES = [
    b"     0/0     100.100000: ",  # idle
    b"  5554/5554  100.200000: ",  # the service's main thread
    b"  5554/5561  100.300000: ",  # another of its threads
    b"  5554/5554  100.400000: ",
    b"  9000/9000  100.500000: ",  # a command
    b"  5554/5554   99.900000: ",  # before the window
    b"  5554/5554  101.000000: ",  # at its end: outside
    b"not a sample line",
]


def test_samples_in_the_window_are_counted_by_role():
    found = shares(LINES, 100.0, 101.0, {5554: "service"})
    assert found == {
        "service": 40.0,
        "idle": 20.0,
        "service threads": 20.0,
        "other": 20.0,
        "samples": 5,
    }


def test_a_thread_can_have_a_role_of_its_own():
    found = shares(LINES, 100.0, 101.0, {5554: "service", 5561: "store"})
    assert found["store"] == 20.0 and "service threads" not in found


def test_no_sample_in_the_window_is_an_empty_split():
    assert shares(LINES, 200.0, 201.0, {}) == {"samples": 0}
