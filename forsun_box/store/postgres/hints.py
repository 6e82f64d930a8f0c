"""Hints between the nodes of a cluster, over PostgreSQL's LISTEN/NOTIFY.

Two channels:

- ``forsun_box_changes``: one notification per committed batch of API
  writes (never per plan), sent in the batch's transaction, so it is
  delivered only if the batch committed. Payload: JSON ``{"n": node, "k":
  [keys], "t": earliest next firing}``; ``"k"`` is left out when the keys
  would not fit in a notification (PostgreSQL's limit is 8000 bytes).
- ``forsun_box_leases``: a node released leases (payload: its name), so the
  others take them at once instead of at their next round.

A dedicated connection listens; when it is lost it is opened again, and
the caller is told (``on_gap``) that hints may have been missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from forsun_box.cluster.base import ChangeHint
from forsun_box.plan import Plan

log = logging.getLogger("forsun_box.store")

CHANGES = "forsun_box_changes"
LEASES = "forsun_box_leases"
# below PostgreSQL's 8000-byte payload limit, with room for the envelope
MAX_PAYLOAD = 7000
RECONNECT_S = 1.0


def change_payload(node: str, ops: dict[str, Plan | None]) -> str:
    """The notification of a committed batch of puts and deletes."""
    times = [p.next_time for p in ops.values() if p is not None and p.next_time is not None]
    hint: dict[str, Any] = {"n": node, "t": min(times) if times else None}
    keys = orjson.dumps(list(ops))
    if len(keys) <= MAX_PAYLOAD:
        hint["k"] = list(ops)
    return orjson.dumps(hint).decode()


def parse_change(payload: str) -> ChangeHint | None:
    try:
        hint = orjson.loads(payload)
        keys = hint.get("k")
        return ChangeHint(
            str(hint["n"]),
            None if keys is None else tuple(str(k) for k in keys),
            None if hint.get("t") is None else int(hint["t"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("ignoring a malformed hint: %.200s", payload)
        return None


class Listener:
    """Listens on both channels on its own connection, reconnecting when it is lost."""

    def __init__(
        self,
        dsn: str,
        node: str,
        on_change: Callable[[ChangeHint], None],
        on_release: Callable[[str], None],
        on_gap: Callable[[], None],
        connect_timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.node = node
        self.on_change = on_change
        self.on_release = on_release
        self.on_gap = on_gap
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name="forsun-box postgres hints"
        )

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.dsn or None, timeout=self.connect_timeout)
        await conn.add_listener(CHANGES, self._changed)
        await conn.add_listener(LEASES, self._released)
        self._conn = conn

    def _changed(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        hint = parse_change(payload)
        if hint is not None and hint.node != self.node:
            self.on_change(hint)

    def _released(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload != self.node:
            self.on_release(payload)

    async def _watch(self) -> None:
        lost = False
        while True:
            await asyncio.sleep(RECONNECT_S)
            if self._conn is not None and not self._conn.is_closed():
                continue
            if not lost:
                log.warning("the hint connection to PostgreSQL is lost; reconnecting")
                lost = True
            try:
                await self._connect()
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                continue
            lost = False
            log.info("the hint connection to PostgreSQL is back")
            self.on_gap()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
