"""The ``mem`` store: everything in memory, snapshotted to one file.

This is forsun's driver and the reference implementation of the store
contract. State:

- ``_plans``: key -> :class:`~forsun_box.plan.Plan`. Stored plans are never
  mutated: an update stores a new object. Callers get copies.
- ``_keys``: all keys in a :class:`~sortedcontainers.SortedList`, kept up to
  date on every change (O(log n) per new or removed key; bulk loads sort
  once), so prefix listings are a bisection plus the rows returned.
- ``_due``: ``(next_time, key)`` of every unpaused plan with a next firing,
  in a SortedList, so :meth:`MemoryStore.due` and
  :meth:`MemoryStore.firing_between` cost a bisection plus the rows returned,
  whatever the number of plans.
- runs per key in bounded deques, and meta.

Persistence: when ``path`` is set the whole state is written to it every
``snapshot_interval_s`` seconds if it changed, and at close. A snapshot is
written from a copy of the references (plans are immutable) in a worker
thread, to a temporary file that is fsynced and renamed into place, then
the directory is fsynced. Format: a JSON header line
``{"format": "forsun-box-mem", "version": 1, ...}`` with the record counts,
the field names and ``taken_ms`` (the wall-clock instant the state was
copied: every change acknowledged before it is in the file), then one JSON
array per line for each plan (``["p", *values]``), run (``["r", *values]``)
and meta value (``["m", name, value]``), and a final ``["end"]`` line. A snapshot
that can't be read stops :meth:`MemoryStore.open` with a
:class:`~forsun_box.errors.StartupError`; a missing one means an empty store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson
from sortedcontainers import SortedList

from forsun_box.errors import StartupError, StoreError
from forsun_box.plan import Plan
from forsun_box.store.base import Batch, Run, Store

log = logging.getLogger("forsun_box.store")

FORMAT = "forsun-box-mem"
FORMAT_VERSION = 1
PLAN_FIELDS = [f.name for f in dataclasses.fields(Plan)]
RUN_FIELDS = [f.name for f in dataclasses.fields(Run)]
_CHUNK = 10_000  # records serialised per write


def _copy_plan(p: Plan) -> Plan:
    # Positional construction: several times faster than dataclasses.replace.
    return Plan(
        p.key,
        p.kind,
        p.action,
        dict(p.params),
        p.second,
        p.minute,
        p.hour,
        p.day,
        p.month,
        p.week,
        p.count,
        p.cron,
        p.interval_ms,
        p.anchor_ms,
        p.timezone,
        p.end_ms,
        p.next_time,
        p.current_count,
        p.last_timeout,
        p.status,
        p.created_time,
        p.paused,
        p.version,
        p.jitter_ms,
        p.misfire,
        p.grace_ms,
    )


def _copy_run(r: Run) -> Run:
    return Run(
        r.key,
        r.due_ms,
        r.started_ms,
        r.duration_ms,
        r.attempt,
        r.result,
        r.error,
        r.action,
        r.manual,
        r.node_id,
    )


def _indexed(p: Plan) -> bool:
    return p.next_time is not None and not p.paused


class MemoryStore(Store):
    """All plans in memory, optionally snapshotted to ``path``."""

    name = "mem"

    def __init__(
        self,
        path: str | None,
        snapshot_interval_s: float = 60.0,
        run_retention_ms: int = 7 * 86400 * 1000,
        max_runs_per_key: int = 100,
    ) -> None:
        """``path`` None keeps nothing across restarts."""
        self.path = os.fspath(path) if path is not None else None
        self.snapshot_interval_s = snapshot_interval_s
        self.run_retention_ms = run_retention_ms
        self.max_runs_per_key = max_runs_per_key
        self._plans: dict[str, Plan] = {}
        self._keys: SortedList = SortedList()
        self._due: SortedList = SortedList()
        self._runs: dict[str, deque[Run]] = {}
        self._meta: dict[str, str] = {}
        self._changes = 0  # bumped by every mutation
        self._saved = 0  # value of _changes captured by the last written snapshot
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._open = False

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        self._lock = asyncio.Lock()
        if self.path is not None:
            loop = asyncio.get_running_loop()
            if os.path.exists(self.path):
                plans, runs, meta = await loop.run_in_executor(None, read_snapshot, self.path)
                self._load(plans, runs, meta)
                # A snapshot we could read but never write again would lose every change
                # at the next crash without a word: refuse to start instead.
                _check_writable(os.path.dirname(os.path.abspath(self.path)))
            else:
                directory = os.path.dirname(os.path.abspath(self.path))
                try:
                    os.makedirs(directory, exist_ok=True)
                except OSError as e:
                    raise StartupError(f"cannot create the directory {directory}: {e}") from None
                # Writing the first (empty) snapshot now proves the place is writable.
                try:
                    await self._snapshot(force=True)
                except StoreError as e:
                    raise StartupError(e.message) from None
            self._task = asyncio.create_task(self._periodic(), name="forsun-box mem snapshot")
        self._open = True

    def _load(self, plans: list[Plan], runs: list[Run], meta: dict[str, str]) -> None:
        self._plans = {p.key: p for p in plans}
        self._keys = SortedList(self._plans)
        try:
            self._due = SortedList(
                (p.next_time, p.key) for p in self._plans.values() if _indexed(p)
            )
        except TypeError as e:
            raise StartupError(f"the mem store snapshot {self.path} is damaged: {e}") from None
        for r in runs:
            self._runs_of(r.key).append(r)
        self._meta = meta

    async def close(self) -> None:
        """Stop the periodic snapshots and write a last one if anything changed.

        Raises :class:`StoreError` if that last snapshot can't be written.
        Safe to call twice.
        """
        if not self._open:
            return
        self._open = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.path is not None:
            await self._snapshot()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            try:
                await self._snapshot()
            except StoreError as e:
                log.error("%s", e.message)
            except Exception:
                log.exception("snapshot of the mem store to %s failed", self.path)

    async def snapshot(self) -> None:
        """Write the snapshot now if anything changed since the last one."""
        await self._snapshot()

    async def _snapshot(self, force: bool = False) -> None:
        if self.path is None:
            return
        assert self._lock is not None
        async with self._lock:
            seq = self._changes
            if seq == self._saved and not force:
                return
            # Plans and runs are never mutated once stored, so copying the
            # references is a consistent picture the thread can serialise.
            plans = list(self._plans.values())
            runs = [r for dq in self._runs.values() for r in dq]
            meta = dict(self._meta)
            taken_ms = int(time.time() * 1000)
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(
                    None, write_snapshot, self.path, plans, runs, meta, taken_ms
                )
            except OSError as e:
                raise StoreError(f"cannot write the mem store snapshot {self.path}: {e}") from None
            self._saved = seq

    # -- writes ------------------------------------------------------------

    async def apply(self, batch: Batch) -> None:
        try:
            # Everything that can fail on bad input happens before any change,
            # so a failed batch leaves the store untouched.
            puts = {k: _copy_plan(p) for k, p in batch.ops.items() if p is not None}
            runs = [_copy_run(r) for r in batch.runs]
            # The same rules the sqlite schema enforces, so drivers agree.
            for p in puts.values():
                if not isinstance(p.key, str):
                    raise TypeError(f"a plan key must be a string, not {p.key!r}")
                if p.next_time is not None and not isinstance(p.next_time, int):
                    raise TypeError(f"next_time of {p.key!r} is not an integer")
        except (TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"cannot store the batch: {e}") from None
        self._apply_ops(batch.ops, puts)
        for a in batch.advances:
            cur = self._plans.get(a.key)
            if cur is None or cur.version != a.version:
                continue
            if a.next_time is None:
                self._remove(cur)
            else:
                self._replace(
                    cur,
                    dataclasses.replace(
                        cur,
                        next_time=a.next_time,
                        current_count=a.current_count,
                        last_timeout=a.last_timeout,
                        status=a.status,
                    ),
                )
        for key, version, status in batch.statuses:
            cur = self._plans.get(key)
            if cur is not None and cur.version == version:
                self._plans[key] = dataclasses.replace(cur, status=status)
        for r in runs:
            self._runs_of(r.key).append(r)
        self._meta.update(batch.meta)
        self._changes += 1

    def _apply_ops(self, ops: dict[str, Plan | None], puts: dict[str, Plan]) -> None:
        plans, due = self._plans, self._due
        new_keys: list[str] = []
        new_due: list[tuple[int, str]] = []
        for key, op in ops.items():
            if op is None:
                old = plans.pop(key, None)
                if old is not None:
                    self._keys.remove(key)
                    if _indexed(old):
                        due.remove((old.next_time, key))
                continue
            p = puts[key]
            old = plans.get(p.key)
            plans[p.key] = p
            if old is None:
                new_keys.append(p.key)
            elif _indexed(old):
                due.remove((old.next_time, old.key))
            if _indexed(p):
                new_due.append((p.next_time, p.key))  # type: ignore[arg-type]
        # One sorted merge for a bulk batch instead of an insertion per plan.
        if new_keys:
            self._keys.update(new_keys)
        if new_due:
            due.update(new_due)

    def _remove(self, p: Plan) -> None:
        del self._plans[p.key]
        self._keys.remove(p.key)
        if _indexed(p):
            self._due.remove((p.next_time, p.key))

    def _replace(self, old: Plan, new: Plan) -> None:
        self._plans[new.key] = new
        if _indexed(old):
            self._due.remove((old.next_time, old.key))
        if _indexed(new):
            self._due.add((new.next_time, new.key))

    def _runs_of(self, key: str) -> deque[Run]:
        dq = self._runs.get(key)
        if dq is None:
            dq = self._runs[key] = deque(maxlen=max(self.max_runs_per_key, 1))
        return dq

    async def prune_runs(self, now_ms: int) -> int:
        cutoff = now_ms - self.run_retention_ms
        removed = 0
        for key, dq in list(self._runs.items()):
            kept = [r for r in dq if r.started_ms >= cutoff]
            if len(kept) == len(dq):
                continue
            removed += len(dq) - len(kept)
            if kept:
                self._runs[key] = deque(kept, maxlen=dq.maxlen)
            else:
                del self._runs[key]
        if removed:
            self._changes += 1
        return removed

    # -- reads -------------------------------------------------------------

    async def get(self, key: str) -> Plan | None:
        p = self._plans.get(key)
        return _copy_plan(p) if p is not None else None

    async def due(self, after: tuple[int, str] | None, before_ms: int, limit: int) -> list[Plan]:
        # (before_ms, "") sorts before every real (before_ms, key): an exclusive bound.
        entries = self._due.irange(after, (before_ms, ""), inclusive=(False, False))
        return self._plans_for(entries, limit)

    async def firing_between(self, start_ms: int, end_ms: int, limit: int) -> list[Plan]:
        entries = self._due.irange((start_ms, ""), (end_ms, ""), inclusive=(True, False))
        return self._plans_for(entries, limit)

    async def count_firing_between(self, start_ms: int, end_ms: int, limit: int) -> int:
        due = self._due
        n = due.bisect_left((end_ms, "")) - due.bisect_left((start_ms, ""))
        return max(0, min(n, limit))

    def _plans_for(self, entries: Iterable[tuple[int, str]], limit: int) -> list[Plan]:
        if limit <= 0:
            return []
        plans = self._plans
        return [_copy_plan(plans[key]) for _, key in itertools.islice(entries, limit)]

    def _key_range(self, prefix: str, after: str) -> Iterable[str]:
        if after and after >= prefix:
            keys = self._keys.irange(after, None, inclusive=(False, False))
        else:
            keys = self._keys.irange(prefix or None, None)
        if prefix:
            keys = itertools.takewhile(lambda k: k.startswith(prefix), keys)
        return keys

    async def keys(self, prefix: str = "", after: str = "", limit: int = 0) -> list[str]:
        keys = self._key_range(prefix, after)
        return list(itertools.islice(keys, limit) if limit > 0 else keys)

    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        """As :meth:`Store.plans`; ``limit`` 0 (or less) means all."""
        keys = self._key_range(prefix, after)
        if limit > 0:
            keys = itertools.islice(keys, limit)
        plans = self._plans
        return [_copy_plan(plans[k]) for k in keys]

    async def count(self) -> int:
        return len(self._plans)

    async def runs(self, key: str, limit: int = 50) -> list[Run]:
        dq = self._runs.get(key)
        if not dq:
            return []
        newest = reversed(dq)
        return [_copy_run(r) for r in (itertools.islice(newest, limit) if limit > 0 else newest)]

    async def get_meta(self, name: str) -> str | None:
        return self._meta.get(name)

    async def size_bytes(self) -> int:
        if self.path is None:
            return 0
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0


# -- snapshot file ---------------------------------------------------------


def _check_writable(directory: str) -> None:
    """Raise :class:`StartupError` unless a file can be created in ``directory``."""
    probe = os.path.join(directory, f".forsun-box-probe-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise StartupError(
            f"the snapshot directory {directory} is not writable: {e.strerror}"
        ) from None


def _plan_values(p: Plan) -> tuple[Any, ...]:
    return (
        "p",
        p.key,
        p.kind,
        p.action,
        p.params,
        p.second,
        p.minute,
        p.hour,
        p.day,
        p.month,
        p.week,
        p.count,
        p.cron,
        p.interval_ms,
        p.anchor_ms,
        p.timezone,
        p.end_ms,
        p.next_time,
        p.current_count,
        p.last_timeout,
        p.status,
        p.created_time,
        p.paused,
        p.version,
        p.jitter_ms,
        p.misfire,
        p.grace_ms,
    )


def _run_values(r: Run) -> tuple[Any, ...]:
    return (
        "r",
        r.key,
        r.due_ms,
        r.started_ms,
        r.duration_ms,
        r.attempt,
        r.result,
        r.error,
        r.action,
        r.manual,
        r.node_id,
    )


def write_snapshot(
    path: str, plans: list[Plan], runs: list[Run], meta: dict[str, str], taken_ms: int
) -> None:
    """Write a snapshot atomically: temporary file, fsync, rename, fsync the directory.
    ``taken_ms``: when the state written was copied.

    Records are arrays of field values in the order the header names, which
    keeps the file compact and lets a later version map fields by name.
    """
    tmp = path + ".tmp"
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "taken_ms": taken_ms,
        "written_ms": int(time.time() * 1000),
        "plans": len(plans),
        "runs": len(runs),
        "meta": len(meta),
        "plan_fields": PLAN_FIELDS,
        "run_fields": RUN_FIELDS,
    }
    dumps, nl = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    try:
        with open(tmp, "wb") as f:
            f.write(dumps(header, option=nl))
            for i in range(0, len(plans), _CHUNK):
                chunk = plans[i : i + _CHUNK]
                f.write(b"".join([dumps(_plan_values(p), option=nl) for p in chunk]))
            for i in range(0, len(runs), _CHUNK):
                chunk_r = runs[i : i + _CHUNK]
                f.write(b"".join([dumps(_run_values(r), option=nl) for r in chunk_r]))
            for name, value in meta.items():
                f.write(dumps(("m", name, value), option=nl))
            f.write(dumps(("end",), option=nl))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name == "posix":
        # The rename is durable only once the directory entry is on disk.
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Damaged(Exception):
    pass


def read_snapshot(path: str) -> tuple[list[Plan], list[Run], dict[str, str]]:
    """Read a snapshot written by :func:`write_snapshot`.

    Raises :class:`StartupError` naming the file and what is wrong with it.
    """
    lineno = 0
    # Loading creates millions of objects and no cycles; the cyclic collector
    # would otherwise rescan the growing heap again and again.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with open(path, "rb") as f:
            header = _read_header(f.readline())
            lineno = 1
            make_plan = _maker(Plan, header.get("plan_fields"), PLAN_FIELDS)
            make_run = _maker(Run, header.get("run_fields"), RUN_FIELDS)
            plans: list[Plan] = []
            runs: list[Run] = []
            meta: dict[str, str] = {}
            loads = orjson.loads
            ended = False
            for lineno, line in enumerate(f, start=2):  # noqa: B007 - used in the message
                if ended:
                    raise _Damaged("data after the end marker")
                if not line.endswith(b"\n"):
                    raise _Damaged("the file is truncated (incomplete last line)")
                item = loads(line)
                tag = item[0] if isinstance(item, list) and item else None
                if tag == "p":
                    plans.append(make_plan(item))
                elif tag == "r":
                    runs.append(make_run(item))
                elif tag == "m" and len(item) == 3:
                    if not isinstance(item[1], str) or not isinstance(item[2], str):
                        raise _Damaged("meta name and value must be strings")
                    meta[item[1]] = item[2]
                elif tag == "end":
                    ended = True
                else:
                    raise _Damaged("not a snapshot record")
            if not ended:
                raise _Damaged("the file is truncated (no end marker)")
            lineno = 0
            counts = [len(plans), len(runs), len(meta)]
            expected = [header.get("plans"), header.get("runs"), header.get("meta")]
            if counts != expected:
                raise _Damaged(f"it holds {counts} plans/runs/meta but its header says {expected}")
            for p in plans:
                if (
                    not isinstance(p.key, str)
                    or not isinstance(p.params, dict)
                    or not (p.next_time is None or isinstance(p.next_time, int))
                ):
                    raise _Damaged(f"malformed plan {str(p.key)[:50]!r}")
    except OSError as e:
        raise StartupError(f"cannot read the mem store snapshot {path}: {e}") from None
    except (_Damaged, orjson.JSONDecodeError, TypeError, ValueError) as e:
        where = f" (line {lineno})" if lineno else ""
        raise StartupError(
            f"the mem store snapshot {path} can't be read{where}: {e}. "
            "Restore a good copy, or move the file away to start empty."
        ) from None
    finally:
        if gc_was_enabled:
            gc.enable()
    return plans, runs, meta


def _read_header(line: bytes) -> dict[str, Any]:
    if not line:
        raise _Damaged("the file is empty")
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise _Damaged("not a forsun-box mem snapshot (bad header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _Damaged("not a forsun-box mem snapshot (bad header)")
    if header.get("version") != FORMAT_VERSION:
        raise _Damaged(
            f"snapshot format version {header.get('version')!r} is not supported "
            f"(this forsun-box reads version {FORMAT_VERSION})"
        )
    return header


def _maker(cls: Any, fields: Any, current: list[str]) -> Any:
    """A function turning a record ``[tag, *values]`` into ``cls``.

    Values are positional when the file's field list is ours. Otherwise they
    are matched by name: a field the file lacks takes its default, and a field
    this code doesn't know is an error (its meaning would be lost).
    """
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise _Damaged("the header has no field list")
    n = len(fields) + 1
    if fields == current:

        def positional(item: list[Any]) -> Any:
            if len(item) != n:
                raise _Damaged(f"a {cls.__name__} record has {len(item) - 1} values, not {n - 1}")
            return cls(*item[1:])

        return positional
    unknown = set(fields) - set(current)
    if unknown:
        raise _Damaged(f"unknown {cls.__name__} fields {sorted(unknown)}")

    def by_name(item: list[Any]) -> Any:
        if len(item) != n:
            raise _Damaged(f"a {cls.__name__} record has {len(item) - 1} values, not {n - 1}")
        return cls(**dict(zip(fields, item[1:], strict=True)))

    return by_name
