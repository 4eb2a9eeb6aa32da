"""The key-value store under the ledger, the rate bucket, the duration history, the dead
letters' reasons and the day's spend: Redis in the service, memory in the local mode.

``Store`` is what the rest of the worker may ask of it: hashes with an atomic create and a
compare-and-set (each one Lua script in Redis, so concurrent workers cannot both win),
capped lists and counters. ``redis_client`` is the one place a ``REDIS_URL`` becomes a
client (``rediss://`` verifies the server).

Failure modes: every ``RedisStore`` method raises ``StoreError`` when Redis fails (the
message names the error, never the URL or its password); the caller's message is retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel


class StoreError(RuntimeError):
    """The store failed (Redis unreachable, a timeout, an error reply). Retrying may help."""


@dataclass(frozen=True, slots=True)
class IndexChange:
    """A hash field set (``value``) or deleted (``None``) together with a record update."""

    key: str
    field: str
    value: str | None


class Store(Protocol):
    """Where records live: atomic create and compare-and-set on string fields."""

    def get(self, key: str) -> dict[str, str] | None:
        """The record's fields, or ``None``."""

    def create(self, key: str, values: Mapping[str, str], ttl_s: int) -> bool:
        """Store ``values`` unless the key exists; True when created."""

    def update(
        self,
        key: str,
        expected: Mapping[str, str],
        changes: Mapping[str, str],
        ttl_s: int | None,
        index: IndexChange | None = None,
    ) -> bool:
        """Apply ``changes`` if every ``expected`` field holds its value (a missing field
        reads ``""``); True when applied. ``ttl_s`` resets the expiry when given; ``index``
        is applied in the same atomic step, only when the update is."""

    def update_replicated(
        self,
        key: str,
        expected: Mapping[str, str],
        changes: Mapping[str, str],
        ttl_s: int | None,
        index: IndexChange | None = None,
        *,
        replicas: int,
        timeout_s: float,
    ) -> tuple[bool, int]:
        """``update``, then wait up to ``timeout_s`` until ``replicas`` replicas have
        acknowledged it (and every earlier write); ``(applied, replicas that did)``."""

    def replicas_online(self) -> int:
        """The replicas the primary streams its writes to now."""

    def put(self, key: str, values: Mapping[str, str], ttl_s: int) -> None:
        """Store ``values`` at ``key``, replacing what was there, for ``ttl_s`` seconds."""

    def push(self, key: str, value: str, keep: int, ttl_s: int) -> None:
        """Add ``value`` to the list at ``key``, keeping its newest ``keep`` values."""

    def items(self, key: str) -> list[str]:
        """The list at ``key``, newest first (empty when there is none)."""

    def add(self, key: str, amount: float, ttl_s: int) -> float:
        """Add ``amount`` to the number at ``key`` (0 when there is none); the new total."""

    def number(self, key: str) -> float:
        """The number at ``key`` (0 when there is none)."""

    def add_field(self, key: str, name: str, amount: float, ttl_s: int) -> float:
        """Add ``amount`` to field ``name`` of the record at ``key`` (0 when there is
        none), resetting its expiry; the field's new value (``get`` reads the record)."""

    def delete(self, key: str) -> None:
        """Forget the record."""

    def keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (a scan: for tools, not for each message)."""


_CREATE_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: the record, then optionally the index. ARGV: ttl, index op ('' none, 'set',
# 'del'), index field, index value, the number of expected fields, the expected pairs, the
# changed pairs.
_UPDATE_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[5])
for i = 6, 5 + 2 * n, 2 do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value == false then value = '' end
  if value ~= ARGV[i + 1] then return 0 end
end
if #ARGV > 5 + 2 * n then redis.call('HSET', KEYS[1], unpack(ARGV, 6 + 2 * n)) end
if tonumber(ARGV[1]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if ARGV[2] == 'set' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
elseif ARGV[2] == 'del' then redis.call('HDEL', KEYS[2], ARGV[3]) end
return 1
"""


def redis_client(url: str, *, sentinel_password: str | None = None, **options: Any) -> redis.Redis:
    """A Redis client for ``url``; with ``rediss://`` the server's certificate is verified.

    Every client the project makes comes from here: the store's (shared by the ledger, the
    rate limiter, the duration history and the fleet gauges) and the readiness probe's. For
    ``rediss://`` the certificate must chain to the system's trust store (OpenSSL honours
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, or the URL's ``ssl_ca_certs=<file>``) and name the
    URL's host: said here rather than left to redis-py's defaults, which skipped the host
    name check before redis-py 6. The URL's query still wins (``?ssl_cert_reqs=none`` turns
    verification off, an explicit choice).

    Redis Sentinel (``redis+sentinel://`` or ``rediss+sentinel://``, see ``SentinelUrl``):
    the client asks the Sentinels for the current primary on every new connection, and a
    connection to a primary that failed or was demoted is dropped, so after a failover the
    next command goes to the new primary without a restart.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://``, with redis-py's query options, or
            a Sentinel URL.
        sentinel_password: the Sentinels' own password (Sentinel URLs only).
        options: more keyword arguments of ``redis.Redis``.

    Raises:
        ValueError: the URL is not one redis-py can parse. Connecting happens later, on the
            first command (a refused certificate is then a ``redis.ConnectionError``).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_client(SentinelUrl.parse(url), sentinel_password, options)
    if scheme == "rediss":
        options = {**_TLS_OPTIONS, **options}
    return redis.Redis.from_url(url, **options)


#: What a ``rediss://`` client verifies, unless its URL says otherwise.
_TLS_OPTIONS: Final = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
#: The schemes of a Sentinel URL (the second with TLS to the Sentinels and the servers).
SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
#: The port of a Sentinel named without one.
SENTINEL_PORT: Final = 26379


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``, the
    form of the Redis ecosystem's Sentinel URLs (``rediss+sentinel://`` for TLS).

    Attributes:
        sentinels: the Sentinels, ``(host, port)`` (port 26379 when not given).
        service: the name the Sentinels monitor the primary under.
        db: the database number.
        username: the Redis servers' user, if any.
        password: the Redis servers' password (the Sentinels' is ``REDIS_SENTINEL_PASSWORD``).
        tls: TLS to the Sentinels and the servers.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """Parse a Sentinel URL.

        Raises:
            ValueError: not one; the message never repeats the URL (it may hold a password).
        """
        scheme, sep, rest = url.strip().partition("://")
        if not sep or scheme.lower() not in SENTINEL_SCHEMES:
            raise ValueError("a Sentinel URL starts redis+sentinel:// or rediss+sentinel://")
        authority, _, path = rest.partition("/")
        if "?" in path or "#" in path:
            raise ValueError("a Sentinel URL takes no query or fragment")
        credentials, at, hosts = authority.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = credentials.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels = tuple(_host_port(part) for part in hosts.split(",") if part)
        if not sentinels:
            raise ValueError("a Sentinel URL names at least one Sentinel host")
        parts = [part for part in path.split("/") if part]
        if not parts or len(parts) > 2:
            raise ValueError("a Sentinel URL's path is /<service name>[/<db>]")
        try:
            db = int(parts[1]) if len(parts) == 2 else 0
        except ValueError:
            raise ValueError("a Sentinel URL's database is a number") from None
        return cls(
            sentinels=sentinels,
            service=unquote(parts[0]),
            db=db,
            username=username,
            password=password,
            tls=scheme.lower() == "rediss+sentinel",
        )


def _host_port(text: str) -> tuple[str, int]:
    host, port = text, SENTINEL_PORT
    if text.startswith("["):  # [IPv6]:port
        host, _, tail = text[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:])
    elif ":" in text:
        host, _, given = text.rpartition(":")
        port = _port(given)
    if not host:
        raise ValueError("a Sentinel URL names a Sentinel without a host")
    return host, port


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError("a Sentinel URL's port is a number") from None
    if not 0 < port < 65536:
        raise ValueError("a Sentinel URL's port is out of range")
    return port


class _SentinelRedis(redis.Redis):
    """A client of the Sentinels' current primary that closes the Sentinels' connections
    with its own."""

    sentinels: Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.sentinels is not None:
            for client in self.sentinels.sentinels:
                client.close()


def _sentinel_client(
    parsed: SentinelUrl, sentinel_password: str | None, options: dict[str, Any]
) -> redis.Redis:
    tls: dict[str, Any] = {"ssl": True, **_TLS_OPTIONS} if parsed.tls else {}
    timeouts: dict[str, Any] = {
        name: options[name]
        for name in ("socket_timeout", "socket_connect_timeout")
        if name in options
    }
    sentinel = Sentinel(
        list(parsed.sentinels),
        sentinel_kwargs={"password": sentinel_password, **timeouts, **tls},
    )
    connection: dict[str, Any] = {
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
        **tls,
        **options,
    }
    client: _SentinelRedis = sentinel.master_for(
        parsed.service, redis_class=_SentinelRedis, **connection
    )
    client.sentinels = sentinel
    return client


class RedisStore:
    """Records as Redis hashes; each transition one Lua script (atomic on the server).

    Args:
        client: a Redis client created with ``decode_responses=True``.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._create = client.register_script(_CREATE_LUA)
        self._update = client.register_script(_UPDATE_LUA)

    @classmethod
    def from_url(cls, url: str, *, sentinel_password: str | None = None) -> RedisStore:
        """A store on the Redis at ``url`` (``redis://``, ``rediss://`` for TLS, or a
        Sentinel URL: see ``redis_client``)."""
        client = redis_client(
            url,
            sentinel_password=sentinel_password,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            health_check_interval=30,
            retry_on_timeout=True,
        )
        return cls(client)

    def get(self, key: str) -> dict[str, str] | None:
        values: dict[str, str] = self._guard(lambda: self.client.hgetall(key))
        return values or None

    def create(self, key: str, values: Mapping[str, str], ttl_s: int) -> bool:
        args: list[str | int] = [ttl_s, *_pairs(values)]
        return bool(self._guard(lambda: self._create(keys=[key], args=args)))

    def update(
        self,
        key: str,
        expected: Mapping[str, str],
        changes: Mapping[str, str],
        ttl_s: int | None,
        index: IndexChange | None = None,
    ) -> bool:
        keys, args = _update_call(key, expected, changes, ttl_s, index)
        return bool(self._guard(lambda: self._update(keys=keys, args=args)))

    def update_replicated(
        self,
        key: str,
        expected: Mapping[str, str],
        changes: Mapping[str, str],
        ttl_s: int | None,
        index: IndexChange | None = None,
        *,
        replicas: int,
        timeout_s: float,
    ) -> tuple[bool, int]:
        keys, args = _update_call(key, expected, changes, ttl_s, index)

        def update_wait() -> tuple[bool, int]:
            # One pipeline, one connection: WAIT counts the replicas that have this
            # connection's writes, so it must follow the update on the same one.
            with self.client.pipeline(transaction=False) as pipe:
                self._update(keys=keys, args=args, client=pipe)
                pipe.wait(replicas, max(1, round(timeout_s * 1000)))
                applied, acknowledged = pipe.execute()
            return bool(applied), int(acknowledged)

        result: tuple[bool, int] = self._guard(update_wait)
        return result

    def replicas_online(self) -> int:
        info: dict[str, Any] = self._guard(lambda: self.client.info("replication"))
        return online_replicas(info)

    def put(self, key: str, values: Mapping[str, str], ttl_s: int) -> None:
        def replace_all() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, items=_pairs(values))
                pipe.expire(key, ttl_s)
                pipe.execute()

        self._guard(replace_all)

    def push(self, key: str, value: str, keep: int, ttl_s: int) -> None:
        def push_trim() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(key, value)
                pipe.ltrim(key, 0, keep - 1)
                pipe.expire(key, ttl_s)
                pipe.execute()

        self._guard(push_trim)

    def items(self, key: str) -> list[str]:
        found: list[str] = self._guard(lambda: self.client.lrange(key, 0, -1))
        return found

    def add(self, key: str, amount: float, ttl_s: int) -> float:
        def add_expire() -> float:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.incrbyfloat(key, amount)
                pipe.expire(key, ttl_s)
                total, _ = pipe.execute()
            return float(total)

        result: float = self._guard(add_expire)
        return result

    def number(self, key: str) -> float:
        stored = self._guard(lambda: self.client.get(key))
        return float(stored) if stored else 0.0

    def add_field(self, key: str, name: str, amount: float, ttl_s: int) -> float:
        def add_expire() -> float:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hincrbyfloat(key, name, amount)
                pipe.expire(key, ttl_s)
                total, _ = pipe.execute()
            return float(total)

        result: float = self._guard(add_expire)
        return result

    def delete(self, key: str) -> None:
        self._guard(lambda: self.client.delete(key))

    def keys(self, prefix: str) -> list[str]:
        # The prefix holds no glob character (REDIS_KEY_PREFIX and ids are checked).
        found: list[str] = self._guard(
            lambda: list(self.client.scan_iter(match=f"{prefix}*", count=1000))
        )
        return found

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    @staticmethod
    def _guard(call: Any) -> Any:
        return redis_guard(call)


def redis_guard(call: Any) -> Any:
    """``call()``, with a Redis failure raised as ``StoreError`` (the one class the
    callers retry on)."""
    try:
        return call()
    except redis.RedisError as exc:
        # redis-py's messages name the host and port, never the password.
        raise StoreError(f"Redis: {type(exc).__name__}: {exc}") from None


def _update_call(
    key: str,
    expected: Mapping[str, str],
    changes: Mapping[str, str],
    ttl_s: int | None,
    index: IndexChange | None,
) -> tuple[list[str], list[str | int]]:
    """The keys and arguments of ``_UPDATE_LUA``."""
    keys = [key]
    op, index_field, index_value = "", "", ""
    if index is not None:
        keys.append(index.key)
        op = "set" if index.value is not None else "del"
        index_field, index_value = index.field, index.value or ""
    args: list[str | int] = [
        ttl_s or 0,
        op,
        index_field,
        index_value,
        len(expected),
        *_pairs(expected),
        *_pairs(changes),
    ]
    return keys, args


def online_replicas(info: Mapping[str, Any]) -> int:
    """The replicas ``INFO replication`` (as redis-py parses it) shows online: each
    ``slave<n>`` entry in state ``online``."""
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave")
        and name[5:].isdigit()
        and isinstance(value, Mapping)
        and value.get("state") == "online"
    )


def _pairs(values: Mapping[str, str]) -> list[str]:
    return [item for pair in values.items() for item in pair]


@dataclass
class MemoryStore:
    """Records in this process's memory: for the single-process local mode and tests."""

    _records: dict[str, dict[str, str]] = field(default_factory=dict)
    _lists: dict[str, list[str]] = field(default_factory=dict)
    _numbers: dict[str, float] = field(default_factory=dict)
    _expires: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str) -> dict[str, str] | None:
        with self._lock:
            found = self._live(key)
            return dict(found) if found is not None else None

    def create(self, key: str, values: Mapping[str, str], ttl_s: int) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._records[key] = dict(values)
            self._expires[key] = time.monotonic() + ttl_s
            return True

    def update(
        self,
        key: str,
        expected: Mapping[str, str],
        changes: Mapping[str, str],
        ttl_s: int | None,
        index: IndexChange | None = None,
    ) -> bool:
        with self._lock:
            found = self._live(key)
            if found is None or any(found.get(k, "") != v for k, v in expected.items()):
                return False
            found.update(changes)
            if ttl_s:
                self._expires[key] = time.monotonic() + ttl_s
            if index is not None:
                entries = self._records.setdefault(index.key, {})
                if index.value is None:
                    entries.pop(index.field, None)
                else:
                    entries[index.field] = index.value
            return True

    def update_replicated(
        self,
        key: str,
        expected: Mapping[str, str],
        changes: Mapping[str, str],
        ttl_s: int | None,
        index: IndexChange | None = None,
        *,
        replicas: int,
        timeout_s: float,
    ) -> tuple[bool, int]:
        # Memory has no replicas: only the local mode and tests use it.
        return self.update(key, expected, changes, ttl_s, index), 0

    def replicas_online(self) -> int:
        return 0

    def put(self, key: str, values: Mapping[str, str], ttl_s: int) -> None:
        with self._lock:
            self._records[key] = dict(values)
            self._expires[key] = time.monotonic() + ttl_s

    def push(self, key: str, value: str, keep: int, ttl_s: int) -> None:
        with self._lock:
            self._lists[key] = [value, *self._lists.get(key, [])][:keep]

    def items(self, key: str) -> list[str]:
        with self._lock:
            return list(self._lists.get(key, []))

    def add(self, key: str, amount: float, ttl_s: int) -> float:
        with self._lock:
            total = self._numbers.get(key, 0.0) + amount
            self._numbers[key] = total
            return total

    def number(self, key: str) -> float:
        with self._lock:
            return self._numbers.get(key, 0.0)

    def add_field(self, key: str, name: str, amount: float, ttl_s: int) -> float:
        with self._lock:
            record = self._live(key) or {}
            total = float(record.get(name, "0")) + amount
            self._records[key] = {**record, name: repr(total)}
            self._expires[key] = time.monotonic() + ttl_s
            return total

    def delete(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)
            self._expires.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            # A copy: reading an expired record forgets it.
            return [
                key for key in list(self._records) if key.startswith(prefix) and self._live(key)
            ]

    def _live(self, key: str) -> dict[str, str] | None:
        if key in self._expires and self._expires[key] <= time.monotonic():
            self._records.pop(key, None)
            self._expires.pop(key, None)
        return self._records.get(key)
