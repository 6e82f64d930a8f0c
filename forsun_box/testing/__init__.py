"""Helpers for tests: a fake clock that is advanced explicitly."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class _FakeHandle:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that only moves when :meth:`advance` or :meth:`set` is called.

    Callbacks armed with :meth:`call_at` run (in due order) while time is
    advanced past their instant; sleepers wake the same way.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._timers: list[tuple[int, int, _FakeHandle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._now

    def call_at(self, when_ms: int, callback: Callable[[], None]) -> _FakeHandle:
        handle = _FakeHandle()
        heapq.heappush(self._timers, (when_ms, next(self._seq), handle, callback))
        return handle

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.call_at(self._now + int(seconds * 1000), wake)
        await fut

    def pending(self) -> int:
        return sum(1 for t in self._timers if not t[2].cancelled)

    def next_timer_ms(self) -> int | None:
        live = [t[0] for t in self._timers if not t[2].cancelled]
        return min(live) if live else None

    async def advance(self, ms: int) -> None:
        """Move time forward by ``ms``, running every timer due on the way.

        Between timers the event loop gets a few turns so tasks the
        callbacks started can run (and arm further timers).
        """
        await self.set(self._now + ms)

    async def set(self, target_ms: int) -> None:
        await _settle()
        while self._timers and self._timers[0][0] <= target_ms:
            when, _, handle, callback = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self._now = max(self._now, when)
            callback()
            await _settle()
        self._now = max(self._now, target_ms)
        await _settle()


async def _settle(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
