"""The one seam through which "now" is read and timers are armed.

Every instant is an ``int`` of milliseconds since the epoch (UTC).
:class:`LoopClock` is the real clock on the running asyncio loop;
:class:`FakeClock` (in :mod:`forsun_box.testing`) advances on demand so the
engine is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from forsun_box.slack import first_leg


def local_text(ms: int, tz: ZoneInfo, with_zone: bool = True) -> str:
    """An instant for people: ``2026-12-02 14:00:05.250 Europe/Paris`` (unix ms in ``tz``)."""
    text = datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")
    text += f".{ms % 1000:03d}"
    return f"{text} {getattr(tz, 'key', None) or tz}" if with_zone else text


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now_ms(self) -> int:
        """Current time, milliseconds since the epoch."""
        ...

    def call_at(self, when_ms: int, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` at (or as soon as possible after) ``when_ms``."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class _Legs:
    """A timer armed in legs (:mod:`forsun_box.slack`): cancelling it cancels the leg
    armed now."""

    __slots__ = ("handle",)

    def __init__(self, handle: TimerHandle) -> None:
        self.handle = handle

    def cancel(self) -> None:
        self.handle.cancel()


class LoopClock:
    """Wall-clock time with timers armed on the running asyncio loop."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def call_at(self, when_ms: int, callback: Callable[[], None]) -> TimerHandle:
        """The loop's wait for a timer far ahead would end late by the kernel's slack: it
        is armed in two legs, the last one short."""
        loop = asyncio.get_running_loop()
        # The loop's monotonic clock may disagree with wall time by a few
        # microseconds; firing up to 1 ms early is harmless because the engine
        # re-reads now_ms() and re-arms when nothing is due yet.
        delay = max(0.0, (when_ms - self.now_ms()) / 1000.0)
        first = first_leg(delay)
        if first == delay:
            return loop.call_later(delay, callback)

        def last_leg() -> None:
            legs.handle = self.call_at(when_ms, callback)

        legs = _Legs(loop.call_later(first, last_leg))
        return legs

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
