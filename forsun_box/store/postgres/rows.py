"""Plans and runs as PostgreSQL rows, and the set-based statements that write them.

Every write is one statement over many rows: the rows travel as one array
per column (asyncpg's binary protocol) and ``unnest`` turns them back into
rows on the server, so a batch of 100,000 creates is one statement, one
round trip, never one per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from forsun_box.plan import Plan
from forsun_box.store.base import Advance, Run

# (column, PostgreSQL array type) of ``plans``, Plan fields in declaration order.
PLAN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "text"),
    ("kind", "text"),
    ("action", "text"),
    ("params", "text"),
    ("second", "bigint"),
    ("minute", "bigint"),
    ("hour", "bigint"),
    ("day", "bigint"),
    ("month", "bigint"),
    ("week", "bigint"),
    ("count", "bigint"),
    ("cron", "text"),
    ("interval_ms", "bigint"),
    ("anchor_ms", "bigint"),
    ("timezone", "text"),
    ("end_ms", "bigint"),
    ("next_time", "bigint"),
    ("current_count", "bigint"),
    ("last_timeout", "bigint"),
    ("status", "bigint"),
    ("created_time", "bigint"),
    ("paused", "boolean"),
    ("version", "bigint"),
    ("jitter_ms", "bigint"),
    ("misfire", "text"),
    ("grace_ms", "bigint"),
)
COLUMNS = ", ".join(name for name, _ in PLAN_COLUMNS)
_WIDTH = len(PLAN_COLUMNS)

# Insert or replace plans: one array per column, then the partitions.
UPSERT_PLANS = (
    f"INSERT INTO plans ({COLUMNS}, partition) SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{kind}[]" for i, (_, kind) in enumerate(PLAN_COLUMNS))
    + f", ${_WIDTH + 1}::integer[]) ON CONFLICT (key) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name, _ in PLAN_COLUMNS[1:])
    + ", partition = EXCLUDED.partition"
)
DELETE_PLANS = "DELETE FROM plans WHERE key = ANY($1::text[])"
# Post-firing updates of plans that move on, and removal of those that finished;
# both only at the version the firing saw.
ADVANCE_PLANS = (
    "UPDATE plans AS p SET next_time = a.next_time, current_count = a.current_count, "
    "last_timeout = a.last_timeout, status = a.status FROM unnest($1::text[], $2::bigint[], "
    "$3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) "
    "AS a(key, version, next_time, current_count, last_timeout, status) "
    "WHERE p.key = a.key AND p.version = a.version"
)
FINISH_PLANS = (
    "DELETE FROM plans AS p USING unnest($1::text[], $2::bigint[]) AS a(key, version) "
    "WHERE p.key = a.key AND p.version = a.version"
)
SET_STATUSES = (
    "UPDATE plans AS p SET status = s.status FROM unnest($1::text[], $2::bigint[], "
    "$3::bigint[]) AS s(key, version, status) WHERE p.key = s.key AND p.version = s.version"
)
RUN_COLUMNS = (
    "key, due_ms, started_ms, duration_ms, attempt, result, error, action, manual, node_id"
)
# WITH ORDINALITY: ids follow the batch's order, newest last
INSERT_RUNS = (
    f"INSERT INTO runs ({RUN_COLUMNS}) SELECT {RUN_COLUMNS} FROM unnest($1::text[], "
    "$2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], "
    f"$8::text[], $9::boolean[], $10::text[]) WITH ORDINALITY AS r({RUN_COLUMNS}, n) ORDER BY n"
)
# Keep only the newest $2 runs of each key of $1: per key, the id of its
# ($2 + 1)-th newest run bounds what goes (NULL, so nothing, while it has fewer).
TRIM_RUNS = (
    "DELETE FROM runs AS r USING unnest($1::text[]) AS k(key) WHERE r.key = k.key AND "
    "r.id <= (SELECT id FROM runs WHERE key = k.key ORDER BY id DESC LIMIT 1 OFFSET $2)"
)
UPSERT_META = (
    "INSERT INTO meta (name, value) SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
)


def plan_columns(plans: Iterable[Plan], partition: Callable[[str], int]) -> list[list[Any]]:
    """The plans as one list per column of :data:`UPSERT_PLANS` (partitions last)."""
    cols: list[list[Any]] = [[] for _ in range(_WIDTH + 1)]
    (
        key,
        kind,
        action,
        params,
        second,
        minute,
        hour,
        day,
        month,
        week,
        count,
        cron,
        interval_ms,
        anchor_ms,
        timezone,
        end_ms,
        next_time,
        current_count,
        last_timeout,
        status,
        created_time,
        paused,
        version,
        jitter_ms,
        misfire,
        grace_ms,
        parts,
    ) = cols
    dumps = orjson.dumps
    for p in plans:
        if not isinstance(p.key, str):
            raise TypeError(f"a plan key must be a string, not {p.key!r}")
        key.append(p.key)
        kind.append(p.kind)
        action.append(p.action)
        params.append(dumps(p.params).decode())
        second.append(p.second)
        minute.append(p.minute)
        hour.append(p.hour)
        day.append(p.day)
        month.append(p.month)
        week.append(p.week)
        count.append(p.count)
        cron.append(p.cron)
        interval_ms.append(p.interval_ms)
        anchor_ms.append(p.anchor_ms)
        timezone.append(p.timezone)
        end_ms.append(p.end_ms)
        next_time.append(p.next_time)
        current_count.append(p.current_count)
        last_timeout.append(p.last_timeout)
        status.append(p.status)
        created_time.append(p.created_time)
        paused.append(bool(p.paused))
        version.append(p.version)
        jitter_ms.append(p.jitter_ms)
        misfire.append(p.misfire)
        grace_ms.append(p.grace_ms)
        parts.append(partition(p.key))
    return cols


def advance_columns(advances: Sequence[Advance]) -> list[list[Any]]:
    """Moving advances as the six arrays of :data:`ADVANCE_PLANS`."""
    return [
        [a.key for a in advances],
        [a.version for a in advances],
        [a.next_time for a in advances],
        [a.current_count for a in advances],
        [a.last_timeout for a in advances],
        [a.status for a in advances],
    ]


def run_columns(runs: Sequence[Run]) -> list[list[Any]]:
    """Runs as the ten arrays of :data:`INSERT_RUNS`."""
    return [
        [r.key for r in runs],
        [r.due_ms for r in runs],
        [r.started_ms for r in runs],
        [r.duration_ms for r in runs],
        [r.attempt for r in runs],
        [r.result for r in runs],
        [r.error for r in runs],
        [r.action for r in runs],
        [r.manual for r in runs],
        [r.node_id for r in runs],
    ]


def plan_from_row(r: Any, _loads: Any = orjson.loads) -> Plan:
    """A Plan from a row of ``SELECT {COLUMNS}``."""
    return Plan(
        r[0],
        r[1],
        r[2],
        _loads(r[3]),
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        r[14],
        r[15],
        r[16],
        r[17],
        r[18],
        r[19],
        r[20],
        r[21],
        r[22],
        r[23],
        r[24],
        r[25],
    )


def run_from_row(r: Any) -> Run:
    return Run(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
