"""The service's broker on the real RabbitMQ: a malformed message is dead-lettered with its
reason before Dramatiq decodes it; a well-formed one reaches Dramatiq unchanged."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pika
from structlog.testing import capture_logs

from producers import wire
from producers.amqp import ConfirmedPublisher, broker_parameters
from producers.topology import DELIVERY_COUNT_HEADER, QueueType, Topology
from simulator.testing import wait_until
from worker.broker import ScreeningBroker
from worker.results.publish import MemoryAmqp


def test_the_broker_screens_every_message_before_dramatiq_reads_it(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = setup.channel()
    channel.queue_declare(queue, durable=True, arguments=Topology().work_queue_arguments(queue))
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


def _poll_envelope(queue: str, message_id: str) -> dict[str, Any]:
    return {
        "queue_name": wire.delay_queue(queue),
        "actor_name": wire.POLL_ACTOR,
        "args": ["r1", 1],
        "kwargs": {},
        "options": {"eta": int(time.time() * 1000) + 600_000},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }


def test_a_held_delayed_message_is_refreshed_before_its_delivery_limit(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    """On a quorum delay queue with a delivery limit of 4, a poll handed back twice (two
    worker restarts) is published again as a new message, with its count back to 0, and
    the old one acked: restarts never take it to the limit."""
    topology = Topology(QueueType.QUORUM, 4)
    queue = queues("polls")
    delayed = wire.delay_queue(queue)
    body = wire.encode(_poll_envelope(queue, "poll-1"))
    setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = setup.channel()
        channel.queue_declare(delayed, durable=True, arguments=topology.work_queue_arguments(queue))
        channel.confirm_delivery()
        channel.basic_publish("", delayed, body, pika.BasicProperties(delivery_mode=2))
        for _ in range(2):  # two workers took it and stopped
            method, _properties, _body = channel.basic_get(delayed)
            assert method is not None
            channel.basic_reject(method.delivery_tag, requeue=True)
    finally:
        setup.close()
    publisher = ConfirmedPublisher(amqp_url)
    broker = ScreeningBroker(
        dead_letters=publisher,
        topology=topology,
        parameters=broker_parameters(amqp_url),
        middleware=[],
    )

    def poll_workflow(request_id: str, step: int) -> None:
        """Never runs: the test reads the consumer Dramatiq's worker would read."""

    dramatiq.actor(broker=broker, actor_name=wire.POLL_ACTOR, queue_name=queue)(poll_workflow)
    with capture_logs() as logs:
        consumer = broker.consume(delayed, prefetch=10, timeout=200)
        try:
            deadline = time.monotonic() + 10
            held: list[Any] = []
            while not held and time.monotonic() < deadline:
                message = next(consumer)
                if message is not None:
                    held.append(message)
        finally:
            consumer.close()
            broker.close()
            publisher.close()
    # The refreshed copy came back to this consumer, as the same message.
    assert [m.message_id for m in held] == ["poll-1"]
    refreshed = [entry for entry in logs if entry["event"] == "message.refreshed"]
    assert [(entry["queue"], entry["deliveries"]) for entry in refreshed] == [(delayed, 2)]
    after = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = after.channel()
        method, properties, again = channel.basic_get(delayed, auto_ack=True)
        assert method is not None
        assert again == body
        assert (properties.headers or {}).get(DELIVERY_COUNT_HEADER, 0) <= 1
        assert channel.basic_get(delayed, auto_ack=True)[0] is None  # one copy only
        assert channel.queue_declare(wire.dead_letter_queue(queue), passive=True)
    finally:
        after.close()


def test_a_queue_of_another_type_is_used_as_it_is_and_said_once(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        setup.channel().queue_declare(
            queue, durable=True, arguments=Topology().work_queue_arguments(queue)
        )
    finally:
        setup.close()
    broker = ScreeningBroker(
        dead_letters=MemoryAmqp(),
        topology=Topology(QueueType.QUORUM),
        parameters=broker_parameters(amqp_url),
        middleware=[],
    )

    def submit_workflow(request: object) -> None:
        """Never runs."""

    dramatiq.actor(broker=broker, actor_name=wire.SUBMIT_ACTOR, queue_name=queue)(submit_workflow)
    with capture_logs() as logs:
        try:
            consumer = broker.consume(queue, prefetch=1, timeout=100)
            consumer.close()
            broker.queues_pending.add(queue)
            broker.declare_queue(queue, ensure=True)  # again: not said again
        finally:
            broker.close()
    mismatches = [entry for entry in logs if entry["event"] == "queue.mismatch"]
    assert [entry["queue"] for entry in mismatches] == [queue]
    assert "x-max-priority" in mismatches[0]["reason"]


def _quorum_broker(amqp_url: str, publisher: ConfirmedPublisher, limit: int) -> ScreeningBroker:
    return ScreeningBroker(
        dead_letters=publisher,
        topology=Topology(QueueType.QUORUM, limit),
        parameters=broker_parameters(amqp_url),
        middleware=[],
    )


def _hand_back(amqp_url: str, queue: str, body: bytes, times: int, limit: int) -> None:
    """Publish ``body`` to quorum ``queue`` and take it ``times`` times without an ack."""
    setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = setup.channel()
        channel.queue_declare(
            queue,
            durable=True,
            arguments=Topology(QueueType.QUORUM, limit).work_queue_arguments(queue),
        )
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
        for _ in range(times):
            method, _properties, _body = channel.basic_get(queue)
            assert method is not None
            channel.basic_reject(method.delivery_tag, requeue=True)
    finally:
        setup.close()


def test_a_message_handed_back_half_its_limit_is_dead_lettered_with_why(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    """A request every worker that took it died holding: the worker dead-letters it, with
    publisher confirms and its reason, before RabbitMQ's limit would move it unconfirmed."""
    queue = queues("requests")
    body = wire.encode(wire.request_envelope({"workflow": "sketch-maker"}, queue_name=queue))
    _hand_back(amqp_url, queue, body, times=2, limit=4)
    publisher = ConfirmedPublisher(amqp_url)
    broker = _quorum_broker(amqp_url, publisher, 4)

    def submit_workflow(request: object) -> None:
        """Never runs."""

    dramatiq.actor(broker=broker, actor_name=wire.SUBMIT_ACTOR, queue_name=queue)(submit_workflow)
    consumer = broker.consume(queue, prefetch=1, timeout=100)
    try:
        assert next(consumer) is None  # taken off, not handed to Dramatiq
    finally:
        consumer.close()
        broker.close()
        publisher.close()
    bodies = []
    after = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = after.channel()
        method, properties, letter = channel.basic_get(wire.dead_letter_queue(queue), auto_ack=True)
        assert method is not None
        bodies.append(letter)
        reason = (properties.headers or {})[wire.DEAD_LETTER_REASON_HEADER]
        assert channel.basic_get(queue, auto_ack=True)[0] is None
    finally:
        after.close()
    assert bodies == [body]
    assert reason.startswith("handed back 2 times unacknowledged")


def test_a_message_dramatiq_gives_up_on_is_published_to_its_dead_letter_queue(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("polls")
    body = wire.encode(_poll_envelope(queue, "given-up") | {"queue_name": queue, "options": {}})
    _hand_back(amqp_url, queue, body, times=0, limit=20)
    publisher = ConfirmedPublisher(amqp_url)
    broker = _quorum_broker(amqp_url, publisher, 20)

    def poll_workflow(request_id: str, step: int) -> None:
        """Never runs."""

    dramatiq.actor(broker=broker, actor_name=wire.POLL_ACTOR, queue_name=queue)(poll_workflow)
    consumer = broker.consume(queue, prefetch=1, timeout=100)
    try:
        deadline = time.monotonic() + 10
        message = None
        while message is None and time.monotonic() < deadline:
            message = next(consumer)
        assert message is not None
        consumer.nack(message)
        xq = wire.dead_letter_queue(queue)
        wait_until(
            lambda: _ready(amqp_url, xq) == 1, timeout_s=10, message="the dead letter to land"
        )
    finally:
        consumer.close()
        broker.close()
        publisher.close()
    assert _ready(amqp_url, queue) == 0  # acknowledged, not handed back


def _ready(amqp_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()
