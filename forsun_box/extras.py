"""Optional back-ends and the ``pip`` extra that brings each one's library.

The redis, mysql and beanstalk actions (and the redis and postgres stores)
need client libraries a plain ``pip install forsun-box`` does not pull in;
they come with ``forsun-box[redis]``, ``[mysql]``, ``[beanstalk]``,
``[postgres]`` or ``[all]``. A
back-end whose library is missing still has its name registered, so a plan
using it is accepted and its firing fails with a message naming the extra
to install, and ``--driver redis`` stops start-up with the same advice.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Extra:
    """One optional back-end: the module implementing it and what it needs."""

    name: str  # the pip extra: forsun-box[NAME]
    module: str  # forsun_box module that imports the library at its top
    package: str  # the library's distribution name, for the message
    imports: tuple[str, ...]  # top-level modules the library provides


REDIS = Extra("redis", "forsun_box.actions.redis", "redis", ("redis",))
MYSQL = Extra("mysql", "forsun_box.actions.mysql", "aiomysql", ("aiomysql", "pymysql"))
BEANSTALK = Extra("beanstalk", "forsun_box.actions.beanstalk", "greenstalk", ("greenstalk",))
REDIS_STORE = Extra("redis", "forsun_box.store.redis", "redis", ("redis",))
POSTGRES_STORE = Extra("postgres", "forsun_box.store.postgres", "asyncpg", ("asyncpg",))


class MissingExtra(ImportError):
    """A back-end's library is not installed; the message says how to get it."""

    def __init__(self, what: str, extra: Extra) -> None:
        self.extra = extra
        super().__init__(
            f"{what} needs the Python package {extra.package!r}, which is not installed: "
            f"pip install 'forsun-box[{extra.name}]' (or 'forsun-box[all]')"
        )


def load(extra: Extra, what: str) -> ModuleType:
    """Import ``extra.module``; :class:`MissingExtra` when its library is absent.

    Any other import failure (a broken install, a bug) propagates as it is.
    """
    try:
        return importlib.import_module(extra.module)
    except ImportError as e:
        missing = (e.name or "").split(".")[0]
        if missing in extra.imports:
            raise MissingExtra(what, extra) from e
        raise
