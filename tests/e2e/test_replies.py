"""Reply queues as RPC users make them, on the real RabbitMQ with a real worker: every result
reaches its reply queue or, when RabbitMQ refuses that queue, the results dead-letter queue,
within a bounded time, without a second POST; ``amq.*`` reply queues cost nothing."""

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
from producers import Publisher, Request, wire
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import take_all
from tests.e2e.conftest import Stack, next_result, publish_raw

#: How long a refused result may take to reach the dead-letter queue: the publisher's six
#: attempts with full-jitter backoff (at most 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s), plus the job.
REFUSED_RESULT_BOUND_S = 30.0


@pytest.fixture
def connection(stack: Stack) -> Iterator[pika.BlockingConnection]:
    """A connection of the test's own: the RPC client's, holding its reply queue."""
    opened = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        yield opened
    finally:
        if opened.is_open:
            opened.close()


def _request(request_id: str, reply_to: str, workflow: str = "sketch-maker") -> dict[str, Any]:
    return {"request_id": request_id, "workflow": workflow, "reply_to": reply_to}


def test_an_exclusive_reply_queue_of_another_connection_gets_its_result(
    stack: Stack, sim: RunningSimulator, connection: pika.BlockingConnection
) -> None:
    # As RabbitMQ's RPC tutorial does: an exclusive queue, named by the client.
    channel = connection.channel()
    reply = f"{stack.name}.rpc-{uuid.uuid4().hex[:6]}"
    channel.queue_declare(reply, exclusive=True)
    request_id = f"exclusive-{uuid.uuid4().hex[:8]}"
    with stack.publisher() as publisher:
        publisher.publish(_request(request_id, reply))
    properties, result = next_result(channel, reply)
    assert properties.correlation_id == request_id
    assert result["status"] == "COMPLETED"
    assert sim.stats()["submits_by_client_request_id"] == {request_id: 1}


def test_an_auto_delete_reply_queue_gets_its_result_while_it_exists(
    stack: Stack, sim: RunningSimulator, connection: pika.BlockingConnection
) -> None:
    channel = connection.channel()
    reply = f"{stack.name}.auto-{uuid.uuid4().hex[:6]}"
    channel.queue_declare(reply, auto_delete=True)
    request_id = f"auto-{uuid.uuid4().hex[:8]}"
    # auto-delete queues are deleted when their last consumer goes: consume, as an RPC
    # client does, and read what arrives.
    got: list[tuple[Any, bytes]] = []
    channel.basic_consume(reply, lambda ch, m, p, b: got.append((p, b)), auto_ack=True)
    with stack.publisher() as publisher:
        publisher.publish(_request(request_id, reply))
    wait_until(
        lambda: connection.process_data_events(0.05) or got,
        timeout_s=30,
        message="the result on the auto-delete queue",
    )
    properties, body = got[0]
    assert properties.correlation_id == request_id
    assert json.loads(body)["status"] == "COMPLETED"


def test_a_refused_reply_queue_sends_the_paid_result_to_the_dead_letter_queue(
    stack: Stack, sim: RunningSimulator, connection: pika.BlockingConnection
) -> None:
    # A reply queue that refuses every message: full at length 0, rejecting publishes.
    channel = connection.channel()
    refusing = f"{stack.name}.full-{uuid.uuid4().hex[:6]}"
    channel.queue_declare(
        refusing, durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    usable = f"{stack.name}.usable-{uuid.uuid4().hex[:6]}"
    channel.queue_declare(usable, durable=True)
    request_id = f"refused-{uuid.uuid4().hex[:8]}"
    runner = CliRunner()
    env: dict[str, str | None] = {**stack.env(), "SEGMIND_API_KEY": None}
    try:
        published = time.monotonic()
        with stack.publisher() as publisher:
            publisher.publish(_request(request_id, refusing))
        letters = wait_until(
            lambda: stack.queue_counts(stack.results_dead_letter_queue)[0],
            timeout_s=REFUSED_RESULT_BOUND_S,
            interval_s=0.05,
            message="the refused result in the results dead-letter queue",
        )
        took_s = time.monotonic() - published
        assert letters == 1
        print(f"refused result dead-lettered {took_s:.1f} s after the request was published")
        assert sim.stats()["submits_by_client_request_id"] == {request_id: 1}

        listed = runner.invoke(app, ["dlq", "list", "--queue", "results", "--json"], env=env)
        assert listed.exit_code == 0, listed.output
        (line,) = [json.loads(text) for text in listed.output.splitlines() if text.strip()]
        assert (line["id"], line["actor"], line["source_queue"]) == (request_id, "result", refusing)
        assert "refused the result" in line["reason"]
        assert json.loads(line["body"])["status"] == "COMPLETED"

        # Back to the queue that refused it: it refuses again, and the letter stays.
        again = runner.invoke(app, ["dlq", "replay", request_id, "--queue", "results"], env=env)
        assert again.exit_code == 1, again.output
        assert stack.queue_counts(stack.results_dead_letter_queue)[0] == 1
        # To a usable queue: delivered once, and gone from the dead-letter queue.
        moved = runner.invoke(
            app, ["dlq", "replay", request_id, "--queue", "results", "--to", usable], env=env
        )
        assert moved.exit_code == 0, moved.output
        (delivered,) = take_all(stack.amqp_url, usable)
        result = json.loads(delivered)
        assert (result["request_id"], result["status"]) == (request_id, "COMPLETED")
        assert stack.queue_counts(stack.results_dead_letter_queue)[0] == 0
        assert sim.stats()["submits_by_client_request_id"] == {request_id: 1}
    finally:
        channel.queue_delete(refusing)
        channel.queue_delete(usable)


@pytest.mark.parametrize(
    "reply_to",
    ["amq.gen-made-up", "amq.rabbitmq.reply-to", "server-named"],
)
def test_an_amq_reply_queue_costs_nothing_and_is_dead_lettered_with_its_reason(
    stack: Stack, sim: RunningSimulator, connection: pika.BlockingConnection, reply_to: str
) -> None:
    if reply_to == "server-named":
        reply_to = connection.channel().queue_declare("", exclusive=True).method.queue
        assert reply_to.startswith("amq.gen-")
    request_id = f"amq-{uuid.uuid4().hex[:8]}"
    envelope = wire.request_envelope(
        _request(request_id, reply_to), queue_name=stack.requests_queue
    )
    before = stack.queue_counts(wire.dead_letter_queue(stack.requests_queue))[0]
    publish_raw(stack.amqp_url, stack.requests_queue, envelope)
    wait_until(
        lambda: stack.queue_counts(wire.dead_letter_queue(stack.requests_queue))[0] > before,
        timeout_s=30,
        message="the request in the requests dead-letter queue",
    )
    assert sim.stats()["submits"] == 0
    runner = CliRunner()
    env: dict[str, str | None] = {**stack.env(), "SEGMIND_API_KEY": None}
    listed = runner.invoke(app, ["dlq", "list", "--queue", "requests", "--json"], env=env)
    lines = [json.loads(text) for text in listed.output.splitlines() if text.strip()]
    (mine,) = [line for line in lines if line["request_id"] == request_id]
    assert "amq.* queues" in mine["reason"]
    assert "no usable reply_to" in mine["reason"]


def test_the_publisher_refuses_an_amq_reply_queue_before_anything_is_sent(stack: Stack) -> None:
    with pytest.raises(ValueError, match=r"amq\.\* queues"):
        Request(workflow="sketch-maker", reply_to="amq.rabbitmq.reply-to")
    with (
        Publisher(stack.amqp_url, queue=stack.requests_queue) as publisher,
        pytest.raises(ValueError, match=r"amq\.\* queues"),
    ):
        publisher.publish({"workflow": "sketch-maker", "reply_to": "amq.gen-x"})
