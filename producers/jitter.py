"""Exponential backoff with full jitter: the one retry spacing of the project.

The publisher, the result consumer and the worker space their retries with it (the AWS
"full jitter" scheme): a uniformly random delay in ``[0, min(cap, base * 2**attempt))``,
which spreads a fleet's retries instead of synchronising them. A pure function: the random
number is passed in.
"""

from __future__ import annotations

import math


def full_jitter(attempt: int, *, base_s: float, cap_s: float, rand: float) -> float:
    """Exponential backoff with full jitter: ``rand * min(cap_s, base_s * 2**attempt)``.

    Args:
        attempt: retries made so far (0 for the first retry); any size, huge values are safe.
        base_s: the delay scale of the first retry, in seconds.
        cap_s: the largest delay, in seconds.
        rand: a uniform random number in ``[0, 1)``, passed in so the function is pure.

    Returns:
        A delay in ``[0, cap_s]``.

    Raises:
        ValueError: ``attempt`` is negative, ``rand`` is outside ``[0, 1)``, or ``base_s`` /
            ``cap_s`` are negative or not finite.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), not {rand}")
    if not (math.isfinite(base_s) and math.isfinite(cap_s)) or base_s < 0 or cap_s < 0:
        raise ValueError("base_s and cap_s must be finite and >= 0")
    # 2.0 ** 1024 raises OverflowError; past 2**1023 the cap has long been reached anyway
    # (a product that overflows to inf is fine: min() takes the cap).
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, 1023))
    return rand * ceiling
