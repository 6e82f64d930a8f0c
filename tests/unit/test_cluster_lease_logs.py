"""One log line for every takeover and step-down, naming the partition count and
the epochs, on the in-memory lease table and fake clock of test_cluster_lease_trust."""

from __future__ import annotations

import asyncio
import logging

import pytest

from forsun_box.cluster.leases import LeaseManager
from forsun_box.errors import StoreError
from tests.unit.test_cluster_lease_trust import Clock, MemoryLeases


def lines(caplog: pytest.LogCaptureFixture, node: str) -> list[str]:
    out = [r.getMessage() for r in caplog.records if r.name == "forsun_box.cluster"]
    caplog.clear()
    return [m for m in out if m.startswith(f"{node}: ")]


def test_takeover_and_step_down_after_a_pause(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forsun_box.cluster")

    async def main() -> None:
        clock = Clock()
        backend = MemoryLeases(clock, 4)
        a = LeaseManager(backend, "a", ttl_s=6.0, monotonic=clock)
        await a.round()
        assert lines(caplog, "a") == ["a: took 4 partitions (never owned, now epoch 1): 0, 1, 2, 3"]
        assert a.after_outage == set()
        clock.s += 7.0  # a paused past the expiry
        b = LeaseManager(backend, "b", ttl_s=6.0, monotonic=clock)
        await b.round()
        assert lines(caplog, "b") == [
            "b: took over 4 partitions from a, whose lease ran out (now epoch 2): 0, 1, 2, 3"
        ]
        # nobody fired them for a while: their missed firings catch up under the policy
        assert b.after_outage == {0, 1, 2, 3}
        await b.round()
        assert b.after_outage == set()
        await a.round()  # a comes back and finds them gone
        got = lines(caplog, "a")
        assert got == [
            "a: stepping down from 4 partitions another node took over (epoch 1 held): 0, 1, 2, 3"
        ]

    asyncio.run(main())


class Failing(MemoryLeases):
    fail = False

    async def heartbeat(self, *args: object, **kwargs: object) -> list:  # type: ignore[override]
        if self.fail:
            raise StoreError("the database is unreachable")
        return await super().heartbeat(*args, **kwargs)  # type: ignore[arg-type]


def test_trust_running_out_and_coming_back_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forsun_box.cluster")

    async def main() -> None:
        clock = Clock()
        backend = Failing(clock, 3)
        a = LeaseManager(backend, "a", ttl_s=6.0, monotonic=clock)
        await a.round()
        lines(caplog, "a")
        backend.fail = True
        clock.s += 5.5  # past the trust (6 - 0.6), and the round fails
        await a.round()
        got = lines(caplog, "a")
        assert got[0].startswith("a: lease round failed (3 leases held")
        assert got[1:] == [
            "a: stepping down from 3 partitions, their leases not renewed in time "
            "(epoch 1, still held; another node may take them over): 0, 1, 2"
        ]
        backend.fail = False
        await a.round()  # before the expiry: renewed at the same epoch
        assert lines(caplog, "a") == [
            "a: lease rounds work again (3 leases held)",
            "a: trusting 3 partitions again, renewed at the same epoch 1: 0, 1, 2",
        ]
        assert a.after_outage == {0, 1, 2}

    asyncio.run(main())


def test_handover_and_stop_are_step_downs_with_epochs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forsun_box.cluster")

    async def main() -> None:
        clock = Clock()
        backend = MemoryLeases(clock, 4)
        a = LeaseManager(backend, "a", ttl_s=6.0, monotonic=clock)
        b = LeaseManager(backend, "b", ttl_s=6.0, monotonic=clock)
        await a.round()
        await b.round()  # b is live, everything is held
        lines(caplog, "a")
        await a.round()  # a keeps its share, hands the rest over
        assert lines(caplog, "a") == [
            "a: stepping down from 2 partitions, handed over (fair share of 2 nodes, epoch 1): 2, 3"
        ]
        await b.round()
        assert lines(caplog, "b") == ["b: took 2 partitions (handed over by a, now epoch 2): 2, 3"]
        assert b.after_outage == set()  # a fired them until it gave them up
        await a.stop()
        assert lines(caplog, "a") == [
            "a: stepping down from 2 partitions at stop (epoch 1 released): 0, 1"
        ]

    asyncio.run(main())


def test_a_taken_node_name_steps_down_with_epochs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forsun_box.cluster")

    async def main() -> None:
        clock = Clock()
        backend = MemoryLeases(clock, 2)
        a = LeaseManager(backend, "a", ttl_s=6.0, monotonic=clock)
        await a.round()
        lines(caplog, "a")
        # another process announces itself under the same name
        backend.alive["a"] = ("someone-else", int(clock.s * 1000) + 60_000)
        await a.round()
        got = lines(caplog, "a")
        assert got[-1] == (
            "a: stepping down from 2 partitions (epoch 1), the node name being taken: 0, 1"
        )

    asyncio.run(main())
