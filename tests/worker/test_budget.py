"""The budget guard's rules (pure) and its holder."""

from __future__ import annotations

from worker.budget import Budget, BudgetGuard, blocked_reason

RICH = Budget(balance_usd=100.0, reserved_usd=10.0, spent_today_usd=20.0)


def test_a_job_within_the_floor_and_the_cap_may_start() -> None:
    assert blocked_reason(RICH, 4.97, floor_usd=50.0, cap_usd=40.0) is None


def test_jobs_in_flight_count_against_the_floor() -> None:
    reason = blocked_reason(RICH, 4.97, floor_usd=90.0, cap_usd=0)
    assert reason is not None
    assert "credit floor" in reason
    assert "$10.00 in flight" in reason


def test_jobs_in_flight_count_against_the_daily_cap() -> None:
    reason = blocked_reason(RICH, 4.97, floor_usd=0, cap_usd=30.0)
    assert reason is not None
    assert "daily spend cap" in reason
    assert "$34.97, over the cap of $30.00" in reason


def test_no_floor_or_cap_never_blocks() -> None:
    broke = Budget(balance_usd=0.0, reserved_usd=500.0, spent_today_usd=1e6)
    assert blocked_reason(broke, 5.0, floor_usd=0, cap_usd=0) is None


def test_a_balance_never_read_does_not_block_on_the_floor() -> None:
    unknown = Budget(balance_usd=None, reserved_usd=0.0, spent_today_usd=0.0)
    assert blocked_reason(unknown, 5.0, floor_usd=10.0, cap_usd=0) is None


def test_the_guard_allows_everything_until_it_has_figures() -> None:
    guard = BudgetGuard(floor_usd=95.0, cap_usd=0)
    assert guard.check(1.0) is None
    guard.update(RICH)
    assert guard.check(1.0) is not None
