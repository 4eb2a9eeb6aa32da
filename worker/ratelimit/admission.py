"""The admission line: waiting submits take their turns by tenant, in Redis or in memory.

``RedisAdmission`` keeps ``worker.ratelimit.fairness``'s line in Redis and decides in Lua,
so the whole fleet shares one line, on Redis's clock. Its keys, under
``<prefix>:admission``: the virtual clock (a hash), the active tenants by finish (a sorted
set), their weights and caps (hashes), and per tenant its waiting requests by rank (a
sorted set), when each is due back (a hash) and its recent grants (a sorted set). Every
key expires a day after its last write, so a line left behind cleans itself up. Like the
ledger, it needs one Redis primary (with replicas or Sentinel), not Redis Cluster.
``MemoryAdmission`` is the same line in this process (the local mode); ``OpenAdmission``
lets every request go (fair admission off, or no rate limiter).

A submit ``ask``s for its turn before it asks the bucket for a token, and says
``admitted`` once the bucket granted one (its tenant's finish moves on) or ``leave`` when
it ends without one (cancelled, rejected, its start deadline passed).

Failure modes: a Redis failure raises ``worker.store.StoreError`` (the message is retried).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import redis

from worker.ratelimit import fairness
from worker.ratelimit.fairness import TenantLine, Turn
from worker.store import redis_guard

#: Grants are kept this long for the rate-share caps (longer than any window).
_GRANTS_KEPT_S: Final = 3600.0


class Admission(Protocol):
    """The line of waiting submits."""

    def ask(
        self,
        tenant: str,
        request_id: str,
        *,
        rank: float,
        weight: float,
        grants_allowed: int,
        rate_per_min: float,
        window_s: float,
    ) -> Turn:
        """Join the line (if not in it) and say whether this request may ask the bucket
        for a token now (``Turn.go``), else how long to wait."""

    def admitted(self, tenant: str, request_id: str, *, weight: float) -> None:
        """The request got its token: it leaves the line and its tenant's turn moves on."""

    def leave(self, tenant: str, request_id: str) -> None:
        """The request ended without a token: it leaves the line."""

    def waiting(self) -> dict[str, int]:
        """The requests in the line, by tenant."""


class OpenAdmission:
    """No line: every request may go at once (``FAIR_ADMISSION=false``, or no bucket)."""

    def ask(self, tenant: str, request_id: str, **_: Any) -> Turn:
        return Turn(go=True, wait_s=0.0, ahead=0)

    def admitted(self, tenant: str, request_id: str, *, weight: float) -> None:
        return None

    def leave(self, tenant: str, request_id: str) -> None:
        return None

    def waiting(self) -> dict[str, int]:
        return {}


@dataclass
class MemoryAdmission:
    """The line in this process, with ``worker.ratelimit.fairness`` itself.

    Args:
        clock: the wall clock (epoch seconds).
    """

    clock: Callable[[], float] = time.time
    vclock: float = field(default=0.0, init=False)
    finish: dict[str, float] = field(default_factory=dict, init=False)
    weights: dict[str, float] = field(default_factory=dict, init=False)
    caps: dict[str, int] = field(default_factory=dict, init=False)
    lines: dict[str, dict[str, float]] = field(default_factory=dict, init=False)
    due: dict[str, dict[str, float]] = field(default_factory=dict, init=False)
    grants: dict[str, list[float]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def ask(
        self,
        tenant: str,
        request_id: str,
        *,
        rank: float,
        weight: float,
        grants_allowed: int,
        rate_per_min: float,
        window_s: float,
    ) -> Turn:
        with self._lock:
            now = self.clock()
            self.weights[tenant] = weight
            self.caps[tenant] = grants_allowed
            line = self.lines.setdefault(tenant, {})
            due = self.due.setdefault(tenant, {})
            if request_id not in line:
                line[request_id] = rank
                due[request_id] = now
            self.finish.setdefault(tenant, self.vclock)
            others: list[TenantLine] = []
            own_skipped = 0
            nearest = sorted(self.finish, key=lambda name: (self.finish[name], name))
            scanned = nearest[: fairness.MAX_TENANTS_SCANNED]
            if tenant not in scanned:
                scanned.append(tenant)
            for name in scanned:
                skipped = self._skip_absent(name, now, keep=request_id)
                if not self.lines.get(name):
                    self._forget(name)
                    continue
                if name == tenant:
                    own_skipped = skipped
                elif not self._capped(name, now, window_s):
                    count = len(self.lines[name]) - skipped
                    others.append(TenantLine(self.finish[name], self.weights[name], count))
            if self._capped(tenant, now, window_s):
                oldest = min(t for t in self.grants[tenant] if t > now - window_s)
                wait = max(fairness.MIN_WAIT_S, oldest + window_s - now)
                due[request_id] = now + wait
                return Turn(go=False, wait_s=wait, ahead=0)
            order = sorted(line, key=lambda r: (line[r], r))
            position = max(0, order.index(request_id) - own_skipped)
            tag = self.finish[tenant] + position / weight
            before = position + fairness.ahead(tag, others)
            window = fairness.go_window(rate_per_min)
            if before < window:
                due[request_id] = now
                return Turn(go=True, wait_s=0.0, ahead=before)
            wait = fairness.slot_wait(before, window, rate_per_min)
            due[request_id] = now + wait
            return Turn(go=False, wait_s=wait, ahead=before)

    def admitted(self, tenant: str, request_id: str, *, weight: float) -> None:
        with self._lock:
            now = self.clock()
            self._remove(tenant, request_id)
            head = self.finish.get(tenant, self.vclock)
            self.vclock = max(self.vclock, head)
            if self.lines.get(tenant):
                self.finish[tenant] = head + 1.0 / weight
            else:
                self._forget(tenant)
            kept = [t for t in self.grants.get(tenant, []) if t > now - _GRANTS_KEPT_S]
            self.grants[tenant] = [*kept, now]

    def leave(self, tenant: str, request_id: str) -> None:
        with self._lock:
            self._remove(tenant, request_id)
            if not self.lines.get(tenant):
                self._forget(tenant)

    def waiting(self) -> dict[str, int]:
        with self._lock:
            return {name: len(line) for name, line in self.lines.items() if line}

    def _remove(self, tenant: str, request_id: str) -> None:
        self.lines.get(tenant, {}).pop(request_id, None)
        self.due.get(tenant, {}).pop(request_id, None)

    def _forget(self, tenant: str) -> None:
        self.finish.pop(tenant, None)
        self.lines.pop(tenant, None)
        self.due.pop(tenant, None)

    def _skip_absent(self, tenant: str, now: float, *, keep: str) -> int:
        """Drop the stale requests at the head of ``tenant``'s line and count the late
        ones after them (``keep`` is the asker: present, whatever its due)."""
        line = self.lines.get(tenant, {})
        due = self.due.get(tenant, {})
        skipped = 0
        for request_id in sorted(line, key=lambda r: (line[r], r))[: fairness.LATE_SKIP_MAX]:
            if request_id == keep:
                break
            expected = due.get(request_id, now)
            if expected < now - fairness.STALE_S:
                self._remove(tenant, request_id)
            elif expected < now - fairness.LATE_S:
                skipped += 1
            else:
                break
        return skipped

    def _capped(self, tenant: str, now: float, window_s: float) -> bool:
        allowed = self.caps.get(tenant, 0)
        if allowed <= 0:
            return False
        recent = sum(1 for t in self.grants.get(tenant, []) if t > now - window_s)
        return recent >= allowed


# The Lua twin of MemoryAdmission (tests hold the two to the same scenarios).
_ASK_LUA: Final = """
local P, T, R = ARGV[1], ARGV[2], ARGV[3]
local rank, weight, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local rate, window = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = tonumber(ARGV[9])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local late_s, stale_s, skip_max = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local scan_max, min_wait, max_wait = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local lookahead = tonumber(ARGV[16])
local KEEP = 86400
local function num(x) return string.format('%.17g', x) end
local tenants, weights, caps = P .. ':tenants', P .. ':weights', P .. ':caps'
local function wq(u) return P .. ':wait:' .. u end
local function dq(u) return P .. ':due:' .. u end
local function gq(u) return P .. ':grants:' .. u end
local function capped(u)
  local allowed = tonumber(redis.call('HGET', caps, u) or '0') or 0
  if allowed <= 0 then return false end
  return redis.call('ZCOUNT', gq(u), '(' .. num(now - window), '+inf') >= allowed
end
local function forget(u)
  redis.call('ZREM', tenants, u)
  redis.call('DEL', wq(u), dq(u))
end
local function skip_absent(u)
  local skipped = 0
  local heads = redis.call('ZRANGE', wq(u), 0, skip_max - 1)
  for _, r in ipairs(heads) do
    if r == R then break end
    local expected = tonumber(redis.call('HGET', dq(u), r) or '') or now
    if expected < now - stale_s then
      redis.call('ZREM', wq(u), r)
      redis.call('HDEL', dq(u), r)
    elseif expected < now - late_s then
      skipped = skipped + 1
    else
      break
    end
  end
  return skipped
end
redis.call('HSET', weights, T, num(weight))
redis.call('HSET', caps, T, tostring(cap))
if redis.call('ZSCORE', wq(T), R) == false then
  redis.call('ZADD', wq(T), num(rank), R)
  redis.call('HSET', dq(T), R, num(now))
end
if redis.call('ZSCORE', tenants, T) == false then
  local vclock = tonumber(redis.call('HGET', P, 'vclock') or '0') or 0
  redis.call('ZADD', tenants, num(vclock), T)
end
local scanned = redis.call('ZRANGE', tenants, 0, scan_max - 1, 'WITHSCORES')
local seen_own = false
local names, finishes = {}, {}
for i = 1, #scanned, 2 do
  names[#names + 1] = scanned[i]
  finishes[#finishes + 1] = tonumber(scanned[i + 1])
  if scanned[i] == T then seen_own = true end
end
if not seen_own then
  names[#names + 1] = T
  finishes[#finishes + 1] = tonumber(redis.call('ZSCORE', tenants, T))
end
local own_skipped, own_finish = 0, 0
local others = {}
for i, u in ipairs(names) do
  local skipped = skip_absent(u)
  local count = redis.call('ZCARD', wq(u))
  if count == 0 then
    forget(u)
  elseif u == T then
    own_skipped, own_finish = skipped, finishes[i]
  elseif not capped(u) then
    local w = tonumber(redis.call('HGET', weights, u) or '1') or 1
    others[#others + 1] = {finishes[i], w, count - skipped}
  end
end
local function keep_keys()
  redis.call('EXPIRE', P, KEEP)
  for _, key in ipairs({tenants, weights, caps, wq(T), dq(T)}) do
    redis.call('EXPIRE', key, KEEP)
  end
end
if capped(T) then
  local oldest = redis.call('ZRANGEBYSCORE', gq(T), '(' .. num(now - window), '+inf',
    'WITHSCORES', 'LIMIT', 0, 1)
  local wait = math.max(min_wait, tonumber(oldest[2]) + window - now)
  redis.call('HSET', dq(T), R, num(now + wait))
  keep_keys()
  return {0, num(wait), 0}
end
local position = math.max(0, redis.call('ZRANK', wq(T), R) - own_skipped)
local tag = own_finish + position / weight
local before = position
for _, line in ipairs(others) do
  local finish, w, count = line[1], line[2], line[3]
  if count > 0 and finish < tag then
    before = before + math.min(count, math.ceil((tag - finish) * w - 1e-9))
  end
end
local window_n = math.max(1, math.floor(rate * lookahead / 60.0))
if before < window_n then
  redis.call('HSET', dq(T), R, num(now))
  keep_keys()
  return {1, '0', before}
end
local turns = math.max(0, before - window_n + 1)
local wait = math.min(max_wait, math.max(min_wait, turns * 60.0 / rate))
redis.call('HSET', dq(T), R, num(now + wait))
keep_keys()
return {0, num(wait), before}
"""

_ADMITTED_LUA: Final = """
local P, T, R = ARGV[1], ARGV[2], ARGV[3]
local weight, member, kept = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local now = tonumber(ARGV[7])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
local tenants = P .. ':tenants'
local wq, dq, gq = P .. ':wait:' .. T, P .. ':due:' .. T, P .. ':grants:' .. T
redis.call('ZREM', wq, R)
redis.call('HDEL', dq, R)
local vclock = tonumber(redis.call('HGET', P, 'vclock') or '0') or 0
local head = tonumber(redis.call('ZSCORE', tenants, T) or '') or vclock
redis.call('HSET', P, 'vclock', num(math.max(vclock, head)))
redis.call('EXPIRE', P, 86400)
if redis.call('ZCARD', wq) > 0 then
  redis.call('ZADD', tenants, num(head + 1.0 / weight), T)
else
  redis.call('ZREM', tenants, T)
  redis.call('DEL', wq, dq)
end
redis.call('ZADD', gq, num(now), member)
redis.call('ZREMRANGEBYSCORE', gq, '-inf', num(now - kept))
redis.call('EXPIRE', gq, math.ceil(kept))
return 1
"""

_LEAVE_LUA: Final = """
local P, T, R = ARGV[1], ARGV[2], ARGV[3]
local wq, dq = P .. ':wait:' .. T, P .. ':due:' .. T
redis.call('ZREM', wq, R)
redis.call('HDEL', dq, R)
if redis.call('ZCARD', wq) == 0 then
  redis.call('ZREM', P .. ':tenants', T)
  redis.call('DEL', wq, dq)
end
return 1
"""


@dataclass
class RedisAdmission:
    """The line in Redis, shared by the fleet.

    Args:
        client: a Redis client (``decode_responses=True``).
        prefix: ``REDIS_KEY_PREFIX``; the keys are under ``<prefix>:admission``.
        now: for tests and benchmarks, a clock replacing Redis's own.
    """

    client: redis.Redis
    prefix: str
    now: Callable[[], float] | None = None
    _ask: Any = field(init=False, repr=False)
    _admitted: Any = field(init=False, repr=False)
    _leave: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ask = self.client.register_script(_ASK_LUA)
        self._admitted = self.client.register_script(_ADMITTED_LUA)
        self._leave = self.client.register_script(_LEAVE_LUA)

    @property
    def key(self) -> str:
        """The line's root key."""
        return f"{self.prefix}:admission"

    def ask(
        self,
        tenant: str,
        request_id: str,
        *,
        rank: float,
        weight: float,
        grants_allowed: int,
        rate_per_min: float,
        window_s: float,
    ) -> Turn:
        args = [
            self.key,
            tenant,
            request_id,
            repr(rank),
            repr(weight),
            str(grants_allowed),
            repr(rate_per_min),
            repr(window_s),
            self._now(),
            repr(fairness.LATE_S),
            repr(fairness.STALE_S),
            str(fairness.LATE_SKIP_MAX),
            str(fairness.MAX_TENANTS_SCANNED),
            repr(fairness.MIN_WAIT_S),
            repr(fairness.MAX_WAIT_S),
            repr(fairness.LOOKAHEAD_S),
        ]
        go, wait, before = redis_guard(lambda: self._ask(keys=[], args=args))
        return Turn(go=int(go) == 1, wait_s=float(wait), ahead=int(before))

    def admitted(self, tenant: str, request_id: str, *, weight: float) -> None:
        member = f"{request_id}:{uuid.uuid4().hex[:8]}"
        args = [
            self.key,
            tenant,
            request_id,
            repr(weight),
            member,
            repr(_GRANTS_KEPT_S),
            self._now(),
        ]
        redis_guard(lambda: self._admitted(keys=[], args=args))

    def leave(self, tenant: str, request_id: str) -> None:
        redis_guard(lambda: self._leave(keys=[], args=[self.key, tenant, request_id]))

    def waiting(self) -> dict[str, int]:
        def read() -> dict[str, int]:
            names = [str(name) for name in self.client.zrange(f"{self.key}:tenants", 0, -1)]
            counts = {name: int(self.client.zcard(f"{self.key}:wait:{name}")) for name in names}
            return {name: count for name, count in counts.items() if count}

        result: dict[str, int] = redis_guard(read)
        return result

    def _now(self) -> str:
        return "" if self.now is None else repr(self.now())
