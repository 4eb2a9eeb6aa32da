"""The request publisher: what lands on the queue is the Dramatiq message the worker expects."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from pydantic import ValidationError

from producers import wire
from producers.amqp import ConfirmedPublisher
from producers.contract import Request
from producers.publisher import Publisher, publish
from producers.topology import Topology

SKETCH = {"workflow": "sketch-maker", "inputs": {"input_image": "https://example.com/a.png"}}


def _drain(amqp_url: str, queue: str) -> list[tuple[Any, bytes]]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    messages: list[tuple[Any, bytes]] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((properties, body))
    finally:
        connection.close()


def test_the_envelope_is_a_dramatiq_message_for_submit_workflow(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    request = {**SKETCH, "priority": 7, "metadata": {"order": 17, "note": None}}
    with Publisher(amqp_url, queue=queue) as publisher:
        request_id = publisher.publish(request)
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # generated
    [(properties, body)] = _drain(amqp_url, queue)
    message = dramatiq.Message.decode(body)
    assert message.actor_name == wire.SUBMIT_ACTOR == "submit_workflow"
    assert message.queue_name == queue
    assert message.args == (
        {
            "request_id": request_id,
            "workflow": "sketch-maker",
            "inputs": {"input_image": "https://example.com/a.png"},
            "reply_to": "segmind.results",
            "priority": 7,
            "metadata": {"order": 17, "note": None},
        },
    )
    assert message.kwargs == {}
    assert message.options == {"broker_priority": 7}
    uuid.UUID(message.message_id)
    assert properties.message_id == message.message_id
    assert properties.priority == 7
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.content_encoding == "utf-8"


def test_a_request_model_keeps_its_id_and_the_given_message_id(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    request = Request.model_validate({**SKETCH, "request_id": "order-17"})
    with Publisher(amqp_url, queue=queue) as publisher:
        assert publisher.publish(request, message_id="msg-1") == "order-17"
    [(properties, body)] = _drain(amqp_url, queue)
    message = dramatiq.Message.decode(body)
    assert message.message_id == properties.message_id == "msg-1"
    assert message.args[0]["request_id"] == "order-17"
    assert "priority" not in message.args[0]
    assert properties.priority is None


def test_publish_many_and_the_module_function(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("requests")
    with Publisher(amqp_url, queue=queue) as publisher:
        ids = publisher.publish_many([{**SKETCH, "request_id": f"r{n}"} for n in range(3)])
    assert ids == ["r0", "r1", "r2"]
    assert publish({**SKETCH, "request_id": "r3"}, url=amqp_url, queue=queue) == "r3"
    bodies = [
        dramatiq.Message.decode(body).args[0]["request_id"] for _, body in _drain(amqp_url, queue)
    ]
    assert bodies == ["r0", "r1", "r2", "r3"]


def test_a_malformed_request_raises_validation_error_before_connecting() -> None:
    # Port 1 is closed: getting the ValidationError proves nothing was attempted.
    publisher = Publisher("amqp://guest:guest@127.0.0.1:1/", queue="q")
    with pytest.raises(ValidationError):
        publisher.publish({"workflow": "", "priority": 12})
    with pytest.raises(ValidationError):
        publisher.publish({**SKETCH, "unknown_field": 1})


def test_queue_arguments_are_those_dramatiq_declares() -> None:
    broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/", max_priority=wire.MAX_PRIORITY)
    dramatiq_arguments: Callable[[str], dict[str, Any]] = broker._build_queue_arguments
    for queue in ("segmind.requests", "segmind.polls", "t.x.requests"):
        assert Topology().work_queue_arguments(queue) == dramatiq_arguments(queue)


def test_dramatiq_accepts_a_queue_the_publisher_declared(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    with Publisher(amqp_url, queue=queue) as publisher:
        publisher.publish(SKETCH)
    broker = RabbitmqBroker(url=amqp_url, max_priority=wire.MAX_PRIORITY)
    try:
        # Declaring with other arguments would fail (PRECONDITION_FAILED -> ConnectionClosed).
        broker.declare_queue(queue, ensure=True)
        assert broker.get_queue_message_counts(queue)[0] == 1
    finally:
        broker.close()


def test_a_shared_confirmed_publisher_is_left_open(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    with ConfirmedPublisher(amqp_url) as confirmed:
        with Publisher(queue=queue, publisher=confirmed) as publisher:
            publisher.publish(SKETCH)
        assert confirmed._connections  # still open after the Publisher closed
        Publisher(queue=queue, publisher=confirmed).publish(SKETCH)
    assert len(_drain(amqp_url, queue)) == 2
