"""The service's broker on the real RabbitMQ: a malformed message is dead-lettered with its
reason before Dramatiq decodes it; a well-formed one reaches Dramatiq unchanged."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pika

from producers import wire
from producers.amqp import broker_parameters
from worker.broker import ScreeningBroker
from worker.results.publish import MemoryAmqp


def test_the_broker_screens_every_message_before_dramatiq_reads_it(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = setup.channel()
    channel.queue_declare(queue, durable=True, arguments=wire.queue_arguments(queue))
    good = wire.request_envelope({"workflow": "sketch-maker"}, queue_name=queue, message_id="ok")
    for body in (b"not json", wire.encode(good)):
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    setup.close()

    dead_letters = MemoryAmqp()
    broker = ScreeningBroker(
        dead_letters=dead_letters,
        parameters=broker_parameters(amqp_url),
        max_priority=wire.MAX_PRIORITY,
        middleware=[],
    )

    def submit_workflow(request: object) -> None:
        """Never runs: the test reads the consumer Dramatiq's worker would read."""

    dramatiq.actor(broker=broker, actor_name=wire.SUBMIT_ACTOR, queue_name=queue)(submit_workflow)
    consumer = broker.consume(queue, prefetch=10, timeout=200)
    try:
        received: list[Any] = []
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            message = next(consumer)
            if message is not None:
                received.append(message)
        # Dramatiq saw only the well-formed message, as it was published.
        assert [(m.message_id, m.actor_name, m.args) for m in received] == [
            ("ok", wire.SUBMIT_ACTOR, ({"workflow": "sketch-maker"},))
        ]
        consumer.ack(received[0])
        (letter,) = dead_letters.wait_for(wire.dead_letter_queue(queue), 1, timeout_s=5)
        assert letter.body == b"not json"
        reason = (letter.properties.headers or {})[wire.DEAD_LETTER_REASON_HEADER]
        assert "not JSON" in reason
    finally:
        consumer.close()
        broker.close()
