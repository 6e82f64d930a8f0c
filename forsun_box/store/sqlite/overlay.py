"""The ack-log overlay: acknowledged writes that are in the log, not yet in the database.

The ack log (:mod:`forsun_box.store.sqlite.acklog`) is the file that makes
them durable; the overlay is their image in memory. The store folds them into
the database some 50 ms later, many per transaction, and until then every
read lays them over what the database returns: a logged put replaces the
key's row, a logged delete hides it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from forsun_box.store.sqlite.rows import PlanRow, Rows, plan_from_row, plan_key

# (sequence number in the log, the rows, the record's payload)
Logged = tuple[int, Rows, bytes]
# per key: (sequence number of the write that last logged it, its row or None for a delete)
KeyRows = dict[str, tuple[int, PlanRow | None]]


class Overlay:
    """The logged writes not yet folded in, oldest first, and the latest per key."""

    __slots__ = ("pending", "rows")

    def __init__(self) -> None:
        self.pending: list[Logged] = []
        self.rows: KeyRows = {}

    def add(self, seq: int, rows: Rows, payload: bytes) -> None:
        self.pending.append((seq, rows, payload))
        for key, row in rows.ops.items():
            self.rows[key] = (seq, row)

    def take(self) -> list[Logged]:
        """The pending writes, to fold in; they stop being pending."""
        pending, self.pending = self.pending, []
        return pending

    def put_back(self, pending: list[Logged]) -> None:
        """A fold of ``pending`` failed: they are pending again, before any newer."""
        self.pending[:0] = pending

    def folded(self, pending: list[Logged]) -> None:
        """``pending`` is in the database: reads no longer need their rows
        (unless a later write logged the key again)."""
        done = pending[-1][0]
        rows = self.rows
        for _, logged, _ in pending:
            for key in logged.ops:
                hit = rows.get(key)
                if hit is not None and hit[0] <= done:
                    del rows[key]

    def meta(self, name: str) -> str | None:
        for _, logged, _ in reversed(self.pending):
            if name in logged.meta:
                return logged.meta[name]
        return None


def widen(limit: int, rows: KeyRows) -> int:
    """A read's row limit, raised so that dropping the rows of logged keys still
    leaves ``limit`` of them (``limit`` 0 or less: -1, no limit)."""
    return limit + len(rows) if limit > 0 else -1


def overlaid(
    items: list[Any],
    rows: KeyRows,
    limit: int,
    order: Callable[[Any], Any],
    keep: Callable[[PlanRow], bool],
    factory: Callable[[Any, Any], Any] = plan_from_row,
    key: Callable[[Any], str] = plan_key,
) -> list[Any]:
    """The first ``limit`` (all if 0 or less) of ``items`` read from the database
    (in ``order``, made by ``factory``) with the logged ``rows`` over them.

    Items of logged keys are dropped (replaced or deleted since); logged plan
    rows that ``keep`` accepts come in, in order (few: no sort of the whole
    read, which may be a window refill of tens of thousands). The read was
    widened (:func:`widen`): even with every logged key dropped, its items
    fill ``limit``, so a logged row past its last one never makes the cut
    ahead of an unread row.
    """
    out = [x for x in items if key(x) not in rows]
    for _, row in rows.values():
        if row is not None and keep(row):
            bisect.insort(out, factory(None, row), key=order)
    return out[:limit] if limit > 0 else out
