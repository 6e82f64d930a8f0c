"""The ``redis`` action: run one or more Redis commands.

Params (forsun's): ``host`` (127.0.0.1), ``port`` (6379), ``selected_db``
(0), ``password``, ``max_connections`` (pool size for this target, default
the ``redis_max_connections`` setting) and ``command``: one or more
commands separated by ``;``, each written like a shell line, so a value
with spaces or ``;`` is quoted: ``SET k 'a b';LPUSH q '{"id": 1}'``.
forsun-box adds ``connect_timeout`` and ``timeout`` (seconds; defaults
from the ``connect_timeout`` / ``run_timeout`` settings).

The commands of one firing go in one pipeline (one round trip, not a
transaction). The firing fails, with the command and Redis' message in the
run history, when the connection fails, the time limit passes, or any
command answers an error. One :class:`redis.asyncio.BlockingConnectionPool`
per target and event loop: at most ``max_connections`` connections, a
firing waits (up to the connect time-out) for a free one.
"""

from __future__ import annotations

import asyncio
import logging
import shlex

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from forsun_box.actions.base import Action, ActionFailed
from forsun_box.actions.pools import LoopPools, describe, int_param, pool_size, seconds_param

logger = logging.getLogger("forsun_box.actions")

DEFAULT_PORT = 6379

#: (host, port, db, password, max_connections, connect_timeout)
_Target = tuple[str, int, int, str, int, float]


def split_commands(text: str) -> list[list[str]]:
    """``command`` param -> list of commands, each a list of words.

    Commands are separated by ``;``; words follow shell quoting rules
    (``'...'``, ``"..."``, backslash). Raises :class:`ActionFailed` on
    unbalanced quotes.
    """
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";")
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = []
    current: list[str] = []
    try:
        for token in lexer:
            if token and set(token) == {";"}:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    except ValueError as e:
        raise ActionFailed(f"invalid param command: {e}") from None
    if current:
        commands.append(current)
    return commands


def _make_pool(target: _Target) -> aioredis.BlockingConnectionPool:
    host, port, db, password, size, connect_timeout = target
    return aioredis.BlockingConnectionPool(
        host=host,
        port=port,
        db=db,
        password=password or None,
        max_connections=size,
        timeout=connect_timeout,  # wait for a free connection
        socket_connect_timeout=connect_timeout,
        # Retries belong to the dispatcher's policy, where they are counted and recorded.
        retry=Retry(NoBackoff(), 0),
    )


async def _close_pool(pool: aioredis.BlockingConnectionPool) -> None:
    await pool.disconnect()


_pools: LoopPools[_Target, aioredis.BlockingConnectionPool] = LoopPools(_make_pool, _close_pool)


class RedisAction(Action):
    """Sends ``params["command"]`` to the Redis server the params name."""

    async def execute(self, *args: object, **kwargs: object) -> None:
        params = self.params
        settings = self.settings
        commands = split_commands(params.get("command", ""))
        if not commands:
            raise ActionFailed("missing param command")
        host = (params.get("host") or "127.0.0.1").strip()
        port = int_param(params, "port", DEFAULT_PORT, 1, 65535)
        db = int_param(params, "selected_db", 0, 0)
        connect_timeout = seconds_param(params, "connect_timeout", settings.server_connect_timeout)
        timeout = seconds_param(params, "timeout", settings.server_run_timeout)
        size = pool_size(params, settings.redis_max_connections)
        target = (host, port, db, params.get("password", ""), size, connect_timeout)
        where = f"redis {host}:{port}/{db}"
        client = aioredis.Redis(connection_pool=_pools.get(target))
        try:
            async with client.pipeline(transaction=False) as pipe:
                for words in commands:
                    pipe.execute_command(*words)
                replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), timeout)
        except TimeoutError:
            raise ActionFailed(f"{where}: timed out after {timeout:g} s") from None
        except (RedisError, OSError) as e:
            raise ActionFailed(f"{where}: {describe(e)}") from None
        for words, reply in zip(commands, replies, strict=False):
            if isinstance(reply, Exception):
                raise ActionFailed(f"{where}: {words[0]} failed: {reply}")
        logger.debug("redis %s: %d command(s) ok on %s", self.plan.key, len(commands), where)

    @classmethod
    async def close_shared(cls) -> None:
        await _pools.close_all()
