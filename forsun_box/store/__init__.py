"""Store drivers: the durable source of truth for plans, runs and meta.

Drivers register by name in :data:`DRIVERS`; extensions may add more.
"""

from __future__ import annotations

from typing import Any

from forsun_box.errors import StartupError
from forsun_box.store.base import Advance, Batch, Run, Store

DRIVERS: dict[str, type[Store]] = {}


def register_driver(name: str, cls: type[Store]) -> None:
    """Make ``cls`` the driver chosen by ``--driver name``, replacing any earlier one."""
    DRIVERS[name] = cls


def _without_library(problem: Exception) -> type[Store]:
    """A driver standing in for one whose library is missing: building it stops start-up."""
    message = str(problem)

    class Missing(Store):
        name = "redis"

        # __new__, not __init__: building an abstract class fails before __init__
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            raise StartupError(message)

    return Missing


def _register_builtins() -> None:
    from forsun_box.extras import REDIS_STORE, MissingExtra, load
    from forsun_box.store.memory import MemoryStore
    from forsun_box.store.sqlite import SqliteStore

    register_driver("sqlite", SqliteStore)
    register_driver("mem", MemoryStore)
    try:
        redis_store: type[Store] = load(REDIS_STORE, "the redis store").RedisStore
    except MissingExtra as e:
        redis_store = _without_library(e)
    register_driver("redis", redis_store)


_register_builtins()

__all__ = ["DRIVERS", "Advance", "Batch", "Run", "Store", "register_driver"]
