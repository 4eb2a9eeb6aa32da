"""Parsing Segmind's successful responses: every documented and feared shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.contract import ErrorCode, Output
from worker.segmind.errors import FinalError, SegmindError, TransientError
from worker.segmind.responses import (
    Credits,
    JobStatus,
    PollResult,
    Submission,
    job_status,
    parse_credits,
    parse_outputs,
    parse_poll,
    parse_submission,
)

REQUEST_ID = "0123456789abcdef0123456789abcdef"
POLL_URL = f"https://api.segmind.com/workflows/request/{REQUEST_ID}"
ITEMS = [
    {"keyname": "video", "value": {"data": "https://cdn.segmind.com/a.mp4", "type": "video"}},
    {"keyname": "script", "value": {"data": "five scenes", "type": "text"}},
]
OUTPUTS = [
    Output(keyname="video", type="video", data="https://cdn.segmind.com/a.mp4"),
    Output(keyname="script", type="text", data="five scenes"),
]


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


# Submissions ---------------------------------------------------------------------------


def test_parse_submission_documented_shape() -> None:
    body = dumps(
        {
            "message": "Request in queue",
            "poll_url": POLL_URL,
            "request_id": REQUEST_ID,
            "status": "QUEUED",
        }
    )
    assert parse_submission(body, {}) == Submission(
        segmind_request_id=REQUEST_ID, poll_url=POLL_URL, status="QUEUED"
    )


def test_parse_submission_reads_cost_headers_case_insensitively() -> None:
    body = dumps({"poll_url": POLL_URL, "request_id": REQUEST_ID, "status": "QUEUED"})
    submission = parse_submission(body, {"X-Cost": "0.6676", "x-remaining-credits": " 12.5 "})
    assert submission.cost_usd == pytest.approx(0.6676)
    assert submission.remaining_credits == pytest.approx(12.5)


@pytest.mark.parametrize("value", ["", "free", "nan", "inf", "1e999"])
def test_parse_submission_ignores_unreadable_cost_headers(value: str) -> None:
    body = dumps({"poll_url": POLL_URL, "request_id": REQUEST_ID})
    submission = parse_submission(body, {"x-cost": value, "x-remaining-credits": value})
    assert submission.cost_usd is None
    assert submission.remaining_credits is None


def test_parse_submission_tolerates_missing_request_id_and_status() -> None:
    submission = parse_submission(dumps({"poll_url": f"  {POLL_URL}/ "}), {})
    assert submission.segmind_request_id == REQUEST_ID
    assert submission.poll_url == f"{POLL_URL}/"
    assert submission.status == "QUEUED"


def test_parse_submission_numeric_request_id() -> None:
    submission = parse_submission(dumps({"poll_url": POLL_URL, "request_id": 42}), {})
    assert submission.segmind_request_id == "42"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"<html><title>502</title></html>",
        b'{"poll_url": "https://api.segmind.com/workflows/req',  # truncated
        b"[]",
        b'"QUEUED"',
        b"null",
        b'{"request_id": "abc", "status": "QUEUED"}',  # no poll_url
        b'{"poll_url": 17}',
        b'{"poll_url": "/workflows/request/abc"}',  # relative
        b'{"poll_url": "ftp://api.segmind.com/x"}',
        b'{"poll_url": "https://api.segmind.com/with space"}',
        b"\xff\xfe",
    ],
)
def test_parse_submission_malformed_is_final(body: bytes) -> None:
    with pytest.raises(FinalError) as caught:
        parse_submission(body, {})
    assert caught.value.code is ErrorCode.MALFORMED_RESPONSE
    assert caught.value.endpoint == "submit"
    assert caught.value.http_status == 200


# Job statuses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("QUEUED", JobStatus.QUEUED),
        ("queued", JobStatus.QUEUED),
        ("PROCESSING", JobStatus.PROCESSING),
        (" Processing ", JobStatus.PROCESSING),
        ("COMPLETED", JobStatus.COMPLETED),
        ("FAILED", JobStatus.FAILED),
        ("failed", JobStatus.FAILED),
        ("ERROR", JobStatus.FAILED),
        ("Error", JobStatus.FAILED),
        ("FAILURE", JobStatus.FAILED),
        ("ERRORED", JobStatus.FAILED),
        ("CANCELLED", JobStatus.UNKNOWN),
        ("CANCELED", JobStatus.UNKNOWN),
        ("SUCCEEDED", JobStatus.UNKNOWN),
        ("", JobStatus.UNKNOWN),
        ("UNKNOWN", JobStatus.UNKNOWN),
    ],
)
def test_job_status_rule(raw: str, status: JobStatus) -> None:
    assert job_status(raw) is status


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (JobStatus.QUEUED, False),
        (JobStatus.PROCESSING, False),
        (JobStatus.COMPLETED, True),
        (JobStatus.FAILED, True),
        (JobStatus.UNKNOWN, False),
    ],
)
def test_only_completed_and_failed_are_terminal(status: JobStatus, terminal: bool) -> None:
    assert PollResult(status=status, raw_status=status.value).terminal is terminal


# Polls ---------------------------------------------------------------------------------


def test_poll_queued() -> None:
    result = parse_poll(dumps({"status": "QUEUED", "message": "Request in queue"}))
    assert result == PollResult(status=JobStatus.QUEUED, raw_status="QUEUED")
    assert not result.terminal


def test_poll_processing_with_empty_output() -> None:
    result = parse_poll(dumps({"status": "PROCESSING", "output": ""}))
    assert result == PollResult(status=JobStatus.PROCESSING, raw_status="PROCESSING")


def test_poll_completed_with_string_output() -> None:
    result = parse_poll(dumps({"status": "COMPLETED", "output": json.dumps(ITEMS)}))
    assert result.status is JobStatus.COMPLETED
    assert result.terminal
    assert result.outputs == OUTPUTS
    assert result.error_message is None


def test_poll_completed_with_list_output() -> None:
    result = parse_poll(dumps({"status": "COMPLETED", "output": ITEMS}))
    assert result.outputs == OUTPUTS


def test_poll_completed_with_outputs_key() -> None:
    assert parse_poll(dumps({"status": "COMPLETED", "outputs": ITEMS})).outputs == OUTPUTS


@pytest.mark.parametrize("field", ["error", "error_message"])
def test_poll_failed_reads_either_field(field: str) -> None:
    result = parse_poll(dumps({"status": "FAILED", field: "GPU out of memory"}))
    assert result.status is JobStatus.FAILED
    assert result.terminal
    assert result.error_message == "GPU out of memory"
    assert result.outputs is None


def test_poll_failed_with_nested_error_and_without_message() -> None:
    nested = parse_poll(dumps({"status": "FAILED", "error": {"message": "node 3 crashed"}}))
    assert nested.error_message == "node 3 crashed"
    bare = parse_poll(dumps({"status": "FAILED"}))
    assert bare.error_message is None
    assert bare.terminal


def test_poll_error_status_is_a_failure() -> None:
    result = parse_poll(dumps({"status": "error", "error_message": "boom"}))
    assert result.status is JobStatus.FAILED
    assert result.raw_status == "error"


def test_poll_unknown_status_is_kept_and_not_terminal() -> None:
    result = parse_poll(dumps({"status": "CANCELLED", "error": "cancelled by admin"}))
    assert result.status is JobStatus.UNKNOWN
    assert result.raw_status == "CANCELLED"
    assert not result.terminal
    assert result.error_message == "cancelled by admin"


@pytest.mark.parametrize(
    ("body", "raw"),
    [
        ({}, ""),
        ({"status": None}, ""),
        ({"status": 3}, "3"),
        ({"status": ["COMPLETED"]}, '["COMPLETED"]'),
        ({"output": json.dumps(ITEMS)}, ""),
    ],
)
def test_poll_missing_or_odd_status_is_unknown(body: dict[str, object], raw: str) -> None:
    result = parse_poll(dumps(body))
    assert result.status is JobStatus.UNKNOWN
    assert result.raw_status == raw
    assert not result.terminal


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'["COMPLETED"]', b"null", b"42", b'"COMPLETED"', b"{", b"<html></html>", b"\xff"],
)
def test_poll_non_object_is_transient_malformed(body: bytes) -> None:
    with pytest.raises(TransientError) as caught:
        parse_poll(body)
    assert caught.value.code is ErrorCode.MALFORMED_RESPONSE
    assert caught.value.endpoint == "poll"


@pytest.mark.parametrize(
    "output", [None, "", "   ", "[]", [], "not json at all", "[{broken", 42, True]
)
def test_poll_completed_without_readable_output_is_transient_malformed(output: object) -> None:
    with pytest.raises(TransientError) as caught:
        parse_poll(dumps({"status": "COMPLETED", "output": output}))
    assert caught.value.code is ErrorCode.MALFORMED_RESPONSE


@pytest.mark.parametrize("output", ["not json at all", "[{broken", 42])
def test_unreadable_output_of_an_unfinished_job_is_ignored(output: object) -> None:
    result = parse_poll(dumps({"status": "PROCESSING", "output": output}))
    assert result.status is JobStatus.PROCESSING
    assert result.outputs is None


# Outputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        json.dumps(ITEMS),
        ITEMS,
        json.dumps(json.dumps(ITEMS)),  # encoded twice
        f"  {json.dumps(ITEMS)}\n",
    ],
)
def test_parse_outputs_documented_shapes(output: object) -> None:
    assert parse_outputs(output) == OUTPUTS


@pytest.mark.parametrize("output", [None, "", "  ", "[]", [], "null"])
def test_parse_outputs_empty(output: object) -> None:
    assert parse_outputs(output) == []


def test_parse_outputs_single_item_object() -> None:
    assert parse_outputs(ITEMS[0]) == OUTPUTS[:1]
    assert parse_outputs(json.dumps(ITEMS[0])) == OUTPUTS[:1]


def test_parse_outputs_mapping_of_keynames() -> None:
    output = {"image": {"data": "https://x/1.png", "type": "image"}, "caption": "a cat"}
    assert parse_outputs(output) == [
        Output(keyname="image", type="image", data="https://x/1.png"),
        Output(keyname="caption", type="unknown", data="a cat"),
    ]


def test_parse_outputs_bare_url() -> None:
    assert parse_outputs("https://cdn.segmind.com/out.png") == [
        Output(keyname="output_0", type="unknown", data="https://cdn.segmind.com/out.png")
    ]


def test_parse_outputs_tolerates_missing_keys() -> None:
    output = [
        {"value": {"data": "https://x/a.png", "type": "image"}},  # no keyname
        {"keyname": "k", "value": {"data": "d"}},  # no type
        {"keyname": "t", "value": {"type": "text"}},  # no data
        {"keyname": "flat", "data": "https://x/b.mp4", "type": "video"},  # no value wrapper
        {"keyname": "raw", "value": "plain value", "type": "text"},
        {"keyname": 7, "value": {"data": {"scenes": [1, 2]}, "type": "json"}},
        "https://x/c.png",
        {"keyname": "", "value": {"data": "x", "type": "  "}},
    ]
    assert parse_outputs(output) == [
        Output(keyname="output_0", type="image", data="https://x/a.png"),
        Output(keyname="k", type="unknown", data="d"),
        Output(keyname="t", type="text", data=None),
        Output(keyname="flat", type="video", data="https://x/b.mp4"),
        Output(keyname="raw", type="text", data="plain value"),
        Output(keyname="7", type="json", data={"scenes": [1, 2]}),
        Output(keyname="output_6", type="unknown", data="https://x/c.png"),
        Output(keyname="output_7", type="unknown", data="x"),
    ]


@pytest.mark.parametrize("output", ["garbage", "{not json", "[1, 2", 3.5, False, '"x"'])
def test_parse_outputs_garbage_is_transient_malformed(output: object) -> None:
    with pytest.raises(TransientError) as caught:
        parse_outputs(output)
    assert caught.value.code is ErrorCode.MALFORMED_RESPONSE
    assert caught.value.endpoint == "poll"


# Credits -------------------------------------------------------------------------------


def test_parse_credits_documented_shape() -> None:
    credits = parse_credits(b'{"credits": 0.0, "free-credits": 0.0184921035}')
    assert credits == Credits(credits=0.0, free_credits=0.0184921035)
    assert credits.total == pytest.approx(0.0184921035)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"credits": 12}', Credits(12.0, 0.0)),
        (b'{"credits": "3.5", "free_credits": "1"}', Credits(3.5, 1.0)),
        (b'{"credits": 1, "free-credits": null}', Credits(1.0, 0.0)),
        (b'{"credits": 1, "free-credits": "lots"}', Credits(1.0, 0.0)),
    ],
)
def test_parse_credits_tolerates_variants(body: bytes, expected: Credits) -> None:
    assert parse_credits(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"free-credits": 1}', b'{"credits": true}', b'{"credits": "many"}', b"<html>"],
)
def test_parse_credits_malformed_is_transient(body: bytes) -> None:
    with pytest.raises(TransientError) as caught:
        parse_credits(body)
    assert caught.value.code is ErrorCode.MALFORMED_RESPONSE
    assert caught.value.endpoint == "credits"


# Never crash ---------------------------------------------------------------------------


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(["status", "output", "error", "error_message", "keyname", "value"])
SHAPED = st.dictionaries(KEYS, JSON | st.sampled_from(["COMPLETED", "FAILED", "QUEUED"]))


def outcome(call: Callable[[], object]) -> str | ErrorCode:
    """``"ok"`` when ``call`` returns, the error's code when it raises a SegmindError
    (any other exception fails the test)."""
    try:
        call()
    except SegmindError as exc:
        return exc.code
    return "ok"


@given(body=st.binary(max_size=1024))
def test_parsers_never_crash_on_arbitrary_bytes(body: bytes) -> None:
    for parse in (parse_poll, parse_credits, lambda b: parse_submission(b, {})):
        assert outcome(partial(parse, body)) in ("ok", ErrorCode.MALFORMED_RESPONSE)


@given(body=SHAPED)
def test_parse_poll_never_crashes_on_arbitrary_json(body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    if outcome(lambda: parse_poll(data)) == "ok":
        result = parse_poll(data)
        assert isinstance(result.status, JobStatus)
        if result.status is JobStatus.COMPLETED:
            assert result.outputs
    else:
        assert outcome(lambda: parse_poll(data)) is ErrorCode.MALFORMED_RESPONSE


@given(output=JSON | JSON.map(json.dumps))
def test_parse_outputs_returns_outputs_or_raises_malformed(output: object) -> None:
    if outcome(lambda: parse_outputs(output)) == "ok":
        assert all(isinstance(item, Output) for item in parse_outputs(output))
    else:
        assert outcome(lambda: parse_outputs(output)) is ErrorCode.MALFORMED_RESPONSE
