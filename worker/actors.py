"""The Dramatiq actors: ``submit_workflow`` on the requests queue, ``poll_workflow`` on the
polls queue. They only hand each message to the ``Pipeline``.

Actor options:

- ``submit_workflow`` takes one argument, the request object (any other shape is
  answered REJECTED or dead-lettered); ``poll_workflow`` takes ``(request_id, step)``.
- Waits are ``dramatiq.Retry`` with an exact delay and never count against the limit;
  other exceptions (Redis or RabbitMQ down) are retried with exponential backoff from
  1 s to 5 min, ``MAX_FAILURE_RETRIES`` times, then the message is dead-lettered.
- A poll message that cannot be handled (malformed, or its record is gone) is
  dead-lettered at once.
- Within a worker, polls run before submits (Dramatiq's actor ``priority``: lower first):
  following paid jobs comes before starting new ones.
- On RabbitMQ, every message is screened before Dramatiq reads it
  (``producers.contract.envelope_problem``): one that is not a well-formed message for the
  queue it arrived on is dead-lettered to the queue's ``.XQ`` with the reason in the
  ``x-segmind-dead-letter-reason`` header, and never reaches Dramatiq.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import dramatiq
import structlog
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import current_millis, q_name
from dramatiq.middleware import CurrentMessage

from producers import wire
from producers.contract import envelope_problem
from worker.pipeline import (
    DUE_OPTION,
    MalformedMessageError,
    MessageLike,
    MissingRecordError,
    Pipeline,
)
from worker.results import ResultPublisher

log = structlog.get_logger(__name__)

#: Retries of a message whose step failed with an unexpected exception.
MAX_FAILURE_RETRIES: Final = 20
_MIN_BACKOFF_MS: Final = 1_000
_MAX_BACKOFF_MS: Final = 300_000
_POLL_PRIORITY: Final = 0
_SUBMIT_PRIORITY: Final = 10


@dataclass(frozen=True)
class Actors:
    """The declared actors."""

    submit: dramatiq.Actor[..., None]
    poll: dramatiq.Actor[..., None]


def _retry_when(retries: int, exception: BaseException) -> bool:
    # A Retry is a wait the pipeline asked for, bounded by its own rules.
    return isinstance(exception, dramatiq.Retry) or retries < MAX_FAILURE_RETRIES


def _current() -> MessageLike:
    message = CurrentMessage.get_current_message()
    if message is None:
        raise RuntimeError("the CurrentMessage middleware is missing from the broker")
    return message


def declare_actors(
    broker: dramatiq.Broker, pipeline: Pipeline, *, requests_queue: str, polls_queue: str
) -> Actors:
    """Declare both actors on ``broker`` and connect the pipeline's poll scheduling.

    Args:
        broker: a broker with the ``CurrentMessage`` middleware.
        pipeline: what the actors run.
        requests_queue: the queue of ``submit_workflow``.
        polls_queue: the queue of ``poll_workflow``.
    """

    def submit_workflow(*args: Any, **kwargs: Any) -> None:
        pipeline.submit(_current(), args, kwargs)

    def poll_workflow(*args: Any, **kwargs: Any) -> None:
        pipeline.poll(_current(), args, kwargs)

    options: dict[str, Any] = {
        "broker": broker,
        "retry_when": _retry_when,
        "min_backoff": _MIN_BACKOFF_MS,
        "max_backoff": _MAX_BACKOFF_MS,
    }
    submit = dramatiq.actor(
        actor_name=wire.SUBMIT_ACTOR,
        queue_name=requests_queue,
        priority=_SUBMIT_PRIORITY,
        **options,
    )(submit_workflow)
    poll = dramatiq.actor(
        actor_name=wire.POLL_ACTOR,
        queue_name=polls_queue,
        priority=_POLL_PRIORITY,
        throws=(MalformedMessageError, MissingRecordError),
        **options,
    )(poll_workflow)

    def schedule_poll(request_id: str, step: int, delay_s: float) -> None:
        delay_ms = max(0, round(delay_s * 1000))
        # Dramatiq drops its own ``eta`` when a delayed message falls due: this one stays,
        # so the poll can tell how late it runs.
        due: dict[str, Any] = {DUE_OPTION: current_millis() + delay_ms}
        poll.send_with_options(args=(request_id, step), delay=delay_ms, **due)

    pipeline.schedule_poll = schedule_poll
    if isinstance(broker, RabbitmqBroker):
        screen_envelopes(broker, pipeline.results)
    return Actors(submit=submit, poll=poll)


def screen_envelopes(broker: RabbitmqBroker, results: ResultPublisher) -> None:
    """Screen every message ``broker`` consumes before Dramatiq decodes it.

    A body that ``envelope_problem`` finds wrong is published, unchanged, to its queue's
    ``.XQ`` with the reason (publisher confirms), then acknowledged; Dramatiq sees an idle
    moment instead. Dramatiq would otherwise log a traceback for a body that is not JSON,
    and act on the envelope's own ``queue_name``, ``eta`` and options.

    Args:
        broker: the RabbitMQ broker, its actors declared.
        results: the publisher of dead letters (its connection is reused).

    Failure modes: when the dead letter cannot be published, the error ends the consumer
    (Dramatiq restarts it) before the acknowledgement, so RabbitMQ delivers the message
    again: it is never lost. The screen relies on the ``iterator`` and ``channel`` of
    Dramatiq 2's RabbitMQ consumer; without them every consume raises ``RuntimeError``
    (Dramatiq logs it and retries), so that messages never run unscreened.
    """
    consume = broker.consume

    def screened_consume(queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        consumer = consume(queue_name, prefetch=prefetch, timeout=timeout)
        if not hasattr(consumer, "iterator") or not hasattr(consumer, "channel"):
            raise RuntimeError("cannot screen messages: Dramatiq's RabbitMQ consumer changed")
        actor_queues = {
            name: broker.get_actor(name).queue_name for name in broker.get_declared_actors()
        }
        # A delay queue's dead letters go where its queue's do (Dramatiq's .XQ).
        dead_letters = ResultPublisher(
            results.amqp, dead_letter_queue=wire.dead_letter_queue(q_name(queue_name))
        )
        consumer.iterator = _screened(
            consumer, consumer.iterator, queue_name, actor_queues, dead_letters
        )
        return consumer

    broker.consume = screened_consume  # type: ignore[method-assign]


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
    for method, properties, body in deliveries:
        if method is not None:
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
        yield method, properties, body
