"""The envelope screen and a poll's arguments, by example (the hostile cases by the thousand
are tests/fuzz/test_contract_fuzz.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producers import wire
from producers.envelope import FORBIDDEN_OPTIONS, envelope_problem, poll_step_arguments

ACTORS = {wire.SUBMIT_ACTOR: "app.requests", wire.POLL_ACTOR: "app.polls"}


def message(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "queue_name": "app.requests",
        "actor_name": wire.SUBMIT_ACTOR,
        "args": [{"workflow": "sketch-maker", "inputs": {}}],
        "kwargs": {},
        "options": {},
        "message_id": "m-1",
        "message_timestamp": 1_700_000_000_000,
    }
    fields.update(changes)
    return json.dumps(fields).encode()


def test_a_well_formed_request_message_passes() -> None:
    assert envelope_problem(message(), queue_name="app.requests", actor_queues=ACTORS) is None


def test_a_delayed_poll_passes_on_the_delay_queue_with_its_eta() -> None:
    body = message(
        queue_name="app.polls.DQ",
        actor_name=wire.POLL_ACTOR,
        args=["r-1", 2],
        options={"eta": 1_700_000_060_000},
    )
    assert envelope_problem(body, queue_name="app.polls.DQ", actor_queues=ACTORS) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not JSON"),
        (b"[]", "an array, not a Dramatiq message"),
        (message(queue_name="other"), "is not the queue it arrived on"),
        (message(actor_name="os.system"), "is not an actor of this worker"),
        (message(args={}), "args is an object, not an array"),
        (message(options={"eta": 1}), "eta is only for delay queues"),
        (message(options={"pipe_target": {}}), "may not be set on a message"),
        (message(message_id=""), "message_id is not"),
    ],
)
def test_a_malformed_message_is_refused_with_its_reason(body: bytes, reason: str) -> None:
    problem = envelope_problem(body, queue_name="app.requests", actor_queues=ACTORS)
    assert problem is not None
    assert reason in problem


def test_options_that_send_other_messages_are_all_forbidden() -> None:
    assert {"pipe_target", "on_success", "on_failure", "time_limit"} <= FORBIDDEN_OPTIONS


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("r-1", 1), {}, ("r-1", 1)),
        (["r-1", 7], {}, ("r-1", 7)),
        (("r-1", 0), {}, None),
        (("r-1", True), {}, None),
        (("r-1",), {}, None),
        (("r-1", 1), {"extra": 1}, None),
        ((1, 1), {}, None),
    ],
)
def test_poll_step_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], expected: tuple[str, int] | None
) -> None:
    assert poll_step_arguments(args, kwargs) == expected
