"""The request/result contract and validation against the catalog."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from producers.catalog import Catalog, load_catalog
from producers.contract import (
    DEFAULT_REPLY_TO,
    AcceptedRequest,
    ErrorCode,
    ErrorInfo,
    Output,
    RequestRejected,
    Result,
    Status,
    validate_request,
)

CATALOG: Catalog = load_catalog({})


def rejected(payload: object, **kwargs: int) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        validate_request(payload, CATALOG, **kwargs)
    return info.value


def test_minimal_request_gets_an_id_and_the_default_reply_queue() -> None:
    accepted = validate_request({"workflow": "sketch-maker"}, CATALOG)
    assert len(accepted.request.request_id) == 32
    assert accepted.request.reply_to == DEFAULT_REPLY_TO == "segmind.results"
    assert accepted.workflow.name == "sketch-maker"
    assert accepted.inputs == {}


def test_every_seed_workflow_accepts_its_default_inputs() -> None:
    for workflow in CATALOG:
        accepted = validate_request(
            {"workflow": workflow.name, "inputs": workflow.default_inputs()}, CATALOG
        )
        assert accepted.inputs == workflow.default_inputs()


def test_integer_input_given_as_digits_is_normalized() -> None:
    accepted = validate_request({"workflow": "stock-video", "inputs": {"seed": "1323456"}}, CATALOG)
    assert accepted.inputs == {"seed": 1323456}


def test_raw_workflow_id_passes_any_inputs_through() -> None:
    inputs = {"anything": [1, {"nested": True}], "Scene_9": "x"}
    accepted = validate_request(
        {"workflow": "0123456789abcdef01234567-v1", "inputs": inputs}, CATALOG
    )
    assert accepted.inputs == inputs


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        ([], ErrorCode.INVALID_REQUEST, "JSON object, not an array"),
        ("text", ErrorCode.INVALID_REQUEST, "not a string"),
        (None, ErrorCode.INVALID_REQUEST, "not null"),
        ({}, ErrorCode.INVALID_REQUEST, "workflow: Field required"),
        ({"workflow": "sketch-maker", "input": {}}, ErrorCode.INVALID_REQUEST, "input: Extra"),
        ({"workflow": 5}, ErrorCode.INVALID_REQUEST, "workflow: Input should be a valid string"),
        ({"workflow": "nope"}, ErrorCode.UNKNOWN_WORKFLOW, "unknown workflow 'nope'"),
        (
            {"workflow": "sketch-maker", "inputs": {"image": "https://x.test/a.png"}},
            ErrorCode.UNKNOWN_INPUT,
            "has no input 'image' (inputs: input_image)",
        ),
        (
            {"workflow": "stock-video", "inputs": {"seed": 1.5}},
            ErrorCode.INVALID_INPUT,
            "must be an integer, not a number",
        ),
        (
            {"workflow": "stock-video", "inputs": {"seed": True}},
            ErrorCode.INVALID_INPUT,
            "must be an integer, not a boolean",
        ),
        (
            {"workflow": "stock-video", "inputs": {"seed": 2**70}},
            ErrorCode.INVALID_INPUT,
            "64-bit",
        ),
        (
            {"workflow": "stock-video", "inputs": {"text_prompt": ["a"]}},
            ErrorCode.INVALID_INPUT,
            "must be a string, not an array",
        ),
        (
            {"workflow": "sketch-maker", "inputs": {"input_image": "file:///etc/passwd"}},
            ErrorCode.INVALID_INPUT,
            "http(s) URL",
        ),
        (
            {"workflow": "sketch-maker", "inputs": {"input_image": "https://x.test/a b.png"}},
            ErrorCode.INVALID_INPUT,
            "without whitespace",
        ),
        (
            {"workflow": "sketch-maker", "inputs": {"input_image": "https://"}},
            ErrorCode.INVALID_INPUT,
            "with a host",
        ),
        (
            {"workflow": "sketch-maker", "reply_to": "amq.gen-x"},
            ErrorCode.INVALID_REQUEST,
            "amq.* queues (server-named, Direct Reply-to) cannot hold a result",
        ),
        ({"workflow": "sketch-maker", "request_id": ""}, ErrorCode.INVALID_REQUEST, "request_id"),
        (
            {"workflow": "sketch-maker", "request_id": "has space"},
            ErrorCode.INVALID_REQUEST,
            "request_id",
        ),
        ({"workflow": "sketch-maker", "priority": 10}, ErrorCode.INVALID_REQUEST, "priority"),
        ({"workflow": "sketch-maker", "deadline_s": 0}, ErrorCode.INVALID_REQUEST, "deadline_s"),
        ({"workflow": "sketch-maker", "deadline_s": 7200}, ErrorCode.INVALID_REQUEST, "deadline"),
    ],
)
def test_requests_that_cannot_be_valid_are_rejected_with_a_reason(
    payload: object, code: ErrorCode, fragment: str
) -> None:
    error = rejected(payload)
    assert error.code is code
    assert fragment in error.message


def test_oversized_request_is_rejected_before_parsing() -> None:
    error = rejected({"workflow": "scene-script", "inputs": {"quote": "x" * 2000}}, max_bytes=1000)
    assert error.code is ErrorCode.REQUEST_TOO_LARGE
    assert "limit is 1000" in error.message


def test_rejection_carries_what_can_be_read_to_answer_it() -> None:
    error = rejected(
        {
            "request_id": "order-17",
            "workflow": "nope",
            "reply_to": "my.replies",
            "metadata": {"order": 17},
        }
    )
    result = error.to_result("fallback")
    assert result.status is Status.REJECTED
    assert result.request_id == "order-17"
    assert result.workflow == "nope"
    assert result.metadata == {"order": 17}
    assert error.reply_to == "my.replies"
    assert result.error is not None
    assert result.error.code is ErrorCode.UNKNOWN_WORKFLOW


def test_rejection_ignores_unusable_id_and_reply_to() -> None:
    error = rejected({"request_id": "x" * 500, "workflow": 3, "reply_to": "amq.direct"})
    assert error.request_id is None
    assert error.reply_to is None
    assert error.to_result("generated-id").request_id == "generated-id"


def test_validation_errors_never_echo_the_input_value() -> None:
    secret = "do-not-echo-" + "z" * 50
    error = rejected({"workflow": "sketch-maker", "priority": secret})
    assert secret not in error.message


def test_result_requires_outputs_exactly_when_completed() -> None:
    output = Output(keyname="image", type="image", data="https://x.test/a.png")
    Result(request_id="r", workflow="w", status=Status.COMPLETED, outputs=[output])
    with pytest.raises(ValidationError, match="COMPLETED result has outputs"):
        Result(request_id="r", workflow="w", status=Status.COMPLETED)
    error = ErrorInfo(code=ErrorCode.GENERATION_FAILED, message="boom")
    Result(request_id="r", workflow="w", status=Status.FAILED, error=error)
    with pytest.raises(ValidationError, match="has an error and no outputs"):
        Result(request_id="r", workflow="w", status=Status.FAILED, outputs=[output], error=error)


def test_result_round_trips_through_json() -> None:
    result = Result(
        request_id="r1",
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        status=Status.COMPLETED,
        outputs=[Output(keyname="image", type="image", data="https://x.test/a.png")],
        cost_usd=0.1006,
        polls=3,
        metadata={"k": [1, 2]},
    )
    assert Result.model_validate_json(result.model_dump_json()) == result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=json_values
    | st.fixed_dictionaries(
        {"workflow": st.sampled_from([w.name for w in CATALOG]) | st.text()},
        optional={
            "inputs": st.dictionaries(st.text(max_size=20), json_values, max_size=4),
            "request_id": st.text(max_size=140),
            "reply_to": st.text(max_size=20),
            "priority": json_values,
            "deadline_s": json_values,
            "metadata": json_values,
        },
    )
)
def test_validation_accepts_or_rejects_anything_without_crashing(payload: object) -> None:
    outcome: AcceptedRequest | RequestRejected
    try:
        outcome = validate_request(payload, CATALOG)
    except RequestRejected as error:
        outcome = error
    if isinstance(outcome, RequestRejected):
        assert outcome.message
        result = outcome.to_result("generated")
        assert json.loads(result.model_dump_json())["status"] == "REJECTED"
    else:
        assert outcome.workflow.workflow_id
