"""The ``postgres`` store driver (asyncpg): see :mod:`.store`."""

from __future__ import annotations

from forsun_box.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
