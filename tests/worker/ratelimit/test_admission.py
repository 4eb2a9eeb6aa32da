"""The admission line: the Lua script in the real Redis and the in-memory twin, held to
the same scenarios on a shared fake clock, and to each other on random ones."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from worker.ratelimit import fairness
from worker.ratelimit.admission import Admission, MemoryAdmission, OpenAdmission, RedisAdmission
from worker.ratelimit.fairness import Turn, rank

T0 = 1_800_000_000.0


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as connection:
        yield connection


def _redis_line(client: redis.Redis, namespace: str, clock: Clock) -> RedisAdmission:
    return RedisAdmission(client, f"{namespace}-adm-{secrets.token_hex(3)}", now=clock)


def _cleanup(client: redis.Redis, line: Admission) -> None:
    if isinstance(line, RedisAdmission):
        for key in client.scan_iter(f"{line.key}*"):
            client.delete(key)


@pytest.fixture(params=["memory", "redis"])
def line(
    request: pytest.FixtureRequest, clock: Clock, client: redis.Redis, namespace: str
) -> Iterator[Admission]:
    made: Admission = (
        MemoryAdmission(clock=clock)
        if request.param == "memory"
        else _redis_line(client, namespace, clock)
    )
    yield made
    _cleanup(client, made)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def ask(
    line: Admission,
    tenant: str,
    request_id: str,
    *,
    at: float = T0,
    priority: int | None = None,
    weight: float = 1.0,
    grants_allowed: int = 0,
    rate_per_min: float = 30.0,
) -> Turn:
    return line.ask(
        tenant,
        request_id,
        rank=rank(priority, at),
        weight=weight,
        grants_allowed=grants_allowed,
        rate_per_min=rate_per_min,
        window_s=60.0,
    )


def test_one_request_at_a_time_goes_and_the_next_waits_for_its_turn(line: Admission) -> None:
    assert ask(line, "a", "a1", at=T0) == Turn(go=True, wait_s=0.0, ahead=0)
    second = ask(line, "a", "a2", at=T0 + 1)
    assert (second.go, second.ahead) == (False, 1)
    assert second.wait_s == pytest.approx(2.0)  # a turn at 30 calls a minute
    line.admitted("a", "a1", weight=1.0)
    assert ask(line, "a", "a2", at=T0 + 1).go
    assert line.waiting() == {"a": 1}
    line.admitted("a", "a2", weight=1.0)
    assert line.waiting() == {}


def test_a_newcomer_goes_before_a_flood_published_earlier(line: Admission) -> None:
    for n in range(30):
        ask(line, "a", f"a{n}", at=T0 + n / 1000)
    assert ask(line, "a", "a0", at=T0).go
    line.admitted("a", "a0", weight=1.0)
    for n in range(3):
        ask(line, "b", f"b{n}", at=T0 + 1 + n / 1000)
    # b's first and a's next have the same virtual time: either may go, both are told so.
    assert ask(line, "b", "b0", at=T0 + 1).go
    line.admitted("b", "b0", weight=1.0)
    assert ask(line, "a", "a1", at=T0 + 0.001).go
    line.admitted("a", "a1", weight=1.0)
    # Then b again, not a's third.
    assert not ask(line, "a", "a2", at=T0 + 0.002).go
    assert ask(line, "b", "b1", at=T0 + 1.001).go


def test_within_a_tenant_priority_goes_first(line: Admission) -> None:
    ask(line, "a", "low", at=T0)
    urgent = ask(line, "a", "urgent", at=T0 + 5, priority=9)
    assert urgent.go
    assert not ask(line, "a", "low", at=T0).go


def _drain(
    line: Admission, clock: Clock, waiting: dict[str, list[str]], weights: dict[str, float]
) -> list[str]:
    """Admit every waiting request, a turn at a time, each asking in turn; the order."""
    order: list[str] = []
    while any(waiting.values()):
        clock.now += 0.1
        for tenant, ids in waiting.items():
            for request_id in list(ids):
                turn = ask(line, tenant, request_id, at=T0, weight=weights[tenant])
                if turn.go:
                    line.admitted(tenant, request_id, weight=weights[tenant])
                    ids.remove(request_id)
                    order.append(tenant)
                    break
    return order


def test_weights_share_the_turns(line: Admission, clock: Clock) -> None:
    waiting = {"a": [f"a{n}" for n in range(20)], "b": [f"b{n}" for n in range(20)]}
    for tenant, ids in waiting.items():
        for request_id in ids:
            ask(line, tenant, request_id, at=T0)
    order = _drain(line, clock, waiting, {"a": 2.0, "b": 1.0})
    first = order[:15]
    assert first.count("a") == 10
    assert first.count("b") == 5


def test_a_request_late_for_its_turn_does_not_hold_the_line(line: Admission, clock: Clock) -> None:
    assert ask(line, "a", "a1").go  # its turn, and it never comes back
    assert not ask(line, "a", "a2", at=T0 + 1).go
    clock.now += fairness.LATE_S + 1
    assert ask(line, "a", "a2", at=T0 + 1).go
    line.admitted("a", "a2", weight=1.0)
    # Long gone, it is dropped from the line; asking again, it takes its place back.
    clock.now += fairness.STALE_S
    assert ask(line, "a", "a3", at=T0 + 2).go
    assert _members(line, "a") == {"a3"}
    assert ask(line, "a", "a1").go  # first by rank
    assert not ask(line, "a", "a3", at=T0 + 2).go


def _members(line: Admission, tenant: str) -> set[str]:
    if isinstance(line, MemoryAdmission):
        return set(line.lines.get(tenant, {}))
    assert isinstance(line, RedisAdmission)
    return {str(member) for member in line.client.zrange(f"{line.key}:wait:{tenant}", 0, -1)}


def test_a_stale_request_is_dropped_from_the_line(line: Admission, clock: Clock) -> None:
    ask(line, "a", "a1")
    ask(line, "a", "a2", at=T0 + 1)
    clock.now += fairness.STALE_S + fairness.MAX_WAIT_S + 1
    assert ask(line, "a", "a2", at=T0 + 1).go
    assert _members(line, "a") == {"a2"}


def test_a_tenant_at_its_share_of_the_rate_waits_while_others_go(
    line: Admission, clock: Clock
) -> None:
    for n in range(2):
        assert ask(line, "a", f"a{n}", grants_allowed=2, rate_per_min=6000).go
        line.admitted("a", f"a{n}", weight=1.0)
        clock.now += 1
    capped = ask(line, "a", "a2", grants_allowed=2, rate_per_min=6000)
    assert not capped.go
    assert capped.wait_s == pytest.approx(60.0 - 2.0)  # until its first grant leaves
    assert ask(line, "b", "b0", rate_per_min=6000).go
    clock.now += 59
    assert ask(line, "a", "a2", grants_allowed=2, rate_per_min=6000).go


def test_leaving_removes_a_request_and_an_empty_tenant(line: Admission) -> None:
    ask(line, "a", "a1")
    ask(line, "a", "a2", at=T0 + 1)
    line.leave("a", "a1")
    assert ask(line, "a", "a2", at=T0 + 1).go
    line.leave("a", "a2")
    assert line.waiting() == {}


def test_open_admission_lets_everyone_go() -> None:
    open_line = OpenAdmission()
    assert ask(open_line, "a", "a1").go
    assert open_line.waiting() == {}


def test_the_script_and_the_memory_line_agree(client: redis.Redis, namespace: str) -> None:
    rng = random.Random(7)
    memory_clock, redis_clock = Clock(), Clock()
    memory = MemoryAdmission(clock=memory_clock)
    shared = _redis_line(client, namespace, redis_clock)
    asked: list[tuple[str, str]] = []
    try:
        for step in range(400):
            advance = rng.choice([0.0, 0.05, 0.5, 2.0, 7.0])
            memory_clock.now += advance
            redis_clock.now += advance
            tenant = rng.choice(["a", "b", "c"])
            if asked and rng.random() < 0.35:
                tenant, request_id = asked.pop(rng.randrange(len(asked)))
                if rng.random() < 0.8:
                    memory.admitted(tenant, request_id, weight=1.0 + (tenant == "a"))
                    shared.admitted(tenant, request_id, weight=1.0 + (tenant == "a"))
                else:
                    memory.leave(tenant, request_id)
                    shared.leave(tenant, request_id)
                continue
            request_id = f"{tenant}{step}"
            asked.append((tenant, request_id))

            def asking(line: Admission, tenant: str = tenant, request_id: str = request_id,
                       step: int = step) -> Turn:  # fmt: skip
                return ask(
                    line,
                    tenant,
                    request_id,
                    at=T0 + step,
                    priority=step % 3,
                    weight=1.0 + (tenant == "a"),
                    grants_allowed=4 if tenant == "c" else 0,
                    rate_per_min=20.0,
                )

            in_memory, in_redis = asking(memory), asking(shared)
            assert in_memory.go == in_redis.go, step
            assert in_memory.ahead == in_redis.ahead, step
            assert in_memory.wait_s == pytest.approx(in_redis.wait_s), step
        assert memory.waiting() == shared.waiting()
    finally:
        _cleanup(client, shared)
