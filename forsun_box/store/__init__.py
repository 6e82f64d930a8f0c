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


def _without_library(problem: Exception, driver: str) -> type[Store]:
    """A driver standing in for one whose library is missing: building it stops start-up."""
    message = str(problem)

    class Missing(Store):
        name = driver

        # __new__, not __init__: building an abstract class fails before __init__
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            raise StartupError(message)

    return Missing


def _register_builtins() -> None:
    from forsun_box.extras import POSTGRES_STORE, REDIS_STORE, MissingExtra, load
    from forsun_box.store.memory import MemoryStore
    from forsun_box.store.sqlite import SqliteStore

    register_driver("sqlite", SqliteStore)
    register_driver("mem", MemoryStore)
    for name, extra, cls_name in (
        ("redis", REDIS_STORE, "RedisStore"),
        ("postgres", POSTGRES_STORE, "PostgresStore"),
    ):
        try:
            driver: type[Store] = getattr(load(extra, f"the {name} store"), cls_name)
        except MissingExtra as e:
            driver = _without_library(e, name)
        register_driver(name, driver)


_register_builtins()

__all__ = ["DRIVERS", "Advance", "Batch", "Run", "Store", "register_driver"]
