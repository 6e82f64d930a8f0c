"""Applying a batch's rows in one transaction, on whichever thread holds the connection.

The firing side writes in few statements over many rows, never one
statement per row: executemany takes the interpreter lock back after every
row, and while the event loop thread is busy firing, each of those takes
waits for the interpreter's switch interval. Rows go in as one JSON array
(read by json_each) or as multi-row VALUES lists, so a whole batch runs in
SQLite with the lock released.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import sqlite3

import orjson

from forsun_box.store.base import Advance, Run
from forsun_box.store.sqlite.rows import PlanRow, Rows, run_row
from forsun_box.store.sqlite.schema import PLAN_COLUMNS, PLAN_COUNT, RUN_COLUMNS

log = logging.getLogger("forsun_box.store")

_PLAN_COLUMNS = ", ".join(PLAN_COLUMNS)
_RUN_COLUMNS = ", ".join(RUN_COLUMNS)
# One row's parameters in a multi-row INSERT; rows per statement (26 x 256
# parameters, well under SQLite's limit of 32,766).
_PLAN_MARKS = "(" + ", ".join("?" * len(PLAN_COLUMNS)) + ")"
PLAN_CHUNK = 256
_RUN_MARKS = "(" + ", ".join("?" * len(RUN_COLUMNS)) + ")"
# Rows per multi-row INSERT of runs (a few parameters each, far below SQLite's limit).
RUN_CHUNK = 256

META = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"
_DELETE = "DELETE FROM plans WHERE key = ?"
_STATUS = "UPDATE plans SET status = ? WHERE key = ? AND version = ?"
# Keep only the newest N (?2) runs of each key of a JSON array (?1), in one
# statement: per key, the subquery (the id of the N+1-th newest) is NULL, so
# nothing is deleted, while the key has at most N runs. One statement instead
# of one per key: the whole trim runs in SQLite without the interpreter lock.
_TRIM_RUNS = (
    "DELETE FROM runs WHERE id IN (SELECT r.id FROM json_each(?1) AS j "
    "JOIN runs AS r ON r.key = j.value WHERE r.id <= "
    "(SELECT id FROM runs WHERE key = j.value ORDER BY id DESC LIMIT 1 OFFSET ?2))"
)

# An advance as a JSON array: the fields it sets, then the plan it matches.
_ADVANCE_SETS = ("next_time", "current_count", "last_timeout", "status")
_ADVANCE_MATCH = ("key", "version")
_advance_row = operator.attrgetter(*_ADVANCE_SETS, *_ADVANCE_MATCH)
_finish_row = operator.attrgetter(*_ADVANCE_MATCH)
_ADVANCE_MANY = (
    "UPDATE plans SET "
    + ", ".join(f"{name} = j.value ->> {i}" for i, name in enumerate(_ADVANCE_SETS))
    + " FROM json_each(?) AS j WHERE "
    + " AND ".join(
        f"plans.{name} = j.value ->> {i}"
        for i, name in enumerate(_ADVANCE_MATCH, start=len(_ADVANCE_SETS))
    )
)
_FINISH_MANY = (
    "DELETE FROM plans WHERE rowid IN (SELECT p.rowid FROM json_each(?) AS j "
    "JOIN plans AS p ON p.key = j.value ->> 0 AND p.version = j.value ->> 1)"
)
_run_key = operator.attrgetter("key")


def _status_row(s: tuple[str, int, int]) -> tuple[int, str, int]:
    key, version, status = s
    return (status, key, version)


@functools.lru_cache(maxsize=2 * PLAN_CHUNK)
def _write_plans_sql(verb: str, rows: int) -> str:
    return f"{verb} INTO plans ({_PLAN_COLUMNS}) VALUES " + ", ".join([_PLAN_MARKS] * rows)


def write_plans(conn: sqlite3.Connection, verb: str, rows: list[PlanRow]) -> None:
    """Write plan rows with ``verb`` (INSERT OR IGNORE / OR REPLACE), PLAN_CHUNK per statement.

    One statement per row (executemany) takes the interpreter lock back after
    every row's step; while the event loop runs Python, each take waits for
    the loop's switch interval, and a bulk commit in the store's thread
    crawls. A multi-row statement binds a chunk at once, then steps without
    the lock.
    """
    for lo in range(0, len(rows), PLAN_CHUNK):
        chunk = rows[lo : lo + PLAN_CHUNK]
        conn.execute(_write_plans_sql(verb, len(chunk)), list(itertools.chain.from_iterable(chunk)))


@functools.lru_cache(maxsize=RUN_CHUNK)
def _insert_runs_sql(rows: int) -> str:
    return f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES " + ", ".join([_RUN_MARKS] * rows)


def _insert_runs(conn: sqlite3.Connection, runs: list[Run]) -> None:
    """Insert ``runs`` in order (ids follow), RUN_CHUNK rows per statement."""
    params = list(itertools.chain.from_iterable(map(run_row, runs)))
    width = len(RUN_COLUMNS)
    for lo in range(0, len(runs), RUN_CHUNK):
        n = min(RUN_CHUNK, len(runs) - lo)
        conn.execute(_insert_runs_sql(n), params[lo * width : (lo + n) * width])


def _apply_advances(conn: sqlite3.Connection, advances: list[Advance]) -> int:
    """Post-firing updates: moved plans are updated, finished ones deleted.

    Returns how many rows the updates changed (the caller counts deletions
    from the connection's change counter)."""
    moved: list[Advance] = []
    finished: list[Advance] = []
    for a in advances:
        (finished if a.next_time is None else moved).append(a)
    updated = 0
    if moved:
        before = conn.total_changes
        conn.execute(_ADVANCE_MANY, (orjson.dumps(list(map(_advance_row, moved))),))
        updated = conn.total_changes - before
    if finished:
        conn.execute(_FINISH_MANY, (orjson.dumps(list(map(_finish_row, finished))),))
    return updated


def apply_rows(
    conn: sqlite3.Connection, batch: Rows, count: int, max_runs_per_key: int, path: str
) -> int:
    """Apply ``batch`` in one transaction; the plan count after it (``count`` before).

    Runs in the thread that holds the connection at the time."""
    rows = [r for r in batch.ops.values() if r is not None]
    deletes = [(k,) for k, r in batch.ops.items() if r is None]
    start = count
    conn.execute("BEGIN IMMEDIATE")
    try:
        if deletes:
            before = conn.total_changes
            conn.executemany(_DELETE, deletes)
            count -= conn.total_changes - before
        if rows:
            # New keys are inserted and counted; when some keys existed,
            # the batch is written again, replacing them (rare: bulk loads
            # and fresh timeouts are new keys).
            before = conn.total_changes
            write_plans(conn, "INSERT OR IGNORE", rows)
            added = conn.total_changes - before
            count += added
            if added < len(rows):
                write_plans(conn, "INSERT OR REPLACE", rows)
        if batch.advances:
            before = conn.total_changes
            moved = _apply_advances(conn, batch.advances)
            count -= conn.total_changes - before - moved
        if batch.statuses:
            conn.executemany(_STATUS, map(_status_row, batch.statuses))
        if batch.runs:
            _insert_runs(conn, batch.runs)
            keys = orjson.dumps(list(dict.fromkeys(map(_run_key, batch.runs))))
            conn.execute(_TRIM_RUNS, (keys, max(max_runs_per_key, 1)))
        if batch.meta:
            conn.executemany(META, list(batch.meta.items()))
        if count != start:
            conn.execute(META, (PLAN_COUNT, str(count)))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                log.error("rollback on %s failed: %s", path, e)
        raise
    return count


def checkpoint(conn: sqlite3.Connection) -> int:
    """Copy the WAL into the database file; how many WAL frames it holds copied."""
    _busy, _frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(copied)
