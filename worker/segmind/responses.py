"""Parsing Segmind's successful responses into typed values: pure functions, no I/O.

Segmind's shapes are only partly documented (see SEGMIND_API.md), so every parser reads
defensively: missing keys get sensible defaults where the value is not essential, numbers
may come as strings, and a poll's ``output`` may be a JSON string (documented), an already
decoded list, a single object, a double-encoded string, or empty.

What cannot be read raises a ``SegmindError`` with code ``malformed_response``:
``FinalError`` for a submit (the job was probably created, but without a readable poll_url
it cannot be followed: retrying would pay twice), ``TransientError`` for a poll or credits
(reading again is free and may succeed).

Status rule (``job_status``), case-insensitive, surrounding whitespace ignored:
``QUEUED`` and ``PROCESSING`` are themselves; ``COMPLETED`` is the only success;
``FAILED``, ``FAILURE``, ``ERROR`` and ``ERRORED`` are failures; anything else (``CANCELLED``
has been seen, a missing status too) is ``UNKNOWN``: not terminal, never a crash. A job
stuck in an unknown status ends at its deadline, not at the first odd answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pydantic import JsonValue, ValidationError

from producers.contract import ErrorCode, Output
from worker.backoff import get_header
from worker.segmind.errors import (
    Endpoint,
    FinalError,
    SegmindError,
    TransientError,
    clean_message,
    keyed_message,
)

COST_HEADER: Final = "x-cost"
REMAINING_CREDITS_HEADER: Final = "x-remaining-credits"
#: The ``type`` of an output item that did not say what it is.
UNKNOWN_OUTPUT_TYPE: Final = "unknown"

_FAILURE_STATUSES: Final = frozenset({"FAILED", "FAILURE", "ERROR", "ERRORED"})
_MAX_DECODES: Final = 3
_URL = re.compile(r"https?://\S+", re.IGNORECASE)
_SNIPPET_CHARS: Final = 120


class JobStatus(StrEnum):
    """A generation's state, as read from a poll (see the module's status rule)."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    #: Any other status; the raw string is kept in ``PollResult.raw_status``.
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Submission:
    """A successful submit.

    Attributes:
        segmind_request_id: Segmind's id for the generation (from ``request_id``, else the
            poll_url's last path segment).
        poll_url: where to poll; check its host before following it.
        status: the status Segmind reported (normally ``QUEUED``).
        cost_usd: the ``x-cost`` header, when present and numeric.
        remaining_credits: the ``x-remaining-credits`` header, when present and numeric.
    """

    segmind_request_id: str
    poll_url: str
    status: str
    cost_usd: float | None = None
    remaining_credits: float | None = None


@dataclass(frozen=True, slots=True)
class PollResult:
    """One poll's answer.

    Attributes:
        status: the normalized status.
        raw_status: the status string as Segmind sent it (``""`` when absent).
        outputs: the parsed outputs for ``COMPLETED`` (a list, possibly empty), else ``None``.
        error_message: Segmind's reason for ``FAILED`` or an ``UNKNOWN`` status (read from
            ``error_message``, ``error``, ``message`` ...), else ``None``.
    """

    status: JobStatus
    raw_status: str
    outputs: list[Output] | None = None
    error_message: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the generation is over: only ``COMPLETED`` and ``FAILED`` are."""
        return self.status in (JobStatus.COMPLETED, JobStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Credits:
    """The account's balance in USD, from ``/v1/get-user-credits``."""

    credits: float
    free_credits: float

    @property
    def total(self) -> float:
        """Paid and free credits together."""
        return self.credits + self.free_credits


def job_status(raw: str) -> JobStatus:
    """The ``JobStatus`` for a raw status string (see the module's status rule)."""
    normalized = raw.strip().upper()
    if normalized in _FAILURE_STATUSES:
        return JobStatus.FAILED
    if normalized in (JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.COMPLETED):
        return JobStatus(normalized)
    return JobStatus.UNKNOWN


def parse_submission(body: bytes, headers: Mapping[str, str]) -> Submission:
    """A successful submit's body and headers as a ``Submission``.

    Args:
        body: ``{"message", "poll_url", "request_id", "status"}`` as JSON.
        headers: the response headers (``x-cost``, ``x-remaining-credits`` are read).

    Raises:
        FinalError: ``malformed_response`` when the body is not a JSON object or has no
            http(s) ``poll_url``. Final: the job probably exists and is billed, so the
            submit must not be repeated.
    """
    data = _json_object(body, "submit")
    poll_url = data.get("poll_url")
    if not isinstance(poll_url, str) or not _URL.fullmatch(poll_url.strip()):
        raise _malformed("submit", f"the submit response has no poll_url: {_snippet(body)}")
    poll_url = poll_url.strip()
    request_id = data.get("request_id")
    if isinstance(request_id, int | str) and not isinstance(request_id, bool) and str(request_id):
        segmind_request_id = str(request_id).strip()
    else:
        segmind_request_id = poll_url.rstrip("/").rsplit("/", 1)[-1]
    status = data.get("status")
    return Submission(
        segmind_request_id=segmind_request_id,
        poll_url=poll_url,
        status=status.strip() if isinstance(status, str) and status.strip() else "QUEUED",
        cost_usd=_number(get_header(headers, COST_HEADER)),
        remaining_credits=_number(get_header(headers, REMAINING_CREDITS_HEADER)),
    )


def parse_poll(body: bytes) -> PollResult:
    """A successful poll's body as a ``PollResult``.

    Args:
        body: a JSON object with ``status`` and, when COMPLETED, ``output``.

    Raises:
        TransientError: ``malformed_response`` when the body is not a JSON object, or it
            says COMPLETED without readable outputs (reading again may succeed; the
            caller bounds the retries).
    """
    data = _json_object(body, "poll")
    status_value = data.get("status")
    if isinstance(status_value, str):
        raw_status = status_value.strip()
    elif status_value is None:
        raw_status = ""
    else:
        raw_status = clean_message(json.dumps(status_value), limit=100)
    status = job_status(raw_status)
    if status is JobStatus.COMPLETED:
        output = data.get("output", data.get("outputs"))
        outputs = parse_outputs(output)
        if not outputs:
            raise _malformed("poll", "the generation is COMPLETED but its output is empty")
        return PollResult(status=status, raw_status=raw_status, outputs=outputs)
    message = None
    if status in (JobStatus.FAILED, JobStatus.UNKNOWN):
        message = clean_message(keyed_message(data)) or None
    return PollResult(status=status, raw_status=raw_status, error_message=message)


def parse_outputs(output: object) -> list[Output]:
    """A COMPLETED poll's ``output`` as a flat list of ``Output``.

    Accepts a JSON string of a list (documented), a string encoded twice, an already
    decoded list, a single item object, an object mapping keynames to values, a bare URL
    string, or nothing (``None``, ``""``, ``"null"``: an empty list; ``parse_poll`` treats
    an empty output of a COMPLETED job as malformed). Each item
    ``{"keyname", "value": {"data", "type"}}`` becomes ``Output(keyname, type, data)``;
    items with ``data``/``type`` at the top level, a bare ``value``, or no keyname are read
    too (keyname ``output_<index>``, type ``unknown``, data ``None`` when missing).

    Raises:
        TransientError: ``malformed_response`` for a string that is neither JSON nor a URL,
            or a value of another type (a number, a boolean).
    """
    value: object = output
    for _ in range(_MAX_DECODES):
        if not isinstance(value, str):
            break
        text = value.strip()
        if not text or text == "null":
            return []
        if text[0] not in '[{"':
            if _URL.fullmatch(text):
                return [Output(keyname="output_0", type=UNKNOWN_OUTPUT_TYPE, data=text)]
            raise _malformed("poll", f"the output is not JSON: {_snippet(text)}")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise _malformed("poll", f"the output is not valid JSON: {_snippet(text)}") from None
    if value is None:
        return []
    if isinstance(value, dict):
        if _looks_like_item(value):
            items: list[object] = [value]
        else:
            items = [{"keyname": key, "value": item} for key, item in value.items()]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise _malformed("poll", f"the output is a {type(value).__name__}, not a list")
    try:
        return [_output(index, item) for index, item in enumerate(items)]
    except ValidationError:
        raise _malformed("poll", "an output item is not JSON data") from None


def parse_credits(body: bytes) -> Credits:
    """The credits endpoint's body, ``{"credits": 0.0, "free-credits": 0.018}``.

    ``free-credits`` (or ``free_credits``) defaults to 0 when absent; numbers may be strings.

    Raises:
        TransientError: ``malformed_response`` when the body is not a JSON object or has
            no numeric ``credits``.
    """
    data = _json_object(body, "credits")
    credits = _number(data.get("credits"))
    if credits is None:
        raise _malformed("credits", f"the credits response has no credits: {_snippet(body)}")
    free = _number(data.get("free-credits", data.get("free_credits")))
    return Credits(credits=credits, free_credits=free or 0.0)


def _looks_like_item(value: Mapping[str, object]) -> bool:
    return any(key in value for key in ("keyname", "value", "data"))


def _output(index: int, item: object) -> Output:
    if not isinstance(item, dict):
        return Output(keyname=f"output_{index}", type=UNKNOWN_OUTPUT_TYPE, data=_json(item))
    keyname = item.get("keyname", item.get("key", item.get("name")))
    keyname = str(keyname) if keyname is not None and str(keyname) else f"output_{index}"
    value = item.get("value", item)
    if isinstance(value, dict) and ("data" in value or "type" in value):
        data, kind = value.get("data"), value.get("type")
    elif "value" in item:
        data, kind = value, item.get("type")
    else:
        data, kind = item.get("data"), item.get("type")
    kind = str(kind).strip() if isinstance(kind, str) and kind.strip() else UNKNOWN_OUTPUT_TYPE
    return Output(keyname=keyname, type=kind, data=_json(data))


def _json(value: object) -> JsonValue:
    # Values come from json.loads, so they are JSON data; Output validates them anyway.
    return value  # type: ignore[return-value]


def _json_object(body: bytes, endpoint: Endpoint) -> dict[str, object]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise _malformed(
            endpoint, f"the {endpoint} response is not JSON: {_snippet(body)}"
        ) from None
    if not isinstance(data, dict):
        raise _malformed(
            endpoint, f"the {endpoint} response is not a JSON object: {_snippet(body)}"
        )
    return data


def _malformed(endpoint: Endpoint, message: str) -> SegmindError:
    if endpoint == "submit":
        return FinalError(ErrorCode.MALFORMED_RESPONSE, message, endpoint=endpoint, http_status=200)
    return TransientError(
        ErrorCode.MALFORMED_RESPONSE,
        message,
        endpoint=endpoint,
        http_status=200,
        may_have_been_processed=True,
    )


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    return clean_message(text[: _SNIPPET_CHARS * 2], limit=_SNIPPET_CHARS) or "(empty)"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
