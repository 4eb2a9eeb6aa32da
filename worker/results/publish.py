"""Publishing what a request leads to: its result on ``reply_to``, or a dead letter.

``ResultPublisher`` turns a contract ``Result`` into the result message of the wire format
(``producers.wire``) and hands it to an ``AmqpPublish``: the confirmed RabbitMQ publisher
(``producers.amqp.ConfirmedPublisher``) in the service, ``MemoryAmqp`` in the in-process
local mode and in unit tests. A request that cannot be answered (it has no usable
``reply_to``) is published to the requests queue's dead-letter queue with the reason in a
header, so it is never silently dropped.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

from pika import BasicProperties

from producers import wire
from producers.amqp import PublishError
from producers.contract import Progress, Result
from producers.topology import Topology


class AmqpPublish(Protocol):
    """Publishes one message to a queue and returns once the broker has confirmed it."""

    def publish(
        self,
        queue: str,
        body: bytes,
        properties: BasicProperties,
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Publish ``body`` to ``queue`` (declared durable with ``arguments`` if missing).

        Raises:
            Exception: the message could not be published; the caller's message is
                retried, so nothing is lost.
        """


class ResultPublisher:
    """Publishes results and dead letters.

    Args:
        amqp: the confirmed publisher.
        dead_letter_queue: where requests that cannot be answered go (the requests
            queue's ``.XQ``).
        results_dead_letter_queue: where results go that their reply queue refused
            (``RESULTS_DEAD_LETTER_QUEUE``).
        topology: how a queue published to is declared when it does not exist yet (its
            type: ``AMQP_QUEUE_TYPE``); an existing one is used as it is.
    """

    def __init__(
        self,
        amqp: AmqpPublish,
        *,
        dead_letter_queue: str,
        results_dead_letter_queue: str = wire.DEFAULT_RESULTS_DEAD_LETTER_QUEUE,
        topology: Topology | None = None,
    ) -> None:
        self.amqp = amqp
        self.topology = topology or Topology()
        self.dead_letter_queue = dead_letter_queue
        self.results_dead_letter_queue = results_dead_letter_queue

    def publish(self, result: Result, reply_to: str, *, priority: int | None = None) -> None:
        """Publish ``result`` to ``reply_to``, persistent, ``correlation_id`` = request_id.

        A missing ``reply_to`` queue is declared durable, of the topology's type; an
        existing one is used as it is.
        """
        body = result.model_dump_json(exclude_none=True).encode(wire.CONTENT_ENCODING)
        properties = BasicProperties(**wire.result_properties(result.request_id), priority=priority)
        self.amqp.publish(
            reply_to, body, properties, arguments=self.topology.reply_queue_arguments()
        )

    def progress(self, progress: Progress, reply_to: str, *, priority: int | None = None) -> None:
        """Publish a progress message to ``reply_to``: transient, AMQP ``type``
        ``segmind.progress``, ``correlation_id`` = request_id.

        Raises:
            PublishError: it could not be published (the caller drops it: progress is
                best effort).
        """
        body = progress.model_dump_json(exclude_none=True).encode(wire.CONTENT_ENCODING)
        properties = BasicProperties(
            **wire.progress_properties(progress.request_id), priority=priority
        )
        self.amqp.publish(
            reply_to, body, properties, arguments=self.topology.reply_queue_arguments()
        )

    def deliver(self, result: Result, reply_to: str, *, priority: int | None = None) -> str | None:
        """Publish ``result`` to ``reply_to``, or, when RabbitMQ refuses that queue (after
        the publisher's bounded attempts), to the results dead-letter queue.

        Returns:
            ``None`` when the result reached ``reply_to``, else why it was dead-lettered.

        Raises:
            PublishError: RabbitMQ could not be reached (nor the dead-letter queue): the
                caller's message is retried.
        """
        try:
            self.publish(result, reply_to, priority=priority)
        except PublishError as error:
            if not error.refused:
                raise
            reason = f"reply queue {reply_to!r} refused the result: {error.reason}"
            self.dead_letter_result(result, reply_to, reason, priority=priority)
            return error.reason
        return None

    def dead_letter_result(
        self, result: Result, reply_to: str, reason: str, *, priority: int | None = None
    ) -> None:
        """Publish ``result``, which ``reply_to`` refused, to the results dead-letter queue:
        the same body and properties as on the reply queue, with ``reason`` and
        ``reply_to`` in the headers (``segmind-queue dlq replay`` sends it on from there)."""
        body = result.model_dump_json(exclude_none=True).encode(wire.CONTENT_ENCODING)
        properties = BasicProperties(
            **wire.result_properties(result.request_id),
            priority=priority,
            message_id=result.request_id,
            headers={wire.DEAD_LETTER_REASON_HEADER: reason, wire.REPLY_TO_HEADER: reply_to},
        )
        self.amqp.publish(
            self.results_dead_letter_queue,
            body,
            properties,
            arguments=self.topology.results_dead_letter_queue_arguments(),
        )

    def dead_letter(
        self,
        body: bytes,
        reason: str | None,
        *,
        message_id: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Publish a message that cannot be answered to the dead-letter queue, persistent,
        with ``reason`` in the ``x-segmind-dead-letter-reason`` header (none: the reason
        is recorded elsewhere, as for a message Dramatiq gave up on)."""
        properties = BasicProperties(
            content_type=wire.CONTENT_TYPE,
            delivery_mode=wire.PERSISTENT,
            message_id=message_id,
            priority=priority,
            headers={wire.DEAD_LETTER_REASON_HEADER: reason} if reason is not None else None,
            timestamp=int(time.time()),
        )
        self.amqp.publish(
            self.dead_letter_queue,
            body,
            properties,
            arguments=self.topology.dead_letter_queue_arguments(),
        )


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message published to ``MemoryAmqp``."""

    queue: str
    body: bytes
    properties: BasicProperties


@dataclass
class MemoryAmqp:
    """An in-memory ``AmqpPublish``: messages are kept per queue, in order."""

    queues: dict[str, list[Delivered]] = field(default_factory=lambda: defaultdict(list))
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(
        self,
        queue: str,
        body: bytes,
        properties: BasicProperties,
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        with self._changed:
            self.queues[queue].append(Delivered(queue, body, properties))
            self._changed.notify_all()

    def wait_for(self, queue: str, count: int, timeout_s: float) -> list[Delivered]:
        """The messages of ``queue`` once it holds at least ``count``.

        Raises:
            TimeoutError: fewer than ``count`` arrived within ``timeout_s``.
        """
        with self._changed:
            if not self._changed.wait_for(
                lambda: len(self.queues.get(queue, ())) >= count, timeout_s
            ):
                held = len(self.queues.get(queue, ()))
                raise TimeoutError(f"{queue}: {held} of {count} messages after {timeout_s} s")
            return list(self.queues[queue])
