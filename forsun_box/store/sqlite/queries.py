"""The reads the sqlite store makes, as SQL."""

from __future__ import annotations

from typing import Any

from forsun_box.store.keys import prefix_upper_bound
from forsun_box.store.sqlite.schema import PLAN_COLUMNS, RUN_COLUMNS

COLUMNS = ", ".join(PLAN_COLUMNS)
GET_SQL = f"SELECT {COLUMNS} FROM plans WHERE key = ?"
# The window queries repeat the partial index's condition so the planner may use it.
_DUE_WHERE = "paused = 0 AND next_time IS NOT NULL"
DUE_FIRST_SQL = (
    f"SELECT {COLUMNS} FROM plans WHERE {_DUE_WHERE} AND next_time < ? "
    "ORDER BY next_time, key LIMIT ?"
)
# A row-value comparison keeps keyset paging a single range of the index.
DUE_AFTER_SQL = (
    f"SELECT {COLUMNS} FROM plans WHERE {_DUE_WHERE} "
    "AND (next_time, key) > (?, ?) AND next_time < ? ORDER BY next_time, key LIMIT ?"
)
FIRING_BETWEEN_SQL = (
    f"SELECT {COLUMNS} FROM plans WHERE {_DUE_WHERE} "
    "AND next_time >= ? AND next_time < ? ORDER BY next_time, key LIMIT ?"
)
# counted on the partial index alone, and never past the limit
COUNT_BETWEEN_SQL = (
    f"SELECT count(*) FROM (SELECT 1 FROM plans WHERE {_DUE_WHERE} "
    "AND next_time >= ? AND next_time < ? LIMIT ?)"
)
# how many of a JSON array of keys are stored (and of those, firing in a range)
COUNT_KEYS_SQL = "SELECT count(*) FROM plans WHERE key IN (SELECT value FROM json_each(?))"
COUNT_KEYS_BETWEEN_SQL = f"{COUNT_KEYS_SQL} AND {_DUE_WHERE} AND next_time >= ? AND next_time < ?"
META_SQL = "SELECT value FROM meta WHERE name = ?"
RUNS_SQL = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE key = ? ORDER BY id DESC LIMIT ?"


def key_range_sql(columns: str, prefix: str, after: str, limit: int) -> tuple[str, tuple[Any, ...]]:
    """SELECT ``columns`` of the plans whose key starts with ``prefix`` and is > ``after``.

    A key range (never LIKE, whose wildcards ``%`` and ``_`` could be in a
    prefix) so the primary key index serves it.
    """
    clauses: list[str] = []
    args: list[Any] = []
    if after and after >= prefix:
        clauses.append("key > ?")
        args.append(after)
    elif prefix:
        clauses.append("key >= ?")
        args.append(prefix)
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        clauses.append("key < ?")
        args.append(upper)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    args.append(limit if limit > 0 else -1)
    return f"SELECT {columns} FROM plans{where} ORDER BY key LIMIT ?", tuple(args)
