"""The shipped JSON Schemas: current with the models, and usable by any validator."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from producers import schemas
from producers.catalog import default_catalog
from producers.contract import (
    ErrorCode,
    ErrorInfo,
    Output,
    RequestRejected,
    Result,
    Status,
    validate_request,
)


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((schemas.SCHEMA_DIR / name).read_text())
    return loaded


def test_schema_files_are_current_with_the_models() -> None:
    assert schemas.stale() == [], "run `make schemas` and commit the result"


def test_schemas_are_valid_draft_2020_12() -> None:
    for name in schemas.render():
        jsonschema.Draft202012Validator.check_schema(load(name))


@pytest.mark.parametrize(
    "request_body",
    [
        {"workflow": "character-video"},
        {
            "request_id": "order-17/item-2",
            "workflow": "0123456789abcdef01234567-v3",
            "inputs": {"prompt": "a cat", "steps": 30},
            "reply_to": "shop.renders",
            "priority": 5,
            "deadline_s": 1800,
            "metadata": {"order": 17},
        },
    ],
)
def test_valid_requests_pass_the_request_schema(request_body: dict[str, Any]) -> None:
    jsonschema.validate(request_body, load("request.schema.json"))


@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"workflow": "x", "inputs": []},
        {"workflow": "x", "request_id": "has space"},
        {"workflow": "x", "priority": 10},
        {"workflow": "x", "unknown": 1},
        # What the worker refuses, the schema refuses: amq.* reply queues vanish too soon.
        {"workflow": "x", "reply_to": "amq.gen-JzTY20BRgKO-HjmUJj0wLg"},
        {"workflow": "x", "reply_to": "amq.rabbitmq.reply-to"},
    ],
)
def test_invalid_requests_fail_the_request_schema(request_body: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(request_body, load("request.schema.json"))
    with pytest.raises(RequestRejected):
        validate_request(request_body, default_catalog())


def test_results_the_service_produces_pass_the_result_schema() -> None:
    schema = load("result.schema.json")
    completed = Result(
        request_id="r1",
        workflow="sketch-maker",
        status=Status.COMPLETED,
        outputs=[Output(keyname="image", type="image", data="https://x.test/a.png")],
        cost_usd=0.1006,
    )
    failed = Result(
        request_id="r2",
        workflow="sketch-maker",
        status=Status.FAILED,
        error=ErrorInfo(
            code=ErrorCode.INSUFFICIENT_CREDITS, message="Insufficient credits", http_status=406
        ),
    )
    for result in (completed, failed):
        jsonschema.validate(json.loads(result.model_dump_json()), schema)
