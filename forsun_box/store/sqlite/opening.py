"""What the sqlite store checks and sets when it opens a database.

Everything here stops start-up with a :class:`~forsun_box.errors.StartupError`
naming the file, rather than letting the service start on data it can't
read or write. The functions taking a connection run in the store's thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3

from forsun_box.errors import StartupError
from forsun_box.store.sqlite.schema import PLAN_COUNT, SCHEMA_VERSION
from forsun_box.store.sqlite.transaction import META

log = logging.getLogger("forsun_box.store")

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL")
BUSY_TIMEOUT_MS = 5000
# Page cache per connection. Bulk writes touch pages all over the key and
# next-time b-trees; a roomy cache keeps them from re-reading the file.
CACHE_KIB = 64 * 1024
# Oldest SQLite with the JSON functions and ->> built in.
MIN_SQLITE = (3, 38, 0)
# Databases up to this size get a full quick_check at start-up (see check_pages).
FULL_CHECK_MAX_BYTES = 64 << 20
# Start-up probes of larger databases: both ends of every table and index.
PROBES = tuple(
    f"SELECT {col} FROM {table} {where} ORDER BY {order} LIMIT 1"
    for table, col, where, orders in (
        ("plans", "key", "", ("rowid", "rowid DESC", "key", "key DESC")),
        (
            "plans",
            "key",
            "WHERE paused = 0 AND next_time IS NOT NULL",
            ("next_time, key", "next_time DESC, key DESC"),
        ),
        ("runs", "id", "", ("id", "id DESC")),  # id is the rowid
        ("runs", "id", "", ("key, id", "key DESC, id DESC")),
        ("runs", "id", "", ("started_ms", "started_ms DESC")),
        ("meta", "name", "", ("name", "name DESC")),
    )
    for order in orders
)


def check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        # the firing side's set-based statements use json_each and ->>
        raise StartupError(
            f"SQLite {sqlite3.sqlite_version} is too old: the sqlite store needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer (the executable carries its own)"
        )


def check_path(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create the data directory {directory}: {e}") from None
    if os.path.isdir(path):
        raise StartupError(f"the database path {path} is a directory")
    # WAL mode needs to create the -wal and -shm files beside the database.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupError(f"the data directory {directory} is not writable")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise StartupError(f"the database {path} is not readable and writable")


def prepare(conn: sqlite3.Connection, path: str, synchronous: str) -> int:
    """Set the connection up and check the file; the schema version it holds."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StartupError(
            f"{path}: database schema version {version} is newer than this "
            f"forsun-box supports ({SCHEMA_VERSION})"
        )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StartupError(f"{path}: cannot switch the database to WAL mode ({mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    # One process owns the file: no shared-memory locking per transaction
    # (cheaper commits), and a second forsun-box on the same data directory
    # is refused at start instead of firing every plan twice.
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    # Checkpoints are run by the store after commits, in its thread: left to
    # SQLite, the commit that crosses the WAL threshold checkpoints, possibly
    # on the event loop.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    check_pages(conn, path)
    return version


def check_pages(conn: sqlite3.Connection, path: str) -> None:
    """Stop start-up on a damaged file instead of failing mid-service.

    Up to FULL_CHECK_MAX_BYTES, ``quick_check`` reads every page. Above
    that, reading every page costs seconds to minutes (random reads of a
    file that is not in the page cache), so start-up probes the first and
    last entries of every table and index instead -- a root-to-leaf path
    through each b-tree -- and the full check is left to an operator
    (``PRAGMA quick_check`` with the service stopped).
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    if size <= FULL_CHECK_MAX_BYTES:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    else:
        log.info("%s is %d MB: probing its b-trees instead of a full check", path, size >> 20)
        problems = []
        for sql in PROBES:
            try:
                conn.execute(sql).fetchall()
            except sqlite3.DatabaseError as e:
                problems.append(f"{e} (reading: {sql})")
    if problems and problems != ["ok"]:
        shown = "; ".join(str(p) for p in problems[:5])
        raise StartupError(f"the SQLite database {path} is damaged: {shown}")


def load_count(conn: sqlite3.Connection, path: str) -> int:
    """The plan count from meta; counted once (and stored) when it isn't there."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (PLAN_COUNT,)).fetchone()
    if row is not None:
        return int(row[0])
    log.info("counting the plans of %s (once)", path)
    count = int(conn.execute("SELECT count(*) FROM plans").fetchone()[0])
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(META, (PLAN_COUNT, str(count)))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return count


def prove_writable(conn: sqlite3.Connection) -> None:
    """Fail now rather than at the first client's request if the file can't be written
    (a write statement, even one touching no row, needs a writable file)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM meta WHERE 0")
    finally:
        conn.execute("ROLLBACK")
