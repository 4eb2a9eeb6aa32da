"""A job's timeline: when it was submitted, starts PROCESSING and ends.

The plan is drawn once, when the job is created (``simulator.state``), from the
workflow's expected duration (``simulator.outputs.expected_duration_s``), the configured
spread and time scale, and the simulator's seeded ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: The share of a job's total duration spent QUEUED: uniform between these bounds.
QUEUED_SHARE = (0.05, 0.25)


@dataclass(frozen=True)
class Timeline:
    """When a job was submitted, starts PROCESSING and ends (epoch seconds)."""

    submitted_at: float
    processing_at: float
    done_at: float


def plan_timeline(
    expected_s: float,
    *,
    spread: float,
    time_scale: float,
    submitted_at: float,
    rng: random.Random,
) -> Timeline:
    """A job's timeline: total ``expected_s`` x lognormal(0, ``spread``) x ``time_scale``,
    of which a uniform 5-25 % is spent QUEUED.
    """
    factor = rng.lognormvariate(0.0, spread) if spread > 0 else 1.0
    total = expected_s * factor * time_scale
    queued = total * rng.uniform(*QUEUED_SHARE)
    return Timeline(submitted_at, submitted_at + queued, submitted_at + total)
