"""The replica check: read at most once a second, logged when it flips, and the hold's wait."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from worker.replicas import CHECK_TTL_S, RECHECK_S, ReplicaCheck, hold_delay_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_reading_is_trusted_for_its_ttl_then_read_again() -> None:
    readings = iter([0, 1, 1])
    reads: list[int] = []
    seen: list[int] = []
    clock = Clock()

    def read() -> int:
        value = next(readings)
        reads.append(value)
        return value

    check = ReplicaCheck(read, 1, on_reading=seen.append, clock=clock)
    assert check.short()
    assert check.short()  # cached: no second read
    assert reads == [0]
    clock.now += CHECK_TTL_S
    assert not check.short()
    check.forget()
    assert check.online() == 1
    assert reads == [0, 1, 1]
    assert seen == [0, 1, 1]


def test_flips_are_logged_once_each() -> None:
    values = [0, 0, 2, 2, 0]
    clock = Clock()
    check = ReplicaCheck(lambda: values.pop(0), 2, clock=clock)
    with capture_logs() as logs:
        for _ in range(5):
            check.short()
            clock.now += CHECK_TTL_S
    assert [entry["event"] for entry in logs] == [
        "ledger.replicas_short",
        "ledger.replicas_back",
        "ledger.replicas_short",
    ]


def test_no_replicas_required_is_never_short() -> None:
    check = ReplicaCheck(lambda: 0, 0)
    assert not check.short()


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_a_held_request_looks_again_within_one_and_a_half_rechecks(rand: float) -> None:
    assert RECHECK_S <= hold_delay_s(rand) < 1.5 * RECHECK_S
