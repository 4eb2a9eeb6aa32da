"""The poll schedule (``worker.polling``): pure, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.polling import next_poll_delay
from worker.settings import MAX_DELAY_S


def test_polls_at_the_minimum_interval() -> None:
    assert next_poll_delay(min_interval_s=7, remaining_s=2000) == 7


def test_a_longer_requested_wait_is_honoured() -> None:
    assert next_poll_delay(min_interval_s=7, remaining_s=2000, requested_s=42) == 42


def test_a_shorter_requested_wait_never_beats_the_interval() -> None:
    assert next_poll_delay(min_interval_s=7, remaining_s=2000, requested_s=1) == 7


def test_a_long_wait_is_brought_forward_to_the_deadline_but_not_below_the_interval() -> None:
    assert next_poll_delay(min_interval_s=7, remaining_s=30, requested_s=600) == 30
    assert next_poll_delay(min_interval_s=7, remaining_s=3, requested_s=600) == 7
    assert next_poll_delay(min_interval_s=7, remaining_s=-50) == 7


def test_no_delay_reaches_rabbitmq_s_consumer_timeout() -> None:
    assert next_poll_delay(min_interval_s=7, remaining_s=None, requested_s=1e9) == MAX_DELAY_S


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_an_unusable_interval_is_an_error(bad: float) -> None:
    with pytest.raises(ValueError, match="min_interval_s"):
        next_poll_delay(min_interval_s=bad, remaining_s=10)


@given(
    interval=st.floats(0.01, 600),
    remaining=st.none() | st.floats(-1e6, 1e6),
    requested=st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_the_delay_is_always_within_bounds(
    interval: float, remaining: float | None, requested: float | None
) -> None:
    delay = next_poll_delay(min_interval_s=interval, remaining_s=remaining, requested_s=requested)
    assert interval <= delay <= MAX_DELAY_S
