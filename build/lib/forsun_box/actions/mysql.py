"""The ``mysql`` action: run one SQL statement in a transaction (MySQL or MariaDB).

Params (forsun's): ``host`` (127.0.0.1), ``port`` (3306), ``db`` (``mysql``,
as forsun), ``user`` and ``passwd`` (defaults from the ``mysql_user`` /
``mysql_passwd`` settings), ``max_connections`` (pool size for this
target, default the ``mysql_max_connections`` setting) and ``sql``.
forsun-box adds ``connect_timeout`` and ``timeout`` (seconds; defaults from
the ``connect_timeout`` / ``run_timeout`` settings).

The statement runs in its own transaction, committed when it succeeds and
rolled back when it fails. A connection error, a time-out or an SQL error
fails the firing with the server's message in the run history. Pools
(aiomysql, one per target and event loop) hold at most ``max_connections``
connections; a firing waits at most ``mysql_wait_connection_timeout`` for
a free one, and connections older than ``mysql_idle_seconds`` are reopened.
A connection that timed out mid-statement is closed, never reused.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiomysql
import pymysql

from forsun_box.actions.base import Action, ActionFailed
from forsun_box.actions.pools import LoopPools, describe, int_param, pool_size, seconds_param

logger = logging.getLogger("forsun_box.actions")

DEFAULT_PORT = 3306
DEFAULT_DB = "mysql"  # forsun's default

#: (host, port, db, user, passwd, max_connections, connect_timeout, recycle_s)
_Target = tuple[str, int, str, str, str, int, float, float]


class _TargetPool:
    """An aiomysql pool created on first use (creating one is a coroutine)."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def pool(self) -> Any:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    host, port, db, user, passwd, size, connect_timeout, recycle = self.target
                    self._pool = await aiomysql.create_pool(
                        minsize=0,  # connect on demand: creating the pool never fails
                        maxsize=size,
                        pool_recycle=int(recycle) if recycle > 0 else -1,
                        host=host,
                        port=port,
                        db=db or None,
                        user=user,
                        password=passwd,
                        connect_timeout=connect_timeout,
                        charset="utf8mb4",
                        autocommit=False,
                    )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()


async def _close(target_pool: _TargetPool) -> None:
    await target_pool.close()


_pools: LoopPools[_Target, _TargetPool] = LoopPools(_TargetPool, _close)


class MysqlAction(Action):
    """Runs ``params["sql"]`` on the server the params name."""

    async def execute(self, *args: object, **kwargs: object) -> None:
        params = self.params
        settings = self.settings
        sql = params.get("sql", "")
        if not sql.strip():
            raise ActionFailed("missing param sql")
        host = (params.get("host") or "127.0.0.1").strip()
        port = int_param(params, "port", DEFAULT_PORT, 1, 65535)
        db = params.get("db", DEFAULT_DB)
        user = params.get("user") or settings.mysql_user
        passwd = params.get("passwd", settings.mysql_passwd)
        connect_timeout = seconds_param(params, "connect_timeout", settings.server_connect_timeout)
        timeout = seconds_param(params, "timeout", settings.server_run_timeout)
        size = pool_size(params, settings.mysql_max_connections)
        target = (host, port, db, user, passwd, size, connect_timeout, settings.mysql_idle_seconds)
        where = f"mysql {user}@{host}:{port}/{db}"
        pool = await _pools.get(target).pool()
        wait = settings.mysql_wait_connection_timeout
        try:
            conn = await asyncio.wait_for(pool.acquire(), wait if wait > 0 else None)
        except TimeoutError:
            raise ActionFailed(f"{where}: no connection within {wait:g} s") from None
        except (pymysql.Error, OSError) as e:
            raise ActionFailed(f"{where}: cannot connect: {describe(e)}") from None
        healthy = False
        try:
            try:
                await asyncio.wait_for(self._run(conn, sql), timeout)
                healthy = True
            except TimeoutError:
                raise ActionFailed(f"{where}: timed out after {timeout:g} s") from None
            except pymysql.Error as e:
                healthy = await self._rollback(conn)
                raise ActionFailed(f"{where}: {_mysql_error(e)}") from None
            except OSError as e:
                raise ActionFailed(f"{where}: {describe(e)}") from None
        finally:
            if not healthy:
                conn.close()  # state unknown (mid-statement, broken): never reuse it
            pool.release(conn)
        logger.debug("mysql %s: ok on %s", self.plan.key, where)

    @staticmethod
    async def _run(conn: Any, sql: str) -> None:
        await conn.begin()
        async with conn.cursor() as cursor:
            await cursor.execute(sql)
        await conn.commit()

    @staticmethod
    async def _rollback(conn: Any) -> bool:
        """Roll the failed transaction back; False when the connection is unusable."""
        try:
            await asyncio.wait_for(conn.rollback(), 5)
            return True
        except Exception:
            return False

    @classmethod
    async def close_shared(cls) -> None:
        await _pools.close_all()


def _mysql_error(e: pymysql.Error) -> str:
    """``(1146, "Table 'x.y' doesn't exist")`` -> ``1146 Table 'x.y' doesn't exist``."""
    if len(e.args) == 2 and isinstance(e.args[0], int):
        return f"{e.args[0]} {e.args[1]}"
    return describe(e)
