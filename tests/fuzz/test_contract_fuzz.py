"""Property tests of the pure checks hostile messages meet first: ``validate_request`` (the
request) and ``envelope_problem`` (the Dramatiq message around it).

- Any JSON value, NaN, Infinity and lone surrogates included, ends accepted or
  ``RequestRejected``; nothing else is raised.
- A rejection's reason is non-empty and short, and its REJECTED result always builds and
  serializes (the worker publishes it), small even for a huge request.
- Every generated hostile request is rejected, and is answerable exactly when it was
  built with a usable reply_to.
- The envelope screen never raises, refuses every broken envelope, and passes the messages
  the service itself and documented producers send.
"""

from __future__ import annotations

import json
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from producers import wire
from producers.catalog import load_catalog
from producers.contract import (
    MAX_REASON_CHARS,
    AcceptedRequest,
    ErrorCode,
    RequestRejected,
    Status,
    validate_request,
)
from producers.envelope import envelope_problem
from tests.fuzz.strategies import (
    ODD_CHARACTERS,
    VALID_REQUEST,
    Hostile,
    Route,
    broken_envelopes,
    encode,
    hostile_requests,
    json_values,
    materialize,
    non_finite,
)

CATALOG: Final = load_catalog({})
QUEUE: Final = "fuzz.requests"
POLLS: Final = "fuzz.polls"
ACTORS: Final = {wire.SUBMIT_ACTOR: QUEUE, wire.POLL_ACTOR: POLLS}
#: The request codes: a rejection never claims to come from Segmind.
REQUEST_CODES: Final = {
    ErrorCode.INVALID_REQUEST,
    ErrorCode.REQUEST_TOO_LARGE,
    ErrorCode.UNKNOWN_WORKFLOW,
    ErrorCode.UNKNOWN_INPUT,
    ErrorCode.INVALID_INPUT,
}
#: The largest REJECTED result: the echoed metadata (16 KiB at most) and a short reason.
MAX_RESULT_BYTES: Final = 24 * 1024

MANY: Final = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

odd_strings = st.text(alphabet=st.sampled_from(ODD_CHARACTERS) | st.characters(), max_size=30)
hostile_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | non_finite | odd_strings,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(odd_strings, children, max_size=4)
    ),
    max_leaves=16,
)
request_shaped = st.fixed_dictionaries(
    {"workflow": st.sampled_from([w.name for w in CATALOG]) | odd_strings},
    optional={
        "request_id": hostile_json,
        "inputs": st.dictionaries(odd_strings, hostile_json, max_size=4) | hostile_json,
        "reply_to": hostile_json,
        "priority": hostile_json,
        "deadline_s": hostile_json,
        "metadata": hostile_json,
        "extra": hostile_json,
    },
)


def check_rejection(rejected: RequestRejected) -> dict[str, Any]:
    """What every rejection must be; returns the REJECTED result as published."""
    assert rejected.code in REQUEST_CODES
    assert rejected.message.strip()
    assert len(rejected.message) <= MAX_REASON_CHARS
    body = rejected.to_result("message-id").model_dump_json(exclude_none=True).encode()
    assert len(body) <= MAX_RESULT_BYTES
    result: dict[str, Any] = json.loads(body)
    assert result["status"] == Status.REJECTED
    assert result["error"]["code"] == rejected.code
    return result


def outcome_of(payload: object) -> AcceptedRequest | RequestRejected:
    try:
        return validate_request(payload, CATALOG)
    except RequestRejected as rejected:
        return rejected


@MANY
@given(payload=hostile_json | request_shaped)
@example(payload={"workflow": "sketch-maker", "metadata": {"x": float("nan")}})
@example(payload={"workflow": "\ud800", "request_id": "r", "reply_to": "q"})
@example(payload={"workflow": "0123456789abcdef01234567-v1\n"})
@example(payload={"workflow": "stock-video", "priority": True})
@example(payload={"workflow": "nope", "request_id": "a\n", "reply_to": "q\n"})
def test_any_json_value_is_accepted_or_rejected(payload: object) -> None:
    """Only the documented outcomes; an accepted request is JSON within the size limit."""
    outcome = outcome_of(payload)
    if isinstance(outcome, RequestRejected):
        check_rejection(outcome)
        return
    assert outcome.workflow.workflow_id
    # Nothing that is not JSON data (NaN, Infinity, a lone surrogate) is ever accepted.
    json.dumps(payload, allow_nan=False, ensure_ascii=False).encode()


def request_of(hostile: Hostile) -> Any:
    body = materialize(
        hostile.body, fuzz_id="fz-1", reply_to="fuzz.replies", queue=QUEUE, polls_queue=POLLS
    )
    return json.loads(body)["args"][0]


@MANY
@given(hostile=hostile_requests())
def test_every_hostile_request_is_rejected_and_answered_as_built(hostile: Hostile) -> None:
    outcome = outcome_of(request_of(hostile))
    assert isinstance(outcome, RequestRejected), f"{hostile.kind} was accepted"
    result = check_rejection(outcome)
    answerable = outcome.reply_to is not None
    assert answerable == (hostile.route is Route.REPLY), hostile.kind
    if answerable:
        assert outcome.reply_to == "fuzz.replies"
        # Every answer names the message: its request_id, or the message's id.
        assert result["request_id"] in ("fz-1", "message-id")


@MANY
@given(hostile=broken_envelopes())
def test_every_broken_envelope_is_refused_with_a_short_reason(hostile: Hostile) -> None:
    body = materialize(
        hostile.body, fuzz_id="fz-1", reply_to="fuzz.replies", queue=QUEUE, polls_queue=POLLS
    )
    reason = envelope_problem(body, queue_name=QUEUE, actor_queues=ACTORS)
    assert reason is not None, f"{hostile.kind} passed: {body[:300]!r}"
    assert reason.strip()
    assert len(reason) <= MAX_REASON_CHARS


@MANY
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_the_envelope_screen_never_raises(body: bytes) -> None:
    reason = envelope_problem(body, queue_name=QUEUE, actor_queues=ACTORS)
    assert reason is None or 0 < len(reason) <= MAX_REASON_CHARS


@settings(max_examples=300, deadline=None, database=None)
@given(request=json_values | hostile_requests().map(request_of))
def test_documented_envelopes_pass_the_screen_whatever_they_carry(request: Any) -> None:
    """A producer's message as ``docs/wire-format.md`` shows it passes: what it carries is
    the request's business (answered REJECTED), not the envelope's."""
    message = wire.request_envelope(request if isinstance(request, dict) else {}, queue_name=QUEUE)
    message["args"] = [request]
    assert envelope_problem(encode(message), queue_name=QUEUE, actor_queues=ACTORS) is None


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        # A producer's request with its priority.
        (QUEUE, wire.request_envelope(VALID_REQUEST | {"priority": 5}, queue_name=QUEUE)),
        # A submit retried by Dramatiq, on the delay queue and back on its queue.
        (
            wire.delay_queue(QUEUE),
            wire.request_envelope(VALID_REQUEST, queue_name=wire.delay_queue(QUEUE))
            | {
                "options": {
                    "eta": 1_763_700_000_000,
                    "retries": 2,
                    "traceback": "Traceback ...",
                    "requeue_timestamp": 1_763_700_000_000,
                    "segmind_token_reserved": True,
                }
            },
        ),
        (
            QUEUE,
            wire.request_envelope(VALID_REQUEST, queue_name=QUEUE)
            | {"options": {"retries": 1, "traceback": "x", "requeue_timestamp": 1}},
        ),
        # A poll step, with the service's own option.
        (
            POLLS,
            {
                "queue_name": POLLS,
                "actor_name": wire.POLL_ACTOR,
                "args": ["request-1", 3],
                "kwargs": {},
                "options": {"segmind_due_ms": 1_763_700_000_000.5},
                "message_id": "6f1e1c9e-0d7a-4d39-9a43-2f4c1b7d9e11",
                "message_timestamp": 1_763_700_000_000,
            },
        ),
        # No message_id or timestamp: Dramatiq makes them up.
        (
            QUEUE,
            {
                "queue_name": QUEUE,
                "actor_name": wire.SUBMIT_ACTOR,
                "args": [VALID_REQUEST],
                "kwargs": {},
                "options": {},
            },
        ),
    ],
)
def test_the_service_s_own_messages_pass_the_screen(queue: str, message: dict[str, Any]) -> None:
    assert envelope_problem(wire.encode(message), queue_name=queue, actor_queues=ACTORS) is None


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        # Found by the fuzz: each one used to be accepted, or to raise out of validation.
        (
            {"workflow": "sketch-maker", "metadata": {"x": float("nan")}},
            ErrorCode.INVALID_REQUEST,
            "not JSON data",
        ),
        (
            {"workflow": "0123456789abcdef01234567-v1\n"},
            ErrorCode.UNKNOWN_WORKFLOW,
            "unknown workflow",
        ),
        ({"workflow": "stock-video", "priority": True}, ErrorCode.INVALID_REQUEST, "priority"),
        ({"workflow": "stock-video", "priority": "5"}, ErrorCode.INVALID_REQUEST, "priority"),
        ({"workflow": "stock-video", "deadline_s": "10"}, ErrorCode.INVALID_REQUEST, "deadline_s"),
        (
            {"workflow": "sketch-maker", "inputs": {"input_image": "http://a.test:99999/x"}},
            ErrorCode.INVALID_INPUT,
            "not a valid URL",
        ),
        (
            {"workflow": "sketch-maker", "inputs": {"input_image": "https://a.test/\u202ex"}},
            ErrorCode.INVALID_INPUT,
            "invisible",
        ),
        (
            {"workflow": "sketch-maker", "inputs": {"input_image": "https://a\u200b.test/x"}},
            ErrorCode.INVALID_INPUT,
            "invisible",
        ),
    ],
)
def test_what_the_fuzz_found_is_rejected(
    payload: dict[str, Any], code: ErrorCode, fragment: str
) -> None:
    outcome = outcome_of(payload)
    assert isinstance(outcome, RequestRejected)
    assert outcome.code == code
    assert fragment in outcome.message


def test_ids_with_a_trailing_newline_are_not_readable() -> None:
    outcome = outcome_of({"workflow": "nope", "request_id": "a\n", "reply_to": "q\n"})
    assert isinstance(outcome, RequestRejected)
    assert (outcome.request_id, outcome.reply_to) == (None, None)


def test_a_rejection_of_an_unencodable_workflow_still_serializes() -> None:
    outcome = outcome_of({"workflow": "bad\ud800name", "request_id": "r-1", "reply_to": "q"})
    assert isinstance(outcome, RequestRejected)
    assert check_rejection(outcome)["workflow"] == "bad\ufffdname"


def test_metadata_nested_too_deep_is_not_echoed() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    outcome = outcome_of({"workflow": "sketch-maker", "reply_to": "q", "metadata": {"d": deep}})
    assert isinstance(outcome, RequestRejected)
    assert "metadata" not in check_rejection(outcome)
