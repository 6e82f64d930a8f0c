"""Plans and runs as database rows, and a batch as the rows one transaction applies.

A ``plans`` row is the :class:`~forsun_box.plan.Plan` fields in declaration
order (:data:`~forsun_box.store.sqlite.schema.PLAN_COLUMNS`), ``params``
as JSON text and ``paused`` as 0/1; a ``runs`` row is the
:class:`~forsun_box.store.base.Run` fields in order. Code that reads a row
names its column through the positions below, never by a bare number.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import orjson

from forsun_box.plan import Plan
from forsun_box.store.base import Advance, Batch, Run
from forsun_box.store.sqlite.schema import PLAN_COLUMNS, RUN_COLUMNS

PlanRow = tuple[Any, ...]

_AT = {name: i for i, name in enumerate(PLAN_COLUMNS)}
KEY = _AT["key"]
PARAMS = _AT["params"]
NEXT_TIME = _AT["next_time"]
PAUSED = _AT["paused"]


def plan_row(p: Plan, _dumps: Any = orjson.dumps) -> PlanRow:
    """The row of ``p``, column by column of PLAN_COLUMNS (spelt out: a tuple
    display is several times faster than one assembled from getters, and bulk
    creates make one per plan; tests check the order)."""
    return (
        p.key,
        p.kind,
        p.action,
        _dumps(p.params).decode(),
        p.second,
        p.minute,
        p.hour,
        p.day,
        p.month,
        p.week,
        p.count,
        p.cron,
        p.interval_ms,
        p.anchor_ms,
        p.timezone,
        p.end_ms,
        p.next_time,
        p.current_count,
        p.last_timeout,
        p.status,
        p.created_time,
        1 if p.paused else 0,
        p.version,
        p.jitter_ms,
        p.misfire,
        p.grace_ms,
    )


def plan_from_row(_cursor: Any, r: PlanRow, _loads: Any = orjson.loads) -> Plan:
    """A row as a Plan; also a cursor row factory, so rows become Plans in the thread
    that reads them."""
    return Plan(  # type: ignore[call-arg]  # the fields in order: mypy can't count them
        *r[:PARAMS],
        _loads(r[PARAMS]),
        *r[PARAMS + 1 : PAUSED],
        r[PAUSED] != 0,
        *r[PAUSED + 1 :],
    )


def key_from_row(_cursor: Any, r: tuple[Any, ...]) -> str:
    return r[0]  # type: ignore[no-any-return]


def run_from_row(_cursor: Any, r: tuple[Any, ...]) -> Run:
    run = Run(*r)
    run.manual = bool(run.manual)  # stored as 0/1
    return run


run_row = operator.attrgetter(*RUN_COLUMNS)
plan_key = operator.attrgetter("key")
plan_by_time = operator.attrgetter("next_time", "key")


def row_is_due(r: PlanRow) -> bool:
    """Whether the plan of row ``r`` waits to fire (unpaused, with a next firing)."""
    return r[PAUSED] == 0 and r[NEXT_TIME] is not None


# What SQLite stores as TEXT and as INTEGER (next_time, nullable, apart).
_TEXTS = tuple(
    i
    for i, f in enumerate(dataclasses.fields(Plan))
    if f.type in ("str", str) or f.name == "params"
)
_INTS = tuple(i for i in range(len(PLAN_COLUMNS)) if i not in _TEXTS and i != NEXT_TIME)
_row_texts = operator.itemgetter(*_TEXTS)
_row_ints = operator.itemgetter(*_INTS)
_INT64 = (-(1 << 63), (1 << 63) - 1)


def check_row(row: PlanRow) -> None:
    """Raise ValueError/TypeError where SQLite would refuse ``row`` (it is logged
    before it reaches the database, so it must not fail there)."""
    "".join(_row_texts(row))  # TypeError unless every text column is a str
    ints = _row_ints(row)
    nxt = row[NEXT_TIME]
    if nxt is not None:
        ints = (*ints, nxt)
    if min(ints) < _INT64[0] or max(ints) > _INT64[1]:
        raise OverflowError("an integer field is out of SQLite's 64-bit range")


class Rows:
    """A batch as database rows: what one transaction applies."""

    __slots__ = ("advances", "meta", "ops", "runs", "statuses")

    def __init__(self, batch: Batch | None = None) -> None:
        # key -> plan row to insert or replace, or None to delete
        self.ops: dict[str, PlanRow | None] = {}
        self.advances: list[Advance] = []
        self.statuses: list[tuple[str, int, int]] = []
        self.runs: list[Run] = []
        self.meta: dict[str, str] = {}
        if batch is not None:
            self.ops = {k: None if p is None else plan_row(p) for k, p in batch.ops.items()}
            self.advances = batch.advances
            self.statuses = batch.statuses
            self.runs = batch.runs
            self.meta = batch.meta

    def __len__(self) -> int:
        return (
            len(self.ops)
            + len(self.advances)
            + len(self.statuses)
            + len(self.runs)
            + len(self.meta)
        )

    def encode(self) -> bytes:
        """The ack-log payload; raises where the database would refuse a row."""
        for row in self.ops.values():
            if row is not None:
                check_row(row)
        return orjson.dumps([list(self.ops.items()), self.meta])

    @classmethod
    def decode(cls, payload: bytes) -> Rows:
        ops, meta = orjson.loads(payload)
        rows = cls()
        rows.ops = {k: None if r is None else tuple(r) for k, r in ops}
        rows.meta = meta
        return rows

    def then(self, later: Rows) -> None:
        """Fold ``later`` in: its mutations apply after these.

        A put replaces the whole row and a delete removes it, so per key only
        the last of them matters; advances and status changes match a plan
        version, and apply after the puts and deletes (see transaction.py)."""
        self.ops.update(later.ops)
        self.meta.update(later.meta)
        self.advances = self.advances + later.advances
        self.statuses = self.statuses + later.statuses
        self.runs = self.runs + later.runs
