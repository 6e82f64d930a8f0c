"""The sqlite store's connection and the one thread it owns for it.

Work that would hold the event loop (opening checks, big commits, WAL
checkpoints, reads made into Plans row by row) runs in the thread; work
cheaper than the hop there and back (a point read, a small commit) runs on
the caller's thread. The store's lock keeps the two from overlapping, so the
connection is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Database:
    """A ``sqlite3`` connection (autocommit: the store opens its own transactions)
    and a thread of its own."""

    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self.conn = conn
        self._thread = thread

    @classmethod
    async def connect(cls, path: str) -> Database:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forsun-box-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(
                thread,
                functools.partial(
                    sqlite3.connect, path, isolation_level=None, check_same_thread=False
                ),
            )
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(conn, thread)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the connection's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def fetchall(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return await self.run(_fetchall, self.conn, sql, args)

    async def close(self) -> None:
        try:
            await self.run(self.conn.close)
        finally:
            self._thread.shutdown(wait=False)


def _fetchall(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, args).fetchall()
