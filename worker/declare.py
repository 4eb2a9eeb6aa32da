"""Declaring the service's queues before the worker starts, so that a queue that already
exists with another type or other arguments is reported once, clearly, instead of failing
every consumer's declaration in a loop.

RabbitMQ refuses to declare a queue again with other arguments (``PRECONDITION_FAILED``):
a worker set to ``AMQP_QUEUE_TYPE=quorum`` finds the classic ``segmind.requests`` an earlier
version declared, or the reverse. ``check_queues`` declares each queue of
``Topology.service_queues`` (creating the missing ones, as the worker would) and, for each
refused one, tries the other type's arguments to say which type the queue has. It changes
no existing queue: a declaration with equivalent arguments is a no-op, and a refused one
changes nothing. ``docs/reliability.md`` says how to move from one type to the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from producers.amqp import RETRYABLE, BrokerError, close_quietly, connect, parse_amqp_urls
from producers.topology import Topology
from worker.settings import Settings

#: The reply code of a declaration whose arguments differ from the existing queue's.
PRECONDITION_FAILED: Final = 406
_CONNECT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A queue that exists with other arguments than the topology's.

    Attributes:
        queue: its name.
        found_type: the type it has, when the other type's arguments fit it; ``None``:
            other arguments altogether (say, another ``x-delivery-limit``).
        reason: RabbitMQ's own words (they name the first argument that differs).
    """

    queue: str
    found_type: str | None
    reason: str

    def describe(self, topology: Topology) -> str:
        """One line for the operator."""
        wanted = topology.queue_type.value
        if self.found_type is not None:
            return (
                f"queue {self.queue!r} exists as a {self.found_type} queue, but "
                f"AMQP_QUEUE_TYPE={wanted}: set AMQP_QUEUE_TYPE={self.found_type}, or move "
                "to new queues (docs/reliability.md, 'Moving to quorum queues')"
            )
        return (
            f"queue {self.queue!r} exists with other arguments than AMQP_QUEUE_TYPE={wanted} "
            f"and AMQP_DELIVERY_LIMIT={topology.delivery_limit} declare ({self.reason})"
        )


def service_queues(settings: Settings) -> dict[str, dict[str, Any]]:
    """The queues a worker with ``settings`` declares, with their arguments."""
    return settings.topology.service_queues(
        [settings.requests_queue, settings.polls_queue, settings.cancels_queue],
        settings.results_dead_letter_queue,
    )


def check_queues(settings: Settings) -> list[Mismatch]:
    """Declare the worker's queues; the ones that exist with other arguments.

    Raises:
        BrokerError: RabbitMQ could not be reached or refused access (the message never
            holds the URL's password).
        ValueError: ``AMQP_URL`` is not a valid AMQP URL.
    """
    parameters, redact, _hosts = parse_amqp_urls(
        settings.amqp_url, connect_timeout_s=_CONNECT_TIMEOUT_S
    )
    topology = settings.topology
    other = topology.other()
    wanted = service_queues(settings)
    alternatives = other.service_queues(
        [settings.requests_queue, settings.polls_queue, settings.cancels_queue],
        settings.results_dead_letter_queue,
    )
    try:
        connection = connect(parameters)
    except RETRYABLE as exc:
        raise BrokerError(redact.describe(exc)) from None
    found: list[Mismatch] = []
    try:
        for queue, arguments in wanted.items():
            refused = _declare(connection, queue, arguments)
            if refused is None:
                continue
            fits_other = _declare(connection, queue, alternatives[queue]) is None
            found.append(Mismatch(queue, other.queue_type.value if fits_other else None, refused))
    except RETRYABLE as exc:
        raise BrokerError(redact.describe(exc)) from None
    finally:
        close_quietly(connection)
    return found


def _declare(
    connection: pika.BlockingConnection, queue: str, arguments: dict[str, Any]
) -> str | None:
    """Declare ``queue`` on a channel of its own (a refusal closes it): ``None``, or
    RabbitMQ's reason for refusing these arguments.

    Raises:
        pika.exceptions.AMQPError: any other failure.
    """
    channel: BlockingChannel = connection.channel()
    try:
        channel.queue_declare(queue=queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        return str(exc.reply_text)
    channel.close()
    return None
