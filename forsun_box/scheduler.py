"""The engine: the only owner of timing state.

The store is the source of truth, indexed by next firing time. The engine
keeps in memory only the plans due up to a *cursor* (a ``(time, key)``
position a short window ahead of now), in a heap, and refills from the
store's next-time index before the window runs dry. One timer is armed on
the clock for the earliest due instant (or the next refill).

Invariant: every stored, unpaused plan whose ``(next_time, key)`` is at or
before the cursor is in ``_window`` -- unless a mutation of that key is
queued (it decides membership when it commits) or the plan is firing (its
advance decides).

Durability: every mutation goes through :class:`_Writer`, which commits
everything queued in one transaction (group commit). Callers are answered
after their mutation committed. A firing's advance is queued only after
the action's first attempt finished, so a crash in between refires the
plan at restart (at least once). Firing records (advances, runs) wait up to
``firing_commit_linger_ms`` to share a commit unless a caller's mutation is
queued; a plan is back in the window only once its advance committed.

Firing cost: when the executor is a dispatcher, a plain-function action runs
inline in the firing loop (no task per firing); coroutine actions get a task.
The window holds at most about twice ``refill_limit`` plans, refilled in a
background task so firing goes on while the store is read.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from forsun_box import errors
from forsun_box.clock import Clock, TimerHandle
from forsun_box.plan import DELAY, Plan, new_key
from forsun_box.store.base import Advance, Batch, Run, Store

log = logging.getLogger("forsun_box.scheduler")

FIRE_ONCE = "fire_once"
FIRE_ALL = "fire_all"
SKIP = "skip"
CATCHUP_POLICIES = (FIRE_ONCE, FIRE_ALL, SKIP)

# Greater than any key a plan may have (keys are at most a few hundred chars).
_MAX_KEY = "\U0010ffff" * 1024

Executor = Callable[[Plan, int], Awaitable[int]]
T = TypeVar("T")


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


#: most advances (and most run records) in one commit
FIRING_BATCH = 20_000

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


# Plans a window refill admits between two yields to the event loop.
ADMIT_CHUNK = 1000


def _take(items: list[T], cap: int) -> tuple[list[T], list[T]]:
    """The first ``cap`` of ``items`` and the rest (no copy when all of them fit)."""
    if len(items) <= cap:
        return items, []
    return items[:cap], items[cap:]


class _Writer:
    """Group commit: one task applies everything queued as one transaction."""

    def __init__(
        self,
        store: Store,
        lock: asyncio.Lock,
        on_commit: Callable[[list[Any], list[tuple[Advance, Plan | None]], bool], None],
        max_batch: int,
        linger_s: float = 0.0,
    ) -> None:
        self._store = store
        self._linger_s = linger_s
        self._lock = lock
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._queue: list[tuple[str, Any, asyncio.Future[None] | None]] = []
        # The two mutations of every firing skip the tagged queue: no tuple
        # per item, no dispatch on its kind (they commit in any order anyway).
        self.advances: list[tuple[Advance, Plan | None]] = []
        self.runs: list[Run] = []
        self._wake = asyncio.Event()
        # set by mutations someone may wait for: ends a linger at once
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # True from taking items off the queue until their callers are answered
        self._busy = False
        # a commit_alone ran in this turn of the event loop
        self._alone = False
        self.commits = 0
        self.last_commit_ms = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def submit(self, kind: str, payload: Any, wait: bool) -> asyncio.Future[None] | None:
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._queue.append((kind, payload, fut))
        self._wake.set()
        if fut is not None:
            self._urgent.set()
        return fut

    async def commit_alone(self, kind: str, payload: Any) -> bool:
        """Commit one mutation right away when nothing else is queued or being
        committed, once per turn of the event loop; False (nothing done)
        otherwise: submit it.

        The caller waits for the commit anyway: done here, it is answered in
        the same turn of the loop instead of handing over to the writer's task
        and back (a lone client's every call). Mutations arriving in the same
        turn after it still share one commit. Raises ForsunBoxError when the
        commit fails.
        """
        if self._alone or self._busy or self._queue or self._closing or self._lock.locked():
            return False
        self._alone = self._busy = True
        asyncio.get_running_loop().call_soon(self._next_turn)
        try:
            error = await self._commit([(kind, payload, None)], [], [])
        finally:
            self._busy = False
        if self._queue or self.advances or self.runs:
            self._wake.set()  # (queued while this one committed)
        if error is not None:
            raise error
        return True

    def _next_turn(self) -> None:
        self._alone = False

    async def commit(self, kind: str, payload: Any) -> None:
        """Commit one mutation for a caller who waits for it: alone if it can
        (:meth:`commit_alone`), else with whatever the writer's task takes next."""
        if not await self.commit_alone(kind, payload):
            fut = self.submit(kind, payload, True)
            assert fut is not None
            await fut

    def submit_advance(self, adv: Advance, moved: Plan | None) -> None:
        self.advances.append((adv, moved))
        self._wake.set()

    def submit_run(self, run: Run) -> None:
        self.runs.append(run)
        self._wake.set()

    def __len__(self) -> int:
        return len(self._queue) + len(self.advances) + len(self.runs)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._urgent.set()
        if self._task:
            await self._task

    async def _loop(self) -> None:
        max_batch = self._max_batch
        while True:
            if not (self._queue or self.advances or self.runs):
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if (
                self._linger_s > 0
                and not any(fut is not None for _, _, fut in self._queue)
                and not self._closing
                and len(self.advances) + len(self.runs) < FIRING_BATCH
            ):
                # Only firing records: let more of them gather for one commit
                # (a crash meanwhile fires them again, as for any uncommitted
                # advance), unless a caller's mutation arrives.
                self._urgent.clear()
                try:
                    await asyncio.wait_for(self._urgent.wait(), self._linger_s)
                except TimeoutError:
                    pass
            if self._busy:  # a commit_alone is under way: this one follows it
                self._wake.clear()
                await self._wake.wait()
                continue
            items, self._queue = _take(self._queue, max_batch)
            # Firing records go in smaller slices: a backlog then drains as
            # several short commits, and a window refill waiting for the
            # store lock gets its turn between two of them.
            advances, self.advances = _take(self.advances, FIRING_BATCH)
            runs, self.runs = _take(self.runs, FIRING_BATCH)
            self._busy = True
            try:
                error = await self._commit(items, advances, runs)
            finally:
                self._busy = False
            if error is not None:
                log.error("commit of %d mutations failed: %s", len(items), error)
            for _, _, fut in items:
                if fut is not None and not fut.done():
                    if error is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(error)

    async def _commit(
        self,
        items: list[tuple[str, Any, asyncio.Future[None] | None]],
        advances: list[tuple[Advance, Plan | None]],
        runs: list[Run],
    ) -> errors.ForsunBoxError | None:
        """Apply ``items``, ``advances`` and ``runs`` as one transaction; the error, if any."""
        batch = Batch()
        if advances:
            batch.advances = [a for a, _ in advances]
        batch.runs = runs
        for kind, payload, _ in items:
            if kind == "puts":
                ops = batch.ops
                for p in payload:
                    ops[p.key] = p
            elif kind == "delete":
                batch.ops[payload] = None
            elif kind == "advance":
                batch.advances.append(payload[0])
            elif kind == "status":
                batch.statuses.append(payload)
            elif kind == "run":
                batch.runs.append(payload)
            elif kind == "meta":
                batch.meta[payload[0]] = payload[1]
        error: errors.ForsunBoxError | None = None
        started = time.perf_counter()
        async with self._lock:
            try:
                await self._store.apply(batch)
            except errors.ForsunBoxError as e:
                error = e
            except Exception as e:  # a driver bug must not kill the writer
                log.exception("store apply failed")
                error = errors.StoreError(f"store error: {e}")
            except BaseException:
                # cancelled (a commit_alone's caller, at a stop): whether it was
                # committed is unknown; release its keys, admit nothing
                self._on_commit(items, advances, False)
                raise
            self.last_commit_ms = (time.perf_counter() - started) * 1000
            self.commits += 1
            # Membership decisions happen before any read can interleave.
            self._on_commit(items, advances, error is None)
        return error


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
        stats: Any = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tz = tz
        self.options = options or EngineOptions()
        if self.options.catchup not in CATCHUP_POLICIES:
            raise ValueError(f"catchup must be one of {', '.join(CATCHUP_POLICIES)}")
        self._start: Callable[[Plan, int], int | Awaitable[int]] | None = None
        self.executor = executor
        self.stats = stats
        self._io = asyncio.Lock()
        self._writer = _Writer(
            store,
            self._io,
            self._committed,
            self.options.max_batch,
            self.options.firing_commit_linger_ms / 1000,
        )
        self._window: dict[str, Plan] = {}
        self._heap: list[tuple[int, int, str, int]] = []
        self._seq = itertools.count()
        self._cursor: tuple[int, str] = (0, "")
        self._pending: dict[str, int] = {}  # key -> mutations of it not yet committed
        self._inflight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._versions = itertools.count(time.time_ns() // 1000)
        self._timer: TimerHandle | None = None
        self._timer_at: int | None = None
        self._processing = False
        self._refilling = False
        self._running = False
        self._started_ms = 0
        self._last_meta_ms = 0
        self.caught_up = 0
        self.skipped = 0
        #: when set, checked before every firing: a plan it refuses is dropped from
        #: the window unfired (a cluster node that no longer trusts the plan's lease)
        self.gate: Callable[[Plan], bool] | None = None
        self.gated = 0

    @property
    def executor(self) -> Executor | None:
        """Runs a firing's first attempt: ``await executor(plan, due_ms)`` -> status."""
        return self._executor

    @executor.setter
    def executor(self, executor: Executor | None) -> None:
        self._executor = executor
        # A dispatcher's ``run`` comes with ``start_firing``, which finishes cheap
        # actions synchronously: the engine then needs no task per firing.
        owner = getattr(executor, "__self__", None)
        start = getattr(owner, "start_firing", None)
        same = getattr(executor, "__func__", None) is getattr(type(owner), "run", False)
        self._start = start if start is not None and same else None

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
        self._cursor = (0, "")
        await self._refill()
        self._arm()

    async def stop(self) -> None:
        """Stop firing, wait (bounded) for running firings, flush every mutation."""
        self._running = False
        if self._timer:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            done, pending = await asyncio.wait(
                set(self._tasks), timeout=self.options.shutdown_grace_s
            )
            if pending:
                log.warning(
                    "%d firings still running at shutdown; they fire again at restart", len(pending)
                )
                for t in pending:
                    t.cancel()
        self._writer.submit("meta", ("processed_until", str(self.clock.now_ms())), False)
        await self._writer.close()

    # ------------------------------------------------------------------ public API

    def new_key(self) -> str:
        return new_key()

    async def create(self, plans: Sequence[Plan]) -> list[Plan]:
        """Store ``plans`` (replacing same keys); answered once committed."""
        if not plans:
            return []
        hold = self._hold
        versions = self._versions
        for p in plans:
            p.version = next(versions)
            hold(p.key)
        batch = list(plans)
        await self._writer.commit("puts", batch)
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
        self._hold(key)
        await self._writer.commit("delete", key)
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
        recorded in the history like any other.
        """
        plan = await self.get(key)
        if self.executor is None:
            raise errors.UnknownError("no executor")
        return await self.executor(plan, self.clock.now_ms())

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        fut = self._writer.submit("meta", ("processed_until", str(self.clock.now_ms())), True)
        assert fut is not None
        await fut

    def record_run(self, run: Run) -> None:
        """Dispatcher callback: persist one attempt's record."""
        self._writer.submit_run(run)

    def record_status(self, key: str, version: int, status: int) -> None:
        """Dispatcher callback: the final status after retries."""
        p = self._window.get(key)
        if p is not None and p.version == version:
            p.status = status
        self._writer.submit("status", (key, version, status), False)

    def window_size(self) -> int:
        return len(self._window)

    def inflight_count(self) -> int:
        return len(self._inflight)

    def inflight_keys(self) -> list[str]:
        """Keys firing now: their post-firing update is not committed yet."""
        return list(self._inflight)

    @property
    def cursor_ms(self) -> int:
        return self._cursor[0]

    async def forget(self, keys: Sequence[str] | None) -> None:
        """Drop ``keys`` (None: every plan) from the window: another node changed
        them (a cluster hint).

        A firing under way goes on (its writes are fenced); :meth:`rescan`
        admits what the store now holds for them.
        """
        async with self._io:  # not in the middle of a refill's admissions
            for key in list(self._window) if keys is None else keys:
                if key not in self._pending and key not in self._inflight:
                    self._window.pop(key, None)

    async def rescan(self, from_ms: int | None = None) -> None:
        """Read the window again from ``from_ms`` (from the start when None).

        For plans the window could not know of: written by another node, or
        of partitions this node has just taken. Plans already held are kept.
        """
        while self._refilling:  # the running refill would move the cursor on again
            await asyncio.sleep(0.005)
        back = (0, "") if from_ms is None else (from_ms - 1, _MAX_KEY)
        if back < self._cursor:
            self._cursor = back
        await self._refill()

    # ------------------------------------------------------------------ window

    def _in_window(self, next_time: int | None, key: str) -> bool:
        return next_time is not None and (next_time, key) <= self._cursor

    def _admit(self, plan: Plan) -> None:
        assert plan.next_time is not None
        self._window[plan.key] = plan
        heapq.heappush(self._heap, (plan.next_time, next(self._seq), plan.key, plan.version))
        if self._timer_at is None or plan.next_time < self._timer_at:
            self._arm()

    def _committed(
        self, items: list[Any], advances: list[tuple[Advance, Plan | None]], ok: bool
    ) -> None:
        """Runs in the writer right after a commit, before any read can interleave.

        When the commit failed (not ``ok``) the callers get the error and the
        store holds what it held: the window keeps its plans and admits none
        of the failed puts. (Firings happened either way: their records are
        lost, and a restart fires those plans again, at least once.)"""
        if advances:
            self._advanced(advances)
        if not ok:
            for kind, payload, _ in items:
                if kind == "puts":
                    for plan in payload:
                        self._release(plan.key)
                elif kind == "delete":
                    self._release(payload)
            return
        release = self._release
        for kind, payload, _ in items:
            if kind == "puts":
                cursor = self._cursor
                edge = cursor[0]
                forget_inflight = self._inflight.pop
                forget_window = self._window.pop
                for plan in payload:  # (bulk creates: per plan)
                    key = plan.key
                    release(key)
                    forget_inflight(key, None)
                    forget_window(key, None)
                    nt = plan.next_time
                    if nt is not None and nt <= edge and not plan.paused and (nt, key) <= cursor:
                        self._admit(plan.copy())
            elif kind == "delete":
                self._release(payload)
                self._inflight.pop(payload, None)
                self._window.pop(payload, None)

    def _advanced(self, advances: list[tuple[Advance, Plan | None]]) -> None:
        """Committed post-firing updates: the plans leave the in-flight set."""
        inflight = self._inflight
        release = self._release
        cursor = self._cursor
        for adv, moved in advances:
            key = adv.key
            release(key)
            if inflight.get(key) != adv.version:
                continue  # removed or replaced while firing
            del inflight[key]
            nt = adv.next_time
            if nt is not None and (nt, key) <= cursor:
                assert moved is not None
                self._admit(moved)

    def _hold(self, key: str) -> None:
        self._pending[key] = self._pending.get(key, 0) + 1

    def _release(self, key: str) -> None:
        n = self._pending.get(key, 0) - 1
        if n > 0:
            self._pending[key] = n
        else:
            self._pending.pop(key, None)

    async def _refill(self) -> None:
        """Load plans between the cursor and now + window from the store."""
        if self._refilling:
            return
        self._refilling = True
        try:
            while True:
                horizon = self.clock.now_ms() + self.options.window_ms
                if self._cursor[0] > horizon - self.options.window_ms // 2:
                    return
                limit = self.options.refill_limit
                async with self._io:
                    rows = await self.store.due(self._cursor, horizon, limit)
                    for i, p in enumerate(rows):
                        if i and not i % ADMIT_CHUNK:
                            # Tens of thousands of plans take tens of ms to admit:
                            # let due firings run in between. (No commit can: the
                            # store lock is held, so no plan changes meanwhile.)
                            await asyncio.sleep(0)
                        if (
                            p.key in self._pending
                            or p.key in self._inflight
                            or p.key in self._window
                        ):
                            continue
                        self._window[p.key] = p
                        assert p.next_time is not None
                        heapq.heappush(self._heap, (p.next_time, next(self._seq), p.key, p.version))
                    if len(rows) >= limit:
                        last = rows[-1]
                        assert last.next_time is not None
                        self._cursor = (last.next_time, last.key)
                    else:
                        self._cursor = (horizon - 1, _MAX_KEY)
                if len(rows) >= limit:
                    # A crowded stretch: fire what's loaded before reading on.
                    return
        except errors.ForsunBoxError as e:
            log.error("refill failed: %s", e)
        finally:
            self._refilling = False
            if self._running:
                self._arm()

    # ------------------------------------------------------------------ firing

    def _arm(self) -> None:
        if not self._running:
            return
        while self._heap:
            due, _, key, version = self._heap[0]
            p = self._window.get(key)
            if p is not None and p.version == version and p.next_time == due:
                break
            heapq.heappop(self._heap)
        at = self._heap[0][0] if self._heap else None
        refill_at = self._cursor[0] - self.options.window_ms // 2
        if len(self._window) < self.options.refill_limit and not self._refilling:
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
        try:
            now = self.clock.now_ms()
            fired = 0
            while self._heap and self._heap[0][0] <= now and self._running:
                due, _, key, version = heapq.heappop(self._heap)
                p = self._window.get(key)
                if p is None or p.version != version or p.next_time != due:
                    continue
                del self._window[key]
                if self.gate is not None and not self.gate(p):
                    self.gated += 1
                    continue
                self._fire(p, due, now)
                fired += 1
                if fired % self.options.slice_size == 0:
                    # Let API requests and I/O in between slices.
                    await asyncio.sleep(0)
                    now = self.clock.now_ms()
            if now - self._last_meta_ms >= self.options.meta_interval_ms:
                self._last_meta_ms = now
                self._writer.submit("meta", ("processed_until", str(now)), False)
            if (
                self._cursor[0] - now <= self.options.window_ms // 2
                and len(self._window) < self.options.refill_limit
                and self._running
                and not self._refilling
            ):
                # In its own task: firing goes on while the refill waits for
                # the store (behind a group commit, then the query).
                task = asyncio.get_running_loop().create_task(self._refill())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("engine loop failed")
        finally:
            self._processing = False
            self._arm()

    def _fire(self, plan: Plan, due: int, now: int) -> None:
        policy = self.options.catchup if due < self._started_ms else FIRE_ALL
        if plan.misfire:
            # A per-plan policy replaces the server's, for downtime and overload alike:
            # within the grace window a firing is on time whatever the cause.
            policy = plan.misfire if now - due > plan.grace_ms else FIRE_ALL
        self._inflight[plan.key] = plan.version
        self._hold(plan.key)
        if policy == SKIP:
            self.skipped += 1
            nxt = plan.next_after(now, self.tz)
            log.info("misfire: skipped %s due at %d", plan.key, due)
            self._queue_advance(plan.copy(next_time=nxt))
            return
        if due < self._started_ms or policy != FIRE_ALL:
            self.caught_up += 1
            log.info("misfire: firing %s due at %d (%s)", plan.key, due, policy)
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
            coro = self._await_firing(plan, due, base, started)  # type: ignore[arg-type]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                status = await self.executor(plan, due)
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
