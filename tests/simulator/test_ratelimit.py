"""The rate window and its reset header (``simulator.ratelimit``)."""

from __future__ import annotations

from datetime import UTC, datetime

from simulator.ratelimit import RateWindow, format_reset

T0 = 1_800_000_000.0


def test_reset_header_is_iso_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2026, 11, 21, 7, 41, tzinfo=UTC).timestamp()
    assert format_reset(moment, "iso") == "2026-11-21T07:41:00.000Z"
    assert format_reset(moment + 0.25, "iso") == "2026-11-21T07:41:00.250Z"


def test_reset_header_can_be_epoch_seconds() -> None:
    assert format_reset(1_800_000_060.0, "epoch") == "1800000060.000"


def test_rate_window_allows_rpm_then_refuses_until_the_window_ends() -> None:
    window = RateWindow(rpm=2, window_s=60.0)
    now = 1_800_000_030.0  # in the window [1_800_000_000, 1_800_000_060)
    assert window.hit("k", now) is None
    assert window.hit("k", now + 1) is None
    assert window.hit("k", now + 2) == 1_800_000_060.0
    assert window.hit("k", now + 29.9) == 1_800_000_060.0
    # Refused requests did not count: the next window has its full budget.
    assert window.hit("k", 1_800_000_060.0) is None
    assert window.hit("k", 1_800_000_061.0) is None
    assert window.hit("k", 1_800_000_062.0) == 1_800_000_120.0


def test_rate_window_is_per_identity() -> None:
    window = RateWindow(rpm=1, window_s=60.0)
    assert window.hit("a", T0) is None
    assert window.hit("b", T0) is None
    assert window.hit("a", T0) is not None


def test_rate_window_zero_rpm_is_unlimited() -> None:
    window = RateWindow(rpm=0, window_s=60.0)
    assert all(window.hit("k", T0) is None for _ in range(1000))
