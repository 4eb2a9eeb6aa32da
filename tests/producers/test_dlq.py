"""Dead letters: the pure rules (decoding, reasons, replay plans) and, on the real RabbitMQ,
the reader that leaves the queue as it was and the replay that moves confirmed messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pika
import pytest
from typer.testing import CliRunner

from producers import wire
from producers.cli import app
from producers.dlq import (
    DeadLetter,
    body_digest,
    dead_letter_from,
    decode_envelope,
    explain_dead_letter,
    read_dead_letters,
    replay_body,
    replay_dead_letters,
    replay_plan,
    replay_problem,
    source_queue_of,
    with_recorded_reasons,
)
from tests.conftest import free_port
from worker.deadletters import dead_letter_key
from worker.ledger import Job, MemoryStore, Record, State

NOW = 1_800_000_000.0


def envelope(
    actor: str = wire.SUBMIT_ACTOR,
    args: list[Any] | None = None,
    *,
    queue: str = "app.requests",
    message_id: str = "m-1",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if args is None:
        args = [{"request_id": "r-1", "workflow": "sketch-maker", "inputs": {}}]
    return {
        "queue_name": queue,
        "actor_name": actor,
        "args": args,
        "kwargs": {},
        "options": options or {},
        "message_id": message_id,
        "message_timestamp": 1_700_000_000_000,
    }


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def death(queue: str = "app.requests", reason: str = "rejected") -> dict[str, Any]:
    return {
        "x-death": [
            {
                "count": 1,
                "reason": reason,
                "queue": queue,
                "time": datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC),
                "exchange": "",
                "routing-keys": [queue],
            }
        ]
    }


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
    traceback = 'Traceback (most recent call last):\n  File "x"\nLedgerError: Redis: down\n'
    raw = body(envelope(options={"retries": 20, "traceback": traceback}))
    said = explain_dead_letter(raw, death())
    assert said == "failed after 20 retries; an earlier attempt raised LedgerError: Redis: down"


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


def test_recorded_reasons_are_added_from_the_store() -> None:
    store = MemoryStore()
    store.put(dead_letter_key("pfx", "m-1"), {"reason": "LedgerError: down", "at": "1.0"}, 60)
    letters = [
        dead_letter_from("q.XQ", body(envelope()), headers=death()),
        dead_letter_from("q.XQ", body(envelope(message_id="m-2")), headers=death()),
    ]
    updated, problem = with_recorded_reasons(letters, store, "pfx")
    assert problem is None
    assert updated[0].reason == "LedgerError: down"
    assert updated[1].reason == letters[1].reason


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


# ------------------------------------------------------------------------ on RabbitMQ


@pytest.fixture
def channel(amqp_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield connection.channel()
    finally:
        connection.close()


def _declare(channel: Any, queue: str) -> str:
    """``queue`` with Dramatiq's arguments and its XQ; returns the XQ."""
    channel.queue_declare(queue, durable=True, arguments=wire.queue_arguments(queue))
    xq = wire.dead_letter_queue(queue)
    channel.queue_declare(xq, durable=True)
    return xq


def _drain(channel: Any, queue: str) -> list[bytes]:
    """Consume (ack) every message of ``queue``."""
    bodies: list[bytes] = []
    while True:
        method, _properties, raw = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(raw)


def test_reading_leaves_every_message_in_place(
    amqp_url: str, channel: Any, queues: Callable[[str], str]
) -> None:
    xq = _declare(channel, queues("requests"))
    sent = [body(envelope(message_id=f"m-{n}")) for n in range(5)] + [b"\x00raw"]
    for raw in sent:
        channel.basic_publish("", xq, raw, pika.BasicProperties(delivery_mode=2))

    letters = read_dead_letters(amqp_url, xq)
    assert [letter.body for letter in letters] == sent
    assert [letter.id for letter in letters[:5]] == [f"m-{n}" for n in range(5)]
    assert [letter.body for letter in read_dead_letters(amqp_url, xq, limit=2)] == sent[:2]
    assert read_dead_letters(amqp_url, xq, limit=0) == []
    # Still all there, in the order they were published.
    assert _drain(channel, xq) == sent


def test_reading_a_missing_queue_finds_nothing(amqp_url: str, queues: Callable[[str], str]) -> None:
    assert read_dead_letters(amqp_url, wire.dead_letter_queue(queues("none"))) == []


def test_a_rejected_message_carries_its_source_and_time(
    amqp_url: str, channel: Any, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    xq = _declare(channel, queue)
    channel.basic_publish("", queue, body(envelope(queue=queue)), pika.BasicProperties())
    method, _properties, _raw = channel.basic_get(queue)
    channel.basic_nack(method.delivery_tag, requeue=False)

    [letter] = read_dead_letters(amqp_url, xq)
    assert letter.source_queue == queue
    assert letter.reason.startswith(f"rejected from {queue} with no reason recorded")
    assert letter.dead_lettered_at is not None
    assert abs((datetime.now(UTC) - letter.dead_lettered_at).total_seconds()) < 120


def test_replay_moves_only_confirmed_messages_and_reports_the_rest(
    amqp_url: str, channel: Any, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    xq = _declare(channel, queue)
    options = {"retries": 20, "traceback": "x", "broker_priority": 3}
    good = body(envelope(queue=queue, message_id="good", options=options))
    kept = body(envelope(queue=queue, message_id="other"))
    orphan = body(envelope(queue=queues("gone"), message_id="orphan"))
    for raw in (b"{bad", good, kept, orphan):
        channel.basic_publish("", xq, raw, pika.BasicProperties(delivery_mode=2))

    dry = replay_dead_letters(amqp_url, xq, ids=["good"], dry_run=True, plan=lambda _l: "plan")
    assert [(o.letter.id, o.outcome, o.detail) for o in dry.outcomes] == [
        ("good", "planned", "plan")
    ]
    assert len(_peek(amqp_url, xq)) == 4

    report = replay_dead_letters(
        amqp_url, xq, ids=["good", "orphan", body_digest(b"{bad"), "missing"]
    )
    outcomes = {o.letter.id: (o.outcome, o.detail) for o in report.outcomes}
    assert outcomes["good"] == ("replayed", "replayed")
    assert outcomes["orphan"][0] == "kept"
    assert "does not exist" in outcomes["orphan"][1]
    assert outcomes[body_digest(b"{bad")] == ("kept", "cannot be replayed: not JSON")
    assert report.not_found == ["missing"]

    # The replayed message is on its source queue, reset, with its priority; the rest
    # stayed in the XQ in their order.
    method, properties, raw = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    assert json.loads(raw)["options"] == {"broker_priority": 3}
    assert json.loads(raw)["message_id"] == "good"
    assert properties.message_id == "good"
    assert properties.delivery_mode == wire.PERSISTENT
    assert _peek(amqp_url, xq) == [body_digest(b"{bad"), "other", "orphan"]


def _peek(amqp_url: str, xq: str) -> list[str]:
    return [letter.id for letter in read_dead_letters(amqp_url, xq)]


# ------------------------------------------------------------------------ the command line


def _cli(namespace_queue: str, redis_url: str, *args: str, **env: str | None) -> Any:
    """``segmind-queue dlq ...`` on the queues ``<namespace_queue>.requests/.polls``."""
    settings: dict[str, str | None] = {
        "REQUESTS_QUEUE": f"{namespace_queue}.requests",
        "POLLS_QUEUE": f"{namespace_queue}.polls",
        "REDIS_KEY_PREFIX": namespace_queue.replace(".", "-"),
        "REDIS_URL": redis_url,
        "SEGMIND_API_KEY": None,
        "SEGMIND_API_KEY_FILE": None,
        **env,
    }
    return CliRunner().invoke(app, ["dlq", *args], env=settings)


def test_list_works_without_redis_and_never_shows_a_secret(
    amqp_url: str, channel: Any, queues: Callable[[str], str]
) -> None:
    base = queues("app")
    xq = _declare(channel, f"{base}.requests")
    key = "sk-0123456789abcdef-secret"
    headers = {wire.DEAD_LETTER_REASON_HEADER: f"refused with key {key}"}
    raw = body(
        envelope(
            queue=f"{base}.requests", message_id="leaky", args=[{"request_id": "r-9", "note": key}]
        )
    )
    channel.basic_publish("", xq, raw, pika.BasicProperties(headers=headers, delivery_mode=2))
    try:
        unreachable = f"redis://127.0.0.1:{free_port()}/0"
        listed = _cli(base, unreachable, "list", "--json", SEGMIND_API_KEY=key, AMQP_URL=amqp_url)
        assert listed.exit_code == 0, listed.output
        [row] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["id"] == "leaky"
        assert row["reason"] == "refused with key [redacted]"
        assert row["ledger_state"] == "?"
        assert key not in listed.output
        assert "Redis (REDIS_URL) could not be read" in listed.stderr

        table = _cli(base, unreachable, "list", "--queue", "requests", AMQP_URL=amqp_url)
        assert table.exit_code == 0, table.output
        assert "1 dead letters" in table.stdout
        empty = _cli(base, unreachable, "list", "--queue", "polls", AMQP_URL=amqp_url)
        assert empty.stdout.strip() == f"no dead letters in {base}.polls.XQ"
    finally:
        channel.queue_delete(xq)
        channel.queue_delete(f"{base}.requests")


def test_replay_needs_ids_or_all_and_rabbitmq(redis_url: str) -> None:
    neither = _cli("t.none", redis_url, "replay")
    assert neither.exit_code == 2
    assert "exactly one" in neither.stderr
    both = _cli("t.none", redis_url, "replay", "x", "--all")
    assert both.exit_code == 2
    down = _cli(
        "t.none",
        redis_url,
        "replay",
        "x",
        AMQP_URL=f"amqp://guest:hunter22@127.0.0.1:{free_port()}/%2F",
    )
    assert down.exit_code == 2
    assert "RabbitMQ (AMQP_URL)" in down.stderr
    assert "hunter22" not in down.output
