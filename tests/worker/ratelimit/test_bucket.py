"""The token bucket's arithmetic (pure functions)."""

from __future__ import annotations

import pytest

from worker.ratelimit.bucket import (
    EDGE_DECREASE,
    POLL_RESERVE_SHARE,
    SAFETY,
    Bucket,
    Limits,
    capacity,
    new_bucket,
    rate_limited,
    redeem,
    refill,
    take,
)

LIMITS = Limits.for_ceiling(60.0)  # one call a second at the ceiling
T0 = 1_800_000_000.0


def test_a_new_bucket_is_full_at_the_ceiling() -> None:
    bucket = new_bucket(LIMITS, T0)
    assert bucket.rate_per_min == 60.0
    assert bucket.tokens == capacity(60.0) == 5.0


def test_tokens_refill_at_the_rate_up_to_the_capacity() -> None:
    empty = Bucket(tokens=0.0, updated_at=T0, rate_per_min=60.0)
    assert refill(empty, T0 + 2).tokens == pytest.approx(2.0)
    assert refill(empty, T0 + 60).tokens == capacity(60.0)


def test_a_poll_borrows_from_an_empty_bucket_a_slot_of_its_own() -> None:
    empty = Bucket(tokens=0.25, updated_at=T0, rate_per_min=60.0)
    first = take(empty, T0, submit=False, limits=LIMITS)
    assert first.reserved
    assert first.wait_s == pytest.approx(0.75)
    second = take(first.bucket, T0, submit=False, limits=LIMITS)
    # The next poll is given the next slot, not the same one.
    assert second.reserved
    assert second.wait_s == pytest.approx(1.75, rel=1e-3)


def test_a_submit_never_borrows_it_asks_again() -> None:
    empty = Bucket(tokens=0.25, updated_at=T0, rate_per_min=60.0)
    refused = take(empty, T0, submit=True, limits=LIMITS)
    assert not refused.reserved
    assert refused.wait_s > 0.75
    assert refused.bucket.tokens == pytest.approx(0.25)  # nothing taken


def test_a_grant_takes_a_token_and_raises_the_rate_additively() -> None:
    bucket = Bucket(tokens=3.0, updated_at=T0, rate_per_min=30.0)
    taken = take(bucket, T0, submit=False, limits=LIMITS)
    assert taken.wait_s == 0.0
    after = taken.bucket
    assert after.tokens == pytest.approx(2.0)
    # step_per_min per rate_per_min calls: about step_per_min a minute at full use.
    assert after.rate_per_min == pytest.approx(30.0 + LIMITS.step_per_min / 30.0)


def test_the_rate_never_rises_above_the_ceiling() -> None:
    bucket = Bucket(tokens=3.0, updated_at=T0, rate_per_min=60.0)
    assert take(bucket, T0, submit=False, limits=LIMITS).bucket.rate_per_min == 60.0
    # A lowered setting applies at once to a bucket stored at the old one.
    lowered = Limits.for_ceiling(30.0)
    assert take(bucket, T0, submit=False, limits=lowered).bucket.rate_per_min == 30.0


def test_submits_leave_a_reserve_to_polls() -> None:
    reserve = POLL_RESERVE_SHARE * capacity(60.0)
    bucket = Bucket(tokens=1.0 + reserve / 2, updated_at=T0, rate_per_min=60.0)
    assert take(bucket, T0, submit=False, limits=LIMITS).wait_s == 0.0
    assert take(bucket, T0, submit=True, limits=LIMITS).wait_s == pytest.approx(reserve / 2)


def test_a_429_blocks_everyone_until_the_time_it_named() -> None:
    bucket = rate_limited(new_bucket(LIMITS, T0), T0, 12.0, limits=LIMITS)
    assert bucket.blocked_until == T0 + 12.0
    assert bucket.tokens == 0.0
    blocked = take(bucket, T0 + 2, submit=False, limits=LIMITS)
    assert blocked.wait_s == pytest.approx(10.0)
    assert not blocked.reserved  # nothing taken during a block
    assert redeem(bucket.blocked_until, T0 + 2) == pytest.approx(10.0)
    assert redeem(bucket.blocked_until, T0 + 12) == 0.0
    # After the block the bucket refills from empty: no burst into the new window.
    after = take(bucket, T0 + 12.5, submit=False, limits=LIMITS)
    assert after.reserved
    assert after.wait_s == pytest.approx(60 / bucket.rate_per_min - 0.5)


def test_a_429_without_a_measured_window_is_a_multiplicative_decrease() -> None:
    bucket = rate_limited(new_bucket(LIMITS, T0), T0, 1.0, limits=LIMITS)
    assert bucket.rate_per_min == pytest.approx(60.0 * LIMITS.decrease_factor)


def test_a_429_with_a_measured_window_drops_just_under_the_limit() -> None:
    bucket = rate_limited(
        new_bucket(LIMITS, T0), T0, 30.0, limits=LIMITS, window_calls_per_min=25.0
    )
    assert bucket.known_limit_per_min == 25.0
    assert bucket.rate_per_min == pytest.approx(25.0 * SAFETY)


def test_a_429_under_the_measured_limit_still_decreases() -> None:
    # Another client shares the key: the window let fewer calls through than the rate.
    slow = Bucket(tokens=1, updated_at=T0, rate_per_min=20.0, known_limit_per_min=25.0)
    after = rate_limited(slow, T0, 5.0, limits=LIMITS)
    assert after.rate_per_min == pytest.approx(20.0 * LIMITS.decrease_factor)


def test_429s_of_calls_in_flight_together_decrease_once() -> None:
    first = rate_limited(new_bucket(LIMITS, T0), T0, 10.0, limits=LIMITS)
    second = rate_limited(first, T0 + 0.1, 9.9, limits=LIMITS)
    assert second.rate_per_min == first.rate_per_min
    assert second.blocked_until == first.blocked_until


def test_the_rate_never_falls_below_the_floor() -> None:
    bucket = new_bucket(LIMITS, T0)
    for n in range(100):
        bucket = rate_limited(bucket, T0 + n * 2, 1.0, limits=LIMITS)
    assert bucket.rate_per_min == pytest.approx(LIMITS.floor_per_min)


def test_past_a_measured_limit_the_rate_only_creeps() -> None:
    at_limit = Bucket(tokens=3, updated_at=T0, rate_per_min=25.0, known_limit_per_min=25.0)
    free = Bucket(tokens=3, updated_at=T0, rate_per_min=25.0)
    probing = take(at_limit, T0, submit=False, limits=LIMITS).bucket.rate_per_min - 25.0
    climbing = take(free, T0, submit=False, limits=LIMITS).bucket.rate_per_min - 25.0
    assert 0 < probing < climbing / 5


def test_a_non_positive_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Limits.for_ceiling(0)


def test_a_429_after_few_calls_learns_no_limit() -> None:
    """A fleet using a fraction of its rate (another client spent the window) measured its
    own demand, not the limit: the decrease is the multiplicative one."""
    bucket = rate_limited(new_bucket(LIMITS, T0), T0, 30.0, limits=LIMITS, window_calls_per_min=5.0)
    assert bucket.known_limit_per_min == 0.0
    assert bucket.rate_per_min == pytest.approx(60.0 * LIMITS.decrease_factor)


def test_a_one_token_bucket_still_lets_submits_through() -> None:
    """At 5 calls a minute (Segmind Free) the bucket holds one token: a reserve for polls
    would make a submit need more than it can ever hold."""
    free_plan = Limits.for_ceiling(5.0)
    bucket = new_bucket(free_plan, T0)
    assert capacity(5.0) == 1.0
    assert take(bucket, T0, submit=True, limits=free_plan).wait_s == 0.0


def test_a_429_under_a_freshly_measured_limit_only_eases_off() -> None:
    """The window let more through than the rate: the 429 came from calls bunched at its
    edge, not from a rate above the limit."""
    under = Bucket(tokens=1, updated_at=T0, rate_per_min=48.0, known_limit_per_min=50.0)
    after = rate_limited(under, T0, 5.0, limits=LIMITS, window_calls_per_min=50.0)
    assert after.rate_per_min == pytest.approx(48.0 * EDGE_DECREASE)
