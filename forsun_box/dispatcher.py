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

Prepared firings: the engine tells :meth:`Dispatcher.prepare` which firings
are due in the next moments; for an action that defines ``prepare`` (see
:mod:`forsun_box.actions.base`) the dispatcher builds each one ahead and keeps
it under the plan's key with the plan's version and due time. At the instant,
:meth:`Dispatcher.start_firing` takes it only when both still match (a plan
replaced meanwhile has a new version; a removed one never fires, and its
preparation is dropped after its due time) and starts it with no task: the
engine gets a future, and a firing waiting for a concurrency slot is an entry
in a queue, not a suspended coroutine. A preparation that says it is ``bounded``
(the http and shell actions': the firing process bounds how many run at once)
holds no slot here: it starts at once and waits there. An action that can prepare but was not
told in time is prepared at the instant, the same way. (Not while an overall
``action_timeout`` is set: those firings run as coroutines, under the limit.)
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from forsun_box.actions.base import (
    ACTIONS,
    Action,
    ActionFailed,
    ActionSettings,
    Prepared,
    canonical_name,
    configure_actions,
    get_action,
)
from forsun_box.clock import Clock, TimerHandle
from forsun_box.enums import PlanStatus, RunResult
from forsun_box.errors import RetryLater
from forsun_box.stats import Stats
from forsun_box.store.base import Run
from forsun_box.turns import Turn

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
#: most firings kept prepared at once (each holds its built request)
MAX_PREPARED = 50_000
#: most ended prepared attempts settled per turn of the event loop (fewer once the
#: turn is over: :mod:`forsun_box.turns`)
SETTLE_CHUNK = 64
#: while firings wait for a slot, the pause between two chunks of settling, seconds
BACKLOG_SETTLE_S = 0.002
#: a preparation not taken this long after its due time is dropped (its plan went)
STALE_PREPARED_MS = 10_000


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


class _Slots:
    """The concurrency limit of one action: free slots and, in order, who waits for one.

    A waiter is a function called when a slot is handed to it; it returns False when
    it did not keep the slot (it gave up meanwhile, or ended at once), which then
    passes on. Coroutines wait through :meth:`acquire`, prepared firings as plain
    entries (no task each)."""

    __slots__ = ("free", "waiting")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.waiting: deque[Callable[[], bool]] = deque()

    def busy(self) -> bool:
        return self.free <= 0 or bool(self.waiting)

    def take(self) -> bool:
        """Take a slot if one is free and nobody waits."""
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def grant() -> bool:
            if fut.done():  # cancelled while waiting
                return False
            fut.set_result(None)
            return True

        self.waiting.append(grant)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as it was cancelled
            raise

    def release(self) -> None:
        waiting = self.waiting
        while waiting:
            if waiting.popleft()():
                return
        self.free += 1


class Dispatcher:
    """Executes firings' actions; see the module docstring for the policy.

    ``on_run(run)`` is called once per attempt; ``on_status(key, version,
    status)`` once per firing whose outcome was settled by a retry (the
    first attempt's status is :meth:`run`'s return value instead).
    Exceptions raised by either callback are logged and ignored.
    """

    #: firings are made ready ahead (:meth:`prepare`)
    prepares = True

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
        self._slots: dict[str, _Slots] = {}
        self._timers: dict[int, TimerHandle] = {}
        self._timer_ids = itertools.count()
        self._retry_tasks: set[asyncio.Task[None]] = set()
        self._active = 0  # attempts queued or running
        # action class -> its execute is a plain function (runs inline)
        self._plain: dict[type[Action], bool] = {}
        # action class -> it defines prepare
        self._preparable: dict[type[Action], bool] = {}
        # plan key -> (plan version, due ms, its firing made ready, its firing epoch,
        # armed: it starts by itself at its instant)
        self._prepared: dict[str, tuple[int, int, Prepared, str, bool]] = {}
        self._swept_ms = 0
        # ended prepared attempts waiting to be settled: (settle, started, error, ended)
        self._later: deque[
            tuple[Callable[[int, BaseException | None, int], None], int, BaseException | None, int]
        ] = deque()
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        #: recorded in every run: the cluster node this is ("" on a single node)
        self.node_id = ""
        #: a plan's firing epoch (the first part of its firing ids) on a cluster
        #: node; None: the settings' ``firing_epoch`` for every plan
        self.epoch_of: Callable[[Plan], str] | None = None
        #: arm the preparations that can be (they start by themselves at their
        #: instant): only where the clock is the wall clock and nothing but this
        #: engine decides whether a firing happens (not on a cluster node)
        self.arming = False

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

    def prepare(self, firings: Iterable[tuple[Plan, int]]) -> int:
        """Make ready ahead the firings ``(plan, due_ms)`` of actions that can prepare;
        returns how many were prepared. A plan prepared before is prepared again."""
        now = self._clock.now_ms()
        prepared = self._prepared
        if prepared and now - self._swept_ms >= STALE_PREPARED_MS // 2:
            self._sweep(now)
        if self._closed or self.settings.action_timeout_s > 0:
            return 0
        done = 0
        arming = self.arming
        for plan, due_ms in firings:
            cls = ACTIONS.get(canonical_name(plan.action))
            if cls is None or not self._can_prepare(cls):
                continue
            old = prepared.pop(plan.key, None)
            if old is not None:
                old[2].discard()
            if len(prepared) >= MAX_PREPARED:
                break
            try:
                ready = self._build(cls, plan, due_ms).prepare()
            except Exception:
                continue
            if ready is None:
                continue
            # A plan with a misfire policy of its own is left to the engine: at the
            # instant it may decide to skip the firing.
            armed = arming and due_ms > now and not plan.misfire and hasattr(ready, "arm")
            if armed:
                ready.arm(due_ms)  # type: ignore[attr-defined]
            prepared[plan.key] = (plan.version, due_ms, ready, self._epoch(plan), armed)
            done += 1
        return done

    def disarm(self, keys: Iterable[str]) -> list[tuple[str, int, int, Awaitable[bool]]]:
        """Take back the arming of the prepared firings of ``keys`` (their plans are about
        to change or go). For each that was armed: its key, its plan's version, its due
        time and an awaitable of whether its instant came first and it went out already
        -- the engine then still fires it, to learn its end."""
        prepared = self._prepared
        if not prepared:
            return []
        taken = []
        for key in [key for key in keys if key in prepared]:
            version, due_ms, ready, epoch, armed = prepared[key]
            if not armed:
                continue
            prepared[key] = (version, due_ms, ready, epoch, False)
            answer = ready.disarm()  # type: ignore[attr-defined]
            if answer is not None:
                taken.append((key, version, due_ms, answer))
        return taken

    def is_armed(self, plan: Plan, due_ms: int) -> bool:
        """Whether the firing of ``plan`` due at ``due_ms`` was prepared and armed."""
        entry = self._prepared.get(plan.key)
        return entry is not None and entry[4] and entry[0] == plan.version and entry[1] == due_ms

    def went_out_ended(self, key: str) -> bool:
        """Whether the end of ``key``'s prepared firing, which went out by itself, has
        come already (True when there is none: nothing to wait for)."""
        entry = self._prepared.get(key)
        ended = None if entry is None else getattr(entry[2], "ended", None)
        return ended is None or bool(ended())

    def went_out_progress(self, key: str) -> int:
        """A count that grows while the ends of firings that went out by themselves, as
        ``key``'s did, are held where they went out from (0 when nothing says)."""
        entry = self._prepared.get(key)
        progress = None if entry is None else getattr(entry[2], "progress", None)
        return 0 if progress is None else int(progress())

    def disarm_all(self) -> None:
        """Drop every armed preparation: the engine stops, nothing starts by itself."""
        prepared = self._prepared
        for key in [key for key, entry in prepared.items() if entry[4]]:
            prepared.pop(key)[2].discard()

    @property
    def prepared_count(self) -> int:
        """Firings prepared and not yet started or dropped."""
        return len(self._prepared)

    def _sweep(self, now: int) -> None:
        """Drop preparations whose due time passed long ago (their plans went)."""
        self._swept_ms = now
        limit = now - STALE_PREPARED_MS
        stale = [key for key, (_, due, *_) in self._prepared.items() if due < limit]
        for key in stale:
            self._prepared.pop(key)[2].discard()

    def _can_prepare(self, cls: type[Action]) -> bool:
        can = self._preparable.get(cls)
        if can is None:
            can = self._preparable[cls] = cls.prepare is not Action.prepare
        return can

    def _epoch(self, plan: Plan) -> str:
        epoch_of = self.epoch_of
        return self.settings.firing_epoch if epoch_of is None else epoch_of(plan)

    def _build(self, cls: type[Action], plan: Plan, due_ms: int) -> Action:
        action = cls(due_ms // 1000, plan, plan.action, dict(plan.params))
        action.due_ms = due_ms
        if self.epoch_of is not None:
            action.firing_epoch = self.epoch_of(plan)
        return action

    def _take_prepared(self, cls: type[Action], plan: Plan, due_ms: int) -> Prepared | None:
        """The firing made ready for this plan's version and due time, else one made now;
        None when the action cannot prepare it (it then runs :meth:`Action.execute`)."""
        entry = self._prepared.pop(plan.key, None) if self._prepared else None
        if entry is not None:
            if entry[0] == plan.version and entry[1] == due_ms and entry[3] == self._epoch(plan):
                return entry[2]
            entry[2].discard()  # made for another version, instant or epoch
        if not self._can_prepare(cls) or self.settings.action_timeout_s > 0:
            return None
        try:
            return self._build(cls, plan, due_ms).prepare()
        except Exception:
            return None

    def start_firing(self, plan: Plan, due_ms: int) -> int | Awaitable[int]:
        """Start the first attempt of ``plan``'s firing due at ``due_ms``.

        Returns the status (1 ok, -1 failed) when the attempt finished right
        here (a plain-function action with a free concurrency slot), else an
        awaitable of it, to be awaited exactly once (as :meth:`run`) -- for a
        prepared firing an :class:`asyncio.Future`.
        """
        name = canonical_name(plan.action)
        cls = ACTIONS.get(name)
        if cls is None:
            return self.run(plan, due_ms)
        ready = self._take_prepared(cls, plan, due_ms)
        if ready is not None:
            return self._start_prepared(name, plan, due_ms, ready)
        plain = self._plain.get(cls)
        if plain is None:
            plain = self._plain[cls] = not inspect.iscoroutinefunction(cls.execute)
        if not plain or self._slots_of(name).busy():
            return self.run(plan, due_ms)
        stats = self._stats
        started = self._clock.now_ms()
        stats.record_lateness(started - due_ms)
        try:
            action = self._build(cls, plan, due_ms)
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

    def _start_prepared(
        self, name: str, plan: Plan, due_ms: int, ready: Prepared
    ) -> asyncio.Future[int]:
        """Start a prepared first attempt in a slot of ``name``, now or when one frees."""
        result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        slots = self._slots_of(name)
        stats = self._stats
        bounded = bool(getattr(ready, "bounded", False))
        self._active += 1
        self._idle.clear()

        def finish(started: int, error: BaseException | None, running: bool) -> None:
            # The slot passes on at once (the next request goes out); the records
            # of the attempt wait their turn behind the sends (see _drain).
            if running:
                stats.decr("action_executing_count")
                if not bounded:
                    slots.release()
            ended = self._clock.now_ms()
            went_out = getattr(ready, "went_out", None)
            if went_out is not None:  # started at its instant by itself, out of here
                started, ended = went_out
            stats.record_lateness(started - due_ms)
            self._later.append((settle, started, error, ended))
            if not self._draining:
                self._draining = True
                asyncio.get_running_loop().call_soon(self._drain)

        def settle(started: int, error: BaseException | None, ended: int) -> None:
            self._active -= 1
            if not self._active:
                self._idle.set()
            outcome = _OK if error is None else self._failure(error, plan, 1)  # type: ignore[arg-type]
            stats.incr("action_executed_count")
            if outcome is not _OK:
                stats.incr("action_executed_error_count")
            ok = self._settle(plan, due_ms, started, 1, outcome, ended=ended)
            if not result.done():
                result.set_result(STATUS_OK if ok else STATUS_FAILED)

        def launch() -> bool:
            """Send (holding a slot, unless the preparation is bounded where it is sent).
            False when it ended at once (a slot goes back)."""
            started = self._clock.now_ms()
            if self._closed:
                finish(started, ActionFailed("cancelled"), False)
                return False
            try:
                ready.start(lambda error: finish(started, error, True))
            except Exception as e:
                finish(started, e, False)
                return False
            stats.incr("action_executing_count")
            return True

        if bounded:
            launch()
        elif slots.take():
            if not launch():
                slots.release()
        else:
            slots.waiting.append(launch)
        return result

    def _drain(self) -> None:
        """Settle ended prepared attempts, a chunk per turn of the loop, so that a burst's
        sends are not held up behind the bookkeeping of the answers already in."""
        later = self._later
        turn = Turn()
        for _ in range(min(len(later), SETTLE_CHUNK)):
            settle, started, error, ended = later.popleft()
            try:
                settle(started, error, ended)
            except Exception:
                logger.exception("settling a firing failed")
            if turn.over():
                break
        if not later:
            self._draining = False
        elif any(slots.waiting for slots in self._slots.values()):
            # Firings still wait to be sent: the records (and the commits they bring
            # about on the store's thread, which competes for the interpreter lock)
            # go at a slower pace until they are out.
            asyncio.get_running_loop().call_later(BACKLOG_SETTLE_S, self._drain)
        else:
            asyncio.get_running_loop().call_soon(self._drain)

    async def _finish_inline(
        self, plan: Plan, due_ms: int, name: str, started: int, result: Awaitable[Any]
    ) -> int:
        """The rest of an inline attempt whose ``execute`` returned an awaitable."""
        stats = self._stats
        self._active += 1
        self._idle.clear()
        try:
            slots = self._slots_of(name)
            await slots.acquire()
            try:
                stats.incr("action_executing_count")
                try:
                    outcome = await self._await_result(result, plan, 1)
                except asyncio.CancelledError:
                    self._record(plan, due_ms, started, 1, RUN_FAILED, "cancelled")
                    raise
                finally:
                    stats.decr("action_executing_count")
            finally:
                slots.release()
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
        """Retries armed on the clock or under way (not yet recorded)."""
        return len(self._timers) + len(self._retry_tasks)

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
        for entry in self._prepared.values():
            entry[2].discard()
        self._prepared.clear()
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

    def _slots_of(self, name: str) -> _Slots:
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = _Slots(self.settings.concurrency_for(name))
        return slots

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
        ended: int | None = None,
    ) -> bool:
        """Record an attempt that ended, arm its retry or report the final status."""
        will_retry = (
            not outcome.ok
            and outcome.retryable
            and attempt <= self.settings.retry_max_count
            and not self._closed
        )
        result = RUN_OK if outcome.ok else (RUN_WILL_RETRY if will_retry else RUN_FAILED)
        self._record(plan, due_ms, started, attempt, result, outcome.error, manual, ended)
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
        slots = self._slots_of(canonical_name(plan.action))
        await slots.acquire()
        try:
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
        finally:
            slots.release()
        stats.incr("action_executed_count")
        if not outcome.ok:
            stats.incr("action_executed_error_count")
        return started, outcome

    async def _call(self, cls: type[Action], plan: Plan, due_ms: int, attempt: int) -> _Outcome:
        """Build the action and execute it; every exception becomes an outcome."""
        try:
            action = self._build(cls, plan, due_ms)
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
        ended: int | None = None,
    ) -> None:
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
        duration = (self._clock.now_ms() if ended is None else ended) - started
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
            self.node_id,
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
