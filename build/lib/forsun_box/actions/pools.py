"""Helpers shared by the actions that talk to servers (redis, mysql, beanstalk).

- :class:`LoopPools`: one connection pool per event loop and target. Client
  libraries bind their connections to the loop that opened them, so a pool
  is never shared across loops (tests run one loop after another).
- Param parsing that turns a bad value into a clean :class:`ActionFailed`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from forsun_box.actions.base import ActionFailed

logger = logging.getLogger("forsun_box.actions")

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")

#: upper bound on a per-target pool size taken from a plan's params
MAX_POOL_SIZE = 1024


class LoopPools(Generic[K, P]):
    """Pools keyed by target, one set per running event loop."""

    def __init__(self, make: Callable[[K], P], close: Callable[[P], Awaitable[None]]) -> None:
        self._make = make
        self._close = close
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[K, P]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, key: K) -> P:
        """The running loop's pool for ``key``, created on first use."""
        pools = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = self._make(key)
        return pool

    def count(self) -> int:
        """Pools open on the running loop."""
        try:
            return len(self._by_loop.get(asyncio.get_running_loop(), {}))
        except RuntimeError:
            return 0

    async def close_all(self) -> None:
        """Close every pool of the running loop (errors are logged, not raised)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pools = self._by_loop.pop(loop, {})
        for key, pool in pools.items():
            try:
                await self._close(pool)
            except Exception as e:  # closing must not stop the shutdown
                logger.warning("closing the pool of %s failed: %s", key, e)


def int_param(
    params: dict[str, str], name: str, default: int, low: int = 0, high: int | None = None
) -> int:
    """Integer param ``name`` (``default`` when absent or blank), within ``[low, high]``."""
    raw = params.get(name, "")
    if not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ActionFailed(f"invalid param {name}: {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}-{high}" if high is not None else f">= {low}"
        raise ActionFailed(f"invalid param {name}: {raw!r} (expected {bound})")
    return value


def seconds_param(params: dict[str, str], name: str, default: float) -> float:
    """A positive number of seconds; ``default`` when absent or blank."""
    raw = params.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ActionFailed(f"invalid param {name}: {raw!r}") from None
    if not value > 0:
        raise ActionFailed(f"invalid param {name}: {raw!r} (expected seconds > 0)")
    return value


def pool_size(params: dict[str, str], default: int) -> int:
    """The ``max_connections`` param, else ``default``; 1 to :data:`MAX_POOL_SIZE`."""
    return int_param(params, "max_connections", max(1, default), 1, MAX_POOL_SIZE)


def describe(e: BaseException) -> str:
    """A one-line description of a client library's exception."""
    text = str(e).strip().replace("\n", " ")
    if isinstance(e, TimeoutError | asyncio.TimeoutError) and not text:
        return "timed out"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
