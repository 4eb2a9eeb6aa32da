"""Token bucket arithmetic for the fleet's shared Segmind rate: pure functions, no I/O.

The bucket holds up to ``capacity`` tokens and refills at ``rate_per_min / 60`` per second.
Every call to Segmind takes one token. A poll always gets one: when the bucket is empty it
borrows (the tokens go below zero) and is given the time its token will have been earned,
a slot of its own, so a thousand waiting polls are served one after the other instead of
all waking at every token to find it taken. A submit only takes a token while
``POLL_RESERVE_SHARE`` of the bucket would be left, and never borrows: when tokens are
scarce, the polls of jobs already paid for go first.

The rate itself adapts (AIMD): each granted call raises it a little (additive increase,
``step_per_min`` per ``rate_per_min`` calls, i.e. about ``step_per_min`` per minute at full
use), never above the configured ceiling; a 429 lowers it multiplicatively and blocks the
whole fleet until the moment the answer named (``blocked_until``), so that one 429 costs one
call and not one per worker.

Segmind counts calls in fixed windows (a minute), and a 429 says when the window resets:
the calls the fleet made in that window before the 429 are the limit, measured. So the
decrease goes straight to ``SAFETY`` of that measured limit when the rate is above it (one
429 finds the limit, where halving would find it in several and then use half of it), is
``EDGE_DECREASE`` when the rate is already under it (calls bunched at a window's edge), and
``decrease_factor`` when nothing was measured (the fleet was not using its rate: another
client on the same key). Once the limit is known the rate creeps past it only slowly
(``PROBE_SHARE``), to notice a raised limit without paying a 429 a minute for it.

``worker.ratelimit.limiter`` runs the same arithmetic in a Redis Lua script (atomic for the fleet)
and in memory; tests check the script against these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

#: A multiplicative decrease per 429: keep 80 % of the rate.
DECREASE_FACTOR: Final = 0.8
#: The additive increase, as a share of the ceiling per minute at full use.
INCREASE_SHARE: Final = 0.02
#: The lowest rate, as a share of the ceiling: a fleet told "429" keeps a trickle going.
FLOOR_SHARE: Final = 0.02
#: The share of a measured limit the rate drops to after a 429.
SAFETY: Final = 0.97
#: The decrease after a 429 when the rate is already under the measured limit.
EDGE_DECREASE: Final = 0.99
#: A window's calls measure the limit only when the fleet was using this share of its rate:
#: a fleet that made few calls and got a 429 learns nothing about the limit from them.
SATURATED_SHARE: Final = 0.3
#: The additive increase once at or past the measured limit, as a share of it per minute.
PROBE_SHARE: Final = 0.004
#: Seconds of calls the bucket holds (the burst after an idle spell), in a 60 s window: a
#: twelfth of the window, whatever its length (a time-scaled simulator's is shorter).
BURST_S: Final = 5.0
#: The share of the bucket that submits leave to polls.
POLL_RESERVE_SHARE: Final = 0.5


@dataclass(frozen=True, slots=True)
class Bucket:
    """The shared bucket.

    Attributes:
        tokens: tokens held (at ``updated_at``).
        updated_at: when ``tokens`` was computed (epoch seconds).
        rate_per_min: the current rate (calls per minute).
        blocked_until: no call before this (epoch seconds), after a 429.
        known_limit_per_min: the limit measured at the last 429 (0: unknown).
    """

    tokens: float
    updated_at: float
    rate_per_min: float
    blocked_until: float = 0.0
    known_limit_per_min: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """The bucket's fixed parameters, derived from the configured ceiling.

    Attributes:
        ceiling_per_min: the configured rate (``SEGMIND_RATE_LIMIT_PER_MINUTE``).
        floor_per_min: the lowest rate a 429 can bring it to.
        step_per_min: the additive increase per minute at full use.
        decrease_factor: the multiplicative decrease per 429.
        window_s: the window Segmind counts calls in (a minute).
    """

    ceiling_per_min: float
    floor_per_min: float
    step_per_min: float
    decrease_factor: float = DECREASE_FACTOR
    window_s: float = 60.0

    @classmethod
    def for_ceiling(cls, ceiling_per_min: float, window_s: float = 60.0) -> Limits:
        """The parameters for a configured rate and Segmind's window.

        Raises:
            ValueError: the ceiling is not a positive finite number.
        """
        if not (math.isfinite(ceiling_per_min) and ceiling_per_min > 0):
            raise ValueError(f"the rate limit must be a positive number, not {ceiling_per_min}")
        return cls(
            ceiling_per_min=ceiling_per_min,
            floor_per_min=ceiling_per_min * FLOOR_SHARE,
            step_per_min=ceiling_per_min * INCREASE_SHARE,
            window_s=window_s,
        )

    @property
    def burst_s(self) -> float:
        """Seconds of calls the bucket holds: ``BURST_S`` per minute of window."""
        return BURST_S * self.window_s / 60.0


def capacity(rate_per_min: float, burst_s: float = BURST_S) -> float:
    """The bucket's size at ``rate_per_min``: ``burst_s`` of calls, at least one."""
    return max(1.0, rate_per_min * burst_s / 60.0)


def new_bucket(limits: Limits, now: float) -> Bucket:
    """A full bucket at the ceiling."""
    rate = limits.ceiling_per_min
    return Bucket(tokens=capacity(rate, limits.burst_s), updated_at=now, rate_per_min=rate)


def clamp(bucket: Bucket, limits: Limits) -> Bucket:
    """``bucket`` with its rate under the ceiling: a lowered setting applies at once."""
    if bucket.rate_per_min <= limits.ceiling_per_min:
        return bucket
    return replace(bucket, rate_per_min=limits.ceiling_per_min)


def refill(bucket: Bucket, now: float, burst_s: float = BURST_S) -> Bucket:
    """``bucket`` at ``now``: tokens added since ``updated_at`` (never from before the end of
    a block: a fleet that waited out a 429 starts the new window empty, not with a burst)."""
    start = max(bucket.updated_at, bucket.blocked_until)
    if now <= start:
        return replace(bucket, updated_at=max(bucket.updated_at, now))
    full = capacity(bucket.rate_per_min, burst_s)
    tokens = min(full, bucket.tokens + (now - start) * bucket.rate_per_min / 60.0)
    return replace(bucket, tokens=tokens, updated_at=now)


@dataclass(frozen=True, slots=True)
class Take:
    """What asking for a token got.

    Attributes:
        bucket: the bucket after the request.
        wait_s: 0 when the call may go now; else how long to wait.
        reserved: the token is taken and the call may go once ``wait_s`` has passed (a
            borrowed slot); when False with a wait, nothing was taken: ask again then.
    """

    bucket: Bucket
    wait_s: float = 0.0
    reserved: bool = False


def take(bucket: Bucket, now: float, *, submit: bool, limits: Limits) -> Take:
    """Take a token for one call.

    Args:
        bucket: the bucket as stored.
        now: the current time (epoch seconds).
        submit: a submit (which leaves ``POLL_RESERVE_SHARE`` of the bucket to polls and
            never borrows) rather than a poll or a credits call (which borrow).
        limits: the bucket's parameters.

    Returns:
        Whether and when the call may go. A taken token (now or reserved) raises the rate
        by the additive step. During a block (after a 429) nothing is taken.
    """
    bucket = clamp(bucket, limits)
    if now < bucket.blocked_until:
        return Take(bucket, bucket.blocked_until - now)
    current = refill(bucket, now, limits.burst_s)
    # The reserve never makes a submit need more than the bucket can hold (a Free plan's
    # bucket holds one token: submits then just wait for the polls' debt to be repaid).
    full = capacity(current.rate_per_min, limits.burst_s)
    needed = min(1.0 + POLL_RESERVE_SHARE * full, full) if submit else 1.0
    if submit and current.tokens + 1e-9 < needed:
        return Take(current, (needed - current.tokens) * 60.0 / current.rate_per_min)
    rate = current.rate_per_min
    known = current.known_limit_per_min
    step = limits.step_per_min
    if known > 0 and rate >= known * SAFETY:
        step = known * PROBE_SHARE
    raised = min(limits.ceiling_per_min, rate + step / rate)
    left = current.tokens - 1.0
    taken = replace(current, tokens=left, rate_per_min=raised)
    if left >= -1e-9:
        return Take(taken)
    # Borrowed: the slot is when the refill (at the rate before this raise) repays it.
    return Take(taken, -left * 60.0 / rate, reserved=True)


def redeem(blocked_until: float, now: float) -> float:
    """A reserved slot has come: 0 when the call may go, else the block (the bucket's
    ``blocked_until``) it must wait out; a 429 since the reservation voided it, and the
    caller asks for a new token after."""
    return max(0.0, blocked_until - now)


def rate_limited(
    bucket: Bucket,
    now: float,
    wait_s: float,
    *,
    limits: Limits,
    window_calls_per_min: float = 0.0,
) -> Bucket:
    """A 429 asked to wait ``wait_s``: lower the rate and block every call until then.

    Args:
        bucket: the bucket as stored.
        now: the current time (epoch seconds).
        wait_s: the wait the answer asked for (until its window resets).
        limits: the bucket's parameters.
        window_calls_per_min: the calls granted in the limit's window before this 429,
            per minute (0: not known); taken as the limit only when the fleet was using at
            least ``SATURATED_SHARE`` of its rate.

    A 429 seen while already blocked (calls that were in flight together) lowers the rate
    once, not once per call.
    """
    bucket = clamp(bucket, limits)
    current = refill(bucket, now, limits.burst_s)
    until = now + max(0.0, wait_s)
    if now < bucket.blocked_until:
        return replace(current, blocked_until=max(bucket.blocked_until, until))
    rate = current.rate_per_min
    known = current.known_limit_per_min
    if window_calls_per_min > 0 and window_calls_per_min >= rate * SATURATED_SHARE:
        # Measured: the limit is what the window let through. Above it, go just under it;
        # already under it, the 429 came from calls bunched at a window's edge: ease off.
        known = window_calls_per_min
        lowered = min(known * SAFETY, rate * EDGE_DECREASE)
    else:
        lowered = rate * limits.decrease_factor
    return replace(
        current,
        tokens=0.0,
        rate_per_min=max(limits.floor_per_min, lowered),
        blocked_until=until,
        known_limit_per_min=known,
    )
