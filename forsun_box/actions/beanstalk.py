"""The ``beanstalk`` action: put one job into a beanstalkd tube.

Params (forsun's): ``host`` (127.0.0.1), ``port`` (11300), ``name`` (the
tube, default ``default``), ``body`` (the job, required). forsun-box adds
``priority`` (1024), ``delay`` (0 s), ``ttr`` (7200 s, forsun's value),
``max_connections`` (pool size for this target, default the
``beanstalk_max_connections`` setting), ``connect_timeout`` and ``timeout``
(seconds; defaults from the ``connect_timeout`` / ``run_timeout``
settings).

The client (greenstalk) blocks, so each target gets its own small thread
pool of ``max_connections`` threads, never more: a slow beanstalkd can't
take more threads than that, and the event loop never blocks. Idle
connections are kept for reuse (switching tube with ``use`` when needed);
one that failed in any way is closed. Every socket operation is bounded by
the time-outs. A refused connection, a time-out or a server error
(``JOB_TOO_BIG``, ``DRAINING``, ...) fails the firing with that message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from concurrent.futures import ThreadPoolExecutor

import greenstalk

from forsun_box.actions.base import Action, ActionFailed
from forsun_box.actions.pools import LoopPools, describe, int_param, pool_size, seconds_param

logger = logging.getLogger("forsun_box.actions")

DEFAULT_PORT = 11300
DEFAULT_TUBE = "default"
DEFAULT_PRIORITY = 1024
DEFAULT_TTR = 7200  # forsun's
MAX_U32 = 2**32 - 1

#: (host, port, max_connections, connect_timeout, run_timeout)
_Target = tuple[str, int, int, float, float]


class _Conn:
    """A greenstalk client and the tube it currently uses."""

    __slots__ = ("client", "tube")

    def __init__(self, client: greenstalk.Client[bytes], tube: str) -> None:
        self.client = client
        self.tube = tube

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.client.close()


class BeanstalkPool:
    """Connections to one beanstalkd, used from a bounded thread pool."""

    def __init__(self, target: _Target) -> None:
        self.host, self.port, self.size, self.connect_timeout, self.run_timeout = target
        self._executor = ThreadPoolExecutor(
            max_workers=self.size, thread_name_prefix="forsun-box-beanstalk"
        )
        self._sem = asyncio.Semaphore(self.size)
        self._idle: list[_Conn] = []

    async def put(self, tube: str, body: bytes, priority: int, delay: int, ttr: int) -> int:
        """Put one job; returns its id. Raises the client's exceptions."""
        async with self._sem:
            idle = self._idle.pop() if self._idle else None
            loop = asyncio.get_running_loop()
            # On failure _put_blocking has closed the connection: nothing goes back.
            conn, job_id = await loop.run_in_executor(
                self._executor, self._put_blocking, idle, tube, body, priority, delay, ttr
            )
            self._idle.append(conn)
            return job_id

    def _connect(self, tube: str) -> _Conn:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.settimeout(self.run_timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            return _Conn(greenstalk.Client(sock, encoding=None, use=tube), tube)
        except BaseException:
            sock.close()
            raise

    def _put_blocking(
        self, conn: _Conn | None, tube: str, body: bytes, priority: int, delay: int, ttr: int
    ) -> tuple[_Conn, int]:
        """Runs in the pool's thread: connect or reuse, ``use`` the tube, ``put``."""
        if conn is None:
            conn = self._connect(tube)
        try:
            if conn.tube != tube:
                conn.client.use(tube)
                conn.tube = tube
            job_id = conn.client.put(body, priority=priority, delay=delay, ttr=ttr)
        except BaseException:
            conn.close()
            raise
        return conn, job_id

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _close(pool: BeanstalkPool) -> None:
    await pool.close()


_pools: LoopPools[_Target, BeanstalkPool] = LoopPools(BeanstalkPool, _close)


class BeanstalkAction(Action):
    """Puts ``params["body"]`` into tube ``params["name"]``."""

    async def execute(self, *args: object, **kwargs: object) -> None:
        params = self.params
        settings = self.settings
        body = params.get("body", "")
        if not body:
            raise ActionFailed("missing param body")
        host = (params.get("host") or "127.0.0.1").strip()
        port = int_param(params, "port", DEFAULT_PORT, 1, 65535)
        tube = (params.get("name") or DEFAULT_TUBE).strip()
        if not tube.isascii() or len(tube) > 200:
            raise ActionFailed(f"invalid param name: {tube!r} (a tube name is ASCII, <= 200)")
        priority = int_param(params, "priority", DEFAULT_PRIORITY, 0, MAX_U32)
        delay = int_param(params, "delay", 0, 0, MAX_U32)
        ttr = int_param(params, "ttr", DEFAULT_TTR, 1, MAX_U32)
        connect_timeout = seconds_param(params, "connect_timeout", settings.server_connect_timeout)
        timeout = seconds_param(params, "timeout", settings.server_run_timeout)
        size = pool_size(params, settings.beanstalk_max_connections)
        pool = _pools.get((host, port, size, connect_timeout, timeout))
        where = f"beanstalk {host}:{port}/{tube}"
        try:
            job_id = await pool.put(tube, body.encode("utf-8"), priority, delay, ttr)
        except TimeoutError:
            raise ActionFailed(f"{where}: timed out") from None
        except (greenstalk.Error, OSError, ValueError) as e:
            raise ActionFailed(f"{where}: {describe(e)}") from None
        logger.debug("beanstalk %s: job %d put on %s", self.plan.key, job_id, where)

    @classmethod
    async def close_shared(cls) -> None:
        await _pools.close_all()
