"""The service's broker: Dramatiq's RabbitMQ broker with a screen in front of Dramatiq. Every
message a consumer receives is checked (``producers.envelope.envelope_problem``) before
Dramatiq decodes it.

One that is not a well-formed message of an actor of the queue it arrived on is
dead-lettered, unchanged, to the queue's ``.XQ`` with the reason in the
``x-segmind-dead-letter-reason`` header, and never reaches Dramatiq: Dramatiq would
otherwise log a traceback for a body that is not JSON, act on the envelope's own
``queue_name`` (acking on another queue's channel, or stopping a worker thread on an
unknown one), ``eta`` and callback options.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import q_name

from producers import wire
from producers.envelope import (
    envelope_problem,
    plain_cancel_envelope,
    plain_request_envelope,
    with_message_id,
)
from worker.results.publish import AmqpPublish, ResultPublisher

log = structlog.get_logger(__name__)


class ScreeningBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker that screens every message it consumes before Dramatiq
    decodes it.

    A body that ``envelope_problem`` finds wrong is published, unchanged, to its queue's
    ``.XQ`` with the reason (publisher confirms), then acknowledged; Dramatiq sees an idle
    moment instead.

    Args:
        dead_letters: publishes the refused bodies (``worker.results.publish.AmqpPublish``;
            its connections are reused).
        **options: ``RabbitmqBroker``'s own keyword arguments.

    Failure modes: when the dead letter cannot be published, the error ends the consumer
    (Dramatiq restarts it) before the acknowledgement, so RabbitMQ delivers the message
    again: it is never lost. The screen relies on the ``iterator`` and ``channel`` of
    Dramatiq 2's RabbitMQ consumer; without them every consume raises ``RuntimeError``
    (Dramatiq logs it and retries), so that messages never run unscreened.
    """

    def __init__(self, *, dead_letters: AmqpPublish, **options: Any) -> None:
        super().__init__(**options)
        self.dead_letters = dead_letters

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        consumer = super().consume(queue_name, prefetch=prefetch, timeout=timeout)
        if not hasattr(consumer, "iterator") or not hasattr(consumer, "channel"):
            raise RuntimeError("cannot screen messages: Dramatiq's RabbitMQ consumer changed")
        actor_queues = {
            name: self.get_actor(name).queue_name for name in self.get_declared_actors()
        }
        # A delay queue's dead letters go where its queue's do (Dramatiq's .XQ).
        publisher = ResultPublisher(
            self.dead_letters, dead_letter_queue=wire.dead_letter_queue(q_name(queue_name))
        )
        consumer.iterator = _screened(
            consumer, consumer.iterator, queue_name, actor_queues, publisher
        )
        return consumer


def _screened(
    consumer: Any,
    deliveries: Iterator[tuple[Any, Any, Any]],
    queue_name: str,
    actor_queues: dict[str, str],
    dead_letters: ResultPublisher,
) -> Iterator[tuple[Any, Any, Any]]:
    """The consumer's deliveries, with each malformed one dead-lettered and replaced by
    ``(None, None, None)``: what pika yields when nothing arrived, so that Dramatiq's
    consumer loop still runs its delayed messages and checks for shutdown."""
    requests_queue = actor_queues.get(wire.SUBMIT_ACTOR)
    cancels_queue = actor_queues.get(wire.CANCEL_ACTOR)
    for method, properties, body in deliveries:
        if method is None:
            yield method, properties, body
            continue
        if queue_name == requests_queue:
            body = _as_envelope(body, properties, queue_name)
        elif queue_name == cancels_queue:
            message_id = _text(getattr(properties, "message_id", None))
            body = plain_cancel_envelope(body, queue_name=queue_name, message_id=message_id) or body
        reason = envelope_problem(body, queue_name=queue_name, actor_queues=actor_queues)
        if reason is not None:
            message_id = getattr(properties, "message_id", None)
            dead_letters.dead_letter(body, reason, message_id=message_id)
            # This thread owns the connection: the ack is sent directly.
            consumer.channel.basic_ack(method.delivery_tag)
            log.warning(
                "message.dead_lettered", queue=queue_name, message_id=message_id, reason=reason
            )
            yield None, None, None
            continue
        if queue_name == requests_queue:
            body = with_message_id(body) or body
        yield method, properties, body


def _as_envelope(body: bytes, properties: Any, queue_name: str) -> bytes:
    """A request in the plain form (the bare request, AMQP properties for the rest) as the
    Dramatiq message the worker runs; any other body as it is, for the screen to judge."""
    wrapped = plain_request_envelope(
        body,
        queue_name=queue_name,
        reply_to=_text(getattr(properties, "reply_to", None)),
        correlation_id=_text(getattr(properties, "correlation_id", None)),
        message_id=_text(getattr(properties, "message_id", None)),
        priority=_int(getattr(properties, "priority", None)),
        timestamp_s=_int(getattr(properties, "timestamp", None)),
    )
    return body if wrapped is None else wrapped


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
