"""A job's planned timeline (``simulator.timeline``): spread, time scale, seeding."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from simulator.timeline import plan_timeline

T0 = 1_800_000_000.0


def test_timeline_without_spread_is_exact_and_scaled() -> None:
    rng = random.Random(1)
    timeline = plan_timeline(100.0, spread=0.0, time_scale=0.5, submitted_at=T0, rng=rng)
    assert timeline.submitted_at == T0
    assert timeline.done_at == pytest.approx(T0 + 50.0)
    queued = timeline.processing_at - T0
    assert 0.05 * 50.0 <= queued <= 0.25 * 50.0


def test_timeline_spread_is_lognormal_around_the_expected_duration() -> None:
    rng = random.Random(2)
    totals = [
        plan_timeline(60.0, spread=0.15, time_scale=1.0, submitted_at=0.0, rng=rng).done_at
        for _ in range(2000)
    ]
    logs = [math.log(total / 60.0) for total in totals]
    assert abs(statistics.fmean(logs)) < 0.02
    assert statistics.stdev(logs) == pytest.approx(0.15, rel=0.1)
    assert len(set(totals)) == len(totals)  # really spread


def test_timeline_is_reproducible_for_a_seed() -> None:
    first = plan_timeline(60.0, spread=0.2, time_scale=1.0, submitted_at=0, rng=random.Random(9))
    again = plan_timeline(60.0, spread=0.2, time_scale=1.0, submitted_at=0, rng=random.Random(9))
    assert first == again
