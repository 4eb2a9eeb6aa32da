"""Reading results from a reply queue.

``ResultConsumer`` reads the ``Result`` messages the worker publishes to a request's
``reply_to`` queue: as a stream (``results``), or until the results of given requests have
all arrived (``wait``). It deduplicates by ``request_id`` (after a worker crash the same
result may be delivered twice) and skips, acks and counts bodies that are not a ``Result``,
so one bad message never stops a consumer. Progress messages (AMQP ``type``
``segmind.progress``, sent to requests with ``progress: true``) are told apart by their
type and handed to an ``on_progress`` callback, never taken for a result.

One consumer holds one ``BlockingConnection``: use it from one thread.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Final, Self

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pydantic import SecretStr, ValidationError

from producers.amqp import (
    NOT_FOUND,
    RETRYABLE,
    BrokerError,
    close_quietly,
    connect,
    ensure_queue,
    is_permanent,
    parse_amqp_urls,
)
from producers.closing import Closing
from producers.contract import DEFAULT_REPLY_TO, Progress, Result
from producers.jitter import full_jitter
from producers.topology import QueueType, Topology, queue_type_from_env
from producers.wire import DEFAULT_AMQP_URL, PROGRESS_TYPE

log = logging.getLogger(__name__)
# A library logs only where the application configured logging (no "last resort" output).
log.addHandler(logging.NullHandler())

#: Unacked results RabbitMQ sends ahead to one consumer.
DEFAULT_PREFETCH: Final = 100
#: A private reply queue unused this long is deleted by RabbitMQ (``x-expires``, in ms).
PRIVATE_QUEUE_EXPIRES_MS: Final = 24 * 3600 * 1000
DEFAULT_PRIVATE_PREFIX: Final = "segmind.results.cli"
#: How long a consumer whose connection broke keeps reconnecting: longer than a broker
#: restart.
DEFAULT_RETRY_FOR_S: Final = 120.0
#: How often a waiting consumer wakes to check its deadlines.
_TICK_S: Final = 0.1
#: How long ``wait(requeue_others=True)`` holds another request's result before requeueing
#: it: a queue nobody else consumes would otherwise hand it straight back, in a busy loop.
_REQUEUE_HOLD_S: Final = 1.0


class _ConnectionLost(Exception):
    """The consumer's connection broke while the caller held a result."""


class ConsumeError(BrokerError):
    """The reply queue could not be read: RabbitMQ unreachable after every attempt, the
    login or access refused, or the queue missing (``declare=False``) or deleted.

    Attributes:
        queue: the queue.
        reason: why (the password scrubbed out).
    """

    def __init__(self, queue: str, reason: str) -> None:
        super().__init__(f"could not consume queue {queue!r}: {reason}")
        self.queue = queue
        self.reason = reason


class ResultTimeout(Exception):
    """``ResultConsumer.wait`` ran out of time before every result arrived.

    Attributes:
        missing: the request ids that got no result.
        received: the results that did arrive, by request id.
    """

    def __init__(self, missing: set[str], received: dict[str, Result], timeout_s: float) -> None:
        total = len(missing) + len(received)
        super().__init__(f"{len(missing)} of {total} results did not arrive in {timeout_s:g} s")
        self.missing = missing
        self.received = received


#: Called with each progress message of the requests read (see ``ResultConsumer.wait``).
OnProgress = Callable[[Progress], None]


@dataclass(frozen=True)
class _Delivery:
    channel: BlockingChannel
    tag: int
    result: Result | None = None
    progress: Progress | None = None

    @property
    def request_id(self) -> str:
        held = self.result or self.progress
        assert held is not None  # one of the two, always
        return held.request_id


class ResultConsumer(Closing):
    """Consumes ``Result`` messages from one reply queue.

    Connects (and checks or declares the queue) at construction, so a queue declared here
    receives results published from then on.

    Attributes:
        queue: the queue read.
        duplicates: results dropped because their request_id was already taken from this
            consumer (acked and skipped).
        malformed: messages that were not a valid ``Result`` (or, typed as one, a valid
            ``Progress``): acked, logged and skipped.
        progress_skipped: progress messages acked and dropped, for want of an
            ``on_progress`` callback or because they were for another request.
        others: results for request ids ``wait`` was not waiting for, acked and kept here
            (unless ``wait(requeue_others=True)``).

    Args:
        url: RabbitMQ's URL; several separated by ``;`` are tried in turn. Its password
            never appears in an exception, a repr or a log line.
        queue: the reply queue.
        declare: declare the queue if it does not exist (durable, with
            ``queue_arguments``); an existing queue is used as it is. With ``False`` a
            missing queue is a ``ConsumeError``.
        queue_arguments: the arguments a missing queue is declared with (beside its type).
        queue_type: the type a missing queue is declared with (``AMQP_QUEUE_TYPE`` from
            the environment when ``None``, as the workers declare theirs).
        prefetch: how many unacked results RabbitMQ sends ahead.
        attempts: connection attempts, at construction and after a connection breaks
            while consuming, before ``ConsumeError``.
        retry_for_s: after a connection breaks while consuming, reconnecting goes on
            (past ``attempts``) until this many seconds after the break, so that a
            broker restart is ridden out.
        retry_base_s: the scale of the backoff between attempts (full jitter).
        retry_cap_s: the longest wait between attempts.
        connect_timeout_s: seconds to open a connection.

    Raises:
        ConsumeError: RabbitMQ could not be reached, refused access, or (``declare=False``)
            the queue does not exist.
        ValueError: a URL is not a valid AMQP URL, or the environment's
            ``AMQP_QUEUE_TYPE`` is not a queue type.
    """

    def __init__(
        self,
        url: str | SecretStr = DEFAULT_AMQP_URL,
        *,
        queue: str = DEFAULT_REPLY_TO,
        declare: bool = True,
        queue_arguments: dict[str, Any] | None = None,
        queue_type: QueueType | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        attempts: int = 6,
        retry_base_s: float = 0.2,
        retry_cap_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        retry_for_s: float = DEFAULT_RETRY_FOR_S,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, not {attempts}")
        if retry_for_s < 0:
            raise ValueError(f"retry_for_s must be >= 0, not {retry_for_s}")
        self.retry_for_s = retry_for_s
        self._parameters, self._redact, self.hosts = parse_amqp_urls(
            url, connect_timeout_s=connect_timeout_s
        )
        self.queue = queue
        self.declare = declare
        self.queue_arguments = Topology(queue_type or queue_type_from_env()).reply_queue_arguments(
            queue_arguments
        )
        self.prefetch = prefetch
        self.attempts = attempts
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.duplicates = 0
        self.malformed = 0
        self.progress_skipped = 0
        self.others: list[Result] = []
        self._seen: set[str] = set()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        failures = 0
        while True:
            try:
                self._open()
                break
            except RETRYABLE as exc:
                failures += 1
                self._retry_or_raise(exc, failures, deadline=None)

    @classmethod
    def private(
        cls,
        url: str | SecretStr = DEFAULT_AMQP_URL,
        *,
        prefix: str = DEFAULT_PRIVATE_PREFIX,
        attempts: int = 6,
        connect_timeout_s: float = 10.0,
        queue_type: QueueType | None = None,
    ) -> Self:
        """A consumer on a new queue of its own, ``<prefix>.<8 hex>``.

        The queue is durable, so results wait in it if this process dies, and RabbitMQ
        deletes it after 24 h unused (``x-expires``). Set the requests' ``reply_to`` to its
        ``queue``.

        Raises:
            ConsumeError, ValueError: as the constructor.
        """
        return cls(
            url,
            queue=f"{prefix}.{secrets.token_hex(4)}",
            declare=True,
            queue_arguments={"x-expires": PRIVATE_QUEUE_EXPIRES_MS},
            queue_type=queue_type,
            attempts=attempts,
            connect_timeout_s=connect_timeout_s,
        )

    def __repr__(self) -> str:
        return f"ResultConsumer(hosts={self.hosts!r}, queue={self.queue!r})"

    def results(
        self,
        *,
        timeout_s: float | None,
        idle_timeout_s: float | None = None,
        on_progress: OnProgress | None = None,
    ) -> Generator[Result, None, None]:
        """Yield the results on the queue as they arrive, each request_id once.

        A result is acked once it has been handed over: when the caller asks for the next
        one or closes the iterator (a ``break`` out of a ``for`` loop does). Results
        RabbitMQ sent ahead but not yet yielded go back to the queue when iteration stops.

        Args:
            timeout_s: stop this many seconds after the call (``None``: no deadline).
            idle_timeout_s: stop when no message has arrived for this many seconds
                (``None``: wait for ever).
            on_progress: called with each progress message, which is then acked; if it
                raises, the message stays unacked and the exception propagates. Without
                it progress messages are acked and dropped.

        Raises:
            ConsumeError: the connection broke and could not be reopened, or the queue
                was deleted.
        """
        with closing(self._deliveries(timeout_s, idle_timeout_s)) as stream:
            for delivery in stream:
                if delivery is None:
                    continue
                if delivery.progress is not None:
                    self._take_progress(delivery, on_progress)
                    continue
                assert delivery.result is not None
                self._seen.add(delivery.result.request_id)
                try:
                    yield delivery.result
                finally:
                    self._ack(delivery.channel, delivery.tag)

    def wait(
        self,
        request_ids: Iterable[str],
        *,
        timeout_s: float,
        on_result: Callable[[Result], None] | None = None,
        requeue_others: bool = False,
        on_progress: OnProgress | None = None,
    ) -> dict[str, Result]:
        """Consume until every request in ``request_ids`` has its result.

        Results for other request ids are acked and kept in ``self.others`` by default: a
        private queue only ever holds its own. With ``requeue_others=True`` (a queue shared
        with other consumers) each is held unacked about a second, then requeued with
        ``basic_nack(requeue=True)`` for another consumer to take; the pause keeps a result
        nobody else wants from bouncing straight back in a busy loop.

        Args:
            request_ids: the requests to wait for.
            timeout_s: the longest wait, in seconds.
            on_result: called with each awaited result as it arrives, before it is acked:
                if it raises, ``wait`` raises and that result stays unacked (RabbitMQ
                delivers it again once this consumer's connection closes).
            requeue_others: requeue other requests' results (and progress messages)
                instead of taking them.
            on_progress: called with each progress message of an awaited request, which
                is then acked (as ``on_result``: if it raises, ``wait`` raises and the
                message stays unacked). Without it they are acked and dropped.

        Returns:
            The results by request id, one for each id.

        Raises:
            ResultTimeout: ``timeout_s`` passed first; carries ``missing`` and ``received``.
            ConsumeError: the connection broke and could not be reopened, or the queue
                was deleted.
        """
        wanted = set(request_ids)
        received: dict[str, Result] = {}
        if not wanted:
            return received
        held: deque[tuple[float, _Delivery]] = deque()
        try:
            with closing(self._deliveries(timeout_s, None)) as stream:
                for delivery in stream:
                    now = time.monotonic()
                    while held and held[0][0] <= now:
                        released = held.popleft()[1]
                        self._requeue(released.channel, released.tag)
                    if delivery is None:
                        continue
                    request_id = delivery.request_id
                    if delivery.progress is not None and (
                        request_id in wanted or not requeue_others
                    ):
                        wanted_progress = on_progress if request_id in wanted else None
                        self._take_progress(delivery, wanted_progress)
                        continue
                    if request_id in wanted:
                        assert delivery.result is not None
                        self._seen.add(request_id)
                        received[request_id] = delivery.result
                        if on_result is not None:
                            on_result(delivery.result)
                        self._ack(delivery.channel, delivery.tag)
                        if len(received) == len(wanted):
                            return received
                    elif requeue_others:
                        held.append((now + _REQUEUE_HOLD_S, delivery))
                    else:
                        assert delivery.result is not None
                        self._seen.add(request_id)
                        self.others.append(delivery.result)
                        self._ack(delivery.channel, delivery.tag)
        finally:
            for _, delivery in held:
                self._requeue(delivery.channel, delivery.tag)
        raise ResultTimeout(wanted - received.keys(), received, timeout_s)

    def delete_queue(self, *, if_empty: bool = True) -> bool:
        """Delete the queue (a private one whose results have all been read).

        Args:
            if_empty: only when it holds no message.

        Returns:
            Whether it was deleted; ``False`` when it was not empty, or on any AMQP error
            (the queue then expires on its own, if it has ``x-expires``).
        """
        try:
            channel = self._ensure_open()
            channel.queue_delete(queue=self.queue, if_empty=if_empty)
        except RETRYABLE as exc:
            log.debug("not deleting %s: %s", self.queue, self._redact.describe(exc))
            self._drop()
            return False
        return True

    def close(self) -> None:
        """Close the connection; results delivered but not acked go back to the queue."""
        self._drop()

    # -- internals ---------------------------------------------------------------------

    def _open(self) -> None:
        self._drop()
        connection = connect(self._parameters)
        self._connection = connection
        channel = connection.channel()
        if self.declare:
            channel = ensure_queue(
                connection, channel, self.queue, arguments=self.queue_arguments, confirm=False
            )
        else:
            # Fail now, with a clear error, rather than at the first consume.
            channel.queue_declare(queue=self.queue, passive=True)
        channel.basic_qos(prefetch_count=self.prefetch)
        self._channel = channel

    def _ensure_open(self) -> BlockingChannel:
        if (
            self._channel is None
            or self._connection is None
            or not self._channel.is_open
            or not self._connection.is_open
        ):
            self._open()
        assert self._channel is not None  # set by _open
        return self._channel

    def _usable(self, channel: BlockingChannel) -> bool:
        current, connection = self._channel, self._connection
        if current is None or connection is None or channel is not current:
            return False
        return bool(connection.is_open and current.is_open)

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            close_quietly(connection)

    def _retry_or_raise(
        self,
        exc: BaseException,
        failures: int,
        deadline: float | None,
        broke_at: float | None = None,
    ) -> None:
        """Back off before the next attempt, or raise ``ConsumeError`` when there is none:
        after ``attempts`` failures, and, when the connection broke while consuming (at
        ``broke_at``), not before ``retry_for_s`` has passed since."""
        self._drop()
        reason = self._redact.describe(exc)
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and (exc.reply_code == NOT_FOUND):
            raise ConsumeError(self.queue, "the queue does not exist") from None
        if is_permanent(exc):
            raise ConsumeError(self.queue, reason) from None
        riding_out = broke_at is not None and time.monotonic() - broke_at < self.retry_for_s
        if failures >= self.attempts and not riding_out:
            raise ConsumeError(self.queue, f"{reason} (after {failures} attempts)") from None
        delay = full_jitter(
            failures - 1, base_s=self.retry_base_s, cap_s=self.retry_cap_s, rand=random.random()
        )
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        log.warning("consuming %s failed (%s); reconnecting in %.2f s", self.queue, reason, delay)
        time.sleep(delay)

    def _deliveries(
        self, timeout_s: float | None, idle_timeout_s: float | None
    ) -> Generator[_Delivery | None, None, None]:
        """The queue's new results; ``None`` at each idle tick (about every ``_TICK_S``).

        Malformed bodies and already-seen request ids are acked and skipped here. Ends at
        the deadline or after ``idle_timeout_s`` without a message; the consumer is
        cancelled when it ends or is closed.
        """
        last = time.monotonic()
        deadline = None if timeout_s is None else last + timeout_s
        failures = 0
        broke_at: float | None = None
        try:
            while True:
                try:
                    channel = self._ensure_open()
                    messages = channel.consume(self.queue, inactivity_timeout=_TICK_S)
                    for method, properties, body in messages:
                        now = time.monotonic()
                        if deadline is not None and now >= deadline:
                            if method is not None:
                                # Arrived at the deadline: back to the queue, not left
                                # unacked on this channel until it closes.
                                self._requeue(channel, method.delivery_tag)
                            return
                        # A message or an idle tick: the connection works again.
                        failures, broke_at = 0, None
                        if method is None:
                            if idle_timeout_s is not None and now - last >= idle_timeout_s:
                                return
                            yield None
                        else:
                            last = now
                            kind = getattr(properties, "type", None)
                            delivery = self._accept(channel, method.delivery_tag, body, kind)
                            if delivery is not None:
                                yield delivery
                        if not self._usable(channel):
                            # An ack found the connection broken. Resuming pika's generator
                            # on it would fail with a bare ValueError: reconnect instead.
                            raise _ConnectionLost("the connection broke")
                    # The generator ends when RabbitMQ cancels the consumer: the queue is gone.
                    raise ConsumeError(self.queue, "RabbitMQ cancelled the consumer")
                except (*RETRYABLE, _ConnectionLost) as exc:
                    failures += 1
                    broke_at = broke_at or time.monotonic()
                    self._retry_or_raise(exc, failures, deadline, broke_at)
                    if deadline is not None and time.monotonic() >= deadline:
                        return
        finally:
            self._cancel()

    def _accept(
        self, channel: BlockingChannel, tag: int, body: bytes, kind: str | None = None
    ) -> _Delivery | None:
        """The delivery as a result or (AMQP ``type`` ``kind`` is ``segmind.progress``) a
        progress message, or ``None`` when it was malformed or a duplicate result (acked)."""
        try:
            if kind == PROGRESS_TYPE:
                return _Delivery(channel, tag, progress=Progress.model_validate_json(body))
            result = Result.model_validate_json(body)
        except ValidationError as exc:
            self.malformed += 1
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            log.warning(
                "skipped a message on %s that is not a %s (%s: %s)",
                self.queue,
                "Progress" if kind == PROGRESS_TYPE else "Result",
                where,
                first["msg"],
            )
            self._ack(channel, tag)
            return None
        if result.request_id in self._seen:
            self.duplicates += 1
            log.info("dropped a duplicate result for %s on %s", result.request_id, self.queue)
            self._ack(channel, tag)
            return None
        return _Delivery(channel, tag, result=result)

    def _take_progress(self, delivery: _Delivery, on_progress: OnProgress | None) -> None:
        """Hand a progress message to ``on_progress`` (or drop it), then ack it."""
        assert delivery.progress is not None
        if on_progress is None:
            self.progress_skipped += 1
        else:
            on_progress(delivery.progress)
        self._ack(delivery.channel, delivery.tag)

    def _ack(self, channel: BlockingChannel, tag: int) -> None:
        # A delivery tag is only valid on its channel: after a reconnect RabbitMQ delivers
        # the message again, and the duplicate check drops what was already handed over.
        current = self._channel
        if current is None or channel is not current or not current.is_open:
            return
        try:
            current.basic_ack(delivery_tag=tag)
        except RETRYABLE as exc:
            log.debug("ack on %s failed: %s", self.queue, self._redact.describe(exc))

    def _requeue(self, channel: BlockingChannel, tag: int) -> None:
        current = self._channel
        if current is None or channel is not current or not current.is_open:
            return  # its channel is gone: RabbitMQ has requeued it already
        try:
            current.basic_nack(delivery_tag=tag, requeue=True)
        except RETRYABLE as exc:
            log.debug("requeue on %s failed: %s", self.queue, self._redact.describe(exc))

    def _cancel(self) -> None:
        channel = self._channel
        if channel is None or not self._usable(channel):
            return
        try:
            channel.cancel()  # requeues what was sent ahead but not yielded
        except Exception as exc:  # cleanup must not hide what ended the consumer
            log.debug("cancel on %s failed: %s", self.queue, self._redact.describe(exc))
            self._drop()
