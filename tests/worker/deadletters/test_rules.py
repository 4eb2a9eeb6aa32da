"""Dead letters, the pure rules: decoding, reasons, replay plans."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from producers import wire
from tests.deadletter_messages import NOW, body, death, envelope
from worker.deadletters.rules import (
    DeadLetter,
    body_digest,
    dead_letter_from,
    decode_envelope,
    explain_dead_letter,
    replay_body,
    replay_plan,
    replay_problem,
    source_queue_of,
)
from worker.ledger import Job, Record, State

# ------------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "not UTF-8 text"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a Dramatiq message: a JSON list, not an object"),
        (body({"queue_name": "q", "args": [], "kwargs": {}, "options": {}}), "no actor_name"),
        (body({**envelope(), "extra": 1}), "unknown keys extra"),
        (body({**envelope(), "args": "x"}), "args is not a list"),
        (body(envelope("nope")), "unknown actor 'nope'"),
        (body(envelope(args=[1, 2])), "args are not (request)"),
        (body(envelope(wire.POLL_ACTOR, ["r-1"])), "args are not (request_id, step)"),
        (body(envelope(wire.POLL_ACTOR, ["r-1", 0])), "args are not (request_id, step)"),
        (body(envelope(wire.POLL_ACTOR, ["r-1", True])), "args are not (request_id, step)"),
    ],
)
def test_decode_envelope_says_what_is_wrong(raw: bytes, problem: str) -> None:
    _found, said = decode_envelope(raw)
    assert said is not None
    assert problem in said


def test_decode_envelope_accepts_both_actors() -> None:
    for message in (envelope(), envelope(wire.POLL_ACTOR, ["r-1", 3])):
        found, problem = decode_envelope(body(message))
        assert problem is None
        assert found == message


# ------------------------------------------------------------------------ reasons


def test_the_workers_reason_header_comes_first() -> None:
    headers = {wire.DEAD_LETTER_REASON_HEADER: "invalid_request: bad (no usable reply_to)"}
    assert (
        explain_dead_letter(b"{not json", headers, {"reason": "X"})
        == "invalid_request: bad (no usable reply_to)"
    )
    # RabbitMQ hands header values over as bytes when they were published as such.
    assert explain_dead_letter(b"", {wire.DEAD_LETTER_REASON_HEADER: b"why"}) == "why"


def test_a_bad_body_is_explained_before_what_was_recorded() -> None:
    raw = body(envelope(wire.POLL_ACTOR, ["r-1"]))
    recorded = {"reason": "MalformedMessageError: a poll message carries (request_id, step >= 1)"}
    assert explain_dead_letter(raw, death(), recorded) == "args are not (request_id, step)"


def test_the_recorded_exception_explains_a_well_formed_message() -> None:
    raw = body(envelope(wire.POLL_ACTOR, ["r-1", 2]))
    recorded = {"reason": "MissingRecordError: no ledger record for request 'r-1'"}
    assert explain_dead_letter(raw, death(), recorded) == recorded["reason"]


def test_rabbitmqs_own_reasons_are_named() -> None:
    said = explain_dead_letter(body(envelope()), death(reason="expired"))
    assert said == "RabbitMQ dead-lettered it from app.requests: expired"


def test_dramatiqs_last_traceback_is_the_fallback() -> None:
    traceback = 'Traceback (most recent call last):\n  File "x"\nStoreError: Redis: down\n'
    raw = body(envelope(options={"retries": 20, "traceback": traceback}))
    said = explain_dead_letter(raw, death())
    assert said == "failed after 20 retries; an earlier attempt raised StoreError: Redis: down"


def test_a_rejection_with_nothing_recorded_says_so() -> None:
    said = explain_dead_letter(body(envelope()), death())
    assert said.startswith("rejected from app.requests with no reason recorded")
    assert explain_dead_letter(body(envelope()), {}) == (
        "no reason recorded (published to the dead-letter queue directly)"
    )


def test_the_source_queue_comes_from_x_death_then_the_envelope() -> None:
    assert source_queue_of(death("app.requests.DQ"), envelope(queue="other")) == "app.requests"
    assert source_queue_of({}, envelope(queue="app.polls.DQ")) == "app.polls"
    assert source_queue_of({}, None) is None
    assert source_queue_of({}, envelope(queue="app.requests.XQ")) is None


# ------------------------------------------------------------------------ DeadLetter


def test_a_dead_letter_names_its_request() -> None:
    letter = dead_letter_from("app.requests.XQ", body(envelope()), headers=death())
    assert (letter.id, letter.actor, letter.request_id, letter.workflow) == (
        "m-1",
        wire.SUBMIT_ACTOR,
        "r-1",
        "sketch-maker",
    )
    assert letter.source_queue == "app.requests"
    assert letter.dead_lettered_at == datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)
    poll = dead_letter_from("app.polls.XQ", body(envelope(wire.POLL_ACTOR, ["r-2", 4])))
    assert (poll.request_id, poll.workflow) == ("r-2", None)


def test_a_dead_letters_id_falls_back_to_the_amqp_id_then_a_digest() -> None:
    raw = b"\xffgarbage"
    assert dead_letter_from("q.XQ", raw, message_id="amqp-7").id == "amqp-7"
    first = dead_letter_from("q.XQ", raw)
    assert first.id == dead_letter_from("q.XQ", raw).id == body_digest(raw)
    assert first.id != body_digest(raw + b"!")
    assert first.reason == "not UTF-8 text"
    assert first.source_queue is None


def test_the_dead_lettering_time_falls_back_to_the_timestamp_then_the_record() -> None:
    raw = body(envelope())
    at = dead_letter_from("q.XQ", raw, timestamp=1_700_000_000).dead_lettered_at
    assert at == datetime.fromtimestamp(1_700_000_000, UTC)
    recorded = {"reason": "X", "at": "1700000100.5"}
    at = dead_letter_from("q.XQ", raw, recorded=recorded).dead_lettered_at
    assert at == datetime.fromtimestamp(1_700_000_100.5, UTC)
    assert dead_letter_from("q.XQ", raw).dead_lettered_at is None


# ------------------------------------------------------------------------ replay


def test_replay_body_resets_dramatiqs_options_and_keeps_the_id() -> None:
    options = {
        "retries": 20,
        "traceback": "...",
        "eta": 1,
        "broker_priority": 5,
        "segmind_due_ms": 9,
        "segmind_token_reserved": True,
    }
    raw = body(envelope(queue="app.requests.DQ", options=options))
    letter = dead_letter_from("app.requests.XQ", raw, headers=death("app.requests.DQ"))
    replayed = json.loads(replay_body(letter))
    assert replayed == {
        **envelope(),
        "queue_name": "app.requests",
        "options": {"broker_priority": 5},
    }


@pytest.mark.parametrize(
    ("letter", "problem"),
    [
        (dead_letter_from("q.XQ", b"{no", headers=death()), "not JSON"),
        (
            dead_letter_from(
                "q.XQ", body(envelope()), headers={wire.DEAD_LETTER_REASON_HEADER: "no reply_to"}
            ),
            "refused it for good",
        ),
        (dead_letter_from("q.XQ", body(envelope(queue="q.XQ"))), "no source queue"),
    ],
)
def test_what_cannot_be_replayed_says_why(letter: DeadLetter, problem: str) -> None:
    said = replay_problem(letter)
    assert said is not None
    assert problem in said
    with pytest.raises(ValueError, match="cannot be replayed"):
        replay_body(letter)
    assert replay_plan(letter, None, now=NOW).startswith("stays in the dead-letter queue")


def record(state: State, **fields: Any) -> Record:
    job = Job(
        request_id="r-1",
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        reply_to="replies",
        queued_at=NOW - 100,
        deadline_s=60,
    )
    return Record(job=job, state=state, **fields)


SUBMIT = dead_letter_from("app.requests.XQ", body(envelope()), headers=death())
POLL = dead_letter_from(
    "app.polls.XQ", body(envelope(wire.POLL_ACTOR, ["r-1", 3], queue="app.polls")), headers=death()
)


@pytest.mark.parametrize(
    ("letter", "found", "plan"),
    [
        (SUBMIT, None, "submitted fresh (no ledger record): one POST"),
        (SUBMIT, record(State.NEW, owner="m-1", lease_until=NOW + 5), "POSTed once"),
        (SUBMIT, record(State.NEW, owner="m-9", lease_until=NOW - 5), "lease lapsed"),
        (SUBMIT, record(State.NEW, owner="m-9", lease_until=NOW + 5), "waits for the delivery"),
        (SUBMIT, record(State.SUBMITTING, lease_until=NOW - 1), "submit_outcome_unknown"),
        (SUBMIT, record(State.SUBMITTING, lease_until=NOW + 9), "never a second POST"),
        (SUBMIT, record(State.SUBMITTED, poll_step=0), "polling resumes"),
        (SUBMIT, record(State.SUBMITTED, poll_step=4), "its poll messages follow it"),
        (SUBMIT, record(State.DONE, published=True, finisher="m-1"), "answered already"),
        (SUBMIT, record(State.DONE, published=False, finisher="m-1"), "publishes the stored"),
        (SUBMIT, record(State.DONE, published=False, finisher="m-9"), "answered already"),
        (POLL, None, "dead-lettered again: the request has no ledger record"),
        (POLL, record(State.SUBMITTED, poll_step=2), "polling resumes at step 3"),
        (POLL, record(State.SUBMITTED, poll_step=3, poll_owner="m-1"), "polling resumes"),
        (POLL, record(State.SUBMITTED, poll_step=5), "a later poll step already follows"),
        (POLL, record(State.SUBMITTING), "the request is SUBMITTING"),
        (POLL, record(State.DONE, published=True), "answered already"),
    ],
)
def test_the_replay_plan_follows_the_ledger(
    letter: DeadLetter, found: Record | None, plan: str
) -> None:
    assert plan in replay_plan(letter, found, now=NOW)


def test_an_unknown_outcome_is_posted_again_only_when_configured() -> None:
    found = record(State.SUBMITTING, lease_until=NOW - 1)
    said = replay_plan(SUBMIT, found, now=NOW, resubmit_unknown_outcome=True)
    assert said.startswith("POSTed again")


# ------------------------------------------------------------------------ refused results


def _refused_result() -> DeadLetter:
    result = {"request_id": "r-9", "workflow": "stock-video", "status": "COMPLETED"}
    headers = {
        wire.DEAD_LETTER_REASON_HEADER: "reply queue 'app.replies' refused the result: nack",
        wire.REPLY_TO_HEADER: "app.replies",
    }
    return dead_letter_from(
        "segmind.results.XQ", body(result), headers=headers, message_id="r-9", timestamp=1
    )


def test_a_refused_result_names_its_request_and_reply_queue() -> None:
    letter = _refused_result()
    assert letter.is_result
    assert (letter.id, letter.request_id, letter.workflow) == ("r-9", "r-9", "stock-video")
    assert letter.source_queue == "app.replies"
    assert letter.actor is None
    assert letter.reason == "reply queue 'app.replies' refused the result: nack"


def test_a_refused_result_is_replayed_as_it_is_with_no_segmind_call() -> None:
    letter = _refused_result()
    assert replay_problem(letter) is None
    assert replay_body(letter) == letter.body
    plan = replay_plan(letter, None, now=NOW)
    assert plan == "the result is published to its reply queue again (no Segmind call)"


def test_a_message_is_not_a_result() -> None:
    assert not dead_letter_from("q.XQ", body(envelope()), headers=death()).is_result


def test_a_bare_request_dead_lettered_by_rabbitmq_is_replayed_as_the_message_it_became() -> None:
    bare = body({"workflow": "sketch-maker"})
    letter = dead_letter_from(
        "app.requests.XQ",
        bare,
        headers=death(),
        message_id="m-3",
        amqp_reply_to="rpc.replies",
        correlation_id="order-3",
    )
    assert (letter.id, letter.request_id, letter.actor) == ("m-3", "order-3", wire.SUBMIT_ACTOR)
    assert letter.body == bare
    assert replay_problem(letter) is None
    replayed = json.loads(replay_body(letter))
    assert replayed["args"] == [
        {"workflow": "sketch-maker", "reply_to": "rpc.replies", "request_id": "order-3"}
    ]
    assert (replayed["queue_name"], replayed["message_id"]) == ("app.requests", "m-3")
