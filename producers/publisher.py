"""Publishing workflow requests: the Python producer's side of the wire format.

A request is published as the Dramatiq message that calls ``submit_workflow`` with it (see
``producers.wire`` and ``docs/wire-format.md``), persistent, with its priority, and confirmed
by RabbitMQ before ``publish`` returns::

    with Publisher("amqp://guest:guest@127.0.0.1:5672/%2F") as publisher:
        request_id = publisher.publish({"workflow": "sketch-maker", "inputs": {...}})

A publish rides out a broker restart: while RabbitMQ is unreachable it is retried, with
the same message id, for up to ``retry_for_s`` (a refused login is not retried).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

import pika
from pydantic import SecretStr

from producers import wire
from producers.amqp import ConfirmedPublisher, PublishError
from producers.closing import Closing
from producers.contract import Cancel, Request
from producers.topology import Topology
from producers.wire import DEFAULT_AMQP_URL

log = logging.getLogger(__name__)
# A library logs only where the application configured logging (no "last resort" output).
log.addHandler(logging.NullHandler())

#: How long a publish keeps trying while RabbitMQ is unreachable: longer than a broker
#: restart (a node takes seconds to stop and start, a cluster's rolling restart longer).
DEFAULT_RETRY_FOR_S: Final = 120.0


class Publisher(Closing):
    """Publishes requests to the requests queue with publisher confirms.

    Safe to share between threads (each thread publishes on its own connection).

    Args:
        url: RabbitMQ's URL; several separated by ``;`` are tried in turn. Ignored when
            ``publisher`` is given.
        queue: the requests queue.
        cancels_queue: the queue of cancel messages (the worker's ``CANCELS_QUEUE``).
        publisher: a ``ConfirmedPublisher`` to publish with (it is then not closed by
            ``close()``: its owner closes it); a new one on ``url`` when ``None``.
        retry_for_s: how long one ``publish`` keeps trying while RabbitMQ cannot be
            reached or keeps failing (each try is the ``ConfirmedPublisher``'s own round
            of attempts with backoff); 0 gives up after the first round.
        topology: how a queue that does not exist yet is declared (the workers' own
            ``AMQP_QUEUE_TYPE`` and ``AMQP_DELIVERY_LIMIT``); read from the environment
            when ``None``. An existing queue is used as it is.

    Raises:
        ValueError: ``url`` is not a valid AMQP URL, ``retry_for_s`` is negative, or the
            environment's ``AMQP_QUEUE_TYPE`` is not a queue type.
    """

    def __init__(
        self,
        url: str | SecretStr = DEFAULT_AMQP_URL,
        *,
        queue: str = wire.DEFAULT_REQUESTS_QUEUE,
        cancels_queue: str = wire.DEFAULT_CANCELS_QUEUE,
        publisher: ConfirmedPublisher | None = None,
        retry_for_s: float = DEFAULT_RETRY_FOR_S,
        topology: Topology | None = None,
    ) -> None:
        if retry_for_s < 0:
            raise ValueError(f"retry_for_s must be >= 0, not {retry_for_s}")
        self.topology = topology or Topology.from_env()
        self.queue = queue
        self.cancels_queue = cancels_queue
        self.retry_for_s = retry_for_s
        self._owned = publisher is None
        self._publisher = ConfirmedPublisher(url) if publisher is None else publisher

    def __repr__(self) -> str:
        return f"Publisher(queue={self.queue!r}, publisher={self._publisher!r})"

    def publish(
        self, request: Request | Mapping[str, Any], *, message_id: str | None = None
    ) -> str:
        """Publish one request; returns once RabbitMQ has confirmed it.

        The request is checked against the contract's model only; the catalog checks
        (known workflow, inputs) happen in the worker, which answers REJECTED. Use
        ``producers.contract.validate_request`` first to catch those before publishing.

        Args:
            request: a ``Request``, or a mapping validated into one (its ``request_id`` is
                generated when absent).
            message_id: the message's id; a new UUID when ``None``. Pass the same id when
                publishing the same message again (a retry after an error whose outcome is
                unknown): the worker tells redeliveries apart by it. The retries within
                ``retry_for_s`` keep it.

        Returns:
            The request's ``request_id`` (the idempotency key its result carries).

        Raises:
            pydantic.ValidationError: the mapping is not a valid request (raised as is).
            PublishError: RabbitMQ refused the login or access, or did not confirm the
                message within ``retry_for_s``. The message may still have been taken
                (a confirm lost with the connection): publishing it again with the same
                ``message_id`` and ``request_id`` cannot make the request run twice.
        """
        model = request if isinstance(request, Request) else Request.model_validate(dict(request))
        payload = model.model_dump(mode="json", exclude_none=True)
        envelope = wire.request_envelope(payload, queue_name=self.queue, message_id=message_id)
        properties = pika.BasicProperties(
            content_type=wire.CONTENT_TYPE,
            content_encoding=wire.CONTENT_ENCODING,
            delivery_mode=wire.PERSISTENT,
            priority=model.priority,
            message_id=envelope["message_id"],
        )
        self._publish(self.queue, wire.encode(envelope), properties, what=model.request_id)
        return model.request_id

    def cancel(self, request_ids: Iterable[str]) -> list[str]:
        """Ask the workers to cancel requests; returns once RabbitMQ has confirmed.

        What a cancel does depends on where each request stands (never POSTed: CANCELLED,
        unpaid; POSTed: no longer followed, CANCELLED, charged; finished: nothing); its
        CANCELLED result reaches the request's own reply queue. Cancelling twice is
        harmless.

        Args:
            request_ids: the requests (any number: sent 1000 to a message).

        Returns:
            The message ids of the cancel messages sent.

        Raises:
            pydantic.ValidationError: an id is not a valid request id.
            PublishError: as ``publish``.
        """
        ids = list(request_ids)
        sent = []
        for start in range(0, len(ids), wire.MAX_CANCEL_IDS):
            cancel = Cancel(request_ids=ids[start : start + wire.MAX_CANCEL_IDS])
            message_id = str(uuid.uuid4())
            properties = pika.BasicProperties(
                content_type=wire.CONTENT_TYPE,
                content_encoding=wire.CONTENT_ENCODING,
                delivery_mode=wire.PERSISTENT,
                message_id=message_id,
            )
            body = wire.encode(cancel.model_dump(mode="json"))
            self._publish(self.cancels_queue, body, properties, what=f"cancel {message_id}")
            sent.append(message_id)
        return sent

    def _publish(
        self, queue: str, body: bytes, properties: pika.BasicProperties, *, what: str
    ) -> None:
        arguments = self.topology.work_queue_arguments(queue)
        deadline = time.monotonic() + self.retry_for_s
        while True:
            try:
                self._publisher.publish(queue, body, properties, arguments=arguments)
                return
            except PublishError as error:
                # Each round already backed off between its attempts: go on at once.
                if error.permanent or time.monotonic() >= deadline:
                    raise
                log.warning(
                    "publishing %s still failing (%s); retrying for %.0f s more",
                    what,
                    error.reason,
                    deadline - time.monotonic(),
                )

    def publish_many(self, requests: Iterable[Request | Mapping[str, Any]]) -> list[str]:
        """Publish requests one after another, each confirmed before the next.

        Returns:
            Their request ids, in order.

        Raises:
            pydantic.ValidationError, PublishError: as ``publish``; the requests before
                the failing one have been published.
        """
        return [self.publish(request) for request in requests]

    def close(self) -> None:
        """Close the connections, unless the ``ConfirmedPublisher`` was given by the caller."""
        if self._owned:
            self._publisher.close()


def publish(
    request: Request | Mapping[str, Any],
    *,
    url: str | SecretStr = DEFAULT_AMQP_URL,
    queue: str = wire.DEFAULT_REQUESTS_QUEUE,
) -> str:
    """Publish one request on a connection of its own (for scripts; reuse a ``Publisher``
    to publish many).

    Returns:
        The request's ``request_id``.

    Raises:
        pydantic.ValidationError, PublishError: as ``Publisher.publish``.
        ValueError: ``url`` is not a valid AMQP URL.
    """
    with Publisher(url, queue=queue) as publisher:
        return publisher.publish(request)
