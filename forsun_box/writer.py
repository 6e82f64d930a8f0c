"""Group commit: the engine's one writer to the store.

Every change the engine makes is a :data:`Mutation` (a small dataclass)
handed to :class:`Writer`, which applies everything queued as one
transaction (:meth:`forsun_box.store.base.Store.apply`). A caller who waits
for a mutation is answered once it committed; many callers share a commit
under load. The two records of every firing, an :class:`Advance` and a
:class:`Run`, skip the queue (no allocation per item beyond the record
itself) and may wait ``linger_s`` to share a commit when nobody waits.
After each commit, in the same turn of the event loop, the writer tells its
owner what committed (``on_commit``), before any read can interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from forsun_box import errors
from forsun_box.plan import Plan
from forsun_box.store.base import Advance, Batch, Run, Store

log = logging.getLogger("forsun_box.scheduler")

T = TypeVar("T")

#: most advances (and most run records) in one commit: a caller's commit waits for the
#: one under way, so this bounds how long a create waits during a burst
FIRING_BATCH = 1_000
#: a commit someone waits for carries the records queued if there are at most this many;
#: with more (a burst's), callers' commits and records' commits take turns: a caller's
#: stays a small write (on sqlite, the ack log's) and waits for one slice of records at most
URGENT_FIRING_BATCH = 256
#: records held back during a burst of firings (:meth:`Writer.hold_records`) at most
HOLD_MAX_RECORDS = 20_000


@dataclass(slots=True)
class Puts:
    """Store these plans, replacing any with the same keys."""

    plans: list[Plan]


@dataclass(slots=True)
class Delete:
    """Remove the plan under ``key``."""

    key: str


@dataclass(slots=True)
class SetStatus:
    """Set the status of ``key`` if it still has ``version`` (the result after retries)."""

    key: str
    version: int
    status: int


@dataclass(slots=True)
class SetMeta:
    """Set a meta value (e.g. ``processed_until``)."""

    name: str
    value: str


Mutation = Puts | Delete | SetStatus | SetMeta
# An Advance with the plan as it now stands (None when the plan is finished).
Moved = tuple[Advance, Plan | None]
# What committed (or failed): the mutations, the advances, whether it committed.
OnCommit = Callable[[list[Mutation], list[Moved], bool], None]
_Queued = tuple[Mutation, "asyncio.Future[None] | None"]


def _take(items: list[T], cap: int) -> tuple[list[T], list[T]]:
    """The first ``cap`` of ``items`` and the rest (no copy when all of them fit)."""
    if len(items) <= cap:
        return items, []
    return items[:cap], items[cap:]


def batch_of(mutations: list[Mutation], advances: list[Moved], runs: list[Run]) -> Batch:
    """The store batch that applies ``mutations``, ``advances`` and ``runs``."""
    batch = Batch()
    if advances:
        batch.advances = [a for a, _ in advances]
    batch.runs = runs
    ops = batch.ops
    for m in mutations:
        match m:
            case Puts(plans):
                for p in plans:
                    ops[p.key] = p
            case Delete(key):
                ops[key] = None
            case SetStatus(key, version, status):
                batch.statuses.append((key, version, status))
            case SetMeta(name, value):
                batch.meta[name] = value
    return batch


class Writer:
    """Group commit: one task applies everything queued as one transaction."""

    def __init__(
        self,
        store: Store,
        lock: asyncio.Lock,
        on_commit: OnCommit,
        max_batch: int,
        linger_s: float = 0.0,
    ) -> None:
        self._store = store
        self._linger_s = linger_s
        self._lock = lock
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._queue: list[_Queued] = []
        # The two records of every firing skip the queue (they commit in any order).
        self.advances: list[Moved] = []
        self.runs: list[Run] = []
        # records queued, and records taken by a commit that ended, since the start
        self._records_in = 0
        self._records_out = 0
        # (records_out to reach, who waits for it): callers of barrier()
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []
        # with callers waiting and many records queued: the next commit is the records'
        self._records_turn = False
        self._wake = asyncio.Event()
        # set by mutations someone may wait for: ends a linger at once
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # True from taking items off the queue until their callers are answered
        self._busy = False
        # a commit_alone ran in this turn of the event loop
        self._alone = False
        # a commit without puts or deletes holds the lock, waiting for the store
        self._records_applying = False
        # (monotonic) records commit only beside a caller's mutation until then
        self._hold_until = 0.0
        self.commits = 0
        self.last_commit_ms = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def submit(self, mutation: Mutation, wait: bool) -> asyncio.Future[None] | None:
        """Queue ``mutation``; with ``wait``, a future done once it committed."""
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._queue.append((mutation, fut))
        self._wake.set()
        if fut is not None:
            self._urgent.set()
        return fut

    async def commit_alone(self, mutation: Mutation) -> bool:
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
            error = await self._commit([mutation], [], [])
        finally:
            self._busy = False
        if self._queue or self.advances or self.runs:
            self._wake.set()  # (queued while this one committed)
        if error is not None:
            raise error
        return True

    def _next_turn(self) -> None:
        self._alone = False

    def commit_now(self, mutation: Mutation) -> bool:
        """Commit one mutation without awaiting while a commit of firing records
        waits for the store, if the store can (:meth:`Store.apply_now`); False
        (nothing done) otherwise.

        A burst's records take tens of milliseconds to commit; a create need
        not wait for them. Nothing else reads or writes meanwhile (the records'
        commit holds the lock), and the records leave alone what this commits:
        an advance applies only to the version it fired, and the window lets a
        committed put or delete end the key's firing. Raises ForsunBoxError
        when the commit fails.
        """
        if not self._records_applying:
            return False
        batch = batch_of([mutation], [], [])
        try:
            done = self._store.apply_now(batch)
        except errors.ForsunBoxError:
            self._on_commit([mutation], [], False)
            raise
        if done:
            self.commits += 1
            self._on_commit([mutation], [], True)
        return done

    async def commit(self, mutation: Mutation) -> None:
        """Commit one mutation for a caller who waits for it: alone if it can
        (:meth:`commit_alone`), at once beside firing records under way
        (:meth:`commit_now`), else with whatever the writer's task takes next."""
        if not (await self.commit_alone(mutation) or self.commit_now(mutation)):
            fut = self.submit(mutation, True)
            assert fut is not None
            await fut

    def submit_advance(self, adv: Advance, moved: Plan | None) -> None:
        self.advances.append((adv, moved))
        self._records_in += 1
        self._wake.set()
        if self._hold_until:
            self._held_enough()

    def submit_run(self, run: Run) -> None:
        self.runs.append(run)
        self._records_in += 1
        self._wake.set()
        if self._hold_until:
            self._held_enough()

    def _records(self) -> int:
        """Firing records queued (advances and runs)."""
        return len(self.advances) + len(self.runs)

    def _held_enough(self) -> None:
        """End the wait of a hold on records once :data:`HOLD_MAX_RECORDS` gathered."""
        if self._records() >= HOLD_MAX_RECORDS:
            self._urgent.set()

    def hold_records(self, seconds: float) -> None:
        """Commit no firing records for ``seconds`` (or until :meth:`release_records`),
        unless a caller waits for them (:meth:`barrier`), the writer closes or
        :data:`HOLD_MAX_RECORDS` gathered: a burst of firings in this process then has
        the interpreter to itself instead of sharing it with the store's commits. A
        caller's mutation commits meanwhile as ever, without records."""
        self._hold_until = time.monotonic() + seconds

    def release_records(self) -> None:
        """End :meth:`hold_records`: the records held commit now."""
        if self._hold_until:
            self._hold_until = 0.0
            self._urgent.set()
            self._wake.set()

    def _holding(self) -> bool:
        """True while records are held back (:meth:`hold_records`)."""
        if not self._hold_until:
            return False
        if (
            self._closing
            or self._barriers
            or self._records() >= HOLD_MAX_RECORDS
            or time.monotonic() >= self._hold_until
        ):
            self._hold_until = 0.0
            return False
        return True

    async def barrier(self, mutation: Mutation) -> None:
        """Commit ``mutation`` and wait until every record queued before it committed
        too (a waited-for commit carries few of them: they may follow it)."""
        target = self._records_in
        fut = self.submit(mutation, True)
        assert fut is not None
        await fut
        if self._records_out < target:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._barriers.append((target, waiter))
            self._urgent.set()  # (no lingering while someone waits)
            await waiter

    def __len__(self) -> int:
        return len(self._queue) + self._records()

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
            holding = self._holding()
            if holding and not self._queue:
                # only records: they wait for the end of the hold, or for a caller
                self._urgent.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._urgent.wait(), max(0.0, self._hold_until - time.monotonic())
                    )
                continue
            if (
                not holding
                and self._linger_s > 0
                and not any(fut is not None for _, fut in self._queue)
                and not self._closing
                and not self._barriers
                and self._records() < FIRING_BATCH
            ):
                # Only firing records: let more of them gather for one commit
                # (a crash meanwhile fires them again, as for any uncommitted
                # advance), unless a caller's mutation arrives.
                self._urgent.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self._linger_s)
                holding = self._holding()  # (a burst may have begun meanwhile)
                if holding and not self._queue:
                    continue
            if self._busy:  # a commit_alone is under way: this one follows it
                self._wake.clear()
                await self._wake.wait()
                continue
            # Firing records go in smaller slices: a backlog then drains as
            # several short commits, and a window refill waiting for the
            # store lock gets its turn between two of them. With callers waiting
            # behind many records, their commits and the records' take turns.
            cap = FIRING_BATCH
            take_items = True
            if holding:
                cap = 0  # (the callers' mutations alone)
            elif self._records() > URGENT_FIRING_BATCH and any(
                fut is not None for _, fut in self._queue[:max_batch]
            ):
                if self._records_turn:
                    take_items = False
                else:
                    cap = 0
                self._records_turn = not self._records_turn
            items: list[_Queued] = []
            if take_items:
                items, self._queue = _take(self._queue, max_batch)
            advances, self.advances = _take(self.advances, cap)
            runs, self.runs = _take(self.runs, cap)
            self._busy = True
            try:
                error = await self._commit([m for m, _ in items], advances, runs)
            finally:
                self._busy = False
            self._records_out += len(advances) + len(runs)
            if self._barriers:
                self._release_barriers()
            if error is not None:
                log.error("commit of %d mutations failed: %s", len(items), error)
            for _, fut in items:
                if fut is not None and not fut.done():
                    if error is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(error)

    def _release_barriers(self) -> None:
        done = self._records_out
        still = []
        for target, waiter in self._barriers:
            if target <= done:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._barriers = still

    async def _commit(
        self, mutations: list[Mutation], advances: list[Moved], runs: list[Run]
    ) -> errors.ForsunBoxError | None:
        """Apply ``mutations``, ``advances`` and ``runs`` as one transaction; the error, if any."""
        batch = batch_of(mutations, advances, runs)
        error: errors.ForsunBoxError | None = None
        started = time.perf_counter()
        async with self._lock:
            self._records_applying = not batch.ops
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
                self._on_commit(mutations, advances, False)
                raise
            finally:
                self._records_applying = False
            self.last_commit_ms = (time.perf_counter() - started) * 1000
            self.commits += 1
            # Membership decisions happen before any read can interleave.
            self._on_commit(mutations, advances, error is None)
        return error
