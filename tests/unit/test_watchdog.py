"""The event-loop watch: a held loop is reported with its stack, a free one never.

These hold a real loop for a couple of seconds: what is watched is real
time passing while the loop cannot answer, which a fake clock can't show.
Thresholds are far above any pause a busy or slow host puts on the process,
so only the deliberate hold counts as a stall.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from forsun_box.metrics import Metrics
from forsun_box.watchdog import LoopWatch
from tests.helpers import wait_until_async


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # a blocking call where a coroutine should have awaited


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "forsun_box.watchdog"]


def test_a_held_loop_is_reported_with_what_holds_it(caplog: pytest.LogCaptureFixture) -> None:
    watch = LoopWatch(threshold_s=0.5, period_s=0.01)
    hold_s = 2.0

    async def body() -> None:
        watch.start()
        try:
            await asyncio.sleep(0.1)  # the loop runs free first, as it does before a stall
            _hold_the_loop(hold_s)
            # the watch sees the loop answer again; the stall lasted the whole hold
            assert await wait_until_async(lambda: watch.longest_s >= hold_s - 0.01, 30)
        finally:
            watch.stop()

    with caplog.at_level("WARNING", logger="forsun_box.watchdog"):
        asyncio.run(body())
    messages = _messages(caplog)
    # a busy host may add a stall of its own; the hold is one of them
    assert watch.stalls >= 1, messages
    held = [m for m in messages if m.startswith("event loop held for")]
    assert len(held) == watch.stalls, messages
    assert any("_hold_the_loop" in m and "time.sleep" in m for m in held), messages
    again = [m for m in messages if m.startswith("event loop answered again after")]
    assert len(again) >= 1, messages
    # measured from the loop's own notes: the hold and not much more
    assert hold_s - 0.01 <= watch.longest_s <= hold_s + 5
    assert watch.stalled_s >= watch.longest_s
    metrics = Metrics()
    metrics.watch_loop(watch)
    text = metrics.render().decode()
    assert f"forsun_box_event_loop_stalls_total {float(watch.stalls)!r}" in text
    assert f"forsun_box_event_loop_stalled_seconds_total {watch.stalled_s!r}" in text


def test_a_loop_that_keeps_answering_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    # busy for three times the threshold in all, but never for long at a time
    watch = LoopWatch(threshold_s=1.0, period_s=0.01)

    async def body() -> None:
        watch.start()
        try:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                _hold_the_loop(0.05)  # busy, but answering every 50 ms
                await asyncio.sleep(0)
        finally:
            watch.stop()

    with caplog.at_level("WARNING", logger="forsun_box.watchdog"):
        asyncio.run(body())
    assert watch.stalls == 0
    assert _messages(caplog) == []


def test_the_watch_ends_with_its_loop() -> None:
    """Left running when its loop is closed, the thread ends by itself."""
    watch = LoopWatch(threshold_s=1.0, period_s=0.01)
    loop = asyncio.new_event_loop()
    loop.call_soon(watch.start, loop)
    loop.run_until_complete(asyncio.sleep(0.05))  # the loop runs a while, then closes
    thread = watch._thread
    assert thread is not None and thread.is_alive()
    loop.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert watch.stalls == 0
