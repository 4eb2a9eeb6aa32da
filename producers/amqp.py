"""Publishing to RabbitMQ with publisher confirms, safely from many threads.

``ConfirmedPublisher`` is the one way the project's producers put messages on a queue: a
message counts as published only once RabbitMQ has confirmed it (``confirm_delivery``), and
with ``mandatory=True`` a message that no queue took comes back as an error instead of
vanishing. Connection and channel failures are retried with backoff; what still fails is a
``PublishError``.

pika's ``BlockingConnection`` is not thread-safe, so each thread gets its own connection and
channel. The AMQP URL may carry a password: it is held as a ``SecretStr`` and scrubbed from
every message this module writes (exceptions, reprs and log lines).

The helpers ``parse_amqp_urls``, ``connect`` and ``ensure_queue`` are shared with the result
consumer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pydantic import SecretStr

from producers.closing import Closing
from worker.backoff import full_jitter

log = logging.getLogger(__name__)
# A library logs only where the application configured logging (no "last resort" output).
log.addHandler(logging.NullHandler())

#: pika's own timeouts, set from ``connect_timeout_s`` unless the URL's query sets them.
_CONNECT_TIMEOUT_OPTIONS: Final = ("socket_timeout", "stack_timeout")
#: How long a publish may wait while RabbitMQ blocks the connection (a memory or disk alarm)
#: before the connection is dropped and the publish retried; pika waits forever without it.
DEFAULT_BLOCKED_CONNECTION_TIMEOUT_S: Final = 60.0
_NOT_FOUND: Final = 404
_ACCESS_REFUSED: Final = 403

#: What a broken connection or channel raises; the publish is retried on a fresh one.
_RETRYABLE: Final = (pika.exceptions.AMQPError, OSError)
#: Failures that retrying cannot fix: a wrong password, or a vhost the user may not use.
_PERMANENT: Final = (
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
)


class BrokerError(Exception):
    """RabbitMQ could not be reached, or refused an operation.

    The message names what failed and why, never an AMQP URL or its password.
    """


class PublishError(BrokerError):
    """A message could not be published (confirmed by RabbitMQ) after every attempt.

    Attributes:
        queue: the queue the message was meant for.
        reason: why the last attempt failed (the password scrubbed out).
    """

    def __init__(self, queue: str, reason: str) -> None:
        super().__init__(f"could not publish to queue {queue!r}: {reason}")
        self.queue = queue
        self.reason = reason


class Redactor:
    """Scrubs the passwords of a set of AMQP URLs out of text."""

    def __init__(self, secrets: Sequence[str]) -> None:
        # Longest first, so a password that contains another one is scrubbed whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def describe(self, exc: BaseException) -> str:
        """``exc`` as ``Type: details``, scrubbed."""
        if isinstance(exc, pika.exceptions.AMQPError):
            # pika's str() is often empty; its repr names the class and the cause.
            return self(repr(exc))
        text = str(exc)
        name = type(exc).__name__
        return self(f"{name}: {text}" if text else name)


def parse_amqp_urls(
    url: str | SecretStr, *, connect_timeout_s: float
) -> tuple[list[pika.URLParameters], Redactor, list[str]]:
    """Parse one or several AMQP URLs separated by ``;`` (tried in turn, like Dramatiq).

    Args:
        url: the URL(s); a ``SecretStr`` is read here and never stored in plain text.
        connect_timeout_s: pika's ``socket_timeout`` and ``stack_timeout`` (seconds), unless
            the URL's query sets them; the URL's ``blocked_connection_timeout`` defaults to
            ``DEFAULT_BLOCKED_CONNECTION_TIMEOUT_S``.

    Returns:
        The connection parameters, a redactor for their passwords, and ``host:port`` of
        each URL (safe to show).

    Raises:
        ValueError: no URL is given, or one is not a valid AMQP URL; the message says which
            one by position, never its text.
    """
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    parts = [part.strip() for part in raw.split(";") if part.strip()]
    if not parts:
        raise ValueError("no AMQP URL given")
    secrets: list[str] = []
    for part in parts:
        try:
            password = urlsplit(part).password
        except ValueError:
            password = None
        if password:
            secrets += [password, unquote(password)]
    redact = Redactor(secrets)
    parameters: list[pika.URLParameters] = []
    hosts: list[str] = []
    for position, part in enumerate(parts, start=1):
        problem = f"AMQP URL #{position} is not a valid amqp:// or amqps:// URL"
        try:
            scheme = urlsplit(part).scheme.lower()
            params = pika.URLParameters(part)
            given = parse_qs(urlsplit(part).query)
        except Exception:  # pika raises several types; their text may hold the URL
            raise ValueError(problem) from None
        if scheme not in ("amqp", "amqps"):
            raise ValueError(problem)
        for option in _CONNECT_TIMEOUT_OPTIONS:
            if option not in given:
                setattr(params, option, connect_timeout_s)
        if "blocked_connection_timeout" not in given:
            params.blocked_connection_timeout = DEFAULT_BLOCKED_CONNECTION_TIMEOUT_S
        parameters.append(params)
        hosts.append(f"{params.host}:{params.port}")
    return parameters, redact, hosts


def connect(parameters: list[pika.URLParameters]) -> pika.BlockingConnection:
    """A new blocking connection to the first of ``parameters`` that answers.

    Raises:
        pika.exceptions.AMQPConnectionError: none answered (or the login was refused).
    """
    return pika.BlockingConnection(parameters if len(parameters) > 1 else parameters[0])


def ensure_queue(
    connection: pika.BlockingConnection,
    channel: BlockingChannel,
    queue: str,
    *,
    arguments: dict[str, Any] | None,
    confirm: bool,
) -> BlockingChannel:
    """Make sure ``queue`` exists, declaring it only when it does not.

    A passive declaration first: a queue that exists is used as it is, whatever its
    arguments (an operator may have made it a quorum queue, or a worker declared it). Only
    when it is missing is it declared durable with ``arguments``.

    Args:
        connection: the channel's connection, to reopen the channel on.
        channel: an open channel.
        queue: the queue's name.
        arguments: the arguments to declare a missing queue with.
        confirm: put a reopened channel in publisher-confirm mode.

    Returns:
        An open channel: ``channel``, or a new one when the passive declaration closed it.

    Raises:
        pika.exceptions.AMQPError: the declaration failed for another reason than a missing
            queue (the channel or connection broke, or access was refused).
    """
    try:
        channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != _NOT_FOUND:
            raise
        # A failed passive declaration closes the channel (404): declare on a new one.
        channel = connection.channel()
        if confirm:
            channel.confirm_delivery()
        channel.queue_declare(queue=queue, durable=True, arguments=arguments)
        log.debug("declared queue %s", queue)
    return channel


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: the login or the access to a vhost or queue was refused."""
    if isinstance(exc, _PERMANENT):
        return True
    return (
        isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == _ACCESS_REFUSED
    )


def close_quietly(connection: pika.BlockingConnection) -> None:
    """Close ``connection`` if it is open, ignoring errors (it may already be broken)."""
    try:
        if connection.is_open:
            connection.close()
    except Exception as exc:  # pika raises odd types on a broken connection
        log.debug("closing an AMQP connection failed: %s", type(exc).__name__)


@dataclass
class _Link:
    """One thread's connection and confirm-mode channel."""

    connection: pika.BlockingConnection
    channel: BlockingChannel
    #: Queues known to exist on this connection (checked once per connection).
    ready: set[str] = field(default_factory=set)


class ConfirmedPublisher(Closing):
    """Publishes to queues with publisher confirms, one connection and channel per thread.

    A message counts as published when RabbitMQ has confirmed it: it is then on a queue
    (persistent when its ``delivery_mode`` is 2). Each thread that publishes gets its own
    connection, opened on first use; ``close()`` closes them all.

    Delivery is at least once: when a connection breaks after RabbitMQ took a message but
    before its confirm arrived, the retry publishes it again. Consumers deduplicate (the
    worker by ``message_id`` and ``request_id``).

    Args:
        url: RabbitMQ's URL; several URLs separated by ``;`` are tried in turn. Its password
            never appears in an exception, a repr or a log line.
        attempts: how many times a publish is tried in all before ``PublishError``.
        retry_base_s: the backoff's scale: retry ``n`` waits a random time in
            ``[0, min(retry_cap_s, retry_base_s * 2**n))`` (full jitter).
        retry_cap_s: the longest wait between attempts.
        connect_timeout_s: seconds to open a connection (TCP, TLS and AMQP handshake).

    Raises:
        ValueError: a URL is invalid, or an argument is out of range.
    """

    def __init__(
        self,
        url: str | SecretStr,
        *,
        attempts: int = 6,
        retry_base_s: float = 0.2,
        retry_cap_s: float = 5.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, not {attempts}")
        if retry_base_s < 0 or retry_cap_s < 0:
            raise ValueError("retry_base_s and retry_cap_s must be >= 0")
        if connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be > 0")
        self._parameters, self._redact, self.hosts = parse_amqp_urls(
            url, connect_timeout_s=connect_timeout_s
        )
        self.attempts = attempts
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self._local = threading.local()
        # Every thread's connection, so close() can reach them all.
        self._lock = threading.Lock()
        self._connections: set[pika.BlockingConnection] = set()

    def __repr__(self) -> str:
        return f"ConfirmedPublisher(hosts={self.hosts!r}, attempts={self.attempts})"

    def publish(
        self,
        queue: str,
        body: bytes,
        properties: pika.BasicProperties,
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Publish ``body`` to ``queue`` (default exchange) and wait for RabbitMQ's confirm.

        The queue is checked to exist once per connection; a missing queue is declared
        durable with ``arguments``, an existing one is used as it is (see ``ensure_queue``).

        Args:
            queue: the queue (the routing key on the default exchange).
            body: the message body.
            properties: the message's AMQP properties.
            arguments: the arguments to declare the queue with if it does not exist.

        Raises:
            PublishError: RabbitMQ refused the login or access (at once), or the message
                could not be confirmed in ``attempts`` tries: the broker was unreachable,
                the connection or channel kept breaking, the message was nacked, or it
                stayed unroutable (the queue deleted again and again).
        """
        reason = "no attempt made"
        for attempt in range(self.attempts):
            try:
                link = self._link()
                if queue not in link.ready:
                    link.channel = ensure_queue(
                        link.connection, link.channel, queue, arguments=arguments, confirm=True
                    )
                    link.ready.add(queue)
                link.channel.basic_publish(
                    exchange="",
                    routing_key=queue,
                    body=body,
                    properties=properties,
                    mandatory=True,
                )
                return
            except pika.exceptions.UnroutableError as exc:
                # The queue was deleted since it was checked: declare it again, at once.
                self._local.link.ready.discard(queue)
                reason = self._redact.describe(exc)
                log.warning("publish to %s unroutable, redeclaring the queue", queue)
                continue
            except pika.exceptions.NackError as exc:
                # RabbitMQ could not take the message (an internal error): the channel is
                # still fine, so only back off.
                reason = self._redact.describe(exc)
            except _RETRYABLE as exc:
                self._drop()
                reason = self._redact.describe(exc)
                if is_permanent(exc):
                    raise PublishError(queue, reason) from None
            if attempt + 1 < self.attempts:
                delay = full_jitter(
                    attempt, base_s=self.retry_base_s, cap_s=self.retry_cap_s, rand=random.random()
                )
                log.warning(
                    "publish to %s failed (%s); retry %d/%d in %.2f s",
                    queue,
                    reason,
                    attempt + 1,
                    self.attempts - 1,
                    delay,
                )
                time.sleep(delay)
        # from None: the pika exception stays out of the chain; its gist is in the reason.
        raise PublishError(queue, f"{reason} (after {self.attempts} attempts)") from None

    def message_count(self, queue: str) -> int | None:
        """The number of messages ready in ``queue`` (a passive declaration, on this
        thread's connection), or ``None`` when the queue does not exist.

        Raises:
            BrokerError: RabbitMQ could not be reached or refused the declaration.
        """
        try:
            link = self._link()
            frame = link.channel.queue_declare(queue=queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                return None  # the channel is closed: the next call opens another
            raise BrokerError(self._redact.describe(exc)) from None
        except _RETRYABLE as exc:
            self._drop()
            raise BrokerError(self._redact.describe(exc)) from None
        return int(frame.method.message_count)

    def close(self) -> None:
        """Close every thread's connection (errors while closing are ignored).

        Call it once the publishing threads are done: pika connections are not
        thread-safe. A later ``publish`` opens a new connection.
        """
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            close_quietly(connection)

    def _link(self) -> _Link:
        link: _Link | None = getattr(self._local, "link", None)
        if link is not None and link.connection.is_open:
            if not link.channel.is_open:
                link.channel = self._channel(link.connection)
            return link
        if link is not None:
            self._drop()
        connection = connect(self._parameters)
        with self._lock:
            self._connections.add(connection)
        try:
            link = _Link(connection, self._channel(connection))
        except BaseException:
            self._forget(connection)
            raise
        self._local.link = link
        return link

    @staticmethod
    def _channel(
        connection: pika.BlockingConnection,
    ) -> BlockingChannel:
        channel = connection.channel()
        channel.confirm_delivery()
        return channel

    def _drop(self) -> None:
        """Forget this thread's connection (closing it), so the next attempt opens a new one."""
        link: _Link | None = getattr(self._local, "link", None)
        self._local.link = None
        if link is not None:
            self._forget(link.connection)

    def _forget(self, connection: pika.BlockingConnection) -> None:
        with self._lock:
            self._connections.discard(connection)
        close_quietly(connection)
