"""The postgres driver's schema and its numbered migrations.

Layout (schema version 3):

- ``plans``: one row per plan, one column per :class:`~forsun_box.plan.Plan`
  field (``params`` as JSON text, ``next_time`` NULL when finished) plus its
  ``partition``. Keys use the ``C`` collation, so they compare as UTF-8
  bytes, which is code-point order, as in the other drivers. Two partial
  indexes hold only unpaused plans with a next firing: ``(next_time, key)``
  for the whole store's window, ``(partition, next_time, key)`` for a
  node's window over the partitions it owns.
- ``runs``: run history, bounded per key on insert and by age.
- ``meta``: name/value pairs; ``partitions`` is written once, when the
  database is created, and never changed.
- ``leases``: one row per partition ``(partition, owner, address, epoch,
  lease_until)``; ``lease_until`` is on the database's clock, ``-infinity``
  when free.
- ``nodes``: ``(node, instance, address, alive_until)`` of the nodes that
  announced themselves, on the database's clock; ``instance`` tells two
  processes started with the same node name apart.
- ``forsun_box_schema``: the schema version (one row).

:data:`MIGRATIONS` are applied in order, each in its own transaction,
under an advisory lock so that nodes starting together migrate once.
"""

from __future__ import annotations

import logging
from typing import Any

from forsun_box.errors import StartupError

log = logging.getLogger("forsun_box.store")

# pg_advisory_xact_lock key held while the schema is checked and migrated ("fbox")
MIGRATION_LOCK = 0x66626F78

# Numbered migrations: MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE plans (
        key text COLLATE "C" PRIMARY KEY,
        partition integer NOT NULL,
        kind text NOT NULL,
        action text NOT NULL,
        params text NOT NULL,
        second bigint NOT NULL,
        minute bigint NOT NULL,
        hour bigint NOT NULL,
        day bigint NOT NULL,
        month bigint NOT NULL,
        week bigint NOT NULL,
        count bigint NOT NULL,
        cron text NOT NULL,
        interval_ms bigint NOT NULL,
        anchor_ms bigint NOT NULL,
        timezone text NOT NULL,
        end_ms bigint NOT NULL,
        next_time bigint,
        current_count bigint NOT NULL,
        last_timeout bigint NOT NULL,
        status bigint NOT NULL,
        created_time bigint NOT NULL,
        paused boolean NOT NULL,
        version bigint NOT NULL,
        jitter_ms bigint NOT NULL,
        misfire text NOT NULL,
        grace_ms bigint NOT NULL
    );
    CREATE INDEX plans_due ON plans (next_time, key)
        WHERE NOT paused AND next_time IS NOT NULL;
    CREATE INDEX plans_partition_due ON plans (partition, next_time, key)
        WHERE NOT paused AND next_time IS NOT NULL;
    CREATE TABLE runs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key text COLLATE "C" NOT NULL,
        due_ms bigint NOT NULL,
        started_ms bigint NOT NULL,
        duration_ms bigint NOT NULL,
        attempt bigint NOT NULL,
        result bigint NOT NULL,
        error text NOT NULL,
        action text NOT NULL
    );
    CREATE INDEX runs_key ON runs (key, id);
    CREATE INDEX runs_started ON runs (started_ms);
    CREATE TABLE meta (
        name text COLLATE "C" PRIMARY KEY,
        value text NOT NULL
    );
    CREATE TABLE leases (
        partition integer PRIMARY KEY,
        owner text NOT NULL DEFAULT '',
        address text NOT NULL DEFAULT '',
        epoch bigint NOT NULL DEFAULT 0,
        lease_until timestamptz NOT NULL DEFAULT '-infinity'
    );
    CREATE TABLE nodes (
        node text PRIMARY KEY,
        instance text NOT NULL,
        address text NOT NULL,
        alive_until timestamptz NOT NULL
    )
    """,
    # 1 -> 2: runs started by "fire now" are marked
    """
    ALTER TABLE runs ADD COLUMN manual boolean NOT NULL DEFAULT false
    """,
    # 2 -> 3: the cluster node that fired a run
    """
    ALTER TABLE runs ADD COLUMN node_id text NOT NULL DEFAULT ''
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
PARTITIONS_META = "partitions"


def split_sql(script: str) -> list[str]:
    """The statements of a migration (which holds no semicolon inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]


async def migrate(conn: Any, partitions: int, where: str) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; return the database's partition count.

    A new database records ``partitions`` and gets one lease row per
    partition; an existing one keeps the number it was created with.
    Raises StartupError for a schema newer than this code knows.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS forsun_box_schema (version integer NOT NULL)"
        )
        version = await conn.fetchval("SELECT max(version) FROM forsun_box_schema")
        if version is None:
            version = 0
            await conn.execute("INSERT INTO forsun_box_schema (version) VALUES (0)")
        if version > SCHEMA_VERSION:
            raise StartupError(
                f"{where}: database schema version {version} is newer than this "
                f"forsun-box supports ({SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            log.info("migrating %s to schema version %d", where, number + 1)
            for statement in split_sql(MIGRATIONS[number]):
                await conn.execute(statement)
            await conn.execute("UPDATE forsun_box_schema SET version = $1", number + 1)
        stored = await conn.fetchval("SELECT value FROM meta WHERE name = $1", PARTITIONS_META)
        if stored is None:
            await conn.execute(
                "INSERT INTO meta (name, value) VALUES ($1, $2)", PARTITIONS_META, str(partitions)
            )
            stored = str(partitions)
        count = int(stored)
        # one lease row per partition (idempotent: a row is never removed)
        await conn.execute(
            "INSERT INTO leases (partition) SELECT generate_series(0, $1::integer - 1) "
            "ON CONFLICT DO NOTHING",
            count,
        )
    if count != partitions:
        log.info(
            "%s was created with %d partitions: keeping them (postgres_partitions = %d "
            "applies to new databases only)",
            where,
            count,
            partitions,
        )
    return count
