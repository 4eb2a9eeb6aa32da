"""The Dramatiq actors: ``submit_workflow`` on the requests queue, ``poll_workflow`` on the
polls queue, ``cancel_workflow`` on the cancels queue. They only hand each message to the
``Pipeline``.

Actor options:

- ``submit_workflow`` takes one argument, the request object (any other shape is
  answered REJECTED or dead-lettered); ``poll_workflow`` takes ``(request_id, step)``.
- Waits are ``dramatiq.Retry`` with an exact delay and spend none of the message's
  retries (``_waits_spend_no_retries``); other exceptions (Redis or RabbitMQ down) are
  retried with exponential backoff from 1 s to 5 min, ``MAX_FAILURE_RETRIES`` times, then
  the message is dead-lettered. So a request that waited an hour for rate or budget still
  has all its retries for a Redis restart.
- A poll message that cannot be handled (malformed, or its record is gone) is
  dead-lettered at once.
- ``cancel_workflow`` takes one ``{"request_ids": [...]}`` object (``worker.cancel``); a
  malformed one is dead-lettered at once.
- Within a worker, polls and cancels run before submits (Dramatiq's actor ``priority``:
  lower first): following paid jobs, and stopping them, comes before starting new ones.
- On RabbitMQ, every message is screened before Dramatiq reads it (``worker.broker``):
  one that is not a well-formed message for the queue it arrived on is dead-lettered with
  its reason and never reaches Dramatiq.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import dramatiq
from dramatiq.common import current_millis
from dramatiq.middleware import CurrentMessage

from producers import wire
from worker.pipeline import (
    DUE_OPTION,
    WAITED_OPTION,
    MalformedMessageError,
    MessageLike,
    MissingRecordError,
    Pipeline,
    SchedulePoll,
)

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
    cancel: dramatiq.Actor[..., None]


def _retry_when(retries: int, exception: BaseException) -> bool:
    # A Retry is a wait the pipeline asked for, bounded by its own rules.
    return isinstance(exception, dramatiq.Retry) or retries < MAX_FAILURE_RETRIES


@contextmanager
def _waits_spend_no_retries(message: MessageLike) -> Iterator[None]:
    """A ``dramatiq.Retry`` raised inside is a wait the pipeline asked for (a token, the
    budget, a 429, another delivery's lease), bounded by its own rules. Dramatiq's
    ``Retries`` middleware adds one to the message's ``retries`` for every exception, so
    a wait takes that one back first: ``retries`` then counts failures only, and
    ``MAX_FAILURE_RETRIES`` is the same for a message that waited an hour as for one that
    never waited. The message is marked ``WAITED_OPTION`` instead."""
    try:
        yield
    except dramatiq.Retry:
        message.options["retries"] = message.options.get("retries", 0) - 1
        message.options[WAITED_OPTION] = True
        raise


def _current() -> MessageLike:
    message = CurrentMessage.get_current_message()
    if message is None:
        raise RuntimeError("the CurrentMessage middleware is missing from the broker")
    return message


def poll_scheduler(broker: dramatiq.Broker, polls_queue: str) -> SchedulePoll:
    """What the pipeline calls to schedule a poll step: a ``poll_workflow`` message on
    ``polls_queue``, delayed. Given to the ``Pipeline`` when it is built, before the
    actors exist: the message names its actor, which ``declare_actors`` declares."""

    def schedule_poll(request_id: str, step: int, delay_s: float) -> None:
        delay_ms = max(0, round(delay_s * 1000))
        # Dramatiq drops its own ``eta`` when a delayed message falls due: this one stays,
        # so the poll can tell how late it runs.
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=polls_queue,
            actor_name=wire.POLL_ACTOR,
            args=(request_id, step),
            kwargs={},
            options={DUE_OPTION: current_millis() + delay_ms},
        )
        broker.enqueue(message, delay=delay_ms)

    return schedule_poll


def declare_actors(
    broker: dramatiq.Broker,
    pipeline: Pipeline,
    *,
    requests_queue: str,
    polls_queue: str,
    cancels_queue: str,
) -> Actors:
    """Declare the actors on ``broker``, each handing its messages to ``pipeline``.

    Args:
        broker: a broker with the ``CurrentMessage`` middleware.
        pipeline: what the actors run.
        requests_queue: the queue of ``submit_workflow``.
        polls_queue: the queue of ``poll_workflow``.
        cancels_queue: the queue of ``cancel_workflow``.
    """

    def submit_workflow(*args: Any, **kwargs: Any) -> None:
        message = _current()
        with _waits_spend_no_retries(message):
            pipeline.submit(message, args, kwargs)

    def poll_workflow(*args: Any, **kwargs: Any) -> None:
        message = _current()
        with _waits_spend_no_retries(message):
            pipeline.poll(message, args, kwargs)

    def cancel_workflow(*args: Any, **kwargs: Any) -> None:
        pipeline.cancel(_current(), args, kwargs)

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

    cancel = dramatiq.actor(
        actor_name=wire.CANCEL_ACTOR,
        queue_name=cancels_queue,
        priority=_POLL_PRIORITY,
        throws=(MalformedMessageError,),
        **options,
    )(cancel_workflow)
    return Actors(submit=submit, poll=poll, cancel=cancel)
