"""Runs actions for firings: bounded concurrency, time limits, retries, run records.

The engine awaits :meth:`Dispatcher.run` once per firing; it gets the
result of the first attempt. When that attempt fails and the retry policy
allows, the dispatcher arms the retries itself on the injected clock and
reports the firing's final outcome later through ``on_status``.

Retry policy (forsun's ``[action]`` settings): a failed attempt (an
exception, including :class:`~forsun_box.errors.RetryLater`) is retried
``retry_max_count`` times. Before retry *n* (1-based), counted from the end
of the attempt that failed, the dispatcher waits
``retry_delay_seconds + retry_delay_seconds * retry_delay_rate * (n - 1)``
seconds: forsun's "``... * attempt``" with ``attempt`` the number of
retries already made (0 before the first retry). A firing of an unknown
action is not retried: no retry can change the answer.

Every attempt produces one :class:`~forsun_box.store.base.Run` through
``on_run``: result 1 ok, 2 failed and will be retried, -1 failed for good.

Inline first attempts: when an action's ``execute`` is a plain function (not
a coroutine function), :meth:`Dispatcher.start_firing` runs the first attempt
right away on the caller's stack -- no task, no semaphore round trip -- since
it cannot yield to the loop anyway. The engine uses it to fire cheap
in-process actions at tens of thousands per second. Coroutine actions, and
a plain ``execute`` that returns an awaitable, continue asynchronously.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from forsun_box.actions.base import (
    ACTIONS,
    Action,
    ActionFailed,
    ActionSettings,
    canonical_name,
    configure_actions,
    get_action,
)
from forsun_box.clock import Clock, TimerHandle
from forsun_box.enums import PlanStatus, RunResult
from forsun_box.errors import RetryLater
from forsun_box.stats import Stats
from forsun_box.store.base import Run

if TYPE_CHECKING:
    from forsun_box.plan import Plan

logger = logging.getLogger("forsun_box.actions")

# Short names of the values this module writes (defined in forsun_box.enums), as
# plain ints: the engine tells a first attempt that finished inline by
# ``type(status) is int``, and records keep the plain values they always had.
STATUS_OK, STATUS_FAILED = PlanStatus.OK.value, PlanStatus.FAILED.value
RUN_OK = RunResult.OK.value
RUN_FAILED = RunResult.FAILED.value
RUN_WILL_RETRY = RunResult.RETRYING.value

#: longest error text kept in a run record
MAX_ERROR_CHARS = 2000


class _Outcome:
    """What one attempt came to."""

    __slots__ = ("error", "retryable")

    def __init__(self, error: str = "", retryable: bool = True) -> None:
        self.error = error
        self.retryable = retryable

    @property
    def ok(self) -> bool:
        return not self.error


_OK = _Outcome()


def _busy(sem: asyncio.Semaphore) -> bool:
    """``sem.locked()`` without its scan of the waiters (called once per firing)."""
    return sem._value <= 0 or bool(sem._waiters)  # type: ignore[attr-defined]


class Dispatcher:
    """Executes firings' actions; see the module docstring for the policy.

    ``on_run(run)`` is called once per attempt; ``on_status(key, version,
    status)`` once per firing whose outcome was settled by a retry (the
    first attempt's status is :meth:`run`'s return value instead).
    Exceptions raised by either callback are logged and ignored.
    """

    def __init__(
        self,
        settings: ActionSettings,
        clock: Clock,
        on_run: Callable[[Run], None],
        on_status: Callable[[str, int, int], None],
        stats: Stats,
    ) -> None:
        self.settings = settings
        configure_actions(settings)
        self._clock = clock
        self._on_run = on_run
        self._on_status = on_status
        self._stats = stats
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._timers: dict[int, TimerHandle] = {}
        self._timer_ids = itertools.count()
        self._retry_tasks: set[asyncio.Task[None]] = set()
        self._active = 0  # attempts queued or running
        # action class -> its execute is a plain function (runs inline)
        self._plain: dict[type[Action], bool] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    # -- public -------------------------------------------------------------

    async def run(self, plan: Plan, due_ms: int, manual: bool = False) -> int:
        """Run the first attempt of ``plan``'s firing due at ``due_ms``.

        Waits for a free slot of the action's concurrency limit (firings are
        queued, never dropped). Returns 1 when the attempt succeeded, -1 when
        it failed (retries, if any, are already armed). ``manual``: a "fire
        now" outside the schedule; its run records (retries too) say so.
        """
        ok = await self._attempt(plan, due_ms, 1, manual)
        return STATUS_OK if ok else STATUS_FAILED

    def start_firing(self, plan: Plan, due_ms: int) -> int | Awaitable[int]:
        """Start the first attempt of ``plan``'s firing due at ``due_ms``.

        Returns the status (1 ok, -1 failed) when the attempt finished right
        here (a plain-function action with a free concurrency slot), else an
        awaitable of it, to be awaited exactly once (as :meth:`run`).
        """
        name = canonical_name(plan.action)
        cls = ACTIONS.get(name)
        if cls is None:
            return self.run(plan, due_ms)
        plain = self._plain.get(cls)
        if plain is None:
            plain = self._plain[cls] = not inspect.iscoroutinefunction(cls.execute)
        if not plain or _busy(self._semaphore(name)):
            return self.run(plan, due_ms)
        stats = self._stats
        started = self._clock.now_ms()
        stats.record_lateness(started - due_ms)
        try:
            action = cls(due_ms // 1000, plan, plan.action, dict(plan.params))
            result = action.execute()
        except Exception as e:
            outcome = self._failure(e, plan, 1)
        else:
            if inspect.isawaitable(result):
                # Started already: finish it in its own task, in a slot.
                return self._finish_inline(plan, due_ms, name, started, result)
            outcome = _OK
        stats.incr("action_executed_count")
        if outcome is not _OK:
            stats.incr("action_executed_error_count")
        return STATUS_OK if self._settle(plan, due_ms, started, 1, outcome) else STATUS_FAILED

    async def _finish_inline(
        self, plan: Plan, due_ms: int, name: str, started: int, result: Awaitable[Any]
    ) -> int:
        """The rest of an inline attempt whose ``execute`` returned an awaitable."""
        stats = self._stats
        self._active += 1
        self._idle.clear()
        try:
            async with self._semaphore(name):
                stats.incr("action_executing_count")
                try:
                    outcome = await self._await_result(result, plan, 1)
                except asyncio.CancelledError:
                    self._record(plan, due_ms, started, 1, RUN_FAILED, "cancelled")
                    raise
                finally:
                    stats.decr("action_executing_count")
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()
        stats.incr("action_executed_count")
        if not outcome.ok:
            stats.incr("action_executed_error_count")
        return STATUS_OK if self._settle(plan, due_ms, started, 1, outcome) else STATUS_FAILED

    @property
    def pending_retries(self) -> int:
        """Retries armed on the clock and not yet started."""
        return len(self._timers)

    @property
    def active(self) -> int:
        """Attempts waiting for a concurrency slot or running."""
        return self._active

    async def close(self, timeout: float = 10.0) -> None:
        """Cancel armed retries, wait up to ``timeout`` s for running attempts,
        cancel the retries still running after that, and release the actions'
        shared resources. First attempts belong to the caller's tasks: they
        are waited for, never cancelled here."""
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            logger.warning("%d action attempt(s) still running at shutdown", self._active)
            tasks = list(self._retry_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for cls in set(ACTIONS.values()):
            closer = getattr(cls, "close_shared", None)
            if closer is None:
                continue
            try:
                result = closer()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("closing action %s failed", cls.__name__)

    # -- attempts -----------------------------------------------------------

    def _semaphore(self, name: str) -> asyncio.Semaphore:
        sem = self._semaphores.get(name)
        if sem is None:
            sem = asyncio.Semaphore(self.settings.concurrency_for(name))
            self._semaphores[name] = sem
        return sem

    async def _attempt(self, plan: Plan, due_ms: int, attempt: int, manual: bool = False) -> bool:
        """Run attempt number ``attempt`` (1-based), record it, arm the next retry."""
        self._active += 1
        self._idle.clear()
        try:
            started, outcome = await self._execute(plan, due_ms, attempt, manual)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()
        return self._settle(plan, due_ms, started, attempt, outcome, manual)

    def _settle(
        self,
        plan: Plan,
        due_ms: int,
        started: int,
        attempt: int,
        outcome: _Outcome,
        manual: bool = False,
    ) -> bool:
        """Record an attempt that ended, arm its retry or report the final status."""
        will_retry = (
            not outcome.ok
            and outcome.retryable
            and attempt <= self.settings.retry_max_count
            and not self._closed
        )
        result = RUN_OK if outcome.ok else (RUN_WILL_RETRY if will_retry else RUN_FAILED)
        self._record(plan, due_ms, started, attempt, result, outcome.error, manual)
        if will_retry:
            self._arm_retry(plan, due_ms, attempt + 1, manual)
        elif attempt > 1:
            status = STATUS_OK if outcome.ok else STATUS_FAILED
            try:
                self._on_status(plan.key, plan.version, status)
            except Exception:
                logger.exception("recording the status of %s failed", plan.key)
        return outcome.ok

    async def _execute(
        self, plan: Plan, due_ms: int, attempt: int, manual: bool = False
    ) -> tuple[int, _Outcome]:
        """Wait for a slot, run the action once; returns (started_ms, outcome)."""
        stats = self._stats
        cls = get_action(plan.action)
        if cls is None:
            stats.incr("action_executed_count")
            stats.incr("action_executed_error_count")
            logger.warning("plan %s: unknown action %r", plan.key, plan.action)
            return self._clock.now_ms(), _Outcome("unknown action", retryable=False)
        async with self._semaphore(canonical_name(plan.action)):
            started = self._clock.now_ms()
            if attempt == 1:
                stats.record_lateness(started - due_ms)
            else:
                stats.incr("action_retried_count")
            stats.incr("action_executing_count")
            try:
                outcome = await self._call(cls, plan, due_ms, attempt)
            except asyncio.CancelledError:
                self._record(plan, due_ms, started, attempt, RUN_FAILED, "cancelled", manual)
                raise
            finally:
                stats.decr("action_executing_count")
        stats.incr("action_executed_count")
        if not outcome.ok:
            stats.incr("action_executed_error_count")
        return started, outcome

    async def _call(self, cls: type[Action], plan: Plan, due_ms: int, attempt: int) -> _Outcome:
        """Build the action and execute it; every exception becomes an outcome."""
        try:
            action = cls(due_ms // 1000, plan, plan.action, dict(plan.params))
            result = action.execute()
        except Exception as e:
            return self._failure(e, plan, attempt)
        # forsun allows execute to be a plain function; await only what is awaitable.
        if inspect.isawaitable(result):
            return await self._await_result(result, plan, attempt)
        return _OK

    async def _await_result(self, result: Awaitable[Any], plan: Plan, attempt: int) -> _Outcome:
        """Await what ``execute`` returned, within the time limit; never raises but
        CancelledError."""
        timeout = self.settings.action_timeout_s
        try:
            if timeout > 0:
                try:
                    await asyncio.wait_for(result, timeout)
                except TimeoutError:
                    raise ActionFailed(f"timed out after {timeout:g} s") from None
            else:
                await result
            return _OK
        except Exception as e:
            return self._failure(e, plan, attempt)

    def _failure(self, error: Exception, plan: Plan, attempt: int) -> _Outcome:
        """The outcome of an attempt that raised ``error`` (logged here)."""
        if isinstance(error, RetryLater):
            text = f"retry later: {error}" if str(error) else "retry later"
            logger.warning("plan %s: %s (attempt %d)", plan.key, text, attempt)
            return _Outcome(text)
        if isinstance(error, ActionFailed):
            text = str(error) or "failed"
            logger.warning(
                "plan %s: action %s failed (attempt %d): %s", plan.key, plan.action, attempt, text
            )
            return _Outcome(text)
        # Unexpected: keep the stack for whoever wrote the action.
        logger.error(
            "plan %s: action %s raised (attempt %d)",
            plan.key,
            plan.action,
            attempt,
            exc_info=error,
        )
        return _Outcome(f"{type(error).__name__}: {error}")

    def _record(
        self,
        plan: Plan,
        due_ms: int,
        started: int,
        attempt: int,
        result: int,
        error: str,
        manual: bool = False,
    ) -> None:
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
        duration = self._clock.now_ms() - started
        run = Run(
            plan.key,
            due_ms,
            started,
            duration if duration > 0 else 0,
            attempt,
            result,
            error,
            plan.action,
            manual,
        )
        try:
            self._on_run(run)
        except Exception:
            logger.exception("recording a run of %s failed", plan.key)

    # -- retries ------------------------------------------------------------

    def retry_delay_ms(self, retries_made: int) -> int:
        """Wait before the next retry when ``retries_made`` retries already ran."""
        d = self.settings.retry_delay_seconds
        seconds = d + d * self.settings.retry_delay_rate * retries_made
        return max(0, round(seconds * 1000))

    def _arm_retry(self, plan: Plan, due_ms: int, attempt: int, manual: bool = False) -> None:
        loop = asyncio.get_running_loop()
        when = self._clock.now_ms() + self.retry_delay_ms(attempt - 2)
        timer_id = next(self._timer_ids)

        def fire() -> None:
            self._timers.pop(timer_id, None)
            if self._closed:
                return
            task = loop.create_task(self._retry(plan, due_ms, attempt, manual))
            self._retry_tasks.add(task)
            task.add_done_callback(self._retry_tasks.discard)

        self._timers[timer_id] = self._clock.call_at(when, fire)

    async def _retry(self, plan: Plan, due_ms: int, attempt: int, manual: bool = False) -> None:
        try:
            await self._attempt(plan, due_ms, attempt, manual)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("retry %d of plan %s crashed", attempt - 1, plan.key)
