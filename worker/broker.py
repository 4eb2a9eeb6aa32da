"""The service's broker: Dramatiq's RabbitMQ broker with a screen in front of Dramatiq, and
the queues declared as ``producers.topology`` says (classic or quorum). Every message a
consumer receives is checked (``producers.envelope.envelope_problem``) before Dramatiq
decodes it.

One that is not a well-formed message of an actor of the queue it arrived on is
dead-lettered, unchanged, to the queue's ``.XQ`` with the reason in the
``x-segmind-dead-letter-reason`` header, and never reaches Dramatiq: Dramatiq would
otherwise log a traceback for a body that is not JSON, act on the envelope's own
``queue_name`` (acking on another queue's channel, or stopping a worker thread on an
unknown one), ``eta`` and callback options.

On quorum queues (``producers.topology``) the broker also keeps every message away from
RabbitMQ's delivery limit and its dead-lettering, which can lose a letter:

- a message handed back half its delivery limit times (``near_delivery_limit``) is, when
  it is a delayed one a worker was holding (its queue's ``.DQ``), published again as a new
  message and the old one acknowledged: however often workers restart, a held poll is
  never dead-lettered. A crash between the two leaves two copies with one message id, which
  the ledger reduces to one step. Any other such message killed or stopped every worker
  that took it: it is dead-lettered, with that reason, before RabbitMQ's limit moves it;
- a message Dramatiq gives up on (nack) is published to its ``.XQ`` by the worker, with
  publisher confirms, then acknowledged; one that cannot be published stays unacknowledged
  and comes back when the worker's connection closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

import pika
import pika.exceptions
import structlog
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, q_name, xq_name

from producers import wire
from producers.envelope import (
    envelope_problem,
    plain_cancel_envelope,
    plain_request_envelope,
    with_message_id,
)
from producers.topology import DELIVERY_COUNT_HEADER, Topology, near_delivery_limit
from worker.results.publish import AmqpPublish, ResultPublisher

log = structlog.get_logger(__name__)

#: The reply code of a declaration whose arguments differ from the existing queue's.
PRECONDITION_FAILED: Final = 406

#: Publishes a held delayed message again as a new one: ``(queue, body, properties)``.
Refresh = Callable[[str, bytes, Any], None]


class ScreeningBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker that screens every message it consumes before Dramatiq
    decodes it.

    A body that ``envelope_problem`` finds wrong is published, unchanged, to its queue's
    ``.XQ`` with the reason (publisher confirms), then acknowledged; Dramatiq sees an idle
    moment instead.

    Args:
        dead_letters: publishes the refused bodies and the refreshed delayed messages
            (``worker.results.publish.AmqpPublish``; its connections are reused).
        topology: how the queues are declared (their type and arguments).
        **options: ``RabbitmqBroker``'s own keyword arguments (``max_priority`` is the
            topology's business and is not taken).

    Failure modes: when the dead letter cannot be published, the error ends the consumer
    (Dramatiq restarts it) before the acknowledgement, so RabbitMQ delivers the message
    again: it is never lost. The screen relies on the ``iterator`` and ``channel`` of
    Dramatiq 2's RabbitMQ consumer; without them every consume raises ``RuntimeError``
    (Dramatiq logs it and retries), so that messages never run unscreened. A queue that
    exists with other arguments (another type: ``segmind-queue worker`` refuses to start
    on one, ``worker.declare``; this is one replaced while the worker runs) is logged once
    as ``queue.mismatch`` and used as it is, never declared again in a loop.
    """

    def __init__(
        self, *, dead_letters: AmqpPublish, topology: Topology | None = None, **options: Any
    ) -> None:
        options.pop("max_priority", None)
        super().__init__(**options)
        self.dead_letters = dead_letters
        self.topology = topology or Topology()
        self._mismatched: set[str] = set()

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        return self.topology.work_queue_arguments(queue_name)

    def _declare_queue(self, queue_name: str) -> Any:
        return self._declare(queue_name, self.topology.work_queue_arguments(queue_name))

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self._declare(dq_name(queue_name), self.topology.work_queue_arguments(queue_name))

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self._declare(xq_name(queue_name), self.topology.dead_letter_queue_arguments())

    def _declare(self, queue: str, arguments: dict[str, Any]) -> Any:
        """Declare ``queue`` with ``arguments``; one that exists with others is used as
        it is (a passive declaration) and reported once."""
        try:
            return self.channel.queue_declare(queue=queue, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            del self.channel  # RabbitMQ closed it
            if queue not in self._mismatched:
                self._mismatched.add(queue)
                log.error(
                    "queue.mismatch",
                    queue=queue,
                    queue_type=self.topology.queue_type,
                    reason=exc.reply_text,
                )
            return self.channel.queue_declare(queue=queue, passive=True)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        consumer: Any = super().consume(queue_name, prefetch=prefetch, timeout=timeout)
        if not hasattr(consumer, "iterator") or not hasattr(consumer, "channel"):
            raise RuntimeError("cannot screen messages: Dramatiq's RabbitMQ consumer changed")
        actor_queues = {
            name: self.get_actor(name).queue_name for name in self.get_declared_actors()
        }
        # A delay queue's dead letters go where its queue's do (Dramatiq's .XQ).
        publisher = ResultPublisher(
            self.dead_letters,
            dead_letter_queue=wire.dead_letter_queue(q_name(queue_name)),
            topology=self.topology,
        )
        quorum = self.topology.quorum
        consumer.iterator = _screened(
            consumer,
            consumer.iterator,
            queue_name,
            actor_queues,
            publisher,
            self._refresh if quorum else None,
            self.topology.delivery_limit,
        )
        if quorum:
            consumer.nack = _confirmed_nack(consumer, publisher)
        return consumer

    def _refresh(self, queue: str, body: bytes, properties: Any) -> None:
        headers = {
            name: value
            for name, value in (getattr(properties, "headers", None) or {}).items()
            if name != DELIVERY_COUNT_HEADER
        }
        fresh = pika.BasicProperties(
            delivery_mode=wire.PERSISTENT,
            priority=getattr(properties, "priority", None),
            message_id=getattr(properties, "message_id", None),
            headers=headers or None,
        )
        self.dead_letters.publish(queue, body, fresh)


def _screened(
    consumer: Any,
    deliveries: Iterator[tuple[Any, Any, Any]],
    queue_name: str,
    actor_queues: dict[str, str],
    dead_letters: ResultPublisher,
    refresh: Refresh | None = None,
    delivery_limit: int = 0,
) -> Iterator[tuple[Any, Any, Any]]:
    """The consumer's deliveries, with each malformed one dead-lettered, and each one near
    its delivery limit refreshed (a delayed one) or dead-lettered (``refresh`` given: quorum
    queues only), all replaced by ``(None, None, None)``: what pika yields when nothing
    arrived, so that Dramatiq's consumer loop still runs its delayed messages and checks for
    shutdown. ``delivery_limit``: the queue's (``x-delivery-limit``)."""
    requests_queue = actor_queues.get(wire.SUBMIT_ACTOR)
    cancels_queue = actor_queues.get(wire.CANCEL_ACTOR)
    delayed = queue_name.endswith(wire.DELAY_SUFFIX)
    for method, properties, body in deliveries:
        if method is None:
            yield method, properties, body
            continue
        count = (getattr(properties, "headers", None) or {}).get(DELIVERY_COUNT_HEADER)
        limited = refresh is not None and near_delivery_limit(count, delivery_limit)
        if delayed and limited:
            assert refresh is not None
            # Published before the ack: a crash in between leaves a duplicate, not a loss.
            refresh(queue_name, body, properties)
            consumer.channel.basic_ack(method.delivery_tag)
            log.info("message.refreshed", queue=queue_name, deliveries=count)
            yield None, None, None
            continue
        if queue_name == requests_queue:
            body = _as_envelope(body, properties, queue_name)
        elif queue_name == cancels_queue:
            message_id = _text(getattr(properties, "message_id", None))
            body = plain_cancel_envelope(body, queue_name=queue_name, message_id=message_id) or body
        reason = envelope_problem(body, queue_name=queue_name, actor_queues=actor_queues)
        if reason is None and limited:
            reason = (
                f"handed back {count} times unacknowledged: every worker that took it stopped "
                f"or crashed (dead-lettered at half AMQP_DELIVERY_LIMIT={delivery_limit})"
            )
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


def _confirmed_nack(consumer: Any, dead_letters: ResultPublisher) -> Callable[[Any], None]:
    """The consumer's ``nack`` on quorum queues: the message Dramatiq gives up on is
    published to its ``.XQ`` (confirmed; why is in the reason Redis holds for it,
    ``worker.deadletters.middleware``), then acknowledged. A failed publish raises:
    Dramatiq logs it and the message, unacknowledged, is delivered again later."""

    def nack(message: Any) -> None:
        priority = message.options.get("broker_priority")
        dead_letters.dead_letter(
            message.encode(),
            None,
            message_id=message.message_id,
            priority=priority if isinstance(priority, int) else None,
        )
        consumer.ack(message)

    return nack


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
