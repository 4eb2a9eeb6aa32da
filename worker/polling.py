"""The poll schedule: when to poll a job next. Pure functions, no I/O.

Adaptive polling (``planned_delay``): Segmind charges nothing for a poll but every poll
spends the account's rate, so polls go where completion is likely. From the durations of a
workflow's finished jobs (``History``: submit to completion, and PROCESSING time), a job
sleeps until completion becomes possible (the ``START_QUANTILE`` of those durations, or past
the shortest PROCESSING time when a poll still found it QUEUED), then is polled at the
minimum interval, which keeps the detection lag of a fixed loop. A job running longer than
any seen before is polled less and less often. With too few finished jobs the catalog's
expected duration stands in (``PRIOR_SHARE`` of it), and without one the plain interval.

Segmind asks for at least 7 s between polls of one generation (``min_interval_s``). A job
is polled at that interval until it ends or its deadline passes; a poll that failed (429,
5xx, timeout) is repeated after the wait the answer asked for or after a backoff, never
sooner than the interval. A long requested wait is brought forward to the deadline (a
job is polled once more at its deadline before it is TIMED_OUT), but never below the
interval, and no delay exceeds ``MAX_DELAY_S``
(RabbitMQ's consumer_timeout closes a channel that holds a message unacked 30 minutes;
Dramatiq holds a delayed message unacked until it is due).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from worker.settings import MAX_DELAY_S

#: Finished jobs needed before their durations are trusted.
MIN_SAMPLES: Final = 5
#: The first poll waits until this share of the jobs seen had completed: later saves polls,
#: earlier catches the earliest jobs sooner (the bench weighs the two).
START_QUANTILE: Final = 0.12
#: Without history, the first poll comes at this share of the catalog's expected duration.
PRIOR_SHARE: Final = 0.75
#: A job is overdue past this multiple of the longest duration seen...
OVERDUE_FACTOR: Final = 1.25
#: ...and is then polled every (time overdue x this), at most ``MAX_OVERDUE_INTERVAL_S``.
OVERDUE_GROWTH: Final = 0.25
MAX_OVERDUE_INTERVAL_S: Final = 120.0


@dataclass(frozen=True)
class History:
    """Durations learned from a workflow's finished jobs, sorted (seconds).

    Attributes:
        totals: from submit to completion.
        processing: from the start of PROCESSING to completion.
    """

    totals: tuple[float, ...] = ()
    processing: tuple[float, ...] = ()

    @classmethod
    def of(cls, totals: Iterable[float], processing: Iterable[float] = ()) -> History:
        """A history from unsorted samples (non-finite and negative ones dropped)."""
        return cls(_clean(totals), _clean(processing))


def _clean(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(sorted(v for v in values if math.isfinite(v) and v >= 0))


def quantile(sorted_values: tuple[float, ...], q: float) -> float:
    """The ``q`` quantile of sorted values, interpolated linearly.

    Raises:
        ValueError: no values, or ``q`` outside [0, 1].
    """
    if not sorted_values or not 0 <= q <= 1:
        raise ValueError("quantile of no values, or q outside [0, 1]")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def planned_delay(
    *,
    history: History,
    expected_s: float | None,
    elapsed_s: float,
    last_status: str,
    min_interval_s: float,
) -> float:
    """Seconds until the next poll where completion becomes likely (see the module
    docstring); ``next_poll_delay`` then applies the interval, the deadline and any wait
    an answer asked for.

    Args:
        history: the workflow's learned durations.
        expected_s: the catalog's expected duration, when known.
        elapsed_s: seconds since the job was submitted.
        last_status: the status the last poll read (``""``: none yet).
        min_interval_s: the shortest time between two polls.
    """
    if len(history.totals) >= MIN_SAMPLES:
        start = quantile(history.totals, START_QUANTILE)
        if last_status == "QUEUED" and len(history.processing) >= MIN_SAMPLES:
            # Not even started: it cannot end before the shortest PROCESSING time.
            start = max(start, elapsed_s + quantile(history.processing, START_QUANTILE))
        if elapsed_s < start:
            return start - elapsed_s
        overdue_from = history.totals[-1] * OVERDUE_FACTOR
        if elapsed_s > overdue_from:
            stretched = (elapsed_s - overdue_from) * OVERDUE_GROWTH
            return min(MAX_OVERDUE_INTERVAL_S, max(min_interval_s, stretched))
        return min_interval_s
    if expected_s is not None and expected_s > 0:
        start = expected_s * PRIOR_SHARE
        if elapsed_s < start:
            return start - elapsed_s
    return min_interval_s


def completion_sample(
    *,
    submitted_at: float,
    detected_at: float,
    pending_at: float | None,
    queued_at: float | None,
    processing_at: float | None,
    min_interval_s: float,
) -> tuple[float, float | None]:
    """What a completed job teaches: its duration and its PROCESSING time (or ``None``).

    A poll only brackets a change between itself and the previous poll. The change is
    taken to have happened half an interval before the poll that saw it, or halfway
    through a shorter gap: an estimate a little late, so the schedule errs on the side of
    polling a little late rather than early.
    """

    def changed(seen: float, before: float | None) -> float:
        gap = seen - (before if before is not None else submitted_at)
        return seen - min(min_interval_s, max(0.0, gap)) / 2

    ended = changed(detected_at, pending_at)
    total = max(0.0, ended - submitted_at)
    if processing_at is None:
        return total, None
    started = changed(processing_at, queued_at)
    return total, max(0.0, ended - started)


def next_poll_delay(
    *, min_interval_s: float, remaining_s: float | None, requested_s: float | None = None
) -> float:
    """Seconds until the next poll of a job.

    Args:
        min_interval_s: the shortest time between two polls of one job.
        remaining_s: seconds until the job's deadline (``None``: no deadline yet).
        requested_s: a longer wait asked for by the last answer (a 429's wait, or a
            backoff after an error); ``None`` when there is none.

    Returns:
        ``max(min_interval_s, requested_s)``, brought forward to the deadline when it
        would fall after it but never below ``min_interval_s``, at most ``MAX_DELAY_S``.

    Raises:
        ValueError: ``min_interval_s`` is not a positive finite number.
    """
    if not (math.isfinite(min_interval_s) and min_interval_s > 0):
        raise ValueError(f"min_interval_s must be a positive number, not {min_interval_s}")
    delay = min_interval_s
    if requested_s is not None and math.isfinite(requested_s) and requested_s > delay:
        delay = requested_s
    if remaining_s is not None:
        delay = min(delay, max(remaining_s, min_interval_s))
    return min(delay, MAX_DELAY_S)


def expected_completion(
    submitted_at: float, history: History, expected_s: float | None
) -> float | None:
    """When a job submitted at ``submitted_at`` will likely be done (epoch seconds): the
    median of its workflow's learned durations once there are ``MIN_SAMPLES`` of them, else
    the catalog's expected duration (``expected_s``, scaled), else ``None`` (unknown)."""
    if len(history.totals) >= MIN_SAMPLES:
        return submitted_at + quantile(history.totals, 0.5)
    if expected_s is not None:
        return submitted_at + expected_s
    return None
