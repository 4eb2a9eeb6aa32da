"""The fleet's shared Segmind rate: a token bucket per API key, in Redis or in memory.

``RedisRateLimiter`` keeps ``worker.ratelimit.bucket``'s state in one Redis hash and runs its
arithmetic in Lua scripts, so every worker process on every host takes its tokens from the
same bucket atomically, on Redis's clock (hosts' clocks need not agree). A sorted set holds
the last grants, from which a 429 measures how many calls its window let through.
``MemoryRateLimiter`` is the same for the single-process local mode; ``Unlimited`` takes no
tokens (``SEGMIND_RATE_LIMITER_ENABLED=false``: only 429s slow the calls down).

The callers never sleep: ``acquire`` returns the wait, and the actor re-enqueues its
message with that delay.

Failure modes: a Redis failure raises ``worker.store.StoreError`` (the message is retried,
as for any ledger failure).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import redis

from worker.ratelimit import bucket as token_bucket
from worker.ratelimit.bucket import Bucket, Limits
from worker.store import redis_guard

#: Grants kept for measuring a window: this many windows back.
_GRANT_WINDOWS_KEPT: Final = 2


class RateLimiter(Protocol):
    """Takes a token before each call to Segmind, and hears of each 429."""

    def acquire(self, *, submit: bool) -> Grant:
        """Take a token for one call (``submit``: a submit, which leaves a reserve to
        polls and never borrows); see ``Grant``."""

    def redeem(self) -> float:
        """A reserved slot has come: 0.0 to go, else the block (after a 429) to wait out,
        after which the caller asks for a new token."""

    def rate_limited(self, wait_s: float) -> None:
        """A call was answered 429, asking to wait ``wait_s`` seconds."""

    def rate_per_min(self) -> float | None:
        """The fleet's current rate (``None``: not limited)."""


@dataclass(frozen=True)
class Grant:
    """The answer to ``acquire``.

    Attributes:
        wait_s: 0.0: call now. Otherwise wait this long, then: call (``reserved``: the
            token is taken, the slot is the caller's) or ask again (not ``reserved``).
        reserved: whether the token is taken.
    """

    wait_s: float = 0.0
    reserved: bool = False

    @property
    def go(self) -> bool:
        """Whether the call may go now."""
        return self.wait_s <= 0.0


def key_digest(api_key: str) -> str:
    """A short digest naming an API key (the key cannot be recovered from it)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def bucket_key(prefix: str, digest: str) -> str:
    """The bucket's Redis key: one per API key (``key_digest``), never the key itself."""
    return f"{prefix}:ratelimit:{digest}"


# The Lua twins of worker.ratelimit.bucket.take and .rate_limited (tests hold them to it).
_COMMON_LUA: Final = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local ceiling, floor, step = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local factor, safety, probe = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local burst, reserve_share, window = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local saturated, edge = tonumber(ARGV[11]), tonumber(ARGV[12])
local function cap(rate) return math.max(1.0, rate * burst / 60.0) end
-- tostring keeps 14 digits: not enough for epoch seconds to the microsecond.
local function num(x) return string.format('%.17g', x) end
local s = redis.call('HMGET', KEYS[1], 'tokens', 'updated_at', 'rate', 'blocked_until', 'known')
local tokens, updated, rate = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
local blocked, known = tonumber(s[4]) or 0, tonumber(s[5]) or 0
if rate == nil then
  rate = ceiling
  tokens = cap(rate)
  updated = now
end
if rate > ceiling then rate = ceiling end
local function refill()
  local start = math.max(updated, blocked)
  if now <= start then
    updated = math.max(updated, now)
  else
    tokens = math.min(cap(rate), tokens + (now - start) * rate / 60.0)
    updated = now
  end
end
local function save()
  redis.call('HSET', KEYS[1], 'tokens', num(tokens), 'updated_at', num(updated),
    'rate', num(rate), 'blocked_until', num(blocked), 'known', num(known))
  redis.call('EXPIRE', KEYS[1], 86400)
end
"""

_TAKE_LUA: Final = (
    _COMMON_LUA
    + """
local submit = ARGV[13] == '1'
if now < blocked then return {0, num(blocked - now), num(rate)} end
refill()
local needed = 1.0
if submit then needed = math.min(1.0 + reserve_share * cap(rate), cap(rate)) end
if submit and tokens + 1e-9 < needed then
  save()
  return {0, num((needed - tokens) * 60.0 / rate), num(rate)}
end
local increase = step
if known > 0 and rate >= known * safety then increase = known * probe end
local before = rate
rate = math.min(ceiling, rate + increase / rate)
tokens = tokens - 1.0
save()
local slot = 0.0
if tokens < -1e-9 then slot = -tokens * 60.0 / before end
-- A grant is dated when its call goes: a window counts the calls made in it.
redis.call('ZADD', KEYS[2], num(now + slot), ARGV[14])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window * 2)
redis.call('EXPIRE', KEYS[2], math.ceil(window * 2 + slot) + 1)
if slot == 0.0 then return {1, '0', num(rate)} end
return {2, num(slot), num(rate)}
"""
)

_LIMITED_LUA: Final = (
    _COMMON_LUA
    + """
local wait = math.max(0.0, tonumber(ARGV[13]))
local was_blocked = now < blocked
refill()
local until_ = now + wait
if was_blocked then
  blocked = math.max(blocked, until_)
  save()
  return num(rate)
end
local calls = redis.call('ZCOUNT', KEYS[2], until_ - window, now) - 1
local measured = 0.0
if calls > 0 then measured = calls * 60.0 / window end
local lowered = rate * factor
if measured > 0 and measured >= rate * saturated then
  known = measured
  lowered = math.min(known * safety, rate * edge)
end
rate = math.max(floor, lowered)
tokens = 0.0
blocked = until_
save()
return num(rate)
"""
)


@dataclass
class RedisRateLimiter:
    """The bucket in Redis, shared by the fleet.

    Args:
        client: a Redis client (``decode_responses=True``).
        key: the bucket's key (``bucket_key``); the grants are at ``<key>:grants``.
        limits: the bucket's parameters (Segmind's window among them).
        now: for tests, a clock replacing Redis's own.
    """

    client: redis.Redis
    key: str
    limits: Limits
    now: Callable[[], float] | None = None
    _take: Any = field(init=False, repr=False)
    _limited: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._take = self.client.register_script(_TAKE_LUA)
        self._limited = self.client.register_script(_LIMITED_LUA)

    def acquire(self, *, submit: bool) -> Grant:
        status, wait, _ = self._run(self._take, ["1" if submit else "0", _unique()])
        if int(status) == 1:
            return Grant()
        return Grant(float(wait), reserved=int(status) == 2)

    def redeem(self) -> float:
        stored = self._guard(lambda: self.client.hget(self.key, "blocked_until"))
        now = self.now() if self.now is not None else self._server_time()
        return token_bucket.redeem(float(stored or 0.0), now)

    def _server_time(self) -> float:
        seconds, micros = self._guard(self.client.time)
        return float(seconds) + float(micros) / 1_000_000

    def rate_limited(self, wait_s: float) -> None:
        self._run(self._limited, [repr(max(0.0, wait_s))])

    def rate_per_min(self) -> float | None:
        stored = self._guard(lambda: self.client.hget(self.key, "rate"))
        rate = float(stored) if stored else self.limits.ceiling_per_min
        return min(rate, self.limits.ceiling_per_min)

    def state(self) -> Bucket | None:
        """The stored bucket (tests and tools)."""
        stored = self._guard(lambda: self.client.hgetall(self.key))
        if not stored:
            return None
        return Bucket(
            tokens=float(stored["tokens"]),
            updated_at=float(stored["updated_at"]),
            rate_per_min=float(stored["rate"]),
            blocked_until=float(stored["blocked_until"]),
            known_limit_per_min=float(stored["known"]),
        )

    def _run(self, script: Any, extra: list[str]) -> Any:
        limits = self.limits
        args = [
            "" if self.now is None else repr(self.now()),
            repr(limits.ceiling_per_min),
            repr(limits.floor_per_min),
            repr(limits.step_per_min),
            repr(limits.decrease_factor),
            repr(token_bucket.SAFETY),
            repr(token_bucket.PROBE_SHARE),
            repr(limits.burst_s),
            repr(token_bucket.POLL_RESERVE_SHARE),
            repr(limits.window_s),
            repr(token_bucket.SATURATED_SHARE),
            repr(token_bucket.EDGE_DECREASE),
            *extra,
        ]
        keys = [self.key, f"{self.key}:grants"]
        return self._guard(lambda: script(keys=keys, args=args))

    @staticmethod
    def _guard(call: Callable[[], Any]) -> Any:
        return redis_guard(call)


@dataclass
class MemoryRateLimiter:
    """The bucket in this process (the local mode), with ``worker.ratelimit.bucket`` itself.

    Args:
        limits: the bucket's parameters (Segmind's window among them).
        clock: the wall clock (epoch seconds).
    """

    limits: Limits
    clock: Callable[[], float] = time.time
    _bucket: Bucket | None = field(default=None, init=False)
    _grants: deque[float] = field(default_factory=deque, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def acquire(self, *, submit: bool) -> Grant:
        with self._lock:
            now = self.clock()
            bucket = self._bucket or token_bucket.new_bucket(self.limits, now)
            taken = token_bucket.take(bucket, now, submit=submit, limits=self.limits)
            self._bucket = taken.bucket
            if taken.wait_s == 0.0 or taken.reserved:
                # A grant is dated when its call goes: a window counts the calls made in it.
                window_s = self.limits.window_s
                self._grants.append(now + taken.wait_s)
                while self._grants and self._grants[0] < now - window_s * _GRANT_WINDOWS_KEPT:
                    self._grants.popleft()
            return Grant(taken.wait_s, taken.reserved)

    def redeem(self) -> float:
        with self._lock:
            now = self.clock()
            if self._bucket is None:
                return 0.0
            return token_bucket.redeem(self._bucket.blocked_until, now)

    def rate_limited(self, wait_s: float) -> None:
        with self._lock:
            now = self.clock()
            bucket = self._bucket or token_bucket.new_bucket(self.limits, now)
            window_s = self.limits.window_s
            start = now + max(0.0, wait_s) - window_s
            calls = sum(1 for granted in self._grants if start <= granted <= now) - 1
            self._bucket = token_bucket.rate_limited(
                bucket,
                now,
                wait_s,
                limits=self.limits,
                window_calls_per_min=calls * 60.0 / window_s if calls > 0 else 0.0,
            )

    def rate_per_min(self) -> float | None:
        with self._lock:
            if self._bucket is None:
                return self.limits.ceiling_per_min
            return min(self._bucket.rate_per_min, self.limits.ceiling_per_min)


class Unlimited:
    """No bucket: every call goes at once (only 429s slow the fleet down)."""

    def acquire(self, *, submit: bool) -> Grant:
        return Grant()

    def redeem(self) -> float:
        return 0.0

    def rate_limited(self, wait_s: float) -> None:
        return None

    def rate_per_min(self) -> float | None:
        return None


def _unique() -> str:
    # Two grants in the same microsecond (on any host) must be two members of the set.
    return uuid.uuid4().hex[:16]
