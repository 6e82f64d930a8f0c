"""The sqlite store's rows: one column per record field, in order, named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from forsun_box.plan import Plan
from forsun_box.store.base import Run
from forsun_box.store.sqlite import rows, schema


def migrated(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "plans.db", isolation_level=None)
    for number in range(schema.SCHEMA_VERSION):
        schema.migrate(conn, number)
    return conn


def test_the_migrations_make_one_column_per_field_in_field_order(tmp_path: Path) -> None:
    conn = migrated(tmp_path)
    try:
        plans = [r[1] for r in conn.execute("PRAGMA table_info(plans)")]
        runs = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
    finally:
        conn.close()
    assert tuple(plans) == schema.PLAN_COLUMNS
    assert runs[0] == "id" and tuple(runs[1:]) == schema.RUN_COLUMNS


def test_a_plan_row_is_its_fields_in_column_order_and_reads_back_equal() -> None:
    p = Plan(
        "k",
        "calendar",
        "http",
        {"url": "http://127.0.0.1/x"},
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        "*/5 * * * *",
        8,
        9,
        "Europe/Paris",
        10,
        11,
        12,
        13,
        -1,
        14,
        True,
        15,
        16,
        "skip",
        17,
    )
    row = rows.plan_row(p)
    assert len(row) == len(schema.PLAN_COLUMNS)
    for i, name in enumerate(schema.PLAN_COLUMNS):
        if name == "params":
            assert row[i] == '{"url":"http://127.0.0.1/x"}'
        elif name == "paused":
            assert row[i] == 1
        else:
            assert row[i] == getattr(p, name), name
    assert rows.plan_from_row(None, row) == p
    assert rows.row_is_due(row) is False  # paused
    assert rows.row_is_due(rows.plan_row(p.copy(paused=False))) is True
    assert rows.row_is_due(rows.plan_row(p.copy(paused=False, next_time=None))) is False


def test_a_run_row_reads_back_equal(tmp_path: Path) -> None:
    run = Run("k", 1, 2, 3, 1, -1, "boom", "shell")
    conn = migrated(tmp_path)
    try:
        conn.execute(
            f"INSERT INTO runs ({', '.join(schema.RUN_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(schema.RUN_COLUMNS))})",
            rows.run_row(run),
        )
        got = conn.execute(f"SELECT {', '.join(schema.RUN_COLUMNS)} FROM runs").fetchone()
    finally:
        conn.close()
    assert rows.run_from_row(None, got) == run
