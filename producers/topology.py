"""The queues' type and declaration arguments: one rule for producers, workers and tools.

RabbitMQ refuses a second declaration of a queue whose arguments differ from the first
(``PRECONDITION_FAILED``), so whoever declares a queue first (a producer, a worker, the
reply-queue consumer) must use these. ``AMQP_QUEUE_TYPE`` chooses the type:

- ``classic`` (the default): durable classic queues on one node, with a priority range
  (``x-max-priority`` 9): a request's ``priority`` is served strictly, highest first.
- ``quorum``: replicated quorum queues (a RabbitMQ cluster keeps serving while a minority
  of its nodes is down). They take no ``x-max-priority``: on RabbitMQ 3.x a quorum queue
  ignores priorities (first in, first out); RabbitMQ 4 gives it two levels, ``priority``
  5-9 before 0-4 (not strictly: it interleaves them so that 0-4 is never starved).
  Priorities still order a tenant's waiting submits in the admission line
  (``worker.ratelimit.fairness``) on either type.

  ``x-delivery-limit`` is set (``AMQP_DELIVERY_LIMIT``) rather than left to the server (none
  on 3.x, 20 on 4.x). The worker acts before RabbitMQ's limit could (``near_delivery_limit``:
  half of it): a delayed message that workers held and handed back (stopping, or losing
  their node) that often is published again as a new message, so restarts never take a
  held poll to the limit; any other message is dead-lettered by the worker itself, with its
  reason, the guard against a message that kills every worker that takes it. The worker
  also publishes the messages Dramatiq gives up on to their ``.XQ`` itself, with publisher
  confirms, rather than letting RabbitMQ move them: RabbitMQ's lossless dead-lettering
  (``x-dead-letter-strategy`` ``at-least-once``) made a quorum queue on RabbitMQ 3.10 refuse
  every publish once its leader's node had died (measured), and its at-most-once
  dead-lettering can drop a letter. RabbitMQ's own dead-lettering stays as the backstop.
  Dead-letter and reply queues, whose messages are handed back by browsing and by
  consumers waiting for other results, get a limit nothing reaches (``NO_DELIVERY_LIMIT``).

Every function here is pure: the declarations themselves are made by the callers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from producers import wire

#: The environment variable naming the queue type (the worker's setting and the SDK's
#: default alike).
QUEUE_TYPE_ENV: Final = "AMQP_QUEUE_TYPE"
#: The deliveries a message of a quorum queue gets before it is dead-lettered.
DEFAULT_DELIVERY_LIMIT: Final = 20
#: How long RabbitMQ keeps a dead letter (Dramatiq's own: 7 days).
DEAD_LETTER_TTL_MS: Final = 7 * 24 * 3600 * 1000
#: The delivery limit of the quorum queues whose returned messages are no failure: a
#: dead-letter queue browsed by ``segmind-queue dlq list`` (each browse returns every
#: message), a reply queue whose consumers hand back other requests' results. RabbitMQ 4
#: limits a quorum queue to 20 deliveries unless told otherwise, and its "no limit", -1,
#: makes RabbitMQ 3 drop every returned message at once: this is a limit nothing reaches.
NO_DELIVERY_LIMIT: Final = 2**30
#: The header in which a quorum queue counts a message's earlier deliveries.
DELIVERY_COUNT_HEADER: Final = "x-delivery-count"


class QueueType(StrEnum):
    """The type of the queues the service declares (``AMQP_QUEUE_TYPE``)."""

    CLASSIC = "classic"
    QUORUM = "quorum"


def queue_type_from_env(environ: Mapping[str, str] | None = None) -> QueueType:
    """``AMQP_QUEUE_TYPE`` from the environment (``classic`` when unset or empty).

    Raises:
        ValueError: it names another type.
    """
    value = (os.environ if environ is None else environ).get(QUEUE_TYPE_ENV, "").strip()
    if not value:
        return QueueType.CLASSIC
    try:
        return QueueType(value.lower())
    except ValueError:
        raise ValueError(f"{QUEUE_TYPE_ENV} must be classic or quorum, not {value!r}") from None


@dataclass(frozen=True, slots=True)
class Topology:
    """How the service's queues are declared.

    Args:
        queue_type: classic or quorum.
        delivery_limit: the deliveries a message of a quorum queue gets (``x-delivery-limit``).

    Raises:
        ValueError: ``delivery_limit`` is under 2 (the worker could not act before the
            limit does).
    """

    queue_type: QueueType = QueueType.CLASSIC
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    def __post_init__(self) -> None:
        if self.delivery_limit < 2:
            raise ValueError(f"the delivery limit must be >= 2, not {self.delivery_limit}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Topology:
        """The topology ``AMQP_QUEUE_TYPE`` and ``AMQP_DELIVERY_LIMIT`` name."""
        env = os.environ if environ is None else environ
        limit = env.get("AMQP_DELIVERY_LIMIT", "").strip()
        try:
            delivery_limit = int(limit) if limit else DEFAULT_DELIVERY_LIMIT
        except ValueError:
            raise ValueError(f"AMQP_DELIVERY_LIMIT must be a number, not {limit!r}") from None
        return cls(queue_type_from_env(env), delivery_limit)

    @property
    def quorum(self) -> bool:
        """Whether the queues are quorum queues."""
        return self.queue_type is QueueType.QUORUM

    def work_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        """The arguments of an actor's queue (requests, polls, cancels) and of its delay
        queue: dead letters to ``<queue>.XQ``, and a priority range or the quorum type.

        Args:
            queue_name: the actor's queue (a delay queue's dead letters go to the same
                ``.XQ``: pass the queue it feeds).
        """
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": wire.dead_letter_queue(wire.delayed_source(queue_name)),
        }
        if not self.quorum:
            return arguments | {"x-max-priority": wire.MAX_PRIORITY}
        return arguments | {
            "x-queue-type": QueueType.QUORUM.value,
            "x-delivery-limit": self.delivery_limit,
        }

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        """The arguments of a dead-letter queue (``.XQ``): its letters kept 7 days."""
        return self._typed({"x-message-ttl": DEAD_LETTER_TTL_MS})

    def results_dead_letter_queue_arguments(self) -> dict[str, Any]:
        """The arguments of the results dead-letter queue: kept until replayed or deleted
        (a paid result never expires there)."""
        return self._typed({})

    def reply_queue_arguments(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The arguments a missing reply queue is declared with (``extra``: e.g. a private
        queue's ``x-expires``)."""
        return self._typed(dict(extra or {}))

    def service_queues(
        self, actor_queues: list[str], results_dead_letter_queue: str
    ) -> dict[str, dict[str, Any]]:
        """Every queue a worker declares, with its arguments: each actor queue, its delay
        queue and its dead-letter queue, and the results dead-letter queue.

        Args:
            actor_queues: the actors' queues (requests, polls, cancels).
            results_dead_letter_queue: ``RESULTS_DEAD_LETTER_QUEUE``.
        """
        declared: dict[str, dict[str, Any]] = {}
        for queue in actor_queues:
            declared[queue] = self.work_queue_arguments(queue)
            declared[wire.delay_queue(queue)] = self.work_queue_arguments(queue)
            declared[wire.dead_letter_queue(queue)] = self.dead_letter_queue_arguments()
        declared[results_dead_letter_queue] = self.results_dead_letter_queue_arguments()
        return declared

    def other(self) -> Topology:
        """The same topology with the other queue type (to name the type of a queue that
        refused this one's arguments)."""
        other = QueueType.CLASSIC if self.quorum else QueueType.QUORUM
        return Topology(other, self.delivery_limit)

    def _typed(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.quorum:
            arguments["x-queue-type"] = QueueType.QUORUM.value
            arguments["x-delivery-limit"] = NO_DELIVERY_LIMIT
        return arguments


def near_delivery_limit(delivery_count: object, delivery_limit: int) -> bool:
    """Whether a message delivered ``delivery_count`` times before (the ``x-delivery-count``
    header) has been handed back often enough for the worker to act before the queue's
    delivery limit does: refresh it (a held delayed message) or dead-letter it (any other).

    Half the limit leaves room for the worker's own action to fail (a worker killed in
    between delivers the old copy once more), and spares it to the rare message handed back
    again and again.
    """
    if not isinstance(delivery_count, int) or isinstance(delivery_count, bool):
        return False
    return delivery_count >= max(1, delivery_limit // 2)
