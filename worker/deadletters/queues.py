"""Dead letters, the I/O half: browsing the ``.XQ`` queues and replaying their messages.

``read_dead_letters`` browses a queue without removing anything, ``with_recorded_reasons``
adds the reasons stored by ``worker.deadletters.middleware``, and ``replay_dead_letters``
sends chosen messages back to their source queue. What each message means and what a
replay does is ``worker.deadletters.rules``.

Browsing: AMQP has no "peek", so a browse takes the messages with ``basic.get`` without
acknowledging them, then rejects them all with ``requeue``: RabbitMQ puts requeued
messages back at their original place, so the queue's order is kept. While a browse or a
replay holds them (a fraction of a second for a few thousand messages), another browse
does not see them.

Replay: each chosen message is republished, with publisher confirms and ``mandatory``, to
its source queue as a new delivery (the same ``message_id``; Dramatiq's retry count and
options reset), and only once RabbitMQ has confirmed it is the dead letter acked (removed).
A crash in between leaves both copies: a duplicate, never a loss, and the ledger makes the
duplicate harmless (see ``replay_plan``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Final, Literal

import pika
import pika.exceptions

from producers import wire
from producers.amqp import (
    NOT_FOUND,
    RETRYABLE,
    BrokerError,
    close_quietly,
    connect,
    ensure_queue,
    parse_amqp_urls,
)
from producers.topology import Topology
from worker.deadletters.rules import (
    DeadLetter,
    dead_letter_from,
    dead_letter_key,
    replay_body,
    replay_problem,
    with_recorded_reason,
)
from worker.store import Store

_CONNECT_TIMEOUT_S: Final = 10.0


def read_dead_letters(amqp_url: str, queue: str, *, limit: int | None = None) -> list[DeadLetter]:
    """The messages of dead-letter queue ``queue``, oldest first, left in the queue.

    Args:
        amqp_url: RabbitMQ's URL (several separated by ``;``); never shown in errors.
        queue: the dead-letter queue (``<queue>.XQ``).
        limit: read at most this many (from the head of the queue); ``None``: all.

    Returns:
        The dead letters in queue order; ``[]`` when the queue does not exist. Reasons
        come from the messages alone: ``with_recorded_reasons`` adds the ones in Redis.

    Raises:
        BrokerError: RabbitMQ could not be reached or refused the access.
        ValueError: ``amqp_url`` is not a valid AMQP URL, or ``limit`` is negative.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    with _Browser(amqp_url, queue, confirm=False) as browser:
        return [letter for _tag, letter in browser.take(limit)]


def with_recorded_reasons(
    letters: list[DeadLetter], store: Store, prefix: str
) -> tuple[list[DeadLetter], str | None]:
    """``letters`` with the reasons the worker recorded in ``store`` (Redis).

    Returns:
        The letters (each with its recorded reason when one exists) and ``None``, or the
        letters unchanged and why the store could not be read (the reasons from the
        messages alone still stand).
    """
    updated: list[DeadLetter] = []
    for letter in letters:
        try:
            recorded = store.get(dead_letter_key(prefix, letter.id))
        except Exception as exc:  # the store's own errors name no secret
            return letters, f"{type(exc).__name__}: {exc}"
        if recorded:
            updated.append(with_recorded_reason(letter, recorded))
        else:
            updated.append(letter)
    return updated, None


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did with one chosen dead letter.

    Attributes:
        letter: the dead letter.
        outcome: ``replayed`` (republished, confirmed, removed from the XQ), ``planned``
            (``--dry-run``), or ``kept`` (left in the XQ: see ``detail``).
        detail: the plan (what the worker will do with it), or why it was kept.
    """

    letter: DeadLetter
    outcome: Literal["replayed", "planned", "kept"]
    detail: str


@dataclass
class ReplayReport:
    """The outcome of ``replay_dead_letters``."""

    outcomes: list[ReplayOutcome] = field(default_factory=list)
    #: The ids asked for that no message of the queue carries.
    not_found: list[str] = field(default_factory=list)


def replay_dead_letters(
    amqp_url: str,
    queue: str,
    *,
    ids: Collection[str] | None,
    dry_run: bool = False,
    plan: Callable[[DeadLetter], str] | None = None,
    enrich: Callable[[list[DeadLetter]], list[DeadLetter]] | None = None,
    to: str | None = None,
    topology: Topology | None = None,
) -> ReplayReport:
    """Send dead letters of ``queue`` back to their source queues.

    Each chosen message that can be replayed (``replay_problem``) is published as
    ``replay_body`` to its source queue (persistent, its priority kept, ``mandatory``,
    publisher confirms), and acked in the XQ only once RabbitMQ confirmed the publication;
    everything else is put back in place. A crash or a broken connection between the
    confirm and the ack leaves the message in the XQ as well: a duplicate, never a loss.

    Args:
        amqp_url: RabbitMQ's URL.
        queue: the dead-letter queue.
        ids: the ids to replay (every message carrying one of them); ``None``: all.
        dry_run: only report what would be replayed; nothing moves.
        plan: what the worker will do with a letter (shown in each outcome).
        enrich: applied to the letters read, before they are chosen and planned (adds
            the reasons recorded in Redis).
        to: send results to this queue instead of the reply queue that refused them
            (declared durable when missing); other messages are kept.
        topology: the type a missing reply queue is declared with (``AMQP_QUEUE_TYPE``).

    Raises:
        BrokerError: RabbitMQ could not be reached, or the connection broke. Messages
            already replayed stay replayed; the others are back in the XQ.
        ValueError: ``amqp_url`` is not a valid AMQP URL.
    """
    wanted = None if ids is None else set(ids)
    report = ReplayReport()
    with _Browser(amqp_url, queue, confirm=not dry_run, topology=topology) as browser:
        taken = browser.take(None)
        letters = [letter for _tag, letter in taken]
        if enrich is not None:
            letters = enrich(letters)
        found: set[str] = set()
        for (tag, _raw), letter in zip(taken, letters, strict=True):
            if wanted is not None and letter.id not in wanted:
                continue
            found.add(letter.id)
            problem = replay_problem(letter)
            if problem is None and to is not None and not letter.is_result:
                problem = "cannot be sent elsewhere: --to is for results only"
            if problem is not None:
                report.outcomes.append(ReplayOutcome(letter, "kept", problem))
                continue
            if to is not None:
                letter = replace(letter, source_queue=to)
            detail = plan(letter) if plan is not None else "replayed"
            if dry_run:
                report.outcomes.append(ReplayOutcome(letter, "planned", detail))
                continue
            failure = browser.republish(tag, letter)
            if failure is None:
                report.outcomes.append(ReplayOutcome(letter, "replayed", detail))
            else:
                report.outcomes.append(ReplayOutcome(letter, "kept", failure))
        if wanted is not None:
            report.not_found = sorted(wanted - found)
    return report


class _Browser:
    """One connection and channel holding the messages of a queue unacknowledged; on
    exit, everything not acked is requeued in place and the connection closed."""

    def __init__(
        self, amqp_url: str, queue: str, *, confirm: bool, topology: Topology | None = None
    ) -> None:
        parameters, self._redact, _hosts = parse_amqp_urls(
            amqp_url, connect_timeout_s=_CONNECT_TIMEOUT_S
        )
        self.queue = queue
        self.topology = topology or Topology()
        try:
            self._connection = connect(parameters)
            self._channel = self._connection.channel()
            if confirm:
                self._channel.confirm_delivery()
        except RETRYABLE as exc:
            if getattr(self, "_connection", None) is not None:
                close_quietly(self._connection)
            raise BrokerError(self._redact.describe(exc)) from None
        self._held = False

    def __enter__(self) -> _Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._held and self._channel.is_open:
                # Everything not acked goes back, each message at its original place.
                self._channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        except RETRYABLE:
            pass  # closing the connection requeues them as well
        close_quietly(self._connection)

    def take(self, limit: int | None) -> list[tuple[int, DeadLetter]]:
        """Take (unacknowledged) up to ``limit`` messages from the head of the queue: at
        most as many as it held when asked, so that messages arriving meanwhile cannot
        keep the loop going."""
        try:
            declared = self._channel.queue_declare(self.queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
                return []
            raise BrokerError(self._redact.describe(exc)) from None
        except RETRYABLE as exc:
            raise BrokerError(self._redact.describe(exc)) from None
        count = int(declared.method.message_count)
        if limit is not None:
            count = min(count, limit)
        taken: list[tuple[int, DeadLetter]] = []
        try:
            for _ in range(count):
                method, properties, body = self._channel.basic_get(self.queue, auto_ack=False)
                if method is None:
                    break
                self._held = True
                letter = dead_letter_from(
                    self.queue,
                    body,
                    headers=properties.headers,
                    message_id=properties.message_id,
                    timestamp=properties.timestamp,
                    priority=properties.priority,
                    amqp_reply_to=properties.reply_to,
                    correlation_id=properties.correlation_id,
                )
                taken.append((method.delivery_tag, letter))
        except RETRYABLE as exc:
            raise BrokerError(self._redact.describe(exc)) from None
        return taken

    def _ensure_queue(self, queue: str) -> str | None:
        """Declare ``queue`` durable when it is missing, as the worker does for a reply
        queue; ``None``, or why it could not be. On a channel of its own: a failed
        declaration closes its channel, and this one holds the taken messages."""
        try:
            channel = self._connection.channel()
            channel = ensure_queue(
                self._connection,
                channel,
                queue,
                arguments=self.topology.reply_queue_arguments(),
                confirm=False,
            )
            channel.close()
        except pika.exceptions.ChannelClosedByBroker as exc:
            return f"kept: queue {queue!r} cannot be used: {self._redact.describe(exc)}"
        except RETRYABLE as exc:
            raise BrokerError(self._redact.describe(exc)) from None
        return None

    def republish(self, tag: int, letter: DeadLetter) -> str | None:
        """Publish ``letter`` to its source queue and, once confirmed, ack it here.

        Returns:
            ``None``, or why it stays in the XQ (unroutable: the source queue does not
            exist; nacked by RabbitMQ).

        Raises:
            BrokerError: the connection or channel broke.
        """
        assert letter.source_queue is not None
        priority = letter.priority
        if priority is None and letter.envelope is not None:
            # Dramatiq publishes a message with its ``broker_priority`` option as priority.
            option = letter.envelope["options"].get("broker_priority")
            priority = option if isinstance(option, int) and not isinstance(option, bool) else None
        if letter.is_result:
            # As the worker publishes a result: correlation_id is the request's id.
            properties = pika.BasicProperties(
                **wire.result_properties(letter.request_id or letter.id), priority=priority
            )
            problem = self._ensure_queue(letter.source_queue)
            if problem is not None:
                return problem
        else:
            properties = pika.BasicProperties(
                content_type=wire.CONTENT_TYPE,
                content_encoding=wire.CONTENT_ENCODING,
                delivery_mode=wire.PERSISTENT,
                priority=priority,
                message_id=letter.id,
            )
        try:
            self._channel.basic_publish(
                exchange="",
                routing_key=letter.source_queue,
                body=replay_body(letter),
                properties=properties,
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            return f"kept: queue {letter.source_queue!r} does not exist (start a worker first)"
        except pika.exceptions.NackError:
            return "kept: RabbitMQ refused the republished message (nack)"
        except RETRYABLE as exc:
            raise BrokerError(self._redact.describe(exc)) from None
        try:
            self._channel.basic_ack(delivery_tag=tag)
        except RETRYABLE as exc:
            # Republished but not removed: it is requeued in the XQ, a harmless duplicate.
            raise BrokerError(self._redact.describe(exc)) from None
        return None
