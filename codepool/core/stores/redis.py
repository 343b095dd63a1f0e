"""Redis store: the seed's keys, every multi-key step a Lua script (atomic on the server).

Keys (with the optional prefix P):
  P workspace:<user>        hash: instanceId address state lastSeen assignedAt holdUntil stoppedAt
  P unassignedPool          set of running spare instance ids
  P workspacesByLastSeen    sorted set user -> lastSeen, running workspaces only (for reap)
  P workspacesByStoppedAt   sorted set user -> stoppedAt, stopped workspaces only (retention)
  P claim:<instanceId>      user who popped this spare; expires (keeps reconcile from re-adding)
  P lease:<name>            holder of a lease (per-user lock, leader); expires
The scripts build some keys from the prefix, so this is for a single Redis (or a
primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from codepool.core.batching import GroupCommit
from codepool.core.errors import ConfigError, StoreUnavailable
from codepool.core.models import Workspace, WorkspaceState
from codepool.core.store import PingResult

# A batch of pings (group commit). KEYS[1] is the lastSeen index; ARGV[1] the prefix of
# workspace keys; ARGV[2] the pings as JSON [[user, instanceId, now], ...]: one argument
# instead of four per ping, since redis-py encodes every argument in Python. Each ping is
# checked on its own.
_PING = """
local out = {}
for i, p in ipairs(cjson.decode(ARGV[2])) do
  local key = ARGV[1] .. p[1]
  local h = redis.call('HMGET', key, 'instanceId', 'state', 'lastSeen')
  if not h[1] then out[i] = 0
  elseif h[1] ~= p[2] then out[i] = 1
  elseif h[2] ~= 'running' then out[i] = 2
  else
    if p[3] > tonumber(h[3] or '0') then
      redis.call('HSET', key, 'lastSeen', p[3])
      redis.call('ZADD', KEYS[1], p[3], p[1])
    end
    out[i] = 3
  end
end
return out
"""
_PING_RESULTS = (
    PingResult.NO_WORKSPACE,
    PingResult.STALE_INSTANCE,
    PingResult.NOT_RUNNING,
    PingResult.OK,
)

# Whole records with their indexes, many in one call: KEYS = the lastSeen and stoppedAt
# indexes; ARGV[1] the prefix of workspace keys; ARGV[2] JSON [[user, instanceId,
# address, state, lastSeen, assignedAt, holdUntil, stoppedAt], ...] (Workspace.row).
_PUT = """
for _, w in ipairs(cjson.decode(ARGV[2])) do
  local key = ARGV[1] .. w[1]
  redis.call('DEL', key)
  redis.call('HSET', key, 'instanceId', w[2], 'address', w[3], 'state', w[4],
    'lastSeen', w[5], 'assignedAt', w[6], 'holdUntil', w[7], 'stoppedAt', w[8])
  if w[4] == 'running' then redis.call('ZADD', KEYS[1], w[5], w[1])
  else redis.call('ZREM', KEYS[1], w[1]) end
  if w[4] == 'stopped' then redis.call('ZADD', KEYS[2], w[8], w[1])
  else redis.call('ZREM', KEYS[2], w[1]) end
end
return 0
"""

# Records in one call, each as the values of FIELDS (one reply to parse, not one per
# key: the walk of 100k workspaces spent most of its time in redis-py's per-reply work).
# _LOAD reads the users in ARGV[2..] under the prefix ARGV[1]; _WALK reads one SCAN step
# (cursor ARGV[1], pattern ARGV[2], COUNT ARGV[3]) and returns the next cursor, then the
# users and their values. Neither sends the keys from Python.
_FIELDS = "'instanceId', 'address', 'state', 'lastSeen', 'assignedAt', 'holdUntil', 'stoppedAt'"
_LOAD = f"""
local out = {{}}
for i = 2, #ARGV do out[i - 1] = redis.call('HMGET', ARGV[1] .. ARGV[i], {_FIELDS}) end
return out
"""
_WALK = f"""
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local out = {{step[1]}}
for _, key in ipairs(step[2]) do
  out[#out + 1] = string.sub(key, #ARGV[4] + 1)
  out[#out + 1] = redis.call('HMGET', key, {_FIELDS})
end
return out
"""

# Many compare-and-sets: KEYS[1] the lastSeen index, ARGV[1] the prefix of workspace
# keys, ARGV[2] JSON [[user, instanceId, lastSeen], ...]; each is decided on its own.
_MARK_STOPPING = """
local out = {}
for i, p in ipairs(cjson.decode(ARGV[2])) do
  local key = ARGV[1] .. p[1]
  local h = redis.call('HMGET', key, 'instanceId', 'state', 'lastSeen')
  if h[1] == p[2] and h[2] == 'running' and tonumber(h[3]) == p[3] then
    redis.call('HSET', key, 'state', 'stopping')
    redis.call('ZREM', KEYS[1], p[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

_SET_HOLD = """
local h = redis.call('HMGET', KEYS[1], 'instanceId', 'state')
if h[1] ~= ARGV[1] or h[2] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'holdUntil', ARGV[2])
return 1
"""

_DELETE = """
if redis.call('HGET', KEYS[1], 'instanceId') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""

_CLAIM_SPARE = """
local id = redis.call('SPOP', KEYS[1])
if not id then return false end
redis.call('SET', ARGV[1] .. id, ARGV[2], 'PX', ARGV[3])
return id
"""

_TAKE_SPARE = """
if redis.call('SREM', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('SET', ARGV[1] .. ARGV[2], '', 'PX', ARGV[3])
return 1
"""

_ADD_SPARES = """
local added = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    added = added + redis.call('SADD', KEYS[1], ARGV[i])
  end
end
return added
"""

_ACQUIRE_LEASES = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) out[i] = 1
  elseif v == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) out[i] = 1
  else out[i] = 0 end
end
return out
"""

_RELEASE_LEASES = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


_STATES = {s.value: s for s in WorkspaceState}  # a dict lookup: WorkspaceState(v) is slower


def _from_fields(user: str, f: list[str | None]) -> Workspace | None:
    """A record from the values of _FIELDS, in that order (None: the record is absent)."""
    if f[0] is None:
        return None
    return Workspace(
        user=user,
        instance_id=f[0],
        address=f[1] or "",
        state=_STATES[f[2] or "running"],
        last_seen_ms=int(f[3] or 0),
        assigned_at_ms=int(f[4] or 0),
        hold_until_ms=int(f[5] or 0),
        stopped_at_ms=int(f[6] or 0),
    )


class RedisStore:
    """Store on Redis (redis://, rediss:// with TLS, unix:// socket)."""

    def __init__(self, client: aioredis.Redis, *, key_prefix: str = "", batch_size: int = 500):
        self.r = client
        self.prefix = key_prefix
        self.batch_size = batch_size
        self.k_pool = f"{key_prefix}unassignedPool"
        self.k_last_seen = f"{key_prefix}workspacesByLastSeen"
        self.k_stopped_at = f"{key_prefix}workspacesByStoppedAt"
        self.k_claim = f"{key_prefix}claim:"
        self._ping = client.register_script(_PING)
        self._mark_stopping = client.register_script(_MARK_STOPPING)
        self._delete = client.register_script(_DELETE)
        self._set_hold = client.register_script(_SET_HOLD)
        self._claim_spare = client.register_script(_CLAIM_SPARE)
        self._add_spares = client.register_script(_ADD_SPARES)
        self._take_spare = client.register_script(_TAKE_SPARE)
        self._acquire_leases = client.register_script(_ACQUIRE_LEASES)
        self._release_leases = client.register_script(_RELEASE_LEASES)
        self._load_script = client.register_script(_LOAD)
        self._walk = client.register_script(_WALK)
        self._put = client.register_script(_PUT)
        self._pings = GroupCommit(self._write_pings, max_batch=batch_size)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "", batch_size: int = 500) -> RedisStore:
        try:
            client = aioredis.Redis.from_url(
                url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
            )
        except ValueError as exc:
            raise ConfigError(f"config error: store.url = {url!r}: {exc}") from None
        return cls(client, key_prefix=key_prefix, batch_size=batch_size)

    def _ws_key(self, user: str) -> str:
        return f"{self.prefix}workspace:{user}"

    async def _do(self, awaitable: Awaitable[Any]) -> Any:
        """Await one Redis step, turning connection and server errors into StoreUnavailable."""
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"store unavailable: redis: {exc}") from None

    # -- workspaces -----------------------------------------------------------------------

    async def get_workspace(self, user: str) -> Workspace | None:
        found = await self._load([user])
        return found[0] if found else None

    async def put_workspace(self, ws: Workspace) -> None:
        await self.put_workspaces([ws])

    async def put_workspaces(self, workspaces: Sequence[Workspace]) -> None:
        if not workspaces:
            return
        rows = [w.row() for w in workspaces]
        keys = [self.k_last_seen, self.k_stopped_at]
        args = [self._ws_key(""), json.dumps(rows, separators=(",", ":"))]
        await self._do(self._put(keys=keys, args=args))

    async def delete_workspace(self, user: str, instance_id: str) -> bool:
        keys = [self._ws_key(user), self.k_last_seen, self.k_stopped_at]
        return bool(await self._do(self._delete(keys=keys, args=[instance_id, user])))

    async def record_ping(self, user: str, instance_id: str, now_ms: int) -> PingResult:
        return await self._pings.submit((user, instance_id, now_ms))

    async def _write_pings(self, pings: Sequence[tuple[str, str, int]]) -> list[PingResult]:
        batch = json.dumps(pings, separators=(",", ":"))
        codes = await self._do(self._ping(keys=[self.k_last_seen], args=[self._ws_key(""), batch]))
        return [_PING_RESULTS[int(c)] for c in codes]

    async def set_hold(self, user: str, instance_id: str, hold_until_ms: int) -> bool:
        keys = [self._ws_key(user)]
        return bool(await self._do(self._set_hold(keys=keys, args=[instance_id, hold_until_ms])))

    async def mark_stopping(self, user: str, instance_id: str, last_seen_ms: int) -> bool:
        return (await self.mark_stopping_many([(user, instance_id, last_seen_ms)]))[0]

    async def mark_stopping_many(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        if not items:
            return []
        args = [self._ws_key(""), json.dumps(items, separators=(",", ":"))]
        codes = await self._do(self._mark_stopping(keys=[self.k_last_seen], args=args))
        return [bool(c) for c in codes]

    async def _load(self, users: list[str]) -> list[Workspace]:
        rows = await self._do(self._load_script(args=[self._ws_key(""), *users]))
        return [ws for u, f in zip(users, rows, strict=True) if (ws := _from_fields(u, f))]

    async def _by_score(self, key: str, before_ms: int, limit: int) -> list[Workspace]:
        users = await self._do(self.r.zrangebyscore(key, "-inf", f"({before_ms}", 0, limit))
        return await self._load(list(users)) if users else []

    async def idle_workspaces(self, seen_before_ms: int, limit: int) -> list[Workspace]:
        found = await self._by_score(self.k_last_seen, seen_before_ms, limit)
        return [w for w in found if w.state is WorkspaceState.RUNNING]

    async def expired_workspaces(self, stopped_before_ms: int, limit: int) -> list[Workspace]:
        found = await self._by_score(self.k_stopped_at, stopped_before_ms, limit)
        return [w for w in found if w.state is WorkspaceState.STOPPED]

    async def iter_workspaces(self) -> AsyncIterator[list[Workspace]]:
        prefix = self._ws_key("")
        match = _glob_escape(prefix) + "*"
        cursor = "0"
        while True:
            # SCAN's COUNT is a hint, so a batch is about batch_size, never the whole keyspace.
            step = await self._do(self._walk(args=[cursor, match, self.batch_size, prefix]))
            cursor, rest = step[0], step[1:]
            loaded = [
                ws for u, f in zip(rest[::2], rest[1::2], strict=True) if (ws := _from_fields(u, f))
            ]
            if loaded:
                yield loaded
            if cursor == "0":
                return

    # -- spares ---------------------------------------------------------------------------

    async def claim_spare(self, user: str, claim_ttl_ms: int) -> str | None:
        iid = await self._do(
            self._claim_spare(keys=[self.k_pool], args=[self.k_claim, user, claim_ttl_ms])
        )
        return cast(str | None, iid)

    async def take_spare(self, instance_id: str, claim_ttl_ms: int) -> bool:
        args: list[str | int] = [self.k_claim, instance_id, claim_ttl_ms]
        return bool(await self._do(self._take_spare(keys=[self.k_pool], args=args)))

    async def add_spares(self, instance_ids: Iterable[str]) -> int:
        ids = list(instance_ids)
        if not ids:
            return 0
        return int(await self._do(self._add_spares(keys=[self.k_pool], args=[self.k_claim, *ids])))

    async def remove_spares(self, instance_ids: Iterable[str]) -> None:
        ids = list(instance_ids)
        if ids:
            await self._do(self.r.srem(self.k_pool, *ids))

    async def spares(self) -> set[str]:
        return set(await self._do(self.r.smembers(self.k_pool)))

    # -- leases ---------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        return (await self.acquire_leases([name], holder, ttl_ms))[0]

    async def release_lease(self, name: str, holder: str) -> None:
        await self.release_leases([name], holder)

    async def acquire_leases(self, names: Sequence[str], holder: str, ttl_ms: int) -> list[bool]:
        if not names:
            return []
        keys = [f"{self.prefix}lease:{n}" for n in names]
        codes = await self._do(self._acquire_leases(keys=keys, args=[holder, ttl_ms]))
        return [bool(c) for c in codes]

    async def release_leases(self, names: Sequence[str], holder: str) -> None:
        if names:
            keys = [f"{self.prefix}lease:{n}" for n in names]
            await self._do(self._release_leases(keys=keys, args=[holder]))

    async def check(self) -> None:
        await self._do(self.r.ping())

    async def close(self) -> None:
        await self.r.aclose()
