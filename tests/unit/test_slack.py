"""Waits for an instant made in two legs, so that the kernel's slack (about 0.1 % of a
wait's timeout) does not make a timer far ahead late."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from forsun_box.clock import LoopClock
from forsun_box.slack import LAST_LEG_S, first_leg


def test_a_short_wait_is_one_leg_and_a_long_one_stops_short_of_its_instant() -> None:
    assert first_leg(0.0) == 0.0
    assert first_leg(2 * LAST_LEG_S) == 2 * LAST_LEG_S
    assert first_leg(1.0) == pytest.approx(1.0 - LAST_LEG_S)
    assert first_leg(30.0) == pytest.approx(30.0 - LAST_LEG_S)


def _recording(loop: asyncio.AbstractEventLoop, delays: list[float]) -> Callable[..., Any]:
    real = loop.call_later

    def call_later(delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        delays.append(delay)
        return real(delay, callback, *args)

    return call_later


def test_a_timer_far_ahead_is_armed_in_two_legs_and_runs_once_at_its_instant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = LoopClock()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        delays: list[float] = []
        monkeypatch.setattr(loop, "call_later", _recording(loop, delays))
        ran: list[int] = []
        done = loop.create_future()
        when = clock.now_ms() + 150

        def callback() -> None:
            ran.append(clock.now_ms())
            done.set_result(None)

        clock.call_at(when, callback)
        await asyncio.wait_for(done, 10)
        await asyncio.sleep(0)
        assert len(ran) == 1 and ran[0] >= when - 1
        # the first leg stops short; the last is short whatever the first was (the
        # 10 s is wait_for's own)
        delays.remove(10)
        assert len(delays) == 2
        assert delays[0] == pytest.approx(0.15 - LAST_LEG_S, abs=0.01)
        assert 0 <= delays[1] <= LAST_LEG_S + 0.001

    asyncio.run(main())


def test_a_short_timer_is_armed_once() -> None:
    clock = LoopClock()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        handle = clock.call_at(clock.now_ms() + 10, lambda: done.set_result(clock.now_ms()))
        assert isinstance(handle, asyncio.TimerHandle)
        await asyncio.wait_for(done, 10)

    asyncio.run(main())


@pytest.mark.parametrize("cancel_after_ms", [0, 90])
def test_a_timer_cancelled_before_or_between_its_legs_never_runs(cancel_after_ms: int) -> None:
    clock = LoopClock()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ran: list[str] = []
        later = loop.create_future()
        start = clock.now_ms()
        handle = clock.call_at(start + 100, lambda: ran.append("cancelled one"))
        if cancel_after_ms:
            # due before the timer's last leg ends, both reckoned from the same start: it
            # runs first however late the loop is
            clock.call_at(start + cancel_after_ms, handle.cancel)
        else:
            loop.call_soon(handle.cancel)
        clock.call_at(start + 160, lambda: later.set_result(None))
        await asyncio.wait_for(later, 10)
        assert ran == []

    asyncio.run(main())
