"""The ``thrift`` action: call ``forsun_call(key, ts, params)`` on a Thrift server.

Params (forsun's): ``host`` (required), ``port`` (5643), ``max_connections``
(connections kept to that target, at most the ``thrift_max_connections``
setting); forsun-box adds ``connect_timeout`` (5 s) and ``request_timeout``
(30 s). The target speaks forsun's IDL over the plain unframed binary
protocol.

The client is asyncio-native (it shares :mod:`forsun_box.thrift.codec` with
the server), so a firing never takes a thread: one pool per event loop and
target keeps idle connections for reuse and bounds the calls in flight to
the target by a semaphore. A connection that failed in any way is dropped,
never reused. Any error (refused, time-out, an exception answered) raises
:class:`ActionFailed`, so the dispatcher records it and the retry policy
applies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from typing import Any

from thrift.Thrift import TApplicationException

from forsun_box.actions.base import Action, ActionFailed
from forsun_box.thrift import codec
from forsun_box.thrift.forsun import Forsun

logger = logging.getLogger("forsun_box.actions")

DEFAULT_PORT = 5643
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 30.0
REPLY_LIMITS = codec.Limits(
    max_message_bytes=1 << 20, max_string_bytes=1 << 20, max_container_items=65536
)

_max_connections = 64
_seq = itertools.count(1)


def configure(max_connections: int) -> None:
    """Install the ``thrift_max_connections`` setting (the ceiling per target)."""
    global _max_connections
    _max_connections = max(1, int(max_connections))


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Connections to one target: at most ``size`` in use, idle ones reused."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host = host
        self.port = port
        self.size = size
        self._sem = asyncio.Semaphore(size)
        self._idle: list[_Conn] = []

    async def call(
        self, key: str, ts: int, params: dict[str, str], connect_timeout: float, timeout: float
    ) -> None:
        """One ``forsun_call``; raises :class:`ActionFailed` on any failure."""
        async with self._sem:
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = await self._connect(connect_timeout)
            try:
                await asyncio.wait_for(self._roundtrip(conn, key, ts, params), timeout)
            except BaseException:
                conn.close()
                raise
            self._idle.append(conn)

    async def _connect(self, timeout: float) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout
            )
        except TimeoutError:
            raise ActionFailed(
                f"thrift {self.host}:{self.port}: connect timed out after {timeout}s"
            ) from None
        except OSError as e:
            raise ActionFailed(
                f"thrift {self.host}:{self.port}: cannot connect: {e.strerror or e}"
            ) from None
        codec.set_no_delay(writer)
        return _Conn(reader, writer)

    async def _roundtrip(self, conn: _Conn, key: str, ts: int, params: dict[str, str]) -> None:
        seqid = next(_seq) & 0x7FFFFFFF
        args = Forsun.forsun_call_args(key=key, ts=ts, params=params)
        conn.writer.write(codec.encode_message("forsun_call", codec.CALL, seqid, args))
        await conn.writer.drain()
        buf = b""
        while True:
            chunk = await conn.reader.read(65536)
            if not chunk:
                raise ActionFailed(f"thrift {self.host}:{self.port}: connection closed")
            buf += chunk
            try:
                header = codec.read_header(buf, REPLY_LIMITS)
                if header.mtype == codec.EXCEPTION:
                    exc, end = codec.decode_app_exception(buf, header.body_start, REPLY_LIMITS)
                    raise ActionFailed(f"thrift {self.host}:{self.port}: {exc.message}")
                _, end = codec.decode_body(
                    buf, header.body_start, Forsun.forsun_call_result, REPLY_LIMITS
                )
            except codec.NeedMore:
                continue
            except codec.ProtocolError as e:
                raise ActionFailed(f"thrift {self.host}:{self.port}: bad reply: {e}") from None
            if header.name != "forsun_call" or header.seqid != seqid or end != len(buf):
                raise ActionFailed(f"thrift {self.host}:{self.port}: reply out of sequence")
            return

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


# loop -> {(host, port, size): pool}; weak so a finished loop's pools go away
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int, int], Pool]] = (
    weakref.WeakKeyDictionary()
)


def pool_for(host: str, port: int, size: int) -> Pool:
    """The running loop's pool for a target (one per distinct size)."""
    loop = asyncio.get_running_loop()
    pools = _pools.setdefault(loop, {})
    key = (host, port, size)
    pool = pools.get(key)
    if pool is None:
        pool = pools[key] = Pool(host, port, size)
    return pool


def close_pools() -> None:
    """Close the running loop's idle connections."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for pool in _pools.pop(loop, {}).values():
        pool.close()


def _number(params: dict[str, str], name: str, default: float, kind: type = float) -> Any:
    raw = (params.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ActionFailed(f"invalid param {name}: {raw!r}") from None
    if value <= 0:
        raise ActionFailed(f"invalid param {name}: {raw!r}")
    return value


class ThriftAction(Action):
    """Calls ``forsun_call`` on the target the params name; see the module docstring."""

    async def execute(self, *args: object, **kwargs: object) -> None:
        params = self.params
        host = (params.get("host") or "").strip()
        if not host:
            raise ActionFailed("missing param host")
        port = _number(params, "port", DEFAULT_PORT, int)
        if port > 65535:
            raise ActionFailed(f"invalid param port: {port}")
        ceiling = int(getattr(self.settings, "thrift_max_connections", 0) or _max_connections)
        size = min(_number(params, "max_connections", ceiling, int), ceiling)
        connect_timeout = _number(params, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        timeout = _number(params, "request_timeout", DEFAULT_REQUEST_TIMEOUT)
        try:
            await pool_for(host, port, size).call(
                self.plan.key, int(self.ts), dict(params), connect_timeout, timeout
            )
        except TimeoutError:
            raise ActionFailed(f"thrift {host}:{port}: no answer within {timeout}s") from None
        except (OSError, EOFError, TApplicationException) as e:
            raise ActionFailed(f"thrift {host}:{port}: {e!r}") from None

    @classmethod
    async def close_shared(cls) -> None:
        close_pools()
