"""The store contract every driver implements.

The engine is the only writer. It sends mutations in :class:`Batch` es
(group commit): :meth:`Store.apply` must apply a whole batch atomically,
durably (per the driver's durability setting) and in this order: ``puts``
and ``deletes`` (one final operation per key), then ``advances``, then
``statuses``, ``runs`` and ``meta``.

Reads may run concurrently with nothing else: the engine never overlaps a
read with an ``apply``. An ``apply`` may overlap only :meth:`Store.apply_now`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from forsun_box.plan import Plan
from forsun_box.runs import Run

__all__ = ["Advance", "Batch", "Run", "Store"]


@dataclass(slots=True)
class Advance:
    """Post-firing update of a plan, applied only if ``key`` still has ``version``.

    ``next_time`` None means the plan is finished: the row is deleted.
    """

    key: str
    version: int
    next_time: int | None
    current_count: int
    last_timeout: int
    status: int


@dataclass(slots=True)
class Batch:
    """Mutations committed together in one transaction."""

    # key -> Plan to insert or replace, or None to delete
    ops: dict[str, Plan | None] = field(default_factory=dict)
    advances: list[Advance] = field(default_factory=list)
    # (key, version, status): set the status field if the version matches
    statuses: list[tuple[str, int, int]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return (
            len(self.ops)
            + len(self.advances)
            + len(self.statuses)
            + len(self.runs)
            + len(self.meta)
        )


class Store(abc.ABC):
    """Async storage driver. Instants are ms since the epoch."""

    #: driver name as given to ``--driver``
    name: str = ""

    @abc.abstractmethod
    async def open(self) -> None:
        """Open or create the storage.

        Raises :class:`forsun_box.errors.StartupError` with a clear message when
        existing data can't be read (corrupt, newer schema, no permission); it
        must never silently start empty over unreadable data.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release everything. Safe to call twice."""

    @abc.abstractmethod
    async def apply(self, batch: Batch) -> None:
        """Commit ``batch`` atomically. Raises :class:`forsun_box.errors.StoreError`."""

    def apply_now(self, batch: Batch) -> bool:
        """Commit ``batch`` at once, without awaiting, if the driver can (sqlite:
        a caller's small write, into its ack log); False when nothing was done
        (use :meth:`apply`). Raises :class:`forsun_box.errors.StoreError`.

        It may be called while an :meth:`apply` is under way: ``batch`` then
        commits after that one, and reads see it at once.
        """
        return False

    @abc.abstractmethod
    async def get(self, key: str) -> Plan | None:
        """The plan stored under ``key``, or None."""

    @abc.abstractmethod
    async def due(self, after: tuple[int, str] | None, before_ms: int, limit: int) -> list[Plan]:
        """Unpaused plans with a next firing, ordered by ``(next_time, key)``.

        Only plans with ``(next_time, key) > after`` (all if ``after`` is None)
        and ``next_time < before_ms``; at most ``limit``.
        """

    @abc.abstractmethod
    async def firing_between(self, start_ms: int, end_ms: int, limit: int) -> list[Plan]:
        """Unpaused plans whose next firing is in ``[start_ms, end_ms)``, by time then key."""

    async def count_firing_between(self, start_ms: int, end_ms: int, limit: int) -> int:
        """How many unpaused plans fire in ``[start_ms, end_ms)``, counting at most ``limit``.

        The default reads the plans; drivers override it with an index count.
        """
        return len(await self.firing_between(start_ms, end_ms, limit))

    @abc.abstractmethod
    async def keys(self, prefix: str = "", after: str = "", limit: int = 0) -> list[str]:
        """Keys starting with ``prefix``, sorted, greater than ``after``; ``limit`` 0 = all."""

    @abc.abstractmethod
    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        """Plans whose key starts with ``prefix``, sorted by key, keys > ``after``."""

    @abc.abstractmethod
    async def count(self) -> int:
        """Number of stored plans."""

    @abc.abstractmethod
    async def runs(self, key: str, limit: int = 50) -> list[Run]:
        """The newest runs of ``key``, newest first."""

    @abc.abstractmethod
    async def get_meta(self, name: str) -> str | None:
        """A meta value (e.g. ``processed_until``), or None."""

    async def prune_runs(self, now_ms: int) -> int:
        """Drop runs older than the driver's retention, counted back from ``now_ms``.

        Returns how many runs were dropped. Drivers that keep no history
        need not override it.
        """
        return 0

    async def size_bytes(self) -> int:
        """Bytes the store occupies on disk (0 when not applicable)."""
        return 0
