"""The sqlite store's schema: numbered migrations and the columns they make.

- ``plans``: one row per plan, one column per :class:`~forsun_box.plan.Plan`
  field in declaration order (``params`` as JSON text, booleans as 0/1,
  ``next_time`` NULL when finished). The key is the primary key, so prefix
  listings are key-range scans. A partial index on ``(next_time, key)``
  holding only unpaused plans with a next firing serves the engine's window
  queries.
- ``runs``: run history (one column per :class:`~forsun_box.store.base.Run`
  field, and the rowid ``id``), bounded per key on insert and by age.
- ``meta``: small name/value pairs (``processed_until``, the plan count, the
  last ack-log record folded in).

The schema version lives in ``PRAGMA user_version``. :data:`MIGRATIONS` is
the history of the schema: entry *n* takes it from version *n* to *n + 1*,
each applied in its own transaction when the store opens. A change to the
schema is a new entry at the end, never an edit of an earlier one.
"""

from __future__ import annotations

import dataclasses
import sqlite3

from forsun_box.plan import Plan
from forsun_box.store.base import Run

MIGRATIONS: list[str] = [
    # 0 -> 1: plans, runs, meta
    """
    CREATE TABLE plans (
        key TEXT PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        action TEXT NOT NULL,
        params TEXT NOT NULL,
        second INTEGER NOT NULL,
        minute INTEGER NOT NULL,
        hour INTEGER NOT NULL,
        day INTEGER NOT NULL,
        month INTEGER NOT NULL,
        week INTEGER NOT NULL,
        count INTEGER NOT NULL,
        cron TEXT NOT NULL,
        interval_ms INTEGER NOT NULL,
        anchor_ms INTEGER NOT NULL,
        timezone TEXT NOT NULL,
        end_ms INTEGER NOT NULL,
        next_time INTEGER,
        current_count INTEGER NOT NULL,
        last_timeout INTEGER NOT NULL,
        status INTEGER NOT NULL,
        created_time INTEGER NOT NULL,
        paused INTEGER NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE INDEX plans_due ON plans (next_time, key)
        WHERE paused = 0 AND next_time IS NOT NULL;
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        due_ms INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        result INTEGER NOT NULL,
        error TEXT NOT NULL,
        action TEXT NOT NULL
    );
    CREATE INDEX runs_key ON runs (key, id);
    CREATE INDEX runs_started ON runs (started_ms);
    CREATE TABLE meta (
        name TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );
    """,
    # 1 -> 2: per-plan jitter and misfire policy
    """
    ALTER TABLE plans ADD COLUMN jitter_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE plans ADD COLUMN misfire TEXT NOT NULL DEFAULT '';
    ALTER TABLE plans ADD COLUMN grace_ms INTEGER NOT NULL DEFAULT 0;
    """,
    # 2 -> 3: runs started by "fire now" are marked
    """
    ALTER TABLE runs ADD COLUMN manual INTEGER NOT NULL DEFAULT 0;
    """,
    # 3 -> 4: the cluster node that fired a run
    """
    ALTER TABLE runs ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# The columns of ``plans`` and ``runs`` (but ``id``), in the order of the
# record's fields: a row is the record's fields in order (see rows.py).
PLAN_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Plan))
RUN_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Run))

# meta row holding the number of plans, kept in step by every commit
PLAN_COUNT = "plan_count"
# meta row holding the sequence number of the last ack-log record in the database
ACKLOG_SEQ = "acklog_seq"


def split_sql(script: str) -> list[str]:
    """The statements of a migration script.

    Migration scripts hold no semicolons inside literals, so a plain split is
    exact; executing statements one by one keeps them inside our own
    transaction (executescript would commit first).
    """
    return [s.strip() for s in script.split(";") if s.strip()]


def migrate(conn: sqlite3.Connection, number: int) -> None:
    """Apply migration ``number`` (version ``number`` to ``number + 1``) in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in split_sql(MIGRATIONS[number]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
