"""A watch on the event loop: a stall is logged with what the loop was running.

Firings, answers and commits all wait for the one event loop; when something
holds it (a long computation, a blocking call, the process starved of CPU)
every timer due meanwhile fires late. :class:`LoopWatch` has the loop note
the time every few milliseconds, and a small thread checks that note. When
the loop has not answered for ``threshold_s``, the thread logs a warning
with the loop thread's stack at that moment (what held it), and once the
loop answers again, how long the stall lasted. Stalls are counted for the
metrics.

The thread itself costs a wake-up every ``period_s``. If it wakes late too,
the loop held the interpreter lock all along (a long call into C that never
lets it go) or the process got no CPU: the warning says so, since the stack
it shows is then what runs after the stall, not during it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("forsun_box.watchdog")

STACK_FRAMES = 6  # innermost frames of the loop's stack shown in a warning


class LoopWatch:
    """Logs event-loop stalls of ``threshold_s`` or more; see the module docstring."""

    def __init__(self, threshold_s: float = 0.25, period_s: float = 0.02) -> None:
        self.threshold_s = threshold_s
        self.period_s = period_s
        self.stalls = 0  # stalls seen so far
        self.stalled_s = 0.0  # their total length (as measured when the loop answered)
        self.longest_s = 0.0
        self._noted = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread = 0

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start watching ``loop`` (the running one by default), from its own thread."""
        self._loop = loop or asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._note()
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _note(self) -> None:
        self._noted = time.monotonic()
        self._handle = self._loop.call_later(self.period_s, self._note)

    def _watch(self) -> None:
        stalled_since = 0.0  # the loop's last note, while a stall is reported
        awake = time.monotonic()
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            overslept = now - awake - self.period_s  # this thread was held too
            awake = now
            if not self._loop.is_running():
                if self._loop.is_closed():
                    return
                continue  # stopped (between runs): no note is due
            noted = self._noted
            if stalled_since:
                if noted != stalled_since:
                    took = noted - stalled_since - self.period_s
                    self.stalled_s += took
                    self.longest_s = max(self.longest_s, took)
                    log.warning("event loop answered again after %.0f ms", took * 1000)
                    stalled_since = 0.0
                continue
            held = now - noted
            if held < self.threshold_s + self.period_s:
                continue  # a note is due every period_s: that much is no stall
            stalled_since = noted
            self.stalls += 1
            whole = (
                (
                    " (this watch was held %.0f ms too: the interpreter lock was never let "
                    "go, or the process got no CPU; the stack is what runs now)"
                    % (overslept * 1000)
                )
                if overslept >= self.threshold_s
                else ""
            )
            log.warning(
                "event loop held for %.0f ms so far%s; it is running:\n%s",
                (held - self.period_s) * 1000,
                whole,
                self._loop_stack(),
            )

    def _loop_stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "  (no stack)"
        lines = traceback.format_stack(frame)[-STACK_FRAMES:]
        return "".join(lines).rstrip()
