"""The poll schedule: when to poll a job next. Pure functions, no I/O.

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

from worker.settings import MAX_DELAY_S


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
