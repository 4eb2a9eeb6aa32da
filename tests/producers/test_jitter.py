"""Full jitter: the one retry spacing of the publisher, the consumer and the worker."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.jitter import full_jitter


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.5, 0.5),  # 0.5 * min(30, 1 * 1)
        (1, 0.5, 1.0),  # 0.5 * 2
        (3, 0.25, 2.0),  # 0.25 * 8
        (4, 0.5, 8.0),  # 0.5 * 16
        (5, 0.5, 15.0),  # capped: 0.5 * min(30, 32)
        (0, 0.0, 0.0),
    ],
)
def test_full_jitter_is_rand_times_capped_exponential(
    attempt: int, rand: float, expected: float
) -> None:
    assert full_jitter(attempt, base_s=1.0, cap_s=30.0, rand=rand) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", [1023, 1024, 5000, 10**9, 10**100])
def test_full_jitter_survives_huge_attempts(attempt: int) -> None:
    assert full_jitter(attempt, base_s=2.0, cap_s=60.0, rand=0.5) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt": -1},
        {"rand": 1.0},
        {"rand": -0.1},
        {"rand": math.nan},
        {"base_s": -1.0},
        {"cap_s": math.inf},
        {"base_s": math.nan},
    ],
)
def test_full_jitter_rejects_invalid_arguments(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"attempt": 0, "base_s": 1.0, "cap_s": 10.0, "rand": 0.5}
    args.update(kwargs)
    attempt = int(args.pop("attempt"))
    with pytest.raises(ValueError, match="must be"):
        full_jitter(attempt, base_s=args["base_s"], cap_s=args["cap_s"], rand=args["rand"])


@given(
    attempt=st.integers(min_value=0, max_value=10**6),
    base=st.floats(min_value=0, max_value=1e6),
    cap=st.floats(min_value=0, max_value=1e6),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_full_jitter_stays_within_zero_and_cap(
    attempt: int, base: float, cap: float, rand: float
) -> None:
    delay = full_jitter(attempt, base_s=base, cap_s=cap, rand=rand)
    assert 0.0 <= delay <= cap


@given(attempt=st.integers(min_value=0, max_value=60))
def test_full_jitter_ceiling_never_shrinks_with_attempts(attempt: int) -> None:
    ceiling = full_jitter(attempt, base_s=0.5, cap_s=120.0, rand=0.999)
    assert full_jitter(attempt + 1, base_s=0.5, cap_s=120.0, rand=0.999) >= ceiling
