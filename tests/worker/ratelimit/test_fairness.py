"""Fair admission's rules: ranks, windows, waits and the line's arithmetic."""

from __future__ import annotations

import pytest

from worker.ratelimit.fairness import (
    MAX_WAIT_S,
    MIN_WAIT_S,
    TenantLine,
    ahead,
    go_window,
    grants_allowed,
    rank,
    slot_wait,
)

T0 = 1_800_000_000.0


def test_priority_outranks_any_publication_time_then_earlier_goes_first() -> None:
    assert rank(9, T0 + 10_000) < rank(0, T0)
    assert rank(None, T0) == rank(0, T0)
    assert rank(5, T0) < rank(5, T0 + 0.001)


def test_the_window_is_one_at_a_few_calls_a_minute_and_grows_with_the_rate() -> None:
    assert go_window(6) == 1
    assert go_window(50) == 1
    assert go_window(600) == 10
    assert go_window(25_000) == 416


def test_a_request_is_told_to_come_back_about_its_turn() -> None:
    assert slot_wait(1, 1, 30) == pytest.approx(2.0)  # one turn ahead at 30 calls a minute
    assert slot_wait(10, 1, 30) == pytest.approx(20.0)
    assert slot_wait(0, 1, 30) == MIN_WAIT_S
    assert slot_wait(10_000, 1, 30) == MAX_WAIT_S


def test_a_share_cap_allows_at_least_one_grant_a_window() -> None:
    assert grants_allowed(0.0, 60, 60) == 0  # not capped
    assert grants_allowed(0.5, 60, 60) == 30
    assert grants_allowed(0.001, 60, 60) == 1


def test_ahead_counts_the_turns_of_other_tenants_before_a_virtual_time() -> None:
    flood = TenantLine(finish=1.0, weight=1.0, waiting=1000)
    # A newcomer at virtual time 1.0 (the clock) ties with the flood's head: none before.
    assert ahead(1.0, [flood]) == 0
    # Its third request (virtual 3.0) comes after the flood's turns at 1.0 and 2.0.
    assert ahead(3.0, [flood]) == 2
    # A tenant of weight 2 has two turns per unit of virtual time.
    assert ahead(3.0, [TenantLine(1.0, 2.0, 1000)]) == 4
    # Only what is waiting counts.
    assert ahead(100.0, [TenantLine(1.0, 1.0, 3)]) == 3
    assert ahead(100.0, [TenantLine(1.0, 1.0, 0)]) == 0
