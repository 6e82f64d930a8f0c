"""The ``redis`` store: plans, runs and meta in a Redis server (forsun's second driver).

Everything lives under one namespace, ``<prefix>:<server_id>`` (the
``store_redis_prefix`` and ``store_redis_server_id`` settings; call it
``N``):

- ``N:p:<key>``: a hash per plan. ``d`` is the plan as JSON (every field);
  the fields a firing changes are kept beside it so that the engine's
  conditional updates need no JSON work on the server: ``v`` version,
  ``n`` next_time ("" when finished), ``c`` current_count, ``l``
  last_timeout, ``s`` status, ``z`` paused ("1"/"0"), ``i`` the plan's
  member in the due index ("" when not indexed).
- ``N:keys``: a sorted set of all keys, every score 0, so ``ZRANGEBYLEX``
  lists a prefix in key order and pages by keyset.
- ``N:due``: the next-time index, a sorted set, every score 0, of members
  ``<20-digit next_time><:><key>``; byte order is ``(next_time, key)``
  order (UTF-8 bytes sort as code points), so window queries and keyset
  paging are one ``ZRANGEBYLEX``.
- ``N:r:<key>``: the run history of a key, a list, newest first, trimmed
  to ``max_runs_per_key``; ``N:ro`` a sorted set of keys scored by the
  start time of their oldest kept run, so pruning visits only keys that
  have something to drop.
- ``N:meta``: a hash of meta values; ``N:owner``: the node lock (below).

A batch is applied by one Lua script, so it is atomic: no other client sees
half of it. Redis does not roll a script back if it fails half-way, so
everything that could fail is checked in Python before the script is sent.

Several forsun-box nodes and one Redis: each node fires the plans of its
own namespace only. Give every node its own ``server_id``: the nodes then
share the Redis server (and its persistence, replication, backups), not
the plans: a plan created on node 1 is stored, listed and fired by node 1.
To spread plans over nodes, send each key to one node (e.g. by a hash or
prefix of the key, as forsun's clients do with several servers). Two nodes
with the same ``server_id`` would fire every plan twice, so a node holds
``N:owner`` (a key with a 15 s expiry, renewed every 5 s) while it runs and
another node refuses to start on that namespace; a lock left by a crashed
process on the same host is taken over at once, one from another host
expires within 15 s. Redis Cluster is not supported (the script touches
keys it computes itself).

Durability is Redis' own: with ``appendonly yes`` and ``appendfsync
always`` an acknowledged plan survives a crash of the Redis server; with
the defaults (RDB snapshots) recent writes may be lost. That choice is
made in the Redis server's configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from forsun_box.config import Config
from forsun_box.errors import StartupError, StoreError
from forsun_box.plan import Plan
from forsun_box.store.base import Batch, Run, Store
from forsun_box.store.keys import prefix_upper_bound

log = logging.getLogger("forsun_box.store")

PLAN_FIELDS = [f.name for f in dataclasses.fields(Plan)]
# next_time is stored shifted so negative instants still sort as fixed-width digits
_TIME_OFFSET = 10**18
_TIME_WIDTH = 20
OWNER_TTL_MS = 15_000
OWNER_RENEW_S = 5.0
DAY_MS = 86_400_000

_APPLY = """
local base = ARGV[1]
local maxruns = tonumber(ARGV[2])
local due = base .. ':due'
local keys = base .. ':keys'
local i = 3
local n = #ARGV
local function unindex(pk)
  local old = redis.call('HGET', pk, 'i')
  if old and old ~= '' then redis.call('ZREM', due, old) end
end
while i <= n do
  local op = ARGV[i]
  if op == 'P' then
    local key = ARGV[i + 1]
    local pk = base .. ':p:' .. key
    unindex(pk)
    redis.call('DEL', pk)
    redis.call('HSET', pk, 'v', ARGV[i + 2], 'n', ARGV[i + 3], 'c', ARGV[i + 4],
      'l', ARGV[i + 5], 's', ARGV[i + 6], 'z', ARGV[i + 7], 'i', ARGV[i + 8], 'd', ARGV[i + 9])
    if ARGV[i + 8] ~= '' then redis.call('ZADD', due, 0, ARGV[i + 8]) end
    redis.call('ZADD', keys, 0, key)
    i = i + 10
  elseif op == 'D' then
    local key = ARGV[i + 1]
    local pk = base .. ':p:' .. key
    unindex(pk)
    redis.call('DEL', pk)
    redis.call('ZREM', keys, key)
    i = i + 2
  elseif op == 'A' then
    local key = ARGV[i + 1]
    local pk = base .. ':p:' .. key
    if redis.call('HGET', pk, 'v') == ARGV[i + 2] then
      unindex(pk)
      if ARGV[i + 3] == '' then
        redis.call('DEL', pk)
        redis.call('ZREM', keys, key)
      else
        local member = ''
        if redis.call('HGET', pk, 'z') ~= '1' then
          member = ARGV[i + 7]
          redis.call('ZADD', due, 0, member)
        end
        redis.call('HSET', pk, 'n', ARGV[i + 3], 'c', ARGV[i + 4], 'l', ARGV[i + 5],
          's', ARGV[i + 6], 'i', member)
      end
    end
    i = i + 8
  elseif op == 'S' then
    local pk = base .. ':p:' .. ARGV[i + 1]
    if redis.call('HGET', pk, 'v') == ARGV[i + 2] then
      redis.call('HSET', pk, 's', ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'R' then
    local key = ARGV[i + 1]
    local rk = base .. ':r:' .. key
    redis.call('LPUSH', rk, ARGV[i + 2])
    redis.call('LTRIM', rk, 0, maxruns - 1)
    local tail = redis.call('LINDEX', rk, -1)
    redis.call('ZADD', base .. ':ro', tonumber(string.match(tail, '^%[(%-?%d+)')), key)
    i = i + 3
  elseif op == 'M' then
    redis.call('HSET', base .. ':meta', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return 1
"""

# Members of a ZRANGEBYLEX over ``idx`` -> for each: key, then the plan hash fields.
_READ = """
local base = ARGV[1]
local idx = ARGV[2]
local skip = tonumber(ARGV[6])
local members
if tonumber(ARGV[5]) > 0 then
  members = redis.call('ZRANGEBYLEX', base .. ':' .. idx, ARGV[3], ARGV[4], 'LIMIT', 0, ARGV[5])
else
  members = redis.call('ZRANGEBYLEX', base .. ':' .. idx, ARGV[3], ARGV[4])
end
local out = {}
for _, m in ipairs(members) do
  local key = string.sub(m, skip + 1)
  local h = redis.call('HMGET', base .. ':p:' .. key, 'd', 'v', 'n', 'c', 'l', 's')
  if h[1] then
    out[#out + 1] = key
    for j = 1, 6 do out[#out + 1] = h[j] end
  end
end
return out
"""

_PRUNE = """
local base = ARGV[1]
local cutoff = tonumber(ARGV[2])
local ro = base .. ':ro'
local removed = 0
for _, key in ipairs(redis.call('ZRANGEBYSCORE', ro, '-inf', '(' .. ARGV[2])) do
  local rk = base .. ':r:' .. key
  while true do
    local tail = redis.call('LINDEX', rk, -1)
    if not tail then
      redis.call('ZREM', ro, key)
      break
    end
    local started = tonumber(string.match(tail, '^%[(%-?%d+)'))
    if started < cutoff then
      redis.call('RPOP', rk)
      removed = removed + 1
    else
      redis.call('ZADD', ro, started, key)
      break
    end
  end
end
return removed
"""

_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and cur ~= ARGV[3] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


#: operation arguments per script call of a large batch
APPLY_CHUNK_ARGS = 50_000
_OP_SIZES = {b"P": 10, b"D": 2, b"A": 8, b"S": 4, b"R": 3, b"M": 3}


def _chunks(args: list[Any]) -> list[list[Any]]:
    """Split a batch's operation stream at operation boundaries, in order."""
    chunks: list[list[Any]] = []
    start = i = 0
    while i < len(args):
        i += _OP_SIZES[args[i]]
        if i - start >= APPLY_CHUNK_ARGS:
            chunks.append(args[start:i])
            start = i
    if start < len(args):
        chunks.append(args[start:])
    return chunks


def _time_code(ms: int) -> bytes:
    return b"%0*d" % (_TIME_WIDTH, ms + _TIME_OFFSET)


def _due_member(p: Plan) -> bytes:
    if p.next_time is None or p.paused:
        return b""
    return _time_code(p.next_time) + b":" + p.key.encode()


def _plan_json(p: Plan) -> bytes:
    return orjson.dumps({name: getattr(p, name) for name in PLAN_FIELDS})


def _run_json(r: Run) -> bytes:
    # started_ms first: the scripts read it with a pattern, no JSON parser needed.
    # a manual run has a 9th element (1), a run a cluster node fired a 10th (its
    # node id, the 9th then 0 or 1); older records have 8 or 9
    row = [r.started_ms, r.key, r.due_ms, r.duration_ms, r.attempt, r.result, r.error, r.action]
    if r.manual or r.node_id:
        row.append(1 if r.manual else 0)
    if r.node_id:
        row.append(r.node_id)
    return orjson.dumps(row)


def _load_run(raw: bytes) -> Run:
    row = orjson.loads(raw)
    started, key, due, duration, attempt, result, error, action = row[:8]
    manual = len(row) > 8 and bool(row[8])
    node_id = row[9] if len(row) > 9 else ""
    return Run(key, due, started, duration, attempt, result, error, action, manual, node_id)


def _opt_int(raw: bytes) -> int | None:
    return int(raw) if raw else None


def _load_plan(d: bytes, v: bytes, n: bytes, c: bytes, lt: bytes, s: bytes) -> Plan:
    values = orjson.loads(d)
    known = {k: values[k] for k in PLAN_FIELDS if k in values}
    known.update(
        version=int(v),
        next_time=_opt_int(n),
        current_count=int(c),
        last_timeout=int(lt),
        status=int(s),
    )
    return Plan(**known)


def _setting(config: Config | None, name: str, default: Any) -> Any:
    return getattr(config, name, default) if config is not None else default


class RedisStore(Store):
    """The store contract on a Redis server; see the module docstring for the layout."""

    name = "redis"

    def __init__(
        self,
        config: Config | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        password: str | None = None,
        prefix: str | None = None,
        server_id: int | None = None,
        max_connections: int | None = None,
        run_retention_ms: int | None = None,
        max_runs_per_key: int | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 60.0,
    ) -> None:
        """Settings come from ``config`` (the service's Config: ``store_redis_*``,
        ``run_retention_days``, ``max_runs_per_key``); keyword arguments override."""

        def pick(value: Any, name: str, default: Any) -> Any:
            return value if value is not None else _setting(config, name, default)

        self.host = str(pick(host, "store_redis_host", "127.0.0.1"))
        self.port = int(pick(port, "store_redis_port", 6379))
        self.db = int(pick(db, "store_redis_db", 0))
        self.password = str(pick(password, "store_redis_password", ""))
        self.prefix = str(pick(prefix, "store_redis_prefix", "forsun"))
        self.server_id = int(pick(server_id, "store_redis_server_id", 0))
        self.max_connections = max(1, int(pick(max_connections, "store_redis_max_connections", 8)))
        if run_retention_ms is None:
            run_retention_ms = int(_setting(config, "run_retention_days", 7) * DAY_MS)
        self.run_retention_ms = run_retention_ms
        self.max_runs_per_key = max(1, int(pick(max_runs_per_key, "max_runs_per_key", 100)))
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.base = f"{self.prefix}:{self.server_id}"
        self._base_b = self.base.encode()
        self._client: aioredis.Redis | None = None
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._renew_task: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}

    @property
    def where(self) -> str:
        return f"redis {self.host}:{self.port}/{self.db} namespace {self.base}"

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        client = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool(
                host=self.host,
                port=self.port,
                db=self.db,
                password=self.password or None,
                max_connections=self.max_connections,
                timeout=self.timeout,
                socket_connect_timeout=self.connect_timeout,
                socket_timeout=self.timeout,
            )
        )
        try:
            await client.ping()
        except (RedisError, OSError) as e:
            await client.aclose(close_connection_pool=True)
            raise StartupError(f"cannot use the {self.where}: {e}") from None
        self._client = client
        for name, source in (
            ("apply", _APPLY),
            ("read", _READ),
            ("prune", _PRUNE),
            ("claim", _CLAIM),
            ("release", _RELEASE),
            ("renew", _RENEW),
        ):
            self._scripts[name] = client.register_script(source)
        try:
            await self._claim()
        except BaseException:
            self._client = None
            await client.aclose(close_connection_pool=True)
            raise
        self._renew_task = asyncio.get_running_loop().create_task(
            self._renew_loop(), name="forsun-box redis store lock"
        )

    async def _claim(self) -> None:
        """Take the namespace's node lock or raise StartupError naming its holder."""
        owner = f"{self.base}:owner"
        stale = await self._stale_local_holder(owner)
        try:
            holder = await self._scripts["claim"](
                keys=[owner], args=[self._token, OWNER_TTL_MS, stale]
            )
        except (RedisError, OSError) as e:
            raise StartupError(f"cannot use the {self.where}: {e}") from None
        if holder:
            name = holder.decode(errors="replace").rsplit(":", 1)[0]
            raise StartupError(
                f"the {self.where} is in use by another forsun-box node ({name}); give each "
                "node its own --driver-redis-server-id (a crashed node's lock expires within "
                f"{OWNER_TTL_MS // 1000} s)"
            )

    async def _stale_local_holder(self, owner: str) -> str:
        """The current holder's token when it is a dead process of this host, else ""."""
        try:
            raw = await self._conn().get(owner)
        except (RedisError, OSError):
            return ""
        if not raw:
            return ""
        token = raw.decode(errors="replace")
        host, _, rest = token.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
            return ""
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return token
        except OSError:
            return ""
        return ""

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(OWNER_RENEW_S)
            try:
                ok = await self._scripts["renew"](
                    keys=[f"{self.base}:owner"], args=[self._token, OWNER_TTL_MS]
                )
                if not ok:
                    log.error("lost the node lock of the %s; taking it back", self.where)
                    await self._claim()
            except StartupError as e:
                log.error("%s", e)
            except (RedisError, OSError) as e:
                log.warning("renewing the node lock of the %s failed: %s", self.where, e)

    async def close(self) -> None:
        """Release the node lock and the connections. Safe to call twice."""
        client, self._client = self._client, None
        if client is None:
            return
        task, self._renew_task = self._renew_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self._scripts["release"](keys=[f"{self.base}:owner"], args=[self._token])
        except (RedisError, OSError) as e:
            log.warning("releasing the node lock of the %s failed: %s", self.where, e)
        await client.aclose(close_connection_pool=True)

    # -- writes ------------------------------------------------------------

    async def apply(self, batch: Batch) -> None:
        args = self._batch_args(batch)
        if not args:
            return
        script = self._scripts["apply"]
        head: list[Any] = [self._base_b, self.max_runs_per_key]
        try:
            if len(args) <= APPLY_CHUNK_ARGS:
                await script(args=head + args, client=self._conn())
                return
            # One huge script call gets slower than linear on the server (a bulk
            # create of 100,000 plans); chunks in one MULTI/EXEC stay atomic.
            async with self._conn().pipeline(transaction=True) as pipe:
                for chunk in _chunks(args):
                    await script(args=head + chunk, client=pipe)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreError(f"cannot write to the {self.where}: {e}") from None

    def _batch_args(self, batch: Batch) -> list[Any]:
        """The script's operations; everything that can fail fails here, before any change."""
        args: list[Any] = []
        try:
            for key, p in batch.ops.items():
                if p is None:
                    args += [b"D", key.encode()]
                    continue
                if not isinstance(p.key, str):
                    raise TypeError(f"a plan key must be a string, not {p.key!r}")
                if p.next_time is not None and type(p.next_time) is not int:
                    raise TypeError(f"next_time of {p.key!r} is not an integer")
                args += [
                    b"P",
                    p.key.encode(),
                    int(p.version),
                    b"" if p.next_time is None else p.next_time,
                    int(p.current_count),
                    int(p.last_timeout),
                    int(p.status),
                    b"1" if p.paused else b"0",
                    _due_member(p),
                    _plan_json(p),
                ]
            for a in batch.advances:
                key_b = a.key.encode()
                member = b""
                if a.next_time is not None:
                    member = _time_code(int(a.next_time)) + b":" + key_b
                args += [
                    b"A",
                    key_b,
                    int(a.version),
                    b"" if a.next_time is None else a.next_time,
                    int(a.current_count),
                    int(a.last_timeout),
                    int(a.status),
                    member,
                ]
            for key, version, status in batch.statuses:
                args += [b"S", key.encode(), int(version), int(status)]
            for r in batch.runs:
                args += [b"R", r.key.encode(), _run_json(r)]
            for name, value in batch.meta.items():
                args += [b"M", name.encode(), value.encode()]
        except (TypeError, ValueError, AttributeError, orjson.JSONEncodeError) as e:
            raise StoreError(f"cannot store the batch: {e}") from None
        return args

    async def prune_runs(self, now_ms: int) -> int:
        cutoff = now_ms - self.run_retention_ms
        try:
            return int(
                await self._scripts["prune"](args=[self._base_b, cutoff], client=self._conn())
            )
        except (RedisError, OSError) as e:
            raise StoreError(f"cannot prune runs in the {self.where}: {e}") from None

    # -- reads -------------------------------------------------------------

    async def get(self, key: str) -> Plan | None:
        try:
            h = await self._conn().hmget(self._pk(key), "d", "v", "n", "c", "l", "s")
        except UnicodeEncodeError:
            return None
        except (RedisError, OSError) as e:
            raise StoreError(f"cannot read the {self.where}: {e}") from None
        if h[0] is None:
            return None
        return _load_plan(*h)

    async def due(self, after: tuple[int, str] | None, before_ms: int, limit: int) -> list[Plan]:
        if limit <= 0:
            return []
        try:
            low = b"-" if after is None else b"(" + _time_code(after[0]) + b":" + after[1].encode()
        except UnicodeEncodeError:
            return []
        return await self._read(b"due", low, b"(" + _time_code(before_ms), limit)

    async def firing_between(self, start_ms: int, end_ms: int, limit: int) -> list[Plan]:
        if limit <= 0:
            return []
        return await self._read(
            b"due", b"[" + _time_code(start_ms), b"(" + _time_code(end_ms), limit
        )

    def _key_range(self, prefix: str, after: str) -> tuple[bytes, bytes]:
        if after and after >= prefix:
            low = b"(" + after.encode()
        elif prefix:
            low = b"[" + prefix.encode()
        else:
            low = b"-"
        upper = prefix_upper_bound(prefix)
        high = b"(" + upper.encode() if upper is not None else b"+"
        return low, high

    async def keys(self, prefix: str = "", after: str = "", limit: int = 0) -> list[str]:
        try:
            low, high = self._key_range(prefix, after)
        except UnicodeEncodeError:
            return []
        try:
            if limit > 0:
                raw = await self._conn().zrangebylex(
                    self._k(b"keys"), low, high, start=0, num=limit
                )
            else:
                raw = await self._conn().zrangebylex(self._k(b"keys"), low, high)
        except (RedisError, OSError) as e:
            raise StoreError(f"cannot read the {self.where}: {e}") from None
        return [k.decode() for k in raw]

    async def plans(self, prefix: str = "", after: str = "", limit: int = 100) -> list[Plan]:
        """As :meth:`Store.plans`; ``limit`` 0 (or less) means all."""
        try:
            low, high = self._key_range(prefix, after)
        except UnicodeEncodeError:
            return []
        return await self._read(b"keys", low, high, limit, skip=0)

    async def _read(
        self, index: bytes, low: bytes, high: bytes, limit: int, skip: int = _TIME_WIDTH + 1
    ) -> list[Plan]:
        try:
            flat = await self._scripts["read"](
                args=[self._base_b, index, low, high, max(limit, 0), skip], client=self._conn()
            )
        except (RedisError, OSError) as e:
            raise StoreError(f"cannot read the {self.where}: {e}") from None
        rows: list[Any] = flat
        return [_load_plan(*rows[i + 1 : i + 7]) for i in range(0, len(rows), 7)]

    async def count(self) -> int:
        try:
            return int(await self._conn().zcard(self._k(b"keys")))
        except (RedisError, OSError) as e:
            raise StoreError(f"cannot read the {self.where}: {e}") from None

    async def runs(self, key: str, limit: int = 50) -> list[Run]:
        try:
            raw = await self._conn().lrange(
                self._base_b + b":r:" + key.encode(), 0, limit - 1 if limit > 0 else -1
            )
        except UnicodeEncodeError:
            return []
        except (RedisError, OSError) as e:
            raise StoreError(f"cannot read the {self.where}: {e}") from None
        return [_load_run(r) for r in raw]

    async def get_meta(self, name: str) -> str | None:
        try:
            raw = await self._conn().hget(self._k(b"meta"), name.encode())
        except UnicodeEncodeError:
            return None
        except (RedisError, OSError) as e:
            raise StoreError(f"cannot read the {self.where}: {e}") from None
        return raw.decode() if raw is not None else None

    async def size_bytes(self) -> int:
        """An estimate of the memory the namespace takes in Redis (indexes, meta and
        plans extrapolated from a sample of up to 16)."""
        client = self._conn()
        try:
            total = 0
            for name in (b"keys", b"due", b"meta", b"ro"):
                total += int(await client.memory_usage(self._k(name)) or 0)
            sample = await client.zrange(self._k(b"keys"), 0, 15)
            if sample:
                used = [int(await client.memory_usage(self._pk_b(k)) or 0) for k in sample]
                total += sum(used) * (await self.count()) // len(sample)
            return total
        except (RedisError, OSError):
            return 0

    # -- helpers -----------------------------------------------------------

    def _conn(self) -> Any:
        # Any: with bytes answers (decode_responses off) redis-py's str|bytes unions only add noise
        if self._client is None:
            raise StoreError(f"the {self.where} store is not open")
        return self._client

    def _k(self, name: bytes) -> bytes:
        return self._base_b + b":" + name

    def _pk(self, key: str) -> bytes:
        return self._pk_b(key.encode())

    def _pk_b(self, key: bytes) -> bytes:
        return self._base_b + b":p:" + key
