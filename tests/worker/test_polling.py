"""The poll schedule (``worker.polling``): pure, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.history import DurationHistory, parse_samples
from worker.polling import (
    MIN_SAMPLES,
    PRIOR_SHARE,
    START_QUANTILE,
    History,
    completion_sample,
    expected_completion,
    next_poll_delay,
    planned_delay,
    quantile,
)
from worker.settings import MAX_DELAY_S
from worker.store import MemoryStore


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


# ---------------------------------------------------------------- adaptive polling

# A ~674 s workflow: finished jobs took 650-700 s, 10-60 s of it QUEUED.
LEARNED = History.of(
    totals=[650 + 50 * n / 19 for n in range(20)], processing=[600 + 40 * n / 19 for n in range(20)]
)


def plan(elapsed_s: float, *, history: History = LEARNED, status: str = "PROCESSING",
         expected_s: float | None = 673.9) -> float:  # fmt: skip
    return planned_delay(
        history=history,
        expected_s=expected_s,
        elapsed_s=elapsed_s,
        last_status=status,
        min_interval_s=7,
    )


def test_a_job_sleeps_through_the_part_of_its_run_where_it_cannot_end() -> None:
    start = quantile(LEARNED.totals, START_QUANTILE)
    assert plan(0.0) == pytest.approx(start)
    assert 650 < start < 660


def test_then_it_is_polled_at_the_minimum_interval() -> None:
    assert plan(quantile(LEARNED.totals, START_QUANTILE) + 1) == 7
    assert plan(690.0) == 7


def test_a_job_still_queued_waits_at_least_the_shortest_processing_time() -> None:
    assert plan(660.0, status="QUEUED") == pytest.approx(
        quantile(LEARNED.processing, START_QUANTILE)
    )


def test_a_job_longer_than_any_seen_is_polled_less_and_less_often() -> None:
    overdue = 700 * 1.25
    assert plan(overdue + 40) == 10
    assert plan(overdue + 400) == 100
    assert plan(overdue + 4000) == 120


def test_without_enough_history_the_catalog_duration_stands_in() -> None:
    few = History.of([600.0] * (MIN_SAMPLES - 1))
    assert plan(0.0, history=few) == pytest.approx(673.9 * PRIOR_SHARE)
    assert plan(673.9 * PRIOR_SHARE + 1, history=few) == 7
    # Neither history nor a catalog duration: the plain interval.
    assert plan(0.0, history=History(), expected_s=None) == 7


def test_a_six_poll_budget_for_the_median_674_s_job() -> None:
    """The schedule's polls for jobs of the learned spread: the median takes at most 6."""
    polls = []
    for ends_at in LEARNED.totals:
        elapsed, count = 0.0, 0
        while True:
            elapsed += max(7.0, plan(elapsed))
            count += 1
            if elapsed >= ends_at:
                break
        polls.append(count)
    assert sorted(polls)[len(polls) // 2] <= 6


def test_a_completion_is_dated_half_an_interval_before_the_poll_that_saw_it() -> None:
    total, processing = completion_sample(
        submitted_at=0.0,
        detected_at=700.0,
        pending_at=693.0,
        queued_at=None,
        processing_at=655.0,
        min_interval_s=7,
    )
    assert total == pytest.approx(696.5)
    # PROCESSING began before the first poll that saw it (half an interval earlier).
    assert processing == pytest.approx(696.5 - 651.5)


def test_a_job_never_seen_processing_teaches_its_total_only() -> None:
    total, processing = completion_sample(
        submitted_at=100.0,
        detected_at=102.0,
        pending_at=None,
        queued_at=None,
        processing_at=None,
        min_interval_s=7,
    )
    assert total == pytest.approx(1.0)
    assert processing is None


def test_the_history_is_shared_through_the_store_and_read_back() -> None:
    store = MemoryStore()
    writer = DurationHistory(store, "p")
    reader = DurationHistory(store, "p", cache_s=0)
    writer.record("character-video", 690.0, 640.0)
    writer.record("character-video", 660.0, None)
    assert reader.get("character-video") == History.of([660.0, 690.0], [640.0])
    assert reader.get("sketch-maker") == History()


def test_unreadable_samples_are_skipped() -> None:
    assert parse_samples(["12.5", "x", "1,2,3", "7,3"]) == History.of([12.5, 7.0], [3.0])


def test_expected_completion_from_the_learned_median_else_the_catalog() -> None:
    learned = History.of([30.0, 40.0, 50.0, 60.0, 70.0])
    assert expected_completion(1000.0, learned, 999.0) == pytest.approx(1050.0)
    too_few = History.of([30.0, 40.0])
    assert expected_completion(1000.0, too_few, 20.0) == pytest.approx(1020.0)
    assert expected_completion(1000.0, too_few, None) is None
