"""The engine: the only owner of timing state.

The store is the source of truth, indexed by next firing time. The engine
keeps in memory only the plans due up to a cursor a short window ahead of
now: its window (:class:`forsun_box.window.Window`, which states the
invariant), refilled from the store before it runs dry. One timer is armed
on the clock for the earliest due instant (or the next refill).

Durability: every mutation goes through the writer
(:class:`forsun_box.writer.Writer`), which commits everything queued in one
transaction (group commit). Callers are answered
after their mutation committed. A firing's advance is queued only after
the action's first attempt finished, so a crash in between refires the
plan at restart (at least once). Firing records (advances, runs) wait up to
``firing_commit_linger_ms`` to share a commit unless a caller's mutation is
queued, and those of a burst fired here (more than a slice due at once) wait
for its last slice (:data:`BURST_HOLD_S` at most); a plan is back in the
window only once its advance committed.

Firing cost: the executor (:class:`forsun_box.executor.Executor`) may finish
a firing's first attempt synchronously (the dispatcher does for a
plain-function action): then it runs inline in the firing loop, with no task
per firing; other firings get a task.
The window holds at most about twice ``refill_limit`` plans, refilled in a
background task so firing goes on while the store is read.

Preparing ahead: with a dispatcher that can ``prepare``, the engine hands it,
``prepare_ahead_ms`` before their instant, the window's firings about to come
due (a walk of the heap that skips every subtree past the horizon), in small
chunks between which the loop runs; the firing itself then only starts what
was made ready. A prepared firing returns a future, not a task.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from forsun_box import errors
from forsun_box.clock import Clock, TimerHandle, local_text
from forsun_box.enums import CATCHUP_POLICIES, Misfire
from forsun_box.executor import Executor
from forsun_box.plan import DELAY, Plan, new_key
from forsun_box.stats import Stats
from forsun_box.store.base import Advance, Run, Store
from forsun_box.turns import Turn
from forsun_box.window import Entry, Window
from forsun_box.writer import Delete, Moved, Mutation, Puts, SetMeta, SetStatus, Writer

log = logging.getLogger("forsun_box.scheduler")

# Short names of the policies (defined in forsun_box.enums).
FIRE_ONCE, FIRE_ALL, SKIP = Misfire.FIRE_ONCE, Misfire.FIRE_ALL, Misfire.SKIP


def _late(ms: int) -> str:
    """A lateness for a log line: ``850 ms``, ``12.3 s``, ``2.5 h``."""
    if ms < 1000:
        return f"{max(ms, 0)} ms"
    if ms < 600_000:
        return f"{ms / 1000:.1f} s"
    if ms < 36_000_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


@dataclass(slots=True)
class EngineOptions:
    catchup: str = FIRE_ONCE
    window_ms: int = 30_000
    refill_limit: int = 50_000
    slice_size: int = 500
    max_batch: int = 20_000
    meta_interval_ms: int = 1_000
    shutdown_grace_s: float = 5.0
    #: how long firing records (advances, runs) may wait to share a commit when
    #: no caller waits on the writer: fewer, bigger transactions under load
    firing_commit_linger_ms: int = 20
    #: apply :func:`tune_gc` at start
    tune_gc: bool = True
    #: False on an AGENT node (``server_mode``): plans are stored and served,
    #: never loaded into the window nor fired on their schedule
    fire: bool = True
    #: how long before their instant firings are handed to the dispatcher to
    #: prepare (0: never)
    prepare_ahead_ms: int = 1_000
    #: armed firings (the firing process starts them at their instant by itself)
    #: due together from this many on are taken up here once their ends are in, or
    #: once none of their ends came for ``take_up_idle_ms`` (the rest are slow), at most
    #: ``take_up_after_ms`` after their instant: meanwhile the burst has the cores to itself
    take_up_from: int = 64
    take_up_idle_ms: int = 100
    take_up_after_ms: int = 5_000


#: a burst of firings fired here holds its records back this long at most (seconds)
BURST_HOLD_S = 1.0
#: least number of young collections between two full ones (CPython's default: 10)
GC_FULL_EVERY = 1000


def tune_gc() -> None:
    """Make the collector's full passes rare (process-wide; idempotent).

    Under load nearly every object the engine makes lives long enough to
    reach the oldest generation (window plans, queued run records), so with
    CPython's defaults a full collection -- a pass over every tracked object,
    ~100 ms with a large window -- ran about twice a second and set the
    firing lateness p99. Cycles that die young are still collected by the
    young generations; only garbage cycles that grew old wait longer.
    """
    g0, g1, g2 = gc.get_threshold()
    if 0 < g2 < GC_FULL_EVERY:
        gc.set_threshold(g0, g1, GC_FULL_EVERY)


#: firings taken from the window at a time within a slice (the turn is checked between)
FIRE_CHUNK = 32
#: firings handed to the dispatcher to prepare at a time (the turn is checked between)
PREPARE_CHUNK = 32
#: how often a burst's armed firings are looked at for their ends, seconds
TAKE_UP_LOOK_S = 0.02
#: ... and how many of the first whose ends are not in are looked at each time
TAKE_UP_LOOK_AT = 256
#: a plan firing again within take_up_after_ms and this is not held back with its burst
#: (the take-up itself, and the commit of its advance, take a while)
TAKE_UP_MARGIN_MS = 1_000


class Scheduler:
    """Creates, removes and fires plans; see the module docstring for the model."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        tz: ZoneInfo,
        *,
        options: EngineOptions | None = None,
        executor: Executor | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tz = tz
        self.options = options or EngineOptions()
        if self.options.catchup not in CATCHUP_POLICIES:
            raise ValueError(f"catchup must be one of {', '.join(CATCHUP_POLICIES)}")
        self._start: Callable[[Plan, int], int | Awaitable[int]] | None = None
        self._prepare: Callable[[list[tuple[Plan, int]]], object] | None = None
        self.executor = executor
        self.stats = stats
        self._io = asyncio.Lock()
        self._writer = Writer(
            store,
            self._io,
            self._committed,
            self.options.max_batch,
            self.options.firing_commit_linger_ms / 1000,
        )
        self._window = Window(
            store,
            self._io,
            clock.now_ms,
            self.options.window_ms,
            self.options.refill_limit,
        )
        self._tasks: set[asyncio.Future[Any]] = set()
        # bursts set aside that went out, each waiting to be taken up (their plans are
        # in the window until then)
        self._went_out: list[list[Entry]] = []
        self._versions = itertools.count(time.time_ns() // 1000)
        self._timer: TimerHandle | None = None
        self._timer_at: int | None = None
        self._processing = False
        # firings due up to here were handed to the dispatcher to prepare
        self._prepared_until = 0
        self._prep_timer: TimerHandle | None = None
        self._prep_at: int | None = None
        self._running = False
        self._started_ms = 0
        self._last_meta_ms = 0
        self.caught_up = 0
        self.skipped = 0
        #: when set, checked before every firing: a plan it refuses is dropped from
        #: the window unfired (a cluster node that no longer trusts the plan's lease)
        self.gate: Callable[[Plan], bool] | None = None
        self.gated = 0
        #: when set, the instant (ms) from which ``key`` could fire again after an
        #: outage that was not this process's own (a cluster node's taken-over
        #: partition): what came due before it fires under the catch-up policy
        self.catchup_since: Callable[[str], int] | None = None

    @property
    def executor(self) -> Executor | None:
        """Runs a firing's first attempt (see :class:`forsun_box.executor.Executor`)."""
        return self._executor

    @executor.setter
    def executor(self, executor: Executor | None) -> None:
        self._executor = executor
        self._start = None if executor is None else executor.start_firing
        self._prepare = executor.prepare if executor is not None and executor.prepares else None
        self._disarm = executor.disarm if executor is not None and executor.prepares else None
        self._is_armed = executor.is_armed if executor is not None and executor.prepares else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the first window and arm the timer. The store must be open."""
        if self.options.tune_gc:
            tune_gc()
        self._started_ms = self.clock.now_ms()
        self._writer.start()
        async with self._io:
            processed = await self.store.get_meta("processed_until")
        if processed:
            down_ms = self._started_ms - int(processed)
            if down_ms > 2000:
                log.info(
                    "was down for %.1f s; catch-up policy %s", down_ms / 1000, self.options.catchup
                )
        self._running = True
        self._window.cursor = (0, "")
        if not self.options.fire:
            return  # the cursor stays at the start: no plan is ever admitted
        await self._refill()
        self._arm()

    async def stop(self) -> None:
        """Stop firing, wait (bounded) for running firings, flush every mutation."""
        self._running = False
        for went_out in self._went_out:
            self._take_up(went_out, len(went_out))
        self._went_out.clear()
        went_out = self._window.aside_due(self.clock.now_ms())
        self._take_up(went_out, len(went_out))
        self._window.restore_aside()
        if self._prepare is not None:
            self.executor.disarm_all()  # type: ignore[union-attr]
        if self._timer:
            self._timer.cancel()
            self._timer = None
        if self._prep_timer:
            self._prep_timer.cancel()
            self._prep_timer = None
        if self._tasks:
            _done, pending = await asyncio.wait(
                set(self._tasks), timeout=self.options.shutdown_grace_s
            )
            if pending:
                log.warning(
                    "%d firings still running at shutdown; they fire again at restart", len(pending)
                )
                for t in pending:
                    t.cancel()
        self._writer.submit(SetMeta("processed_until", str(self.clock.now_ms())), False)
        await self._writer.close()

    # ------------------------------------------------------------------ public API

    def new_key(self) -> str:
        return new_key()

    async def create(self, plans: Sequence[Plan]) -> list[Plan]:
        """Store ``plans`` (replacing same keys); answered once committed."""
        if not plans:
            return []
        hold = self._window.hold
        versions = self._versions
        for p in plans:
            p.version = next(versions)
            hold(p.key)
        await self._disarm_keys(p.key for p in plans)
        batch = list(plans)
        await self._writer.commit(Puts(batch))
        if self.stats is not None:
            timeouts = sum(1 for p in plans if p.kind == DELAY)
            if timeouts:
                self.stats.incr("create_timeouted_count", timeouts)
            if len(plans) - timeouts:
                self.stats.incr("created_count", len(plans) - timeouts)
        return batch

    async def remove(self, key: str) -> Plan:
        """Remove ``key``; returns the removed plan. Raises PlanNotFound."""
        plan = await self.get(key)
        self._window.hold(key)
        await self._disarm_keys((key,))
        await self._writer.commit(Delete(key))
        if self.stats is not None:
            self.stats.incr("removed_count")
        return plan

    async def get(self, key: str) -> Plan:
        """The plan under ``key``. Raises PlanNotFound."""
        p = self._window.get(key)
        if p is not None:
            return p.copy()
        async with self._io:
            plan = await self.store.get(key)
        if plan is None:
            raise errors.PlanNotFound(f"plan not found: {key}")
        return plan

    async def keys(self, prefix: str = "", after: str = "", limit: int = 0) -> list[str]:
        async with self._io:
            return await self.store.keys(prefix, after, limit)

    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        async with self._io:
            return await self.store.plans(prefix, after, limit)

    async def firing_between(self, start_ms: int, end_ms: int, limit: int = 100_000) -> list[Plan]:
        """Plans whose next firing falls in ``[start_ms, end_ms)``."""
        async with self._io:
            return await self.store.firing_between(start_ms, end_ms, limit)

    async def count_firing_between(self, start_ms: int, end_ms: int, limit: int) -> int:
        """How many plans fire in ``[start_ms, end_ms)``, counting at most ``limit``."""
        async with self._io:
            return await self.store.count_firing_between(start_ms, end_ms, limit)

    async def count(self) -> int:
        async with self._io:
            return await self.store.count()

    async def runs(self, key: str, limit: int = 50) -> list[Run]:
        async with self._io:
            return await self.store.runs(key, limit)

    async def prune_runs(self) -> int:
        """Drop run records past the store's retention; returns how many."""
        async with self._io:
            return await self.store.prune_runs(self.clock.now_ms())

    async def pause(self, key: str) -> Plan:
        """Stop ``key`` from firing until resumed; returns the paused plan."""
        plan = await self.get(key)
        if plan.paused:
            return plan
        return (await self.create([plan.copy(paused=True)]))[0]

    async def resume(self, key: str) -> Plan:
        """Let a paused plan fire again from its next occurrence after now.

        Occurrences that fell while paused are skipped. Raises
        TimeNeverArrives when the plan has no occurrence left.
        """
        plan = await self.get(key)
        if not plan.paused:
            return plan
        nxt = plan.next_after(self.clock.now_ms(), self.tz)
        if nxt is None:
            raise errors.TimeNeverArrives("the plan has no firing left to resume")
        return (await self.create([plan.copy(paused=False, next_time=nxt)]))[0]

    async def fire_now(self, key: str) -> int:
        """Run ``key``'s action once now, outside its schedule; returns its status.

        The plan's schedule, count and status are not changed; the run is
        recorded in the history like any other, marked manual.
        """
        plan = await self.get(key)
        if self.executor is None:
            raise errors.UnknownError("no executor")
        return await self.executor.run(plan, self.clock.now_ms(), manual=True)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._writer.barrier(SetMeta("processed_until", str(self.clock.now_ms())))

    def record_run(self, run: Run) -> None:
        """Dispatcher callback: persist one attempt's record."""
        self._writer.submit_run(run)

    def record_status(self, key: str, version: int, status: int) -> None:
        """Dispatcher callback: the final status after retries."""
        p = self._window.get(key)
        if p is not None and p.version == version:
            p.status = status
        self._writer.submit(SetStatus(key, version, status), False)

    def window_size(self) -> int:
        return len(self._window)

    def inflight_count(self) -> int:
        return len(self._window.inflight)

    def inflight_keys(self) -> list[str]:
        """Keys firing now: their post-firing update is not committed yet."""
        return list(self._window.inflight)

    @property
    def cursor_ms(self) -> int:
        return self._window.cursor[0]

    async def forget(self, keys: Sequence[str] | None) -> None:
        """Drop ``keys`` (None: every plan) from the window: another node changed
        them (a cluster hint).

        A firing under way goes on (its writes are fenced); :meth:`rescan`
        admits what the store now holds for them.
        """
        async with self._io:  # not in the middle of a refill's admissions
            self._window.forget(keys)

    async def rescan(self, from_ms: int | None = None) -> None:
        """Read the window again from ``from_ms`` (from the start when None).

        For plans the window could not know of: written by another node, or
        of partitions this node has just taken. Plans already held are kept.
        """
        await self._window.rewind(from_ms)
        await self._refill()

    # ------------------------------------------------------------------ window

    def _admitted(self, plans: list[Plan]) -> None:
        """``plans`` joined the window: re-arm, and hand on those due for preparing."""
        prepare = self._prepare
        for plan in plans:
            nt = plan.next_time
            assert nt is not None
            if self._timer_at is None or nt < self._timer_at:
                self._arm()
            if nt <= self._prepared_until and prepare is not None:
                # (the walk for this stretch is behind us)
                self._hand_to_prepare([(plan, nt)])

    def _committed(self, mutations: list[Mutation], advances: list[Moved], ok: bool) -> None:
        """Runs in the writer right after a commit, before any read can interleave.

        When the commit failed (not ``ok``) the callers get the error and the
        store holds what it held: the window keeps its plans and admits none
        of the failed puts. (Firings happened either way: their records are
        lost, and a restart fires those plans again, at least once.)"""
        window = self._window
        if advances:
            admitted = window.advanced(advances)
            if admitted:
                self._admitted(admitted)
        if not ok:
            for m in mutations:
                match m:
                    case Puts(plans):
                        for plan in plans:
                            window.release(plan.key)
                    case Delete(key):
                        window.release(key)
            return
        for m in mutations:
            match m:
                case Puts(plans):
                    admitted = window.committed_puts(plans)
                    if admitted:
                        self._admitted(admitted)
                case Delete(key):
                    window.committed_delete(key)

    async def _refill(self) -> None:
        """Load plans between the cursor and now + window from the store; re-arm."""
        try:
            await self._window.refill()
        finally:
            if self._running:
                self._arm()

    async def _disarm_keys(self, keys: Iterable[str]) -> None:
        """Before the plans of ``keys`` change or go: take back their armed firings (so
        that none goes out once the change is answered). One whose instant came first
        went out: it is fired here now, as a firing under way when its plan changed."""
        disarm = self._disarm
        if disarm is None:
            return
        for key, version, due, answer in disarm(keys):
            try:
                went_out = await answer
            except Exception:
                went_out = False
            if not went_out:
                # taken back in time: if it was set aside, it fires at its instant (as any
                # firing due before the change is answered) from the heap
                self._window.put_back(key, version, due)
                continue
            # (else it was taken from the window already: it fires, or fired)
            plan = self._window.get(key)
            if plan is not None and plan.version == version and self._window.take_plan(plan, due):
                self._fire(plan, due, self.clock.now_ms())

    # ------------------------------------------------------------------ firing

    def _arm(self) -> None:
        if not self._running:
            return
        window = self._window
        at = window.next_due()
        aside = window.next_aside()
        if aside is not None:
            at = aside if at is None else min(at, aside)
        if self._prepare is not None:
            self._arm_prepare()
        refill_at = window.cursor[0] - self.options.window_ms // 2
        if len(window) < self.options.refill_limit and not window.refilling:
            # (a refill under way re-arms when it ends)
            at = refill_at if at is None else min(at, refill_at)
        if at is None:
            at = self.clock.now_ms() + self.options.window_ms // 2
        if self._timer is not None and self._timer_at == at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.clock.call_at(at, self._on_timer)

    def _arm_prepare(self) -> None:
        """Arm the timer of the next walk for firings to prepare."""
        lead = self.options.prepare_ahead_ms
        earliest = self._window.earliest()
        if lead <= 0 or earliest is None:
            return
        # when the earliest firing enters the lead, or half a lead after the last walk
        at = max(earliest - lead, self._prepared_until - lead + max(1, lead // 2))
        if self._prep_timer is not None:
            if self._prep_at == at:
                return
            self._prep_timer.cancel()
        self._prep_at = at
        self._prep_timer = self.clock.call_at(at, self._on_prepare)

    def _on_prepare(self) -> None:
        self._prep_timer = None
        self._prep_at = None
        if not self._running:
            return
        horizon = self.clock.now_ms() + self.options.prepare_ahead_ms
        firings = self._window.due_between(self._prepared_until, horizon)
        self._prepared_until = horizon
        if firings:
            firings.sort(key=lambda f: f[1])
            self._hand_to_prepare(firings)
        self._arm_prepare()

    def _hand_to_prepare(self, firings: list[tuple[Plan, int]]) -> None:
        """Give ``firings`` to the dispatcher to prepare, a turn's worth at a time."""
        if len(firings) <= PREPARE_CHUNK:
            self._call_prepare(firings)
            self._set_aside(self._may_set_aside(firings))
            return
        task = asyncio.get_running_loop().create_task(self._prepare_chunks(firings))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prepare_chunks(self, firings: list[tuple[Plan, int]]) -> None:
        turn = Turn()
        armed: list[tuple[Plan, int]] = []
        for i in range(0, len(firings), PREPARE_CHUNK):
            if turn.over():
                await asyncio.sleep(0)
                turn = Turn()
            if not self._running:
                return
            chunk = firings[i : i + PREPARE_CHUNK]
            self._call_prepare(chunk)
            armed += self._may_set_aside(chunk)
        self._set_aside(armed)

    def _may_set_aside(self, firings: list[tuple[Plan, int]]) -> list[tuple[Plan, int]]:
        """The firings among ``firings`` just prepared that are armed, but not those whose
        plan fires again before the take-up might (its next firing would wait)."""
        is_armed = self._is_armed
        if is_armed is None:
            return []
        return [(p, due) for p, due in firings if is_armed(p, due) and not self._again_soon(p, due)]

    def _set_aside(self, armed: list[tuple[Plan, int]]) -> None:
        """Set the bursts among the armed firings ``armed`` aside in the window: those due
        at once, ``take_up_from`` or more. At their instant they go out by themselves and
        nothing is taken from the window; they are taken up after the burst."""
        least = self.options.take_up_from
        if len(armed) < least:
            return
        counts = collections.Counter(due for _, due in armed)
        # in the order armed: the order they go out in, and their ends come back in
        bursts = [(p.key, p.version, due) for p, due in armed if counts[due] >= least]
        if bursts and self._window.set_aside(bursts):
            self._arm()

    def _call_prepare(self, firings: list[tuple[Plan, int]]) -> None:
        assert self._prepare is not None
        try:
            self._prepare(firings)
        except Exception:
            log.exception("preparing %d firings failed", len(firings))

    def _again_soon(self, plan: Plan, due: int) -> bool:
        """Whether ``plan`` fires again within ``take_up_after_ms`` (and a margin) of its
        firing at ``due``."""
        if plan.count and plan.current_count + 1 >= plan.count:
            return False  # (its last firing)
        nxt = plan.next_after(due, self.tz)
        return nxt is not None and nxt - due < self.options.take_up_after_ms + TAKE_UP_MARGIN_MS

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self._running or self._processing:
            return
        self._processing = True
        task = asyncio.get_running_loop().create_task(self._process())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self) -> None:
        if self.stats is not None:
            self.stats.incr("timer_loop_count")
        try:
            now = self.clock.now_ms()
            window = self._window
            slice_size = self.options.slice_size
            chunk = min(FIRE_CHUNK, slice_size)
            fire = self._fire
            aside = window.aside_due(now)
            if len(aside) >= self.options.take_up_from:
                self._take_up_after(aside)
            elif aside:
                self._take_up(aside, len(aside))
            holding = False
            while self._running:
                # A slice: up to slice_size firings, no longer than a turn.
                turn = Turn()
                fired = 0
                while True:
                    due_plans = window.pop_due(now, chunk)
                    for p, due in due_plans:
                        if self.gate is not None and not self.gate(p):
                            self.gated += 1
                            continue
                        # (an armed one went out by itself: its start learns its end)
                        fire(p, due, now)
                    more = len(due_plans) == chunk
                    fired += chunk
                    if not more or fired >= slice_size or turn.over():
                        break
                if not more:
                    break
                if not holding:
                    # a burst: its records commit after it (or after BURST_HOLD_S)
                    holding = True
                    self._writer.hold_records(BURST_HOLD_S)
                # Let API requests and I/O in between slices.
                await asyncio.sleep(0)
                now = self.clock.now_ms()
            if now - self._last_meta_ms >= self.options.meta_interval_ms:
                self._last_meta_ms = now
                self._writer.submit(SetMeta("processed_until", str(now)), False)
            if self._running and window.wants_refill(now):
                # In its own task: firing goes on while the refill waits for
                # the store (behind a group commit, then the query).
                task = asyncio.get_running_loop().create_task(self._refill())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("engine loop failed")
            if self.stats is not None:
                self.stats.incr("timer_loop_ready_error_count")
        finally:
            self._writer.release_records()
            self._processing = False
            self._arm()

    def _take_up_after(self, went_out: list[Entry]) -> None:
        """Take up the burst ``went_out`` (set aside) after it."""
        self._went_out.append(went_out)
        task = asyncio.get_running_loop().create_task(self._take_up_later(went_out))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take_up_later(self, went_out: list[Entry]) -> None:
        """Take up the armed firings of a burst once the firing process has reported all
        their ends, or none of them for ``take_up_idle_ms``, or ``take_up_after_ms`` after
        the instant: until then the burst has the cores to itself. Then a turn's worth at
        a time."""
        clock = self.clock
        ended = self.executor.went_out_ended  # type: ignore[union-attr]
        progress = self.executor.went_out_progress  # type: ignore[union-attr]
        holds = self._window.holds
        deadline = went_out[0][0] + self.options.take_up_after_ms
        idle_ms = self.options.take_up_idle_ms
        # those whose ends are not in (and whose plan is still as set aside); each look
        # checks the first of them (ends come about in the order the firings went out,
        # which is about this one)
        left = list(went_out)
        moved = clock.now_ms()
        said = progress(left[0][2])
        while self._running and left:
            # the ends first: a look this loop came to late is no sign the burst stalled
            now = clock.now_ms()
            while left:  # (on past the first ones while they all ended)
                head = left[:TAKE_UP_LOOK_AT]
                still = [e for e in head if not ended(e[2]) and holds(e) is not None]
                if len(still) < len(head):
                    moved = now
                    left[: len(head)] = still
                if still:
                    break
            if left:  # (more ended where they went out from: their ends come later)
                now_said = progress(left[0][2])
                if now_said != said:
                    said, moved = now_said, now
            if not left or now >= deadline or now - moved >= idle_ms:
                break
            await clock.sleep(TAKE_UP_LOOK_S)
        while self._running and went_out:
            turn = Turn()
            while went_out and not turn.over():
                self._take_up(went_out, FIRE_CHUNK)
            await asyncio.sleep(0)
        self._went_out = [other for other in self._went_out if other is not went_out]
        self._arm()  # (the window emptied: a refill may be due)

    def _take_up(self, went_out: list[Entry], n: int) -> None:
        """Fire the last ``n`` of ``went_out`` (set aside, gone out), taking them out of
        the window (unless their plan changed meanwhile, or they fired from the heap:
        that change, or that firing, fired them)."""
        now = self.clock.now_ms()
        take = self._window.take_entry
        for entry in went_out[-n:]:
            plan = take(entry)
            if plan is not None:
                self._fire(plan, entry[0], now)
        del went_out[-n:]

    def _fire(self, plan: Plan, due: int, now: int) -> None:
        since = self._started_ms
        if self.catchup_since is not None:
            outage = self.catchup_since(plan.key)
            if outage > since:
                since = outage
        policy = self.options.catchup if due < since else FIRE_ALL
        if plan.misfire:
            # A per-plan policy replaces the server's, for downtime and overload alike:
            # within the grace window a firing is on time whatever the cause.
            policy = plan.misfire if now - due > plan.grace_ms else FIRE_ALL
        self._window.start_firing(plan.key, plan.version)
        if policy == SKIP:
            self.skipped += 1
            nxt = plan.next_after(now, self.tz)
            log.info(
                "misfire: skipped %s due at %s (%s late)",
                plan.key,
                local_text(due, self.tz),
                _late(now - due),
            )
            self._queue_advance(plan.copy(next_time=nxt))
            return
        if due < since or policy != FIRE_ALL:
            self.caught_up += 1
            log.info(
                "misfire: firing %s due at %s (%s late, %s)",
                plan.key,
                local_text(due, self.tz),
                _late(now - due),
                policy,
            )
        base = now if policy == FIRE_ONCE else due
        start = self._start
        if start is None:
            coro = self._run_firing(plan, due, base)
        else:
            stats = self.stats
            if stats is not None:
                stats.incr("timeout_handling_count")
            try:
                started = start(plan, due)
            except Exception:
                log.exception("firing %s failed unexpectedly", plan.key)
                started = -1
            if type(started) is int:
                # Finished right here: no task for this firing.
                if stats is not None:
                    stats.incr("timeout_handled_count")
                self._advance(plan, due, base, started)
                return
            if isinstance(started, asyncio.Future):
                # A prepared firing: its future says when it ended, no task needed.
                self._tasks.add(started)
                started.add_done_callback(functools.partial(self._fired, plan, due, base))
                return
            coro = self._await_firing(plan, due, base, started)  # type: ignore[arg-type]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fired(self, plan: Plan, due: int, base: int, first: asyncio.Future[int]) -> None:
        """A prepared firing's first attempt ended (or the firing was cancelled at a stop)."""
        self._tasks.discard(first)
        if first.cancelled():
            return
        error = first.exception()
        if error is not None:
            log.error("firing %s failed unexpectedly", plan.key, exc_info=error)
        if self.stats is not None:
            self.stats.incr("timeout_handled_count")
        self._advance(plan, due, base, -1 if error is not None else first.result())

    async def _await_firing(self, plan: Plan, due: int, base: int, first: Awaitable[int]) -> None:
        """The rest of a firing whose first attempt did not finish synchronously."""
        status = -1
        try:
            status = await first
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("firing %s failed unexpectedly", plan.key)
        if self.stats is not None:
            self.stats.incr("timeout_handled_count")
        self._advance(plan, due, base, status)

    async def _run_firing(self, plan: Plan, due: int, base: int) -> None:
        stats = self.stats
        if stats is not None:
            stats.incr("timeout_handling_count")
        status = -1
        try:
            if self.executor is not None:
                status = await self.executor.run(plan, due)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("firing %s failed unexpectedly", plan.key)
        if stats is not None:
            stats.incr("timeout_handled_count")
        self._advance(plan, due, base, status)

    def _advance(self, plan: Plan, due: int, base: int, status: int) -> None:
        """Queue the update after a firing's first attempt (due at ``due``) ended."""
        count = plan.current_count + 1
        # The next firing counts this one; the count is put back at once (nothing
        # runs in between), as the action or its retries may still hold the plan.
        plan.current_count = count
        try:
            nxt = plan.next_after(base, self.tz)
        finally:
            plan.current_count = count - 1
        if nxt is None:
            # Finished: the row goes, nothing returns to the window; no copy.
            adv = Advance(plan.key, plan.version, None, count, due, status)
            self._writer.submit_advance(adv, None)
            return
        moved = plan.copy()
        moved.current_count = count
        moved.last_timeout = due
        moved.status = status
        moved.next_time = nxt
        self._queue_advance(moved)

    def _queue_advance(self, moved: Plan) -> None:
        """Queue the post-firing update; ``moved`` is the plan as it now stands."""
        adv = Advance(
            moved.key,
            moved.version,
            moved.next_time,
            moved.current_count,
            moved.last_timeout,
            moved.status,
        )
        self._writer.submit_advance(adv, moved)
