"""Backoff and rate-limit waits: every rule of worker.backoff, with the formats seen or feared
(full jitter itself: tests/producers/test_jitter.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.backoff import (
    get_header,
    parse_reset_at,
    parse_retry_after,
    rate_limit_wait,
    retry_delay,
    write_retry_delay,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_EPOCH = NOW.timestamp()


# Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),  # not RFC, but harmless to honour
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Saturday, 01-Mar-25 12:01:00 GMT", 60.0),  # obsolete RFC 850
        ("Sat Mar  1 12:00:10 2025", 10.0),  # obsolete asctime
        ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),  # in the past: go now
        ("Sat, 01 Mar 2025 12:00:30 +0100", 0.0),  # 11:00:30 UTC: past
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["", "   ", "-5", "soon", "12 seconds", "0x10", "Sat, 99 Foo"])
def test_parse_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def test_parse_retry_after_absurd_values_are_bounded() -> None:
    one_year = 365 * 24 * 3600.0
    assert parse_retry_after("9" * 400, NOW) == one_year
    assert parse_retry_after("Fri, 01 Jan 9999 00:00:00 GMT", NOW) == one_year


def test_parse_retry_after_naive_now_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:30 GMT", naive) == pytest.approx(30.0)


# x-rate-limit-reset-at-utc --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-01T12:00:30Z", 30.0),
        ("2025-03-01T12:00:30.250Z", 30.25),
        ("2025-03-01T12:00:30.123456789Z", 30.123456),  # nanoseconds: truncated
        ("2025-03-01T12:00:30", 30.0),  # naive: UTC, as the header's name says
        ("2025-03-01 12:00:30", 30.0),
        ("2025-03-01T13:00:30+01:00", 30.0),
        ("2025-03-01T07:00:30-05:00", 30.0),
        ("2025-03-01T12:00:30.5+00:00", 30.5),
        (str(int(NOW_EPOCH) + 45), 45.0),  # epoch seconds
        (f"{NOW_EPOCH + 12.5:.3f}", 12.5),  # epoch seconds with a fraction
        (str(int(NOW_EPOCH * 1000) + 2500), 2.5),  # epoch milliseconds
        ("Sat, 01 Mar 2025 12:01:00 GMT", 60.0),  # HTTP-date
        ("30", 30.0),  # too small for an epoch: seconds from now
        ("2025-03-01T11:59:00Z", 0.0),  # past
        (str(int(NOW_EPOCH) - 100), 0.0),  # past epoch
        (str(int(NOW_EPOCH * 1000) - 100_000), 0.0),  # past epoch ms
    ],
)
def test_parse_reset_at_reads_every_plausible_format(value: str, expected: float) -> None:
    assert parse_reset_at(value, NOW) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    "value", ["", "garbage", "2025-13-45T99:99:99Z", "-30", "next minute", "nan", "inf", "T12:00"]
)
def test_parse_reset_at_garbage_is_none(value: str) -> None:
    assert parse_reset_at(value, NOW) is None


# rate_limit_wait -----------------------------------------------------------------------


def test_rate_limit_wait_prefers_retry_after() -> None:
    headers = {"Retry-After": "5", "x-rate-limit-reset-at-utc": "2025-03-01T12:00:40Z"}
    assert rate_limit_wait(headers, NOW, max_wait_s=600) == 5.0


def test_rate_limit_wait_uses_reset_at_without_retry_after() -> None:
    headers = {"x-rate-limit-reset-at-utc": "2025-03-01T12:00:40Z"}
    assert rate_limit_wait(headers, NOW, max_wait_s=600) == pytest.approx(40.0)


def test_rate_limit_wait_falls_back_to_reset_at_when_retry_after_is_garbage() -> None:
    headers = {"retry-after": "later", "X-Rate-Limit-Reset-At-UTC": "2025-03-01T12:00:07Z"}
    assert rate_limit_wait(headers, NOW, max_wait_s=600) == pytest.approx(7.0)


def test_rate_limit_wait_is_none_without_readable_headers() -> None:
    assert rate_limit_wait({}, NOW, max_wait_s=600) is None
    assert rate_limit_wait({"content-type": "text/plain"}, NOW, max_wait_s=600) is None
    garbage = {"retry-after": "?", "x-rate-limit-reset-at-utc": "?"}
    assert rate_limit_wait(garbage, NOW, max_wait_s=600) is None


def test_rate_limit_wait_clamps_into_zero_and_max() -> None:
    far = {"x-rate-limit-reset-at-utc": (NOW + timedelta(hours=5)).isoformat()}
    assert rate_limit_wait(far, NOW, max_wait_s=90) == 90.0
    past = {"x-rate-limit-reset-at-utc": "2020-01-01T00:00:00Z"}
    assert rate_limit_wait(past, NOW, max_wait_s=90) == 0.0


@pytest.mark.parametrize("name", ["retry-after", "RETRY-AFTER", "Retry-After", "rEtRy-AfTeR"])
def test_header_lookup_is_case_insensitive(name: str) -> None:
    assert rate_limit_wait({name: "3"}, NOW, max_wait_s=60) == 3.0
    assert get_header({name: "3"}, "retry-after") == "3"


def test_rate_limit_wait_with_an_aware_non_utc_now() -> None:
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    headers = {"x-rate-limit-reset-at-utc": "2025-03-01T12:00:20Z"}
    assert rate_limit_wait(headers, paris, max_wait_s=60) == pytest.approx(20.0)


# retry_delay ---------------------------------------------------------------------------


def test_retry_delay_honours_the_servers_wait() -> None:
    assert retry_delay(7, 12.0, base_s=1.0, cap_s=5.0, rand=0.9) == 12.0
    assert retry_delay(0, 0.0, base_s=1.0, cap_s=5.0, rand=0.9) == 0.0


def test_retry_delay_spreads_a_servers_wait_when_asked() -> None:
    assert retry_delay(0, 10.0, base_s=1.0, cap_s=5.0, rand=0.5, spread_s=2.0) == 11.0


def test_retry_delay_uses_full_jitter_without_a_wait() -> None:
    assert retry_delay(3, None, base_s=1.0, cap_s=5.0, rand=0.5) == 2.5
    assert retry_delay(3, math.nan, base_s=1.0, cap_s=5.0, rand=0.5) == 2.5
    assert retry_delay(3, -1.0, base_s=1.0, cap_s=5.0, rand=0.5) == 2.5


def test_retry_delay_rejects_bad_rand_either_way() -> None:
    with pytest.raises(ValueError, match="rand"):
        retry_delay(0, 3.0, base_s=1.0, cap_s=5.0, rand=1.5)
    with pytest.raises(ValueError, match="rand"):
        retry_delay(0, None, base_s=1.0, cap_s=5.0, rand=1.5)


@given(value=st.text(max_size=80))
def test_header_parsers_never_raise(value: str) -> None:
    for parse in (parse_retry_after, parse_reset_at):
        wait = parse(value, NOW)
        assert wait is None or 0.0 <= wait <= 365 * 24 * 3600.0


def test_write_retry_delay_fits_before_the_deadline() -> None:
    """A write retried in place waits with full jitter (at least half the base), and is
    not retried when the wait would end past ``until``."""
    assert write_retry_delay(0, now=100.0, until=110.0, base_s=0.1, cap_s=1.0, rand=0.5) == 0.05
    assert write_retry_delay(0, now=100.0, until=110.0, base_s=0.1, cap_s=1.0, rand=0.0) == 0.05
    assert write_retry_delay(8, now=100.0, until=110.0, base_s=0.1, cap_s=1.0, rand=0.9) == 0.9
    assert write_retry_delay(8, now=109.5, until=110.0, base_s=0.1, cap_s=1.0, rand=0.9) is None
    assert write_retry_delay(0, now=110.0, until=110.0, base_s=0.1, cap_s=1.0, rand=0.0) is None
