"""The engine's window: the plans due up to a cursor, in memory, in a heap.

The store is the source of truth, indexed by next firing time. The window
holds only the plans due up to its *cursor* (a ``(time, key)`` position a
short window ahead of now), in a heap, and refills from the store's
next-time index before it runs dry.

Invariant: every stored, unpaused plan whose ``(next_time, key)`` is at or
before the cursor is in the window -- unless a mutation of that key is
*pending* (it decides membership when it commits) or the plan is *in flight*
(firing: its advance decides).

A burst that goes out by itself at its instant (armed firings due together) is set
aside: its entries leave the heap ahead of the instant, its plans stay in the window
until the engine takes them up after the burst (:meth:`Window.set_aside`).

The window knows nothing of timers or firing; the engine
(:class:`forsun_box.scheduler.Scheduler`) asks it what is due and tells it
what committed. Operations that admit plans return them, so that the engine
can re-arm its timers once per admission without a call per plan here.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable, Sequence

from forsun_box import errors
from forsun_box.plan import Plan
from forsun_box.store.base import Store
from forsun_box.writer import Moved

# The engine's logger: a refill's log lines keep the name they have always had.
log = logging.getLogger("forsun_box.scheduler")

# Greater than any key a plan may have (keys are at most a few hundred chars).
MAX_KEY = "\U0010ffff" * 1024

# Plans a refill admits between two yields to the event loop.
ADMIT_CHUNK = 1000

#: a heap entry: (due, seq, key, version); one whose plan changed or left is skipped
Entry = tuple[int, int, str, int]


class Window:
    """The plans due up to the cursor, with their pending and in-flight keys."""

    def __init__(
        self,
        store: Store,
        io: asyncio.Lock,
        now_ms: Callable[[], int],
        window_ms: int,
        refill_limit: int,
    ) -> None:
        self.store = store
        self._io = io
        self._now_ms = now_ms
        self.window_ms = window_ms
        self.refill_limit = refill_limit
        #: key -> the plan as the window holds it
        self.plans: dict[str, Plan] = {}
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        #: heap entries set aside by their instant: bursts that go out by themselves
        #: (see :meth:`set_aside`); the plans stay in ``plans``
        self.aside: dict[int, list[Entry]] = {}
        self._aside_at: list[int] = []  # a heap of the instants of ``aside``
        self.cursor: tuple[int, str] = (0, "")
        #: key -> mutations of it not yet committed
        self.pending: dict[str, int] = {}
        #: key -> version of the plan firing now (its advance not yet committed)
        self.inflight: dict[str, int] = {}
        self.refilling = False
        self._refilled = asyncio.Event()  # set while no refill runs
        self._refilled.set()

    def __len__(self) -> int:
        return len(self.plans)

    def __contains__(self, key: object) -> bool:
        return key in self.plans

    def get(self, key: str) -> Plan | None:
        return self.plans.get(key)

    # ------------------------------------------------------------------ bookkeeping

    def hold(self, key: str) -> None:
        """A mutation of ``key`` is queued: the window leaves the key to its commit."""
        self.pending[key] = self.pending.get(key, 0) + 1

    def release(self, key: str) -> None:
        """A mutation of ``key`` committed (or failed)."""
        n = self.pending.get(key, 0) - 1
        if n > 0:
            self.pending[key] = n
        else:
            self.pending.pop(key, None)

    def start_firing(self, key: str, version: int) -> None:
        """``key`` (popped as due) fires: in flight until its advance commits."""
        self.inflight[key] = version
        self.pending[key] = self.pending.get(key, 0) + 1

    def admit(self, plan: Plan) -> None:
        nt = plan.next_time
        assert nt is not None
        self.plans[plan.key] = plan
        heapq.heappush(self._heap, (nt, next(self._seq), plan.key, plan.version))

    # ------------------------------------------------------------------ commits

    def committed_puts(self, plans: list[Plan]) -> list[Plan]:
        """Committed puts: the plans replace what the window held of their keys, and
        those due before the cursor join it. Returns the plans admitted."""
        release = self.release
        cursor = self.cursor
        edge = cursor[0]
        forget_inflight = self.inflight.pop
        window = self.plans
        forget_window = window.pop
        heap = self._heap
        push = heapq.heappush
        seq = self._seq
        admitted: list[Plan] = []
        for plan in plans:  # (bulk creates: per plan)
            key = plan.key
            release(key)
            forget_inflight(key, None)
            forget_window(key, None)
            nt = plan.next_time
            if nt is not None and nt <= edge and not plan.paused and (nt, key) <= cursor:
                p = plan.copy()
                window[key] = p
                push(heap, (nt, next(seq), key, p.version))
                admitted.append(p)
        return admitted

    def committed_delete(self, key: str) -> None:
        self.release(key)
        self.inflight.pop(key, None)
        self.plans.pop(key, None)

    def advanced(self, advances: list[Moved]) -> list[Plan]:
        """Committed post-firing updates: the plans leave the in-flight set, and
        those due again before the cursor return. Returns the plans admitted."""
        inflight = self.inflight
        release = self.release
        cursor = self.cursor
        window = self.plans
        heap = self._heap
        seq = self._seq
        admitted: list[Plan] = []
        for adv, moved in advances:
            key = adv.key
            release(key)
            if inflight.get(key) != adv.version:
                continue  # removed or replaced while firing
            del inflight[key]
            nt = adv.next_time
            if nt is not None and (nt, key) <= cursor:
                assert moved is not None
                window[key] = moved
                heapq.heappush(heap, (nt, next(seq), key, moved.version))
                admitted.append(moved)
        return admitted

    def forget(self, keys: Sequence[str] | None) -> None:
        """Drop ``keys`` (None: every plan), except those pending or in flight."""
        pending = self.pending
        inflight = self.inflight
        for key in list(self.plans) if keys is None else keys:
            if key not in pending and key not in inflight:
                self.plans.pop(key, None)

    # ------------------------------------------------------------------ due plans

    def next_due(self) -> int | None:
        """The earliest instant a plan of the window is due (dropping stale entries)."""
        heap = self._heap
        window = self.plans
        while heap:
            due, _, key, version = heap[0]
            p = window.get(key)
            if p is not None and p.version == version and p.next_time == due:
                return due
            heapq.heappop(heap)
        return None

    def earliest(self) -> int | None:
        """The heap's earliest entry, stale or not (a lower bound of :meth:`next_due`)."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int, limit: int) -> list[tuple[Plan, int]]:
        """Take out up to ``limit`` plans due at or before ``now``, earliest first."""
        heap = self._heap
        window = self.plans
        pop = heapq.heappop
        taken: list[tuple[Plan, int]] = []
        while heap and heap[0][0] <= now:
            due, _, key, version = pop(heap)
            p = window.get(key)
            if p is None or p.version != version or p.next_time != due:
                continue
            del window[key]
            taken.append((p, due))
            if len(taken) >= limit:
                break
        return taken

    def set_aside(self, firings: list[tuple[str, int, int]]) -> int:
        """Move the heap entries of ``firings`` ``(key, version, due)`` out of the heap,
        by their instant and in the order given, for :meth:`aside_due`: :meth:`pop_due`
        no longer meets them. (It takes out every entry due up to the latest of them and
        puts the others back: a cost of the entries due before, paid ahead of the
        instant.) How many moved."""
        if not firings:
            return 0
        wanted = set(firings)
        until = max(due for _, _, due in firings)
        heap = self._heap
        pop, push = heapq.heappop, heapq.heappush
        found: dict[tuple[str, int, int], Entry] = {}
        others = []
        while heap and heap[0][0] <= until:
            entry = pop(heap)
            due, _, key, version = entry
            firing = (key, version, due)
            if firing in wanted and firing not in found:
                found[firing] = entry
            else:
                others.append(entry)
        for entry in others:
            push(heap, entry)
        aside = self.aside
        moved = 0
        for firing in firings:
            if firing not in found:
                continue
            entry = found.pop(firing)
            group = aside.get(entry[0])
            if group is None:
                group = aside[entry[0]] = []
                push(self._aside_at, entry[0])
            group.append(entry)
            moved += 1
        return moved

    def next_aside(self) -> int | None:
        return self._aside_at[0] if self._aside_at else None

    def aside_due(self, now: int) -> list[Entry]:
        """The entries set aside due at or before ``now``, earliest first, as they were
        set aside: a burst's list is handed over whole at its instant, unchecked
        (:meth:`take_entry` takes out the plans still as they were)."""
        at = self._aside_at
        if not at or at[0] > now:
            return []
        found = self.aside.pop(heapq.heappop(at))
        while at and at[0] <= now:
            found += self.aside.pop(heapq.heappop(at))
        return found

    def put_back(self, key: str, version: int, due: int) -> None:
        """The firing of ``key`` (``version``) due at ``due`` no longer goes out by itself:
        back in the heap, so that it fires at its instant (its entry set aside is passed
        over at the take-up once it fired)."""
        entry = (due, next(self._seq), key, version)
        if due in self.aside and self.holds(entry):
            heapq.heappush(self._heap, entry)

    def restore_aside(self) -> None:
        """Put every entry set aside back in the heap."""
        for group in self.aside.values():
            for entry in group:
                heapq.heappush(self._heap, entry)
        self.aside.clear()
        self._aside_at.clear()

    def take_plan(self, plan: Plan, due: int) -> bool:
        """Take out ``plan`` if the window still holds that very plan, due at ``due`` (as
        :meth:`pop_due` would at that instant); False when it does not."""
        if self.plans.get(plan.key) is not plan or plan.next_time != due:
            return False
        del self.plans[plan.key]
        return True

    def holds(self, entry: Entry) -> Plan | None:
        """The plan a heap ``entry`` names, if the window holds it as the entry says
        (that version, due then); else None."""
        due, _, key, version = entry
        p = self.plans.get(key)
        return p if p is not None and p.version == version and p.next_time == due else None

    def take_entry(self, entry: Entry) -> Plan | None:
        """Take out the plan of a heap ``entry`` if the window :meth:`holds` it (as
        :meth:`pop_due` would); else None."""
        p = self.holds(entry)
        if p is not None:
            del self.plans[entry[2]]
        return p

    def due_between(self, after: int, until: int) -> list[tuple[Plan, int]]:
        """The window's plans due in ``(after, until]``: a walk of the heap that
        skips every subtree whose root is due later (a heap's children never come
        earlier than their parent)."""
        heap = self._heap
        window = self.plans
        n = len(heap)
        found: list[tuple[Plan, int]] = []
        stack = [0] if n else []
        while stack:
            i = stack.pop()
            due, _, key, version = heap[i]
            if due > until:
                continue
            if due > after:
                p = window.get(key)
                if p is not None and p.version == version and p.next_time == due:
                    found.append((p, due))
            child = 2 * i + 1
            if child < n:
                stack.append(child)
                if child + 1 < n:
                    stack.append(child + 1)
        return found

    # ------------------------------------------------------------------ refill

    def wants_refill(self, now: int) -> bool:
        """The cursor is within half a window of ``now`` and there is room."""
        return (
            self.cursor[0] - now <= self.window_ms // 2
            and len(self.plans) < self.refill_limit
            and not self.refilling
        )

    async def refill(self) -> None:
        """Load plans between the cursor and now + window from the store."""
        if self.refilling:
            return
        self.refilling = True
        self._refilled.clear()
        try:
            while True:
                horizon = self._now_ms() + self.window_ms
                if self.cursor[0] > horizon - self.window_ms // 2:
                    return
                limit = self.refill_limit
                async with self._io:
                    rows = await self.store.due(self.cursor, horizon, limit)
                    pending = self.pending
                    inflight = self.inflight
                    window = self.plans
                    heap = self._heap
                    push = heapq.heappush
                    seq = self._seq
                    for i, p in enumerate(rows):
                        if i and not i % ADMIT_CHUNK:
                            # Tens of thousands of plans take tens of ms to admit:
                            # let due firings run in between. (No commit can: the
                            # store lock is held, so no plan changes meanwhile.)
                            await asyncio.sleep(0)
                        key = p.key
                        if key in pending or key in inflight or key in window:
                            continue
                        window[key] = p
                        assert p.next_time is not None
                        push(heap, (p.next_time, next(seq), key, p.version))
                    if len(rows) >= limit:
                        last = rows[-1]
                        assert last.next_time is not None
                        self.cursor = (last.next_time, last.key)
                    else:
                        self.cursor = (horizon - 1, MAX_KEY)
                if len(rows) >= limit:
                    # A crowded stretch: fire what's loaded before reading on.
                    return
        except errors.ForsunBoxError as e:
            log.error("refill failed: %s", e)
        finally:
            self.refilling = False
            self._refilled.set()

    async def rewind(self, from_ms: int | None) -> None:
        """Move the cursor back to ``from_ms`` (the start when None), once no
        refill runs (it would move the cursor on again)."""
        while self.refilling:
            await self._refilled.wait()
        back = (0, "") if from_ms is None else (from_ms - 1, MAX_KEY)
        if back < self.cursor:
            self.cursor = back
