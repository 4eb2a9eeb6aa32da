"""The envelope screen and a poll's arguments, by example (the hostile cases by the thousand
are tests/fuzz/test_contract_fuzz.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producers import wire
from producers.envelope import (
    FORBIDDEN_OPTIONS,
    envelope_problem,
    plain_request_envelope,
    poll_step_arguments,
    with_message_id,
)

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


# ------------------------------------------------------------------------ the plain form


def _plain(body: object, **properties: Any) -> dict[str, Any] | None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    wrapped = plain_request_envelope(raw, queue_name="app.requests", **properties)
    return None if wrapped is None else json.loads(wrapped)


def test_a_bare_request_becomes_the_message_the_worker_runs() -> None:
    request = {"request_id": "r-1", "workflow": "sketch-maker", "reply_to": "replies"}
    message = _plain(request, message_id="m-1", timestamp_s=1_700_000_000)
    assert message is not None
    assert (message["queue_name"], message["actor_name"]) == ("app.requests", wire.SUBMIT_ACTOR)
    assert message["args"] == [request]
    assert (message["message_id"], message["message_timestamp"]) == ("m-1", 1_700_000_000_000)
    assert (
        envelope_problem(
            json.dumps(message).encode(), queue_name="app.requests", actor_queues=ACTORS
        )
        is None
    )


def test_the_amqp_properties_fill_what_the_body_leaves_out() -> None:
    message = _plain(
        {"workflow": "sketch-maker"}, reply_to="rpc.replies", correlation_id="c-7", priority=6
    )
    assert message is not None
    (request,) = message["args"]
    assert request == {
        "workflow": "sketch-maker",
        "reply_to": "rpc.replies",
        "request_id": "c-7",
        "priority": 6,
    }
    assert message["options"] == {"broker_priority": 6}
    # Without a correlation_id, the message_id names the request.
    named = _plain({"workflow": "x"}, message_id="m-9")
    assert named is not None
    assert named["args"][0]["request_id"] == "m-9"


def test_the_body_wins_over_the_properties() -> None:
    body = {"workflow": "x", "reply_to": "mine", "request_id": "r-1", "priority": 1}
    message = _plain(body, reply_to="theirs", correlation_id="c-1", priority=9)
    assert message is not None
    assert message["args"] == [body]


def test_a_redelivery_of_a_message_without_ids_keeps_its_id() -> None:
    # The ledger tells a redelivery from a new request by the message's id.
    first = _plain({"workflow": "sketch-maker"}, reply_to="replies")
    again = _plain({"workflow": "sketch-maker"}, reply_to="replies")
    other = _plain({"workflow": "sketch-maker"}, reply_to="elsewhere")
    assert first is not None
    assert again is not None
    assert other is not None
    assert first["message_id"] == again["message_id"]
    assert first["message_id"] != other["message_id"]
    assert first["message_id"].startswith("plain-")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff",
        b"[1, 2]",
        b'"a string"',
        json.dumps({"queue_name": "app.requests", "workflow": "x"}).encode(),
        json.dumps({"args": [], "workflow": "x"}).encode(),
    ],
)
def test_what_is_not_a_bare_request_is_left_to_the_screen(body: bytes) -> None:
    assert plain_request_envelope(body, queue_name="app.requests", reply_to="r") is None


def test_odd_values_reach_the_validator_intact() -> None:
    # A lone surrogate and NaN are the validator's to refuse, with the reply queue known.
    message = _plain(b'{"workflow": "\\ud800", "inputs": {"n": NaN}}', reply_to="replies")
    assert message is not None
    (request,) = message["args"]
    assert request["workflow"] == "\ud800"
    assert request["reply_to"] == "replies"


def test_an_out_of_range_timestamp_is_ignored() -> None:
    message = _plain({"workflow": "x"}, timestamp_s=10**15)
    assert message is not None
    assert 0 < message["message_timestamp"] < 10**14


def test_a_message_without_an_id_gets_the_same_one_on_every_delivery() -> None:
    without = {k: v for k, v in json.loads(message()).items() if k != "message_id"}
    body = json.dumps(without).encode()
    first, again = with_message_id(body), with_message_id(body)
    assert first is not None
    assert first == again
    assert json.loads(first)["message_id"].startswith("message-")
    assert envelope_problem(first, queue_name="app.requests", actor_queues=ACTORS) is None
    # With an id, or not a Dramatiq message: left as it is.
    assert with_message_id(message()) is None
    assert with_message_id(b'{"workflow": "x"}') is None
    assert with_message_id(b"[]") is None
