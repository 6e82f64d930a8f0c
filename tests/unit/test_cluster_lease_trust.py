"""The lease manager's time arithmetic on a fake clock: trust runs from the moment a
request was sent, never from its answer; the margin; a lapse without any round; renewal
at the same epoch; balancing to fair shares.

The backend here is an in-memory lease table sharing the fake clock (its "database
clock"), with a configurable delay per call, so a slow answer is exact. The behaviour
against a real PostgreSQL is in tests/integration/test_cluster_leases.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from forsun_box.cluster.base import Acquisition, Lease, LeaseBackend, Node
from forsun_box.cluster.leases import LeaseManager


class Clock:
    def __init__(self) -> None:
        self.s = 1000.0

    def __call__(self) -> float:
        return self.s


class MemoryLeases(LeaseBackend):
    """A lease table in memory; each call takes ``delay_s`` of the shared clock, and
    the expiry it sets is computed at the end of that delay (as a server does it
    when the request reaches it, after the node sent it)."""

    def __init__(self, clock: Clock, partitions: int) -> None:
        self.clock = clock
        self.partitions = partitions
        self.delay_s = 0.0
        self.rows = {p: Lease(p, "", "", 0, 0) for p in range(partitions)}
        self.alive: dict[str, tuple[str, int]] = {}

    def _now_ms(self) -> int:
        self.clock.s += self.delay_s
        return int(self.clock.s * 1000)

    async def heartbeat(self, node: str, instance: str, address: str, ttl_ms: int) -> list[Node]:
        now = self._now_ms()
        held = self.alive.get(node)
        if held is None or held[0] == instance or held[1] <= now:
            self.alive[node] = (instance, now + ttl_ms)
        return [
            Node(n, "", until)
            for n, (inst, until) in sorted(self.alive.items())
            if until > now and (n != node or inst == instance)
        ]

    async def nodes(self) -> list[Node]:
        now = self._now_ms()
        return [Node(n, "", u) for n, (_, u) in sorted(self.alive.items()) if u > now]

    async def leave(self, node: str, instance: str) -> None:
        if self.alive.get(node, ("", 0))[0] == instance:
            del self.alive[node]

    async def acquire(self, node: str, address: str, ttl_ms: int, limit: int) -> list[Acquisition]:
        now = self._now_ms()
        out = []
        for p, row in sorted(self.rows.items()):
            if len(out) >= limit:
                break
            if row.lease_until_ms <= now:
                new = Lease(p, node, address, row.epoch + 1, now + ttl_ms)
                self.rows[p] = new
                out.append(Acquisition(new, row.owner, row.lease_until_ms == 0))
        return out

    async def renew(
        self, node: str, address: str, held: Mapping[int, int], ttl_ms: int
    ) -> list[Lease]:
        now = self._now_ms()
        out = []
        for p, epoch in held.items():
            row = self.rows[p]
            if row.owner == node and row.epoch == epoch:
                self.rows[p] = Lease(p, node, address, epoch, now + ttl_ms)
                out.append(self.rows[p])
        return out

    async def release(self, node: str, held: Mapping[int, int]) -> int:
        self._now_ms()
        n = 0
        for p, epoch in held.items():
            row = self.rows[p]
            if row.owner == node and row.epoch == epoch:
                self.rows[p] = Lease(p, node, row.address, epoch, 0)
                n += 1
        return n

    async def leases(self) -> list[Lease]:
        return [self.rows[p] for p in sorted(self.rows)]

    async def now_ms(self) -> int:
        return self._now_ms()


def test_trust_runs_from_the_send_of_the_request_minus_the_margin() -> None:
    async def main() -> None:
        clock = Clock()
        backend = MemoryLeases(clock, 4)
        backend.delay_s = 0.4  # every answer takes 0.4 s
        m = LeaseManager(backend, "a", ttl_s=10.0, margin_s=1.0, monotonic=clock)
        sent = clock.s
        await m.round()  # heartbeat (0.4 s), then acquire, sent at sent + 0.4
        acquire_sent = sent + 0.4
        assert m.trusted() == {0: 1, 1: 1, 2: 1, 3: 1}
        assert m.held[0].trusted_until == acquire_sent + 10.0 - 1.0
        # the database's expiry is later than the trust: set when the request arrived
        assert backend.rows[0].lease_until_ms / 1000 == acquire_sent + 0.4 + 10.0
        # no round: the trust lapses on its own, a margin before the expiry
        clock.s = acquire_sent + 9.0 - 0.001
        assert m.epoch_of(0) == 1
        clock.s = acquire_sent + 9.0
        assert m.epoch_of(0) is None and m.trusted() == {}
        assert clock.s < backend.rows[0].lease_until_ms / 1000 - 1.0

    asyncio.run(main())


def test_a_late_renewal_keeps_the_epoch_and_restores_trust() -> None:
    async def main() -> None:
        clock = Clock()
        backend = MemoryLeases(clock, 2)
        changes: list[tuple[set[int], set[int]]] = []
        m = LeaseManager(
            backend,
            "a",
            ttl_s=6.0,
            monotonic=clock,
            on_change=lambda g, lo: changes.append((g, lo)),
        )
        await m.round()
        assert changes == [({0, 1}, set())]
        clock.s += 5.5  # past the trust (6 - 0.6), before the expiry: nobody took them
        assert m.trusted() == {}
        await m.round()
        assert m.trusted() == {0: 1, 1: 1}  # the same epoch: nobody could have written
        assert changes[-1] == ({0, 1}, set())
        clock.s += 7.0  # past the expiry: another node takes them
        b = LeaseManager(backend, "b", ttl_s=6.0, monotonic=clock)
        await b.round()
        assert b.trusted() == {0: 2, 1: 2} and b.counters.takeovers == 2
        await m.round()  # a comes back: its renewal finds them gone
        assert m.held == {} and m.counters.lost == 2

    asyncio.run(main())


def test_shares_follow_the_live_nodes() -> None:
    async def main() -> None:
        clock = Clock()
        backend = MemoryLeases(clock, 10)
        a = LeaseManager(backend, "a", ttl_s=3.0, monotonic=clock)
        b = LeaseManager(backend, "b", ttl_s=3.0, monotonic=clock)
        c = LeaseManager(backend, "c", ttl_s=3.0, monotonic=clock)
        await a.round()
        assert len(a.held) == 10
        await b.round()  # b is live now, but everything is held
        assert len(b.held) == 0
        await a.round()  # a sees two nodes: keeps 5, hands 5 over
        await b.round()
        assert (len(a.held), len(b.held)) == (5, 5)
        await c.round()
        await a.round()
        await b.round()  # ceil(10 / 3) = 4 each at most
        await c.round()
        assert sorted(len(m.held) for m in (a, b, c)) == [2, 4, 4]
        assert sorted(set(a.held) | set(b.held) | set(c.held)) == list(range(10))
        assert a.counters.takeovers == b.counters.takeovers == c.counters.takeovers == 0

    asyncio.run(main())
