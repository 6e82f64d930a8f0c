"""The contract a store implements to take part in a cluster.

- :class:`LeaseBackend`: the lease table ``(partition, owner, address,
  epoch, lease_until)`` and the table of live nodes, both judged on the
  backend's own clock (the database's), never on a node's.
- :class:`FencedStore`: a batch whose firing writes (advances, statuses,
  runs) are applied only for the partitions whose lease still has the
  epoch the writer holds, checked in the same transaction.
- :class:`ClusterStore`: all a cluster node needs of its store: the
  above, the window of some partitions and hints of the other nodes'
  writes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # annotations only: the store package imports this module (its drivers implement it)
    from forsun_box.plan import Plan
    from forsun_box.store.base import Batch


@dataclass(frozen=True, slots=True)
class Lease:
    """One row of the lease table. ``lease_until_ms`` is on the backend's clock."""

    partition: int
    owner: str
    address: str
    epoch: int
    lease_until_ms: int


@dataclass(frozen=True, slots=True)
class Acquisition:
    """A lease just taken, and whom it was taken from.

    ``previous_owner`` is "" for a partition never owned before;
    ``released`` is True when the previous owner gave it up (a graceful
    hand-over) rather than letting it expire (a takeover).
    """

    lease: Lease
    previous_owner: str
    released: bool

    @property
    def is_takeover(self) -> bool:
        """Taken from another node whose lease ran out (it died, paused or lost the database)."""
        return bool(self.previous_owner) and not self.released


@dataclass(frozen=True, slots=True)
class Node:
    """A node that announced itself and has not timed out."""

    node: str
    address: str
    alive_until_ms: int


class LeaseBackend(abc.ABC):
    """Leases and node liveness, on the backend's clock. Every method is one round trip."""

    #: the number of partitions, fixed when the backend's storage was created
    partitions: int

    @abc.abstractmethod
    async def heartbeat(self, node: str, instance: str, address: str, ttl_ms: int) -> list[Node]:
        """Announce ``node`` alive for ``ttl_ms``; return every live node.

        ``instance`` tells this process from another using the same node name:
        while another instance's announcement of ``node`` is live, nothing is
        changed and ``node`` is missing from the answer."""

    @abc.abstractmethod
    async def nodes(self) -> list[Node]:
        """Every live node."""

    @abc.abstractmethod
    async def leave(self, node: str, instance: str) -> None:
        """Forget ``node`` as announced by ``instance`` (a graceful stop): the others'
        fair shares grow at once."""

    @abc.abstractmethod
    async def acquire(self, node: str, address: str, ttl_ms: int, limit: int) -> list[Acquisition]:
        """Take up to ``limit`` partitions whose lease is free or expired.

        Each taken lease's epoch is one more than before, its owner ``node``,
        its expiry now + ``ttl_ms``. Partitions another caller is taking at the
        same moment are skipped, never waited for.
        """

    @abc.abstractmethod
    async def renew(
        self, node: str, address: str, held: Mapping[int, int], ttl_ms: int
    ) -> list[Lease]:
        """Extend to now + ``ttl_ms`` the leases of ``held`` (partition -> epoch)
        that ``node`` still holds at that epoch; return those (the others are lost)."""

    @abc.abstractmethod
    async def release(self, node: str, held: Mapping[int, int]) -> int:
        """Give up the leases of ``held`` that ``node`` still holds at that epoch
        (free at once for any node); return how many were released."""

    @abc.abstractmethod
    async def leases(self) -> list[Lease]:
        """The whole lease table, by partition."""

    @abc.abstractmethod
    async def now_ms(self) -> int:
        """The backend's clock, ms since the epoch."""


@dataclass(slots=True)
class FenceResult:
    """What :meth:`FencedStore.apply_fenced` did.

    ``refused`` counts the firing writes (advances, statuses, runs) dropped
    because their partition's lease moved; ``lost`` names those partitions.
    """

    refused: int = 0
    lost: set[int] = field(default_factory=set)


class FencedStore(abc.ABC):
    """A store whose firing writes can be conditioned on a lease's epoch."""

    @abc.abstractmethod
    async def apply_fenced(
        self, batch: Batch, owner: str, epochs: Mapping[int, int]
    ) -> FenceResult:
        """Commit ``batch`` atomically, with the firing writes fenced.

        ``ops`` and ``meta`` (API writes, which any node may make) apply as in
        :meth:`~forsun_box.store.base.Store.apply`. An advance, status or run
        applies only if its key's partition is in ``epochs`` and the lease
        table, read in the same transaction (and held against a takeover
        until it commits), still gives that partition to ``owner`` at that
        epoch; the others are dropped and counted in the result.
        Raises :class:`~forsun_box.errors.StoreError`.
        """


@dataclass(frozen=True, slots=True)
class ChangeHint:
    """Another node committed API writes: which keys, and from when to look again.

    ``keys`` None: too many to name, any key may have changed. ``from_ms``:
    the earliest next firing among the plans written (None when none fires,
    e.g. only removes).
    """

    node: str
    keys: tuple[str, ...] | None
    from_ms: int | None


class ClusterStore(FencedStore):
    """A store that can back a cluster: leases, fenced writes, partition windows, hints."""

    @abc.abstractmethod
    def lease_backend(self) -> LeaseBackend:
        """The lease and node tables of this storage (the store is open)."""

    @abc.abstractmethod
    def partition_of(self, key: str) -> int:
        """The partition of ``key`` in this storage."""

    @abc.abstractmethod
    async def due_in_partitions(
        self, partitions: list[int], after: tuple[int, str] | None, before_ms: int, limit: int
    ) -> list[Plan]:
        """As :meth:`~forsun_box.store.base.Store.due`, only the plans of ``partitions``."""

    @abc.abstractmethod
    async def watch(
        self,
        node: str,
        on_change: Callable[[ChangeHint], None],
        on_release: Callable[[str], None],
        on_gap: Callable[[], None],
    ) -> None:
        """From now on announce this store's API writes as ``node`` (one hint per
        commit, never per plan) and deliver the other nodes': ``on_change`` for
        their writes, ``on_release(node)`` when a node released leases, and
        ``on_gap()`` when hints may have been missed (the channel was lost and
        is back)."""

    @abc.abstractmethod
    async def unwatch(self) -> None:
        """Stop announcing and delivering hints. Safe to call twice."""
