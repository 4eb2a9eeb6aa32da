"""The shared bucket: the Lua scripts in the real Redis against ``worker.ratelimit.bucket``'s
pure functions (hypothesis drives both with the same operations), the in-memory twin, and
the fleet sharing one bucket."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.ratelimit import bucket as token_bucket
from worker.ratelimit.bucket import Limits
from worker.ratelimit.limiter import (
    MemoryRateLimiter,
    RedisRateLimiter,
    Unlimited,
    bucket_key,
    key_digest,
)

T0 = 1_800_000_000.0
LIMITS = Limits.for_ceiling(60.0)

# (seconds later, "poll" | "submit" | 429 wait)
Operation = tuple[float, str | float]
operations = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5, allow_nan=False),
        st.one_of(st.sampled_from(["poll", "submit"]), st.floats(min_value=0, max_value=30)),
    ),
    min_size=1,
    max_size=30,
)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as connection:
        yield connection


@pytest.fixture
def key(client: redis.Redis, namespace: str) -> Iterator[str]:
    name = bucket_key(f"{namespace}-{secrets.token_hex(3)}", key_digest("sk-test"))
    yield name
    client.delete(name, f"{name}:grants")


def test_the_key_names_a_digest_of_the_api_key_never_the_key() -> None:
    name = bucket_key("segmind-queue", key_digest("sk-very-secret"))
    assert "sk-very-secret" not in name
    assert name == bucket_key("segmind-queue", key_digest("sk-very-secret"))
    assert name != bucket_key("segmind-queue", key_digest("sk-other"))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=operations)
def test_the_lua_scripts_compute_what_the_pure_functions_do(
    client: redis.Redis, key: str, steps: list[Operation]
) -> None:
    """``MemoryRateLimiter`` runs ``worker.ratelimit.bucket`` itself: the scripts must agree
    with it on every wait and every stored field, after any sequence of calls and 429s."""
    client.delete(key, f"{key}:grants")
    clock = [T0]
    limiter = RedisRateLimiter(client, key, LIMITS, now=lambda: clock[0])
    memory = MemoryRateLimiter(LIMITS, clock=lambda: clock[0])
    for later, operation in steps:
        clock[0] += later
        if isinstance(operation, str):
            submit = operation == "submit"
            got, expected_grant = limiter.acquire(submit=submit), memory.acquire(submit=submit)
            assert got.reserved == expected_grant.reserved
            assert got.wait_s == pytest.approx(expected_grant.wait_s, abs=1e-6)
            assert limiter.redeem() == pytest.approx(memory.redeem(), abs=1e-6)
        else:
            limiter.rate_limited(operation)
            memory.rate_limited(operation)
        stored, expected = limiter.state(), memory._bucket
        assert stored is not None
        assert expected is not None
        for name in ("tokens", "updated_at", "rate_per_min", "blocked_until"):
            assert getattr(stored, name) == pytest.approx(getattr(expected, name), abs=1e-6)
        assert stored.known_limit_per_min == pytest.approx(expected.known_limit_per_min)


def test_a_429_measures_the_window_it_ended(client: redis.Redis, key: str) -> None:
    clock = [T0]
    limiter = RedisRateLimiter(client, key, LIMITS, now=lambda: clock[0])
    for _ in range(20):  # twenty calls granted over 20 s, then the 21st is answered 429
        clock[0] += 1.0
        assert limiter.acquire(submit=False).go
    limiter.rate_limited(wait_s=40.0)
    state = limiter.state()
    assert state is not None
    # The window began 60 s before the reset: it let through the twenty, less the 429'd one.
    assert state.known_limit_per_min == pytest.approx(19.0)
    assert state.rate_per_min == pytest.approx(19.0 * token_bucket.SAFETY)
    assert limiter.acquire(submit=False).wait_s == pytest.approx(40.0)


def test_processes_share_one_bucket(client: redis.Redis, key: str) -> None:
    """Eight limiters (as eight worker processes would) ask one bucket for submits: its
    capacity is granted once in all, not once each."""
    limiters = [RedisRateLimiter(client, key, Limits.for_ceiling(6.0)) for _ in range(8)]
    granted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def drain(limiter: RedisRateLimiter) -> None:
        barrier.wait()
        mine = sum(limiter.acquire(submit=True).go for _ in range(5))
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=drain, args=(limiter,)) for limiter in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Capacity 1 token at 6/min (BURST_S of calls, at least one); 40 tries in well under
    # the 10 s a second token takes.
    assert sum(granted) == 1


def test_unlimited_never_waits() -> None:
    limiter = Unlimited()
    assert limiter.acquire(submit=True).go
    limiter.rate_limited(30.0)
    assert limiter.acquire(submit=False).go
    assert limiter.redeem() == 0.0
    assert limiter.rate_per_min() is None
