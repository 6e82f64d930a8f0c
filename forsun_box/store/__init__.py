"""Store drivers: the durable source of truth for plans, runs and meta.

Drivers register by name in :data:`DRIVERS`; extensions may add more.
"""

from __future__ import annotations

from forsun_box.store.base import Advance, Batch, Run, Store

DRIVERS: dict[str, type[Store]] = {}


def register_driver(name: str, cls: type[Store]) -> None:
    """Make ``cls`` the driver chosen by ``--driver name``, replacing any earlier one."""
    DRIVERS[name] = cls


def _register_builtins() -> None:
    from forsun_box.store.memory import MemoryStore
    from forsun_box.store.postgres import PostgresStore
    from forsun_box.store.redis import RedisStore
    from forsun_box.store.sqlite import SqliteStore

    register_driver("sqlite", SqliteStore)
    register_driver("mem", MemoryStore)
    register_driver("redis", RedisStore)
    register_driver("postgres", PostgresStore)


_register_builtins()

__all__ = ["DRIVERS", "Advance", "Batch", "Run", "Store", "register_driver"]
