"""Backoff and rate-limit waits: pure functions, no I/O, no clock (``now`` is passed in).

- ``write_retry_delay``: the wait before writing again a record only this process holds.
- ``parse_retry_after``: the ``Retry-After`` header, as delta-seconds or an HTTP-date.
- ``parse_reset_at``: Segmind's ``x-rate-limit-reset-at-utc`` header, whose format nobody has
  documented; every plausible format is accepted (see the function).
- ``rate_limit_wait``: the wait a 429 response asks for, from either header.
- ``retry_delay``: the delay before retry ``attempt``: the server's wait when it gave one,
  else full jitter.

All waits are in seconds, as floats; ``now`` is a timezone-aware datetime (a naive one is
taken as UTC).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from producers.jitter import full_jitter

RETRY_AFTER: Final = "retry-after"
RESET_AT: Final = "x-rate-limit-reset-at-utc"

#: Epoch values above this are milliseconds: 1e11 seconds is the year 5138, while 1e11
#: milliseconds is 1973, so no real reset time is ambiguous.
_EPOCH_MS_THRESHOLD: Final = 1e11
#: Numeric reset values below this are read as seconds from now, not as an epoch: 1e9
#: seconds is 2001-09-09, and no rate limit resets before then.
_EPOCH_S_THRESHOLD: Final = 1e9
#: The longest wait any parser returns (a year): bounds absurd values before clamping.
_MAX_PARSED_WAIT_S: Final = 365 * 24 * 3600.0
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def write_retry_delay(
    attempt: int, *, now: float, until: float, base_s: float, cap_s: float, rand: float
) -> float | None:
    """The wait before writing again a record that only this process can write (Segmind's
    answer to a POST, held in memory), or ``None`` when no retry fits before ``until``.

    Args:
        attempt: writes retried so far (0 for the first retry).
        now: the current time (epoch seconds).
        until: the moment past which the write must not be tried (the POST's lease end:
            after it another delivery may have decided the request).
        base_s, cap_s, rand: as ``full_jitter``; a retry waits at least ``base_s / 2``.

    Raises:
        ValueError: as ``full_jitter``.
    """
    delay = max(base_s / 2, full_jitter(attempt, base_s=base_s, cap_s=cap_s, rand=rand))
    return delay if now + delay < until else None


def parse_retry_after(value: str, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 section 10.2.3).

    Args:
        value: delta-seconds (``"120"``; a decimal like ``"1.5"`` is accepted too) or an
            HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, or the obsolete RFC 850 and
            asctime forms).
        now: the current time.

    Returns:
        The wait in seconds (``0.0`` for a date in the past); ``None`` for an empty,
        negative or unparseable value.
    """
    text = value.strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        seconds = float(text)  # inf for absurdly long digit strings: the cap takes it
        return None if seconds < 0 else min(seconds, _MAX_PARSED_WAIT_S)
    moment = _parse_http_date(text)
    return None if moment is None else _seconds_until(moment, now)


def parse_reset_at(value: str, now: datetime) -> float | None:
    """Seconds to wait until the time in an ``x-rate-limit-reset-at-utc`` value.

    The format is undocumented, so every plausible one is accepted:

    - ISO 8601: ``2025-01-01T12:00:00Z``, with an offset, with or without a fraction, with
      a space for ``T``; a value without an offset is UTC (the header's name says so).
    - a number: epoch seconds; above 1e11, epoch milliseconds; below 1e9 (before 2001, so
      never a real reset time), seconds from now.
    - an HTTP-date.

    Args:
        value: the header's value.
        now: the current time.

    Returns:
        The wait in seconds (``0.0`` when the time has passed); ``None`` when the value
        cannot be read.
    """
    text = value.strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        number = float(text)
        if number < 0 or not math.isfinite(number):
            return None
        if number < _EPOCH_S_THRESHOLD:
            return min(number, _MAX_PARSED_WAIT_S)
        epoch_s = number / 1000.0 if number >= _EPOCH_MS_THRESHOLD else number
        return _seconds_until_epoch(epoch_s, now)
    moment = _parse_iso(text)
    if moment is None:
        moment = _parse_http_date(text)
    return None if moment is None else _seconds_until(moment, now)


def rate_limit_wait(
    headers: Mapping[str, str], now: datetime, *, max_wait_s: float
) -> float | None:
    """The wait a rate-limited response asks for, clamped into ``[0, max_wait_s]``.

    ``Retry-After`` is read first (the standard), then ``x-rate-limit-reset-at-utc`` (what
    Segmind is reported to send). A header that cannot be read is skipped. Header names
    are matched case-insensitively, whatever the mapping.

    Args:
        headers: the response headers.
        now: the current time.
        max_wait_s: the longest wait to return.

    Returns:
        The wait in seconds, or ``None`` when neither header is present and readable.
    """
    retry_after = get_header(headers, RETRY_AFTER)
    wait = parse_retry_after(retry_after, now) if retry_after is not None else None
    if wait is None:
        reset_at = get_header(headers, RESET_AT)
        wait = parse_reset_at(reset_at, now) if reset_at is not None else None
    if wait is None:
        return None
    return max(0.0, min(wait, max_wait_s))


def retry_delay(
    attempt: int,
    requested_wait_s: float | None,
    *,
    base_s: float,
    cap_s: float,
    rand: float,
    spread_s: float = 0.0,
) -> float:
    """The delay before retry ``attempt``.

    Args:
        attempt: retries made so far (0 for the first retry).
        requested_wait_s: the wait the server asked for (see ``rate_limit_wait``), or
            ``None`` when it asked for none.
        base_s: full jitter's delay scale, in seconds.
        cap_s: full jitter's largest delay, in seconds.
        rand: a uniform random number in ``[0, 1)``.
        spread_s: when the server gave a wait, up to this many seconds are added
            (``rand * spread_s``) so that a fleet told to come back at the same instant
            does not come back all at once. 0 honours the wait exactly.

    Returns:
        ``requested_wait_s + rand * spread_s`` when the server asked for a (finite,
        non-negative) wait, else ``full_jitter(attempt, ...)``.

    Raises:
        ValueError: as ``full_jitter``.
    """
    if requested_wait_s is not None and math.isfinite(requested_wait_s) and requested_wait_s >= 0:
        if not 0.0 <= rand < 1.0:
            raise ValueError(f"rand must be in [0, 1), not {rand}")
        return requested_wait_s + rand * max(0.0, spread_s)
    return full_jitter(attempt, base_s=base_s, cap_s=cap_s, rand=rand)


def get_header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (lower case) in any mapping, matched case-insensitively."""
    value = headers.get(name)
    if value is not None:
        return value
    return next((found for key, found in headers.items() if key.lower() == name), None)


def _parse_http_date(text: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return moment


def _parse_iso(text: str) -> datetime | None:
    # fromisoformat (3.11) reads "Z", offsets, any fraction length and a space separator; it
    # also reads a bare date, which is fine (midnight UTC).
    if not text[:1].isdigit():
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _seconds_until(moment: datetime, now: datetime) -> float:
    try:
        seconds = (_aware(moment) - _aware(now)).total_seconds()
    except OverflowError:
        return _MAX_PARSED_WAIT_S
    return max(0.0, min(seconds, _MAX_PARSED_WAIT_S))


def _seconds_until_epoch(epoch_s: float, now: datetime) -> float:
    seconds = epoch_s - _aware(now).timestamp()
    return max(0.0, min(seconds, _MAX_PARSED_WAIT_S))
