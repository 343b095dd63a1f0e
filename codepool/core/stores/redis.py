"""Redis store: the seed's keys, every multi-key step a Lua script (atomic on the server).

Keys (with the optional prefix P):
  P workspace:<user>        hash: instanceId address state lastSeen assignedAt holdUntil stoppedAt
                            startedAt
  P unassignedPool          set of running spare instance ids
  P workspacesByLastSeen    sorted set user -> lastSeen, running workspaces only (for reap)
  P workspacesByStoppedAt   sorted set user -> stoppedAt, stopped workspaces only (retention)
  P workspacesByStartedAt   sorted set user -> startedAt, running workspaces only (max age)
  P claim:<instanceId>      user who popped this spare; expires (keeps reconcile from re-adding)
  P lease:<name>            holder of a lease (per-user lock, leader); expires
  P note:<name>             a small text one router leaves the others (the leader's gauges); expires
  P accounts                set of account names
  P account:<name>          hash: admin hash created
  P session:<sid>           hash: user csrf created lastSeen expires client owner host
                            parent; expires with the session (sid: SHA-256 of the cookie)
  P userSessions:<user>     set of the user's sids (ended together: logout, passwd, remove)
  P entry:<token hash>      a one-time entry pass (JSON); expires within a minute
  P attempts:<key>          sorted set attempt -> time: login attempts per account and
                            per client, for the rate limit; expires with its window
  P startQueue              sorted set ticket -> arrival number: people waiting for a start
  P startSeq                the last arrival number given
  P startQueueSeen          sorted set ticket -> last renewal (a waiter gone is dropped)
  P startHolders            sorted set ticket -> expiry: the starts in flight
  P tokens                  set of API token ids
  P token:<id>              hash: digest name scopes user created expires createdBy
  P events                  sorted set: the event log, "<id>|<JSON row>" -> time
  P eventSeq                the last event id given (ids are 16-digit numbers, so the
                            members of one millisecond sort in the order they came)
The scripts build some keys from the prefix, so this is for a single Redis (or a
primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import asdict
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from codepool.core.batching import GroupCommit
from codepool.core.errors import ConfigError, StoreUnavailable
from codepool.core.models import (
    Account,
    EntryGrant,
    Event,
    EventKind,
    SessionRecord,
    TokenRecord,
    Workspace,
    WorkspaceState,
)
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
# address, state, lastSeen, assignedAt, holdUntil, stoppedAt, startedAt], ...]
# (Workspace.row).
_PUT = """
for _, w in ipairs(cjson.decode(ARGV[2])) do
  local key = ARGV[1] .. w[1]
  redis.call('DEL', key)
  redis.call('HSET', key, 'instanceId', w[2], 'address', w[3], 'state', w[4],
    'lastSeen', w[5], 'assignedAt', w[6], 'holdUntil', w[7], 'stoppedAt', w[8],
    'startedAt', w[9])
  if w[4] == 'running' then redis.call('ZADD', KEYS[1], w[5], w[1])
  else redis.call('ZREM', KEYS[1], w[1]) end
  if w[4] == 'stopped' then redis.call('ZADD', KEYS[2], w[8], w[1])
  else redis.call('ZREM', KEYS[2], w[1]) end
  if w[4] == 'running' and w[9] > 0 then redis.call('ZADD', KEYS[3], w[9], w[1])
  else redis.call('ZREM', KEYS[3], w[1]) end
end
return 0
"""

# Records in one call, each as the values of FIELDS (one reply to parse, not one per
# key: the walk of 100k workspaces spent most of its time in redis-py's per-reply work).
# _LOAD reads the users in ARGV[2..] under the prefix ARGV[1]; _WALK reads one SCAN step
# (cursor ARGV[1], pattern ARGV[2], COUNT ARGV[3]) and returns the next cursor, then the
# users and their values. Neither sends the keys from Python.
_FIELDS = (
    "'instanceId', 'address', 'state', 'lastSeen', 'assignedAt', 'holdUntil', 'stoppedAt', "
    "'startedAt'"
)
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
    redis.call('ZREM', KEYS[2], p[1])
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
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
"""

_CLAIM_SPARE = """
local id = redis.call('SPOP', KEYS[1])
if not id then return false end
redis.call('SET', ARGV[1] .. id, ARGV[2], 'PX', ARGV[3])
return id
"""

_KEEP_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
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


# Accounts and sessions. ARGV[1] is always the key prefix P.
_SESSION_FIELDS = (
    "'user', 'csrf', 'created', 'lastSeen', 'expires', 'client', 'owner', 'host', 'parent'"
)

# Delete every session of the user ARGV[2] (a Lua function shared by several scripts).
_END_SESSIONS = """
local function end_sessions(user)
  local set = ARGV[1] .. 'userSessions:' .. user
  local n = 0
  for _, sid in ipairs(redis.call('SMEMBERS', set)) do
    n = n + redis.call('DEL', ARGV[1] .. 'session:' .. sid)
  end
  redis.call('DEL', set)
  return n
end
"""

# ARGV: P, name, admin, hash, created, only_if_none
_ADD_ACCOUNT = """
if ARGV[6] == '1' and redis.call('SCARD', ARGV[1] .. 'accounts') > 0 then return 0 end
if redis.call('SADD', ARGV[1] .. 'accounts', ARGV[2]) == 0 then return 0 end
redis.call('HSET', ARGV[1] .. 'account:' .. ARGV[2], 'admin', ARGV[3], 'hash', ARGV[4],
  'created', ARGV[5])
return 1
"""

# ARGV: P, name, admin, hash, end_sessions
_UPDATE_ACCOUNT = (
    _END_SESSIONS
    + """
local key = ARGV[1] .. 'account:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'admin', ARGV[3], 'hash', ARGV[4])
if ARGV[5] == '1' then end_sessions(ARGV[2]) end
return 1
"""
)

# ARGV: P, name
_DELETE_ACCOUNT = (
    _END_SESSIONS
    + """
end_sessions(ARGV[2])
redis.call('SREM', ARGV[1] .. 'accounts', ARGV[2])
return redis.call('DEL', ARGV[1] .. 'account:' .. ARGV[2])
"""
)

# ARGV: P, user
_DELETE_USER_SESSIONS = _END_SESSIONS + "return end_sessions(ARGV[2])"

# ARGV: P, sid, then the fields of SessionRecord after sid, in order. The user's set of
# sessions drops the ids of sessions that have expired, so it does not grow forever.
_PUT_SESSION = """
local key = ARGV[1] .. 'session:' .. ARGV[2]
redis.call('DEL', key)
redis.call('HSET', key, 'user', ARGV[3], 'csrf', ARGV[4], 'created', ARGV[5],
  'lastSeen', ARGV[6], 'expires', ARGV[7], 'client', ARGV[8], 'owner', ARGV[9],
  'host', ARGV[10], 'parent', ARGV[11])
redis.call('PEXPIREAT', key, ARGV[7])
local set = ARGV[1] .. 'userSessions:' .. ARGV[3]
for _, sid in ipairs(redis.call('SMEMBERS', set)) do
  if redis.call('EXISTS', ARGV[1] .. 'session:' .. sid) == 0 then redis.call('SREM', set, sid) end
end
redis.call('SADD', set, ARGV[2])
return 0
"""

# ARGV: P, now, sid... -> for each sid its fields, or false. A session whose parent has
# ended (logout) has ended too.
_GET_SESSIONS = f"""
local out = {{}}
local now = tonumber(ARGV[2])
for i = 3, #ARGV do
  local f = redis.call('HMGET', ARGV[1] .. 'session:' .. ARGV[i], {_SESSION_FIELDS})
  local ok = f[1] and tonumber(f[5]) > now
  if ok and f[9] ~= '' then
    local pe = redis.call('HGET', ARGV[1] .. 'session:' .. f[9], 'expires')
    ok = pe and tonumber(pe) > now
  end
  if ok then out[i - 2] = f else out[i - 2] = false end
end
return out
"""

# ARGV: P, sid -> 1 if it existed. Its children (the same person's workspace sessions
# opened from it) go with it.
_DELETE_SESSION = """
local key = ARGV[1] .. 'session:' .. ARGV[2]
local user = redis.call('HGET', key, 'user')
if not user then return 0 end
redis.call('DEL', key)
local set = ARGV[1] .. 'userSessions:' .. user
redis.call('SREM', set, ARGV[2])
for _, sid in ipairs(redis.call('SMEMBERS', set)) do
  if redis.call('HGET', ARGV[1] .. 'session:' .. sid, 'parent') == ARGV[2] then
    redis.call('DEL', ARGV[1] .. 'session:' .. sid)
    redis.call('SREM', set, sid)
  end
end
return 1
"""

# KEYS: the attempt sets; ARGV: now, window, attempt, then each key's limit -> 0 if
# counted in every set, else the ms to wait (nothing counted).
_RESERVE_ATTEMPTS = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local wait = 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now, 1)
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window)
end
return 0
"""

_TOUCH_SESSION = """
local seen = redis.call('HGET', KEYS[1], 'lastSeen')
if seen and tonumber(seen) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'lastSeen', ARGV[1])
end
return 0
"""


MAX_CONNECTIONS = 64  # per router process
CONNECTION_WAIT_S = 10  # longest wait for a free connection before "store unavailable"


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
        started_at_ms=int(f[7] or 0),
    )


# A place among the starts in flight, fairly by arrival (Store.take_start). KEYS = the
# line, its renewals, the holders, the arrival counter; ARGV = ticket, limit, ttl. The
# server's clock. Arrivals are numbered: one who came later never goes ahead.
_TAKE_START = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ticket, limit, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl)) do
  redis.call('ZREM', KEYS[1], gone)
  redis.call('ZREM', KEYS[2], gone)
end
if redis.call('ZSCORE', KEYS[3], ticket) then
  redis.call('ZADD', KEYS[3], now + ttl, ticket)
  return 0
end
if not redis.call('ZSCORE', KEYS[1], ticket) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[4]), ticket)
end
redis.call('ZADD', KEYS[2], now, ticket)
local ahead = redis.call('ZRANK', KEYS[1], ticket)
local free = limit - redis.call('ZCARD', KEYS[3])
if ahead >= free then return ahead - free + 1 end
redis.call('ZREM', KEYS[1], ticket)
redis.call('ZREM', KEYS[2], ticket)
redis.call('ZADD', KEYS[3], now + ttl, ticket)
return 0
"""

# Events, many in one call: KEYS = the event log, the id counter; ARGV = JSON rows.
_APPEND_EVENTS = """
for _, row in ipairs(ARGV) do
  local id = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], cjson.decode(row)[1], string.format('%016d', id) .. '|' .. row)
end
"""


class RedisStore:
    """Store on Redis (redis://, rediss:// with TLS, unix:// socket)."""

    def __init__(self, client: aioredis.Redis, *, key_prefix: str = "", batch_size: int = 500):
        self.r = client
        self.prefix = key_prefix
        self.batch_size = batch_size
        self.k_pool = f"{key_prefix}unassignedPool"
        self.k_last_seen = f"{key_prefix}workspacesByLastSeen"
        self.k_stopped_at = f"{key_prefix}workspacesByStoppedAt"
        self.k_started_at = f"{key_prefix}workspacesByStartedAt"
        self.k_claim = f"{key_prefix}claim:"
        self._ping = client.register_script(_PING)
        self._mark_stopping = client.register_script(_MARK_STOPPING)
        self._delete = client.register_script(_DELETE)
        self._set_hold = client.register_script(_SET_HOLD)
        self._claim_spare = client.register_script(_CLAIM_SPARE)
        self._add_spares = client.register_script(_ADD_SPARES)
        self._take_spare = client.register_script(_TAKE_SPARE)
        self._keep_claim = client.register_script(_KEEP_CLAIM)
        self._acquire_leases = client.register_script(_ACQUIRE_LEASES)
        self._release_leases = client.register_script(_RELEASE_LEASES)
        self._load_script = client.register_script(_LOAD)
        self._walk = client.register_script(_WALK)
        self._put = client.register_script(_PUT)
        self._pings = GroupCommit(self._write_pings, max_batch=batch_size)
        self._add_account = client.register_script(_ADD_ACCOUNT)
        self._update_account = client.register_script(_UPDATE_ACCOUNT)
        self._delete_account = client.register_script(_DELETE_ACCOUNT)
        self._delete_user_sessions = client.register_script(_DELETE_USER_SESSIONS)
        self._put_session = client.register_script(_PUT_SESSION)
        self._get_sessions = client.register_script(_GET_SESSIONS)
        self._delete_session = client.register_script(_DELETE_SESSION)
        self._touch_session = client.register_script(_TOUCH_SESSION)
        self._sessions = GroupCommit(self._read_sessions, max_batch=batch_size)
        self._reserve_attempts = client.register_script(_RESERVE_ATTEMPTS)
        self._append_events = client.register_script(_APPEND_EVENTS)
        self._take_start = client.register_script(_TAKE_START)
        self.k_starts = [
            f"{key_prefix}{k}" for k in ("startQueue", "startQueueSeen", "startHolders")
        ]
        self.k_events = f"{key_prefix}events"

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "", batch_size: int = 500) -> RedisStore:
        try:
            # A burst (a hundred logins at nine o'clock) waits for one of MAX_CONNECTIONS
            # instead of failing: redis-py's default pool refuses its 101st connection.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=CONNECTION_WAIT_S,
                decode_responses=True,
                socket_timeout=5,
                socket_connect_timeout=5,
            )
            client = aioredis.Redis.from_pool(pool)
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
        keys = [self.k_last_seen, self.k_stopped_at, self.k_started_at]
        args = [self._ws_key(""), json.dumps(rows, separators=(",", ":"))]
        await self._do(self._put(keys=keys, args=args))

    async def delete_workspace(self, user: str, instance_id: str) -> bool:
        keys = [self._ws_key(user), self.k_last_seen, self.k_stopped_at, self.k_started_at]
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
        keys = [self.k_last_seen, self.k_started_at]
        codes = await self._do(self._mark_stopping(keys=keys, args=args))
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

    async def long_running(self, started_before_ms: int, limit: int) -> list[Workspace]:
        found = await self._by_score(self.k_started_at, started_before_ms, limit)
        return [w for w in found if w.state is WorkspaceState.RUNNING and w.started_at_ms]

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

    async def keep_claim(self, instance_id: str, user: str, claim_ttl_ms: int) -> bool:
        keys = [self.k_claim + instance_id]
        return bool(await self._do(self._keep_claim(keys=keys, args=[user, claim_ttl_ms])))

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

    async def put_note(self, name: str, body: str, ttl_ms: int) -> None:
        await self._do(self.r.set(f"{self.prefix}note:{name}", body, px=ttl_ms))

    async def get_note(self, name: str) -> str | None:
        body = await self._do(self.r.get(f"{self.prefix}note:{name}"))
        return None if body is None else str(body)

    # -- accounts -------------------------------------------------------------------------

    async def get_account(self, name: str) -> Account | None:
        key = f"{self.prefix}account:{name}"
        f = await self._do(self.r.hmget(key, ["admin", "hash", "created"]))
        if f[1] is None:
            return None
        return Account(name, f[0] == "1", f[1], int(f[2] or 0))

    async def list_accounts(self) -> list[Account]:
        names = sorted(await self._do(self.r.smembers(f"{self.prefix}accounts")))
        found = [await self.get_account(name) for name in names]
        return [a for a in found if a is not None]

    async def add_account(self, account: Account, *, only_if_none: bool = False) -> bool:
        a = account
        args: list[str | int] = [self.prefix, a.name, int(a.admin), a.password_hash]
        args += [a.created_ms, int(only_if_none)]
        return bool(await self._do(self._add_account(args=args)))

    async def update_account(self, account: Account, *, end_sessions: bool) -> bool:
        a = account
        args: list[str | int] = [self.prefix, a.name, int(a.admin), a.password_hash]
        args.append(int(end_sessions))
        return bool(await self._do(self._update_account(args=args)))

    async def delete_account(self, name: str) -> bool:
        return bool(await self._do(self._delete_account(args=[self.prefix, name])))

    # -- sessions and entry passes ----------------------------------------------------------

    async def put_session(self, session: SessionRecord) -> None:
        await self._do(self._put_session(args=[self.prefix, *asdict(session).values()]))

    async def get_session(self, sid: str) -> SessionRecord | None:
        return await self._sessions.submit(sid)

    async def _read_sessions(self, sids: Sequence[str]) -> list[SessionRecord | None]:
        """Session lookups that arrive together share one script call (group commit)."""
        now = int(time.time() * 1000)
        rows = await self._do(self._get_sessions(args=[self.prefix, now, *sids]))
        return [
            SessionRecord(sid, f[0], f[1], int(f[2]), int(f[3]), int(f[4]), *f[5:]) if f else None
            for sid, f in zip(sids, rows, strict=True)
        ]

    async def touch_session(self, sid: str, now_ms: int) -> None:
        keys = [f"{self.prefix}session:{sid}"]
        await self._do(self._touch_session(keys=keys, args=[now_ms]))

    async def delete_session(self, sid: str) -> bool:
        return bool(await self._do(self._delete_session(args=[self.prefix, sid])))

    async def delete_user_sessions(self, user: str) -> int:
        return int(await self._do(self._delete_user_sessions(args=[self.prefix, user])))

    async def put_entry(self, token_hash: str, grant: EntryGrant) -> None:
        key = f"{self.prefix}entry:{token_hash}"
        await self._do(self.r.set(key, json.dumps(asdict(grant)), pxat=grant.expires_ms))

    async def take_entry(self, token_hash: str) -> EntryGrant | None:
        body = await self._do(self.r.getdel(f"{self.prefix}entry:{token_hash}"))
        if body is None:
            return None
        grant = EntryGrant(**json.loads(body))
        return grant if grant.expires_ms > time.time() * 1000 else None

    # -- login attempts ---------------------------------------------------------------------

    def _attempt_keys(self, keys: Sequence[str]) -> list[str]:
        return [f"{self.prefix}attempts:{key}" for key in keys]

    async def reserve_attempts(
        self, limits: Sequence[tuple[str, int]], attempt: str, window_ms: int
    ) -> int:
        args: list[str | int] = [int(time.time() * 1000), window_ms, attempt]
        args += [limit for _, limit in limits]
        keys = self._attempt_keys([key for key, _ in limits])
        return int(await self._do(self._reserve_attempts(keys=keys, args=args)))

    async def release_attempts(self, keys: Sequence[str], attempt: str) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            for key in self._attempt_keys(keys):
                pipe.zrem(key, attempt)
            await self._do(pipe.execute())

    async def clear_attempts(self, keys: Sequence[str]) -> None:
        if keys:
            await self._do(self.r.delete(*self._attempt_keys(keys)))

    # -- the start limit ----------------------------------------------------------------------

    async def take_start(self, ticket: str, limit: int, ttl_ms: int) -> int:
        keys = [*self.k_starts, f"{self.prefix}startSeq"]
        return int(await self._do(self._take_start(keys=keys, args=[ticket, limit, ttl_ms])))

    async def give_back_start(self, ticket: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        for key in self.k_starts:
            pipe.zrem(key, ticket)
        await self._do(pipe.execute())

    # -- API tokens ---------------------------------------------------------------------------

    async def put_token(self, token: TokenRecord) -> None:
        fields: dict[str, str | int] = {
            "digest": token.digest,
            "name": token.name,
            "scopes": " ".join(token.scopes),
            "user": token.user,
            "created": token.created_ms,
            "expires": token.expires_ms,
            "createdBy": token.created_by,
        }
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(f"{self.prefix}token:{token.id}", mapping=cast(Any, fields))  # str keys
        pipe.sadd(f"{self.prefix}tokens", token.id)
        await self._do(pipe.execute())

    async def get_token(self, token_id: str) -> TokenRecord | None:
        f = await self._do(self.r.hgetall(f"{self.prefix}token:{token_id}"))
        if not f:
            return None
        return TokenRecord(
            token_id, f["digest"], f["name"], tuple(f["scopes"].split()), f["user"],
            int(f["created"]), int(f["expires"]), f["createdBy"],
        )  # fmt: skip

    async def list_tokens(self) -> list[TokenRecord]:
        ids = await self._do(self.r.smembers(f"{self.prefix}tokens"))
        found = [t for t in [await self.get_token(i) for i in sorted(ids)] if t is not None]
        return sorted(found, key=lambda t: t.created_ms)

    async def delete_token(self, token_id: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(f"{self.prefix}token:{token_id}")
        pipe.srem(f"{self.prefix}tokens", token_id)
        deleted, _ = await self._do(pipe.execute())
        return bool(deleted)

    # -- the event log ----------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [json.dumps(e.row(), separators=(",", ":")) for e in events]
        keys = [self.k_events, f"{self.prefix}eventSeq"]
        await self._do(self._append_events(keys=keys, args=rows))

    async def read_events(self, since_ms: int, until_ms: int, limit: int) -> list[Event]:
        members = await self._do(
            self.r.zrangebyscore(self.k_events, since_ms, until_ms, start=0, num=limit)
        )
        events = []
        for member in members:
            seq, _, row = member.partition("|")
            at, kind, user, actor, detail, instance_id = json.loads(row)
            events.append(
                Event(int(at), EventKind(kind), user, actor, detail, instance_id, str(int(seq)))
            )
        return events

    async def trim_events(self, before_ms: int) -> int:
        return int(await self._do(self.r.zremrangebyscore(self.k_events, "-inf", f"({before_ms}")))

    async def check(self) -> None:
        await self._do(self.r.ping())

    async def close(self) -> None:
        await self.r.aclose()
