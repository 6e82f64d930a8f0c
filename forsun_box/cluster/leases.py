"""A node's lease manager: which partitions this node may fire, and for how long.

Each round (about every TTL/3) the manager

1. announces the node alive (the backend answers with every live node);
2. renews the leases it holds, at the epoch it holds them; a lease that is
   no longer ours at that epoch is lost (someone took it over while we were
   paused or cut off) and dropped at once, logged as a step-down;
3. balances: above its fair share (partitions / live nodes, rounded up) it
   stops trusting the surplus and releases it, free at once for the
   others; below it, it takes free or expired partitions (epoch + 1).

Trust is measured on this node's monotonic clock from the moment the
request that set a lease was *sent*: the database set the expiry to its
own now + TTL, which was no earlier than that, so a lease trusted until
``sent + TTL - margin`` expires in the database after the node stops
trusting it, whatever the two clocks read. :meth:`LeaseManager.epoch_of`
is the check before every firing; the epochs it gives condition the
firing's writes (:meth:`~forsun_box.cluster.base.FencedStore.apply_fenced`),
which covers what trust can't (a process paused between the check and the
write).

A round that fails (the database unreachable) changes nothing: leases
stay held, trust runs out on its own, and the next round that gets
through renews them if nobody took them meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from forsun_box.cluster.base import Acquisition, LeaseBackend, Node
from forsun_box.cluster.partitions import fair_share
from forsun_box.errors import StartupError, StoreError

log = logging.getLogger("forsun_box.cluster")

DEFAULT_TTL_S = 10.0
#: the part of the TTL a lease is not trusted for, at the end
DEFAULT_MARGIN = 0.1
#: seconds after another node's announced expiry that a round looks for its leases
EXPIRY_SLACK_S = 0.05
#: seconds to the next round while this node holds less than its share, for
#: EAGER_S seconds after the number of live nodes fell
UNDER_SHARE_RETRY_S = 0.25
EAGER_S = 2.0


@dataclass(slots=True)
class Held:
    """A lease this node holds: its epoch and until when (monotonic s) it trusts it."""

    epoch: int
    trusted_until: float


@dataclass(slots=True)
class LeaseCounters:
    """What happened to this node's leases since it started (for metrics)."""

    acquired: int = 0
    takeovers: int = 0  # taken from a node whose lease ran out
    lost: int = 0  # found taken by another node at renewal: a step-down
    released: int = 0
    rounds: int = 0
    failed_rounds: int = 0  # the backend could not be reached or refused


def _epochs(epochs: list[int]) -> str:
    """``epoch 4`` or ``epochs 2-9``: the epochs of the leases a log line is about."""
    lo, hi = min(epochs), max(epochs)
    return f"epoch {lo}" if lo == hi else f"epochs {lo}-{hi}"


def _listing(partitions: list[int], most: int = 12) -> str:
    shown = ", ".join(map(str, sorted(partitions)[:most]))
    return shown + (f" ... ({len(partitions)} in all)" if len(partitions) > most else "")


class LeaseManager:
    """Acquires, renews, balances and releases one node's partition leases."""

    def __init__(
        self,
        backend: LeaseBackend,
        node: str,
        address: str = "",
        *,
        ttl_s: float = DEFAULT_TTL_S,
        margin_s: float | None = None,
        renew_every_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[set[int], set[int]], None] | None = None,
        before_release: Callable[[set[int]], Awaitable[None]] | None = None,
    ) -> None:
        """``on_change(gained, lost)`` is called after a round that changed which
        partitions this node may fire: ``gained`` are newly trusted (taken, or
        renewed after trust ran out), ``lost`` no longer trusted (released,
        taken over, or trust ran out since the last round).

        ``await before_release(partitions)`` runs when balancing gives up
        partitions: they are no longer trusted (nothing new fires) but still
        held (:attr:`draining`), so the firings under way can commit their
        writes under the epoch first."""
        if ttl_s <= 0:
            raise ValueError("the lease TTL must be positive")
        self.backend = backend
        self.node = node
        self.address = address
        self.ttl_s = ttl_s
        self.margin_s = ttl_s * DEFAULT_MARGIN if margin_s is None else margin_s
        if not 0 <= self.margin_s < ttl_s:
            raise ValueError("the lease margin must be at least 0 and less than the TTL")
        self.renew_every_s = ttl_s / 3 if renew_every_s is None else renew_every_s
        self.monotonic = monotonic
        self.on_change = on_change
        self.counters = LeaseCounters()
        self.live_nodes = 0
        self.held: dict[int, Held] = {}
        #: tells this process from another started with the same node name
        self.instance = uuid.uuid4().hex
        #: another live process holds this node name (see _name_taken)
        self.name_conflict = False
        #: partition -> epoch being handed over: not trusted, still ours in the database
        self.draining: dict[int, int] = {}
        self.before_release = before_release
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failing = False
        self._next_round_s = self.renew_every_s
        self._eager_until = 0.0
        # what the last round left trusted (on_change reports the difference)
        self._trusted_last: set[int] = set()
        # the partitions taken in the round under way (logged when taken)
        self._taken_now: set[int] = set()
        #: of the partitions the last round made trusted, those nobody could fire
        #: just before: taken over from a node whose lease ran out, or this node's
        #: own, trusted again after its renewals failed
        self.after_outage: set[int] = set()

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    # -- what may fire --------------------------------------------------------

    def epoch_of(self, partition: int) -> int | None:
        """The epoch to fire ``partition`` under, or None when this node must not fire it."""
        held = self.held.get(partition)
        if held is None or self.monotonic() >= held.trusted_until:
            return None
        return held.epoch

    def held_epoch(self, partition: int) -> int | None:
        """The epoch this node holds ``partition`` at in the database as far as it
        knows, trusted or not, being handed over included (what a write of its
        would be fenced with); None when it holds no lease on it."""
        held = self.held.get(partition)
        return held.epoch if held is not None else self.draining.get(partition)

    def epochs(self) -> dict[int, int]:
        """partition -> epoch of every lease this node holds in the database as far as
        it knows, trusted or not, being handed over included: what its writes are
        fenced with (the database has the last word)."""
        out = dict(self.draining)
        out.update((p, h.epoch) for p, h in self.held.items())
        return out

    def trusted(self) -> dict[int, int]:
        """partition -> epoch of every lease this node may fire under right now."""
        now = self.monotonic()
        return {p: h.epoch for p, h in self.held.items() if now < h.trusted_until}

    # -- rounds ---------------------------------------------------------------

    async def round(self) -> None:
        """One round: heartbeat, renew, balance. Backend errors are logged, not raised."""
        self.counters.rounds += 1
        self._taken_now = set()
        self.after_outage = set()
        before = set(self._trusted_last)
        try:
            nodes = await self.backend.heartbeat(
                self.node, self.instance, self.address, self.ttl_ms
            )
            if any(n.node == self.node for n in nodes):
                await self._balance(nodes)
            else:
                self._name_taken()
        except StoreError as e:
            self._next_round_s = self.renew_every_s
            self.counters.failed_rounds += 1
            if not self._failing:
                log.warning(
                    "%s: lease round failed (%d leases held, trusted for at most %.1f s): %s",
                    self.node,
                    len(self.held),
                    self.ttl_s - self.margin_s,
                    e,
                )
            self._failing = True
        else:
            if self._failing:
                log.info("%s: lease rounds work again (%d leases held)", self.node, len(self.held))
            self._failing = False
        after = set(self.trusted())
        self._log_trust(before, after)
        self._trusted_last = after
        if after != before and self.on_change is not None:
            self.on_change(after - before, before - after)

    def _log_trust(self, before: set[int], after: set[int]) -> None:
        """Log the partitions whose trust ran out (no renewal got through in time)
        while still held, and those trusted again by a late renewal; the others
        that changed were logged where they were taken, lost or handed over."""
        lapsed = [p for p in before - after if p in self.held]
        if lapsed:
            log.warning(
                "%s: stepping down from %d partitions, their leases not renewed in time "
                "(%s, still held; another node may take them over): %s",
                self.node,
                len(lapsed),
                _epochs([self.held[p].epoch for p in lapsed]),
                _listing(lapsed),
            )
        back = [p for p in after - before if p not in self._taken_now]
        self.after_outage.update(back)
        if back:
            log.info(
                "%s: trusting %d partitions again, renewed at the same %s: %s",
                self.node,
                len(back),
                _epochs([self.held[p].epoch for p in back]),
                _listing(back),
            )

    async def _balance(self, nodes: list[Node]) -> None:
        if self.name_conflict:
            log.info("%s: the node name is ours again", self.node)
            self.name_conflict = False
        if len(nodes) < self.live_nodes:
            # a node left or timed out: its leases are free now or in a moment
            self._eager_until = self.monotonic() + EAGER_S
        self.live_nodes = len(nodes)
        self._next_round_s = self._until_next_round(nodes)
        await self._renew()
        share = fair_share(self.backend.partitions, self.live_nodes)
        if len(self.held) > share:
            await self._release(sorted(self.held)[share:])
        elif len(self.held) < share:
            await self._acquire(share - len(self.held))
            if len(self.held) < share and self.monotonic() < self._eager_until:
                # its leases expire a moment after its announcement: try again soon
                self._next_round_s = min(self._next_round_s, UNDER_SHARE_RETRY_S)

    def _name_taken(self) -> None:
        """Another live process announces itself under this node's name: fire nothing."""
        if not self.name_conflict:
            if self._task is None:  # starting: maybe this node's own last run, killed
                log.info(
                    "%s: waiting for the last announcement of this node name to expire", self.node
                )
            else:
                log.error(
                    "%s: another forsun-box is running under this node name; this one fires "
                    "nothing (give every node its own --node-id)",
                    self.node,
                )
        self.name_conflict = True
        if self.held:
            self.counters.lost += len(self.held)
            log.warning(
                "%s: stepping down from %d partitions (%s), the node name being taken: %s",
                self.node,
                len(self.held),
                _epochs([h.epoch for h in self.held.values()]),
                _listing(list(self.held)),
            )
            self.held.clear()

    def _until_next_round(self, nodes: list[Node]) -> float:
        """Seconds to the next round: the renewal interval, or sooner, right after the
        first other node would time out unless it announces itself again.

        A dead node's leases expire with its announcement (both are renewed in the
        same round), so the takeover follows about one TTL after its last round,
        not up to a renewal interval later.
        """
        mine = [n.alive_until_ms for n in nodes if n.node == self.node]
        others = [n.alive_until_ms for n in nodes if n.node != self.node]
        if not mine or not others:
            return self.renew_every_s
        db_now = mine[0] - self.ttl_ms  # set by the statement that answered
        first_out_s = (min(others) - db_now) / 1000 + EXPIRY_SLACK_S
        return max(min(self.renew_every_s, first_out_s), EXPIRY_SLACK_S)

    async def _renew(self) -> set[int]:
        if not self.held:
            return set()
        sent = self.monotonic()
        held = {p: h.epoch for p, h in self.held.items()}
        renewed = await self.backend.renew(self.node, self.address, held, self.ttl_ms)
        until = sent + self.ttl_s - self.margin_s
        kept = set()
        for lease in renewed:
            entry = self.held.get(lease.partition)
            if entry is not None and entry.epoch == lease.epoch:
                entry.trusted_until = until
                kept.add(lease.partition)
        lost = set(held) - kept
        if lost:
            for p in lost:
                del self.held[p]
            self.counters.lost += len(lost)
            log.warning(
                "%s: stepping down from %d partitions another node took over (%s held): %s",
                self.node,
                len(lost),
                _epochs([held[p] for p in lost]),
                _listing(list(lost)),
            )
        return lost

    async def _release(self, partitions: list[int]) -> set[int]:
        # no longer trusted before the database hears of it
        gone = {p: self.held.pop(p).epoch for p in partitions}
        self.draining.update(gone)
        try:
            if self.before_release is not None:
                await self.before_release(set(gone))
            released = await self.backend.release(self.node, gone)
        finally:
            for p in gone:
                self.draining.pop(p, None)
        self.counters.released += released
        log.info(
            "%s: stepping down from %d partitions, handed over (fair share of %d nodes, %s): %s",
            self.node,
            len(gone),
            self.live_nodes,
            _epochs(list(gone.values())),
            _listing(partitions),
        )
        return set(gone)

    async def _acquire(self, limit: int) -> set[int]:
        sent = self.monotonic()
        got = await self.backend.acquire(self.node, self.address, self.ttl_ms, limit)
        until = sent + self.ttl_s - self.margin_s
        for a in got:
            self.held[a.lease.partition] = Held(a.lease.epoch, until)
            self._taken_now.add(a.lease.partition)
            if a.is_takeover:
                self.after_outage.add(a.lease.partition)
        self.counters.acquired += len(got)
        self._log_acquired(got)
        return {a.lease.partition for a in got}

    def _log_acquired(self, got: list[Acquisition]) -> None:
        by_source: dict[tuple[str, bool], list[int]] = {}
        for a in got:
            by_source.setdefault((a.previous_owner, a.is_takeover), []).append(a.lease.partition)
        for (previous, takeover), parts in sorted(by_source.items()):
            if takeover:
                self.counters.takeovers += len(parts)
                log.warning(
                    "%s: took over %d partitions from %s, whose lease ran out (now %s): %s",
                    self.node,
                    len(parts),
                    previous,
                    _epochs([self.held[p].epoch for p in parts]),
                    _listing(parts),
                )
            else:
                source = f"handed over by {previous}" if previous else "never owned"
                log.info(
                    "%s: took %d partitions (%s, now %s): %s",
                    self.node,
                    len(parts),
                    source,
                    _epochs([self.held[p].epoch for p in parts]),
                    _listing(parts),
                )

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Run a first round now, then one about every ``renew_every_s``.

        While another process announces itself under this node's name, wait for
        its announcement to expire (a process just killed and started again),
        a TTL at most; raises StartupError when it is still alive then.
        """
        await self.round()
        deadline = self.monotonic() + self.ttl_s + 1
        while self.name_conflict:
            if self.monotonic() >= deadline:
                raise StartupError(
                    f"another forsun-box is running as node {self.node!r} on this database; "
                    "give every node its own --node-id"
                )
            await asyncio.sleep(min(0.25, self.ttl_s / 4))
            await self.round()
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"forsun-box leases {self.node}"
        )

    def poke(self) -> None:
        """Run the next round now (e.g. when told a partition was released)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            # a little jitter keeps nodes started together from renewing in step
            pause = self._next_round_s * random.uniform(0.9, 1.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()
            await self.round()

    async def halt(self) -> None:
        """Stop the rounds, releasing nothing (as if the process stopped)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        """A graceful stop: stop the rounds, leave the node table and release every
        lease, so the others take the partitions over at once.

        Leaving first: the release wakes the others (a hint), and the round it
        starts must already count one node less, or their shares stay too small
        to take what was released until a later round.
        """
        await self.halt()
        gone = {p: h.epoch for p, h in self.held.items()}
        self.held.clear()
        self._trusted_last = set()
        try:
            await self.backend.leave(self.node, self.instance)
            if gone:
                self.counters.released += await self.backend.release(self.node, gone)
                log.info(
                    "%s: stepping down from %d partitions at stop (%s released): %s",
                    self.node,
                    len(gone),
                    _epochs(list(gone.values())),
                    _listing(list(gone)),
                )
        except StoreError as e:
            log.warning("%s: releasing the leases at stop failed (they expire): %s", self.node, e)
        if gone and self.on_change is not None:
            self.on_change(set(), set(gone))
