"""Dead letters end to end: a ``segmind-queue worker`` dead-letters messages of several
kinds, ``segmind-queue dlq list`` explains each, and ``dlq replay`` sends them back safely:
a request dead-lettered for a transient reason ends with one POST and one result, a request
answered already POSTs nothing and publishes nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from typer.testing import CliRunner

from console.cli import app
from producers import wire
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import queue_types, take_all
from tests.e2e.conftest import Stack, publish_raw

runner = CliRunner()


def _dlq(stack: Stack, *args: str) -> Any:
    """``segmind-queue dlq ...`` with the stack's settings and no API key (not needed)."""
    env: dict[str, str | None] = {**stack.env(), "SEGMIND_API_KEY": None}
    return runner.invoke(app, ["dlq", *args], env=env)


def _poll_envelope(stack: Stack, args: list[Any]) -> dict[str, Any]:
    return {
        "queue_name": stack.polls_queue,
        "actor_name": wire.POLL_ACTOR,
        "args": args,
        "kwargs": {},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": time.time_ns() // 1_000_000,
    }


def _publish_bytes(amqp_url: str, queue: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def _reject_next(amqp_url: str, queue: str, count: int) -> None:
    """Take ``count`` messages off ``queue`` and reject them: RabbitMQ dead-letters them to
    the XQ with ``x-death``, as Dramatiq does when a message's retries are exhausted."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for _ in range(count):
            method, _properties, _body = channel.basic_get(queue)
            assert method is not None
            channel.basic_nack(method.delivery_tag, requeue=False)
    finally:
        connection.close()


@pytest.fixture
def replies(fresh_stack: Stack) -> Iterator[str]:
    """A durable reply queue of the stack's, deleted after the test."""
    queue = f"{fresh_stack.name}.replies"
    connection = pika.BlockingConnection(pika.URLParameters(fresh_stack.amqp_url))
    try:
        connection.channel().queue_declare(queue, durable=True)
        yield queue
    finally:
        connection.channel().queue_delete(queue)
        connection.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_dead_letters_are_explained_and_replayed_without_paying_twice(
    fresh_stack: Stack, replies: str, sim: RunningSimulator, queue_type: str
) -> None:
    """On either queue type (``AMQP_QUEUE_TYPE``): with quorum queues RabbitMQ
    dead-letters at least once, and the same letters are listed and replayed the same."""
    stack, amqp_url = fresh_stack, fresh_stack.amqp_url
    stack.settings["AMQP_QUEUE_TYPE"] = queue_type
    requests_xq = wire.dead_letter_queue(stack.requests_queue)
    polls_xq = wire.dead_letter_queue(stack.polls_queue)
    inputs = {"input_image": "https://example.com/sketch.png"}

    def request(request_id: str) -> dict[str, Any]:
        return wire.request_envelope(
            {
                "request_id": request_id,
                "workflow": "sketch-maker",
                "inputs": inputs,
                "reply_to": replies,
            },
            queue_name=stack.requests_queue,
        )

    # A request answered normally.
    done_id, transient_id = f"{stack.name}-done", f"{stack.name}-transient"
    done = request(done_id)
    worker = stack.start_worker()
    publish_raw(amqp_url, stack.requests_queue, done)
    wait_until(
        lambda: stack.queue_counts(replies)[0] == 1, timeout_s=60, message="the first result"
    )
    worker.stop()
    wait_until(lambda: stack.consumers() == 0, timeout_s=30, message="the worker to go")

    # Two valid requests rejected while no worker runs (as when retries run out with Redis
    # unreachable): a new one, and a copy of the one answered already (same message_id).
    transient = request(transient_id)
    publish_raw(amqp_url, stack.requests_queue, transient)
    publish_raw(amqp_url, stack.requests_queue, done)
    _reject_next(amqp_url, stack.requests_queue, 2)

    # Messages the worker dead-letters itself.
    ghost = _poll_envelope(stack, [f"{stack.name}-ghost", 1])
    malformed = _poll_envelope(stack, ["only-an-id"])
    unknown_actor = {**request("x"), "actor_name": "no_such_actor", "message_id": "ua-1"}
    unanswerable = wire.request_envelope(
        {"workflow": "no-such-workflow", "reply_to": "amq.nope"},
        queue_name=stack.requests_queue,
        message_id="na-1",
    )
    publish_raw(amqp_url, stack.polls_queue, ghost)
    publish_raw(amqp_url, stack.polls_queue, malformed)
    publish_raw(amqp_url, stack.requests_queue, unknown_actor)
    publish_raw(amqp_url, stack.requests_queue, unanswerable)
    _publish_bytes(amqp_url, stack.requests_queue, b"{this is not json")
    worker = stack.start_worker()
    wait_until(
        lambda: stack.queue_counts(requests_xq)[0] == 5 and stack.queue_counts(polls_xq)[0] == 2,
        timeout_s=60,
        interval_s=0.1,
        message="seven dead letters",
    )

    # `dlq list --json`: each with its reason, its request's ledger state and the plan.
    listed = _dlq(stack, "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert len(rows) == 7
    by_reason = {row["id"]: row["reason"] for row in rows.values()}
    assert by_reason[ghost["message_id"]] == (
        f"MissingRecordError: no ledger record for request '{stack.name}-ghost'"
    )
    assert by_reason[malformed["message_id"]] == "args are not (request_id, step)"
    # Said by the worker (the reason header) or read from the body: either names the fault.
    assert "'no_such_actor'" in by_reason["ua-1"]
    assert by_reason["na-1"].endswith("(no usable reply_to)")
    [not_json] = [row["reason"] for row in rows.values() if row["actor"] is None]
    assert "not JSON" in not_json
    for message in (transient, done):
        row = rows[message["message_id"]]
        assert row["source_queue"] == stack.requests_queue
        assert row["reason"].startswith(f"rejected from {stack.requests_queue}")
        assert row["dead_lettered_at"]
    assert rows[transient["message_id"]]["ledger_state"] == "none"
    assert rows[transient["message_id"]]["replay"].startswith("submitted fresh")
    assert rows[done["message_id"]]["ledger_state"] == "DONE"
    assert rows[done["message_id"]]["replay"].startswith("nothing: answered already")
    assert rows[ghost["message_id"]]["source_queue"] == stack.polls_queue
    assert rows[ghost["message_id"]]["replay"].startswith("dead-lettered again")

    table = _dlq(stack, "list", "--queue", "polls")
    assert table.exit_code == 0, table.output
    assert "2 dead letters" in table.stdout

    # Replaying the transient one: one POST, one result.
    replayed = _dlq(stack, "replay", transient["message_id"])
    assert replayed.exit_code == 0, replayed.output
    assert "\treplayed\t" in replayed.stdout
    assert "submitted fresh" in replayed.stdout
    wait_until(
        lambda: stack.queue_counts(replies)[0] == 2, timeout_s=60, message="the replay's result"
    )

    # Replaying the one answered already: the plan says so, and nothing is POSTed or sent.
    planned = _dlq(stack, "replay", done["message_id"], "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert "\twould replay\t" in planned.stdout
    assert "answered already" in planned.stdout
    assert stack.queue_counts(requests_xq)[0] == 4
    replayed = _dlq(stack, "replay", done["message_id"])
    assert replayed.exit_code == 0, replayed.output

    def ignored() -> bool:
        return any(
            event.get("event") == "request.duplicate_ignored"
            and event.get("message_id") == done["message_id"]
            for event in worker.events()
        )

    wait_until(ignored, timeout_s=60, interval_s=0.1, message="the replayed duplicate to be seen")
    results = [json.loads(body) for body in take_all(amqp_url, replies)]
    assert sorted(result["request_id"] for result in results) == [done_id, transient_id]
    assert {result["status"] for result in results} == {"COMPLETED"}
    submits = sim.stats()["submits_by_client_request_id"]
    assert (submits[done_id], submits[transient_id]) == (1, 1)

    # What is left: the five that cannot succeed; unknown ids and unreplayable ones say so.
    missing = _dlq(stack, "replay", "no-such-id", "na-1")
    assert missing.exit_code == 1
    assert "not found: no-such-id" in missing.stderr
    assert "na-1\tkept\t" in missing.stdout
    assert stack.queue_counts(requests_xq)[0] == 3
    assert stack.queue_counts(polls_xq)[0] == 2
    declared = queue_types()
    assert {
        name: declared.get(name)
        for name in (stack.requests_queue, stack.polls_queue, requests_xq, polls_xq)
    } == dict.fromkeys((stack.requests_queue, stack.polls_queue, requests_xq, polls_xq), queue_type)
