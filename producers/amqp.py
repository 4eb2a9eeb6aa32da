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
consumer. ``amqp_parameters`` is the one place a URL becomes connection parameters (Dramatiq's
broker gets them from ``broker_parameters``): ``amqps://`` verifies the server's certificate
and host name.
"""

from __future__ import annotations

import ast
import logging
import random
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pydantic import SecretStr

from producers.closing import Closing
from producers.jitter import full_jitter
from producers.redaction import Redactor

log = logging.getLogger(__name__)
# A library logs only where the application configured logging (no "last resort" output).
log.addHandler(logging.NullHandler())

#: pika's own timeouts, set from ``connect_timeout_s`` unless the URL's query sets them.
_CONNECT_TIMEOUT_OPTIONS: Final = ("socket_timeout", "stack_timeout")
#: How long a publish may wait while RabbitMQ blocks the connection (a memory or disk alarm)
#: before the connection is dropped and the publish retried; pika waits forever without it.
DEFAULT_BLOCKED_CONNECTION_TIMEOUT_S: Final = 60.0
#: The reply code of a channel closed because a queue does not exist.
NOT_FOUND: Final = 404
#: The reply code of a passive declaration of a queue exclusive to another connection.
RESOURCE_LOCKED: Final = 405
_ACCESS_REFUSED: Final = 403
#: Queue names the broker reserves: they cannot be declared (server-named queues, Direct
#: Reply-to's pseudo-queue).
RESERVED_PREFIX: Final = "amq."

#: What a broken connection or channel raises; the operation is retried on a fresh one.
RETRYABLE: Final = (pika.exceptions.AMQPError, OSError)
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
        permanent: retrying cannot help (the login or the access was refused); otherwise
            RabbitMQ was unreachable or kept failing, and a later try may succeed.
        refused: RabbitMQ answered, and refused this queue or message (a channel error such
            as a refused access, a nack, a message no queue took): the broker works, the
            destination does not. ``False`` when the broker could not be reached.
    """

    def __init__(
        self, queue: str, reason: str, *, permanent: bool = False, refused: bool = False
    ) -> None:
        super().__init__(f"could not publish to queue {queue!r}: {reason}")
        self.queue = queue
        self.reason = reason
        self.permanent = permanent
        self.refused = refused


class AmqpRedactor(Redactor):
    """The passwords of a set of AMQP URLs, scrubbed by the project's one rule
    (``producers.redaction``), with a way to name a pika error."""

    def describe(self, exc: BaseException) -> str:
        """``exc`` as ``Type: details``, scrubbed."""
        if isinstance(exc, pika.exceptions.AMQPError):
            # pika's str() is often empty; its repr names the class and the cause.
            return self(repr(exc))
        text = str(exc)
        name = type(exc).__name__
        return self(f"{name}: {text}" if text else name)


#: What a URL's ``ssl_options`` may set: pika's names for ``SSLContext`` arguments.
_SSL_OPTIONS: Final = frozenset(
    {
        "ca_certs",
        "cafile",
        "ca_path",
        "capath",
        "ca_data",
        "cadata",
        "certfile",
        "keyfile",
        "password",
        "ciphers",
        "server_hostname",
    }
)


class AmqpUrlError(ValueError):
    """An AMQP URL is unusable. The message says why, never the URL or a value from it."""


def amqp_parameters(url: str) -> pika.URLParameters:
    """One AMQP URL as pika's connection parameters; ``amqps://`` verifies the server.

    The one place an AMQP URL becomes connection parameters (the publisher, the result
    consumer and Dramatiq's broker all come here). pika parses everything but the query's
    ``ssl_options``, which is built here instead: pika would turn it into a bare
    ``SSLContext(PROTOCOL_TLS_CLIENT)`` that trusts only a CA the options name (and fails
    when they name none). An ``amqps://`` URL gets ``ssl.create_default_context()``:
    certificate verification against the system's trust store (OpenSSL honours
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``) or the options' ``ca_certs``/``cafile``,
    ``ca_path``/``capath``, ``ca_data``/``cadata``, hostname checking against the URL's
    host (or the options' ``server_hostname``), and an optional client certificate
    (``certfile``, ``keyfile``, ``password``) and ``ciphers``.

    Args:
        url: one ``amqp://`` or ``amqps://`` URL, e.g.
            ``amqps://user:pass@rabbit.example.com/vhost?ssl_options={'cafile':'/ca.pem'}``.

    Returns:
        The parameters; ``ssl_options`` is set for ``amqps://`` and ``None`` otherwise.

    Raises:
        AmqpUrlError: not an amqp(s) URL, a query pika refuses, ``ssl_options`` that is not
            a dict of the options above or is given with ``amqp://``, or a CA or
            certificate file that cannot be loaded.
    """
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise AmqpUrlError("not a valid URL") from None
    if scheme not in ("amqp", "amqps"):
        raise AmqpUrlError("the scheme must be amqp:// or amqps://")
    given = [value for name, value in query if name == "ssl_options"]
    rest = [(name, value) for name, value in query if name != "ssl_options"]
    try:
        params = pika.URLParameters(urlunsplit(parts._replace(query=urlencode(rest))))
    except Exception:  # pika raises several types; their text may hold the URL
        raise AmqpUrlError("not a valid amqp:// or amqps:// URL") from None
    options = _ssl_options(given[-1]) if given else {}
    if scheme == "amqps":
        if options is None:
            raise AmqpUrlError("ssl_options=None contradicts an amqps:// URL")
        params.ssl_options = tls_options(params.host, options)
    elif given and options is not None:
        # pika would switch such a URL to TLS on port 5672: say amqps:// instead.
        raise AmqpUrlError("ssl_options needs an amqps:// URL")
    return params


def tls_options(host: str, options: dict[str, str]) -> pika.SSLOptions:
    """pika's TLS options for a server at ``host``: certificate and hostname verified.

    Args:
        host: the server's host name, checked against its certificate unless ``options``
            names another ``server_hostname``.
        options: ``ssl_options`` as ``amqp_parameters`` describes them.

    Raises:
        AmqpUrlError: a CA or certificate file cannot be loaded, or ``ciphers`` is invalid.
    """
    try:
        context = ssl.create_default_context(
            cafile=options.get("ca_certs") or options.get("cafile"),
            capath=options.get("ca_path") or options.get("capath"),
            cadata=options.get("ca_data") or options.get("cadata"),
        )
        if options.get("certfile"):
            context.load_cert_chain(
                options["certfile"], options.get("keyfile"), options.get("password")
            )
        if options.get("ciphers"):
            context.set_ciphers(options["ciphers"])
    except (OSError, ssl.SSLError, ValueError) as exc:
        # OSError's str() names the file (not a secret); an SSLError's says what failed.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise AmqpUrlError(f"ssl_options: cannot set up TLS ({reason})") from None
    return pika.SSLOptions(context, server_hostname=options.get("server_hostname") or host)


def _ssl_options(text: str) -> dict[str, str] | None:
    """A URL's ``ssl_options`` value (a Python dict literal, as pika reads it), checked."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise AmqpUrlError("ssl_options is not a Python dict literal") from None
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise AmqpUrlError("ssl_options must be a dict of strings")
    unknown = sorted(set(value) - _SSL_OPTIONS)
    if unknown:
        raise AmqpUrlError(
            f"ssl_options: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_SSL_OPTIONS))}"
        )
    return value


def broker_parameters(url: str | SecretStr) -> list[dict[str, Any]]:
    """The URL(s) as Dramatiq's ``RabbitmqBroker(parameters=...)`` wants them.

    Each URL goes through ``amqp_parameters`` (given a URL, Dramatiq would hand it to pika
    as it is), and comes out as the keyword arguments of ``pika.ConnectionParameters``;
    pika's own timeouts are kept.

    Args:
        url: one URL, or several separated by ``;`` (tried in turn).

    Raises:
        ValueError: no URL, or one is unusable; the message names it by position only.
    """
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    parts = [part.strip() for part in raw.split(";") if part.strip()]
    if not parts:
        raise ValueError("no AMQP URL given")
    parameters = []
    for position, part in enumerate(parts, start=1):
        try:
            parameters.append(amqp_parameters(part))
        except AmqpUrlError as exc:
            raise ValueError(f"AMQP URL #{position}: {exc}") from None
    return [
        {
            name: getattr(params, name)
            for name in (
                "host",
                "port",
                "virtual_host",
                "credentials",
                "channel_max",
                "frame_max",
                "heartbeat",
                "ssl_options",
                "connection_attempts",
                "retry_delay",
                "socket_timeout",
                "stack_timeout",
                "locale",
                "blocked_connection_timeout",
                "client_properties",
                "tcp_options",
            )
        }
        for params in parameters
    ]


def parse_amqp_urls(
    url: str | SecretStr, *, connect_timeout_s: float
) -> tuple[list[pika.URLParameters], AmqpRedactor, list[str]]:
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
    redact = AmqpRedactor(secrets)
    parameters: list[pika.URLParameters] = []
    hosts: list[str] = []
    for position, part in enumerate(parts, start=1):
        try:
            params = amqp_parameters(part)
            given = parse_qs(urlsplit(part).query)
        except ValueError as exc:  # AmqpUrlError: its message holds nothing from the URL
            raise ValueError(f"AMQP URL #{position}: {exc}") from None
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
    arguments (an operator may have made it a quorum queue, or a worker declared it). A
    queue exclusive to another connection (an RPC client's reply queue) answers
    ``RESOURCE_LOCKED``: it exists, and publishing to it works. Only when it is missing is
    it declared durable with ``arguments``.

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
        if exc.reply_code not in (NOT_FOUND, RESOURCE_LOCKED):
            raise
        # A failed passive declaration closes the channel: go on with a new one.
        channel = connection.channel()
        if confirm:
            channel.confirm_delivery()
        if exc.reply_code == NOT_FOUND:
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
                stayed unroutable (the queue deleted again and again; at once for a
                reserved ``amq.*`` name, which cannot be declared). ``refused`` says
                whether RabbitMQ itself refused the last attempt.
        """
        reason = "no attempt made"
        refused = False
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
                reason, refused = self._redact.describe(exc), True
                if queue.startswith(RESERVED_PREFIX):
                    # Gone (a server-named queue whose connection closed), or Direct
                    # Reply-to, whose deliveries RabbitMQ never confirms as routed.
                    raise PublishError(queue, f"{reason}: no such queue", refused=True) from None
                # The queue was deleted since it was checked: declare it again, at once.
                self._local.link.ready.discard(queue)
                log.warning("publish to %s unroutable, redeclaring the queue", queue)
                continue
            except pika.exceptions.NackError as exc:
                # RabbitMQ did not take the message (a full queue that rejects publishes,
                # an internal error, a quorum queue electing a leader). The next attempt
                # goes on a new channel: on RabbitMQ 3.10 a channel that published to a
                # quorum queue while it had no leader goes on nacking that queue after a
                # new one is elected, while a new channel's publishes are confirmed.
                reason, refused = self._redact.describe(exc), True
                self._close_channel()
            except RETRYABLE as exc:
                self._drop()
                reason = self._redact.describe(exc)
                refused = isinstance(exc, pika.exceptions.ChannelClosedByBroker)
                if is_permanent(exc):
                    raise PublishError(queue, reason, permanent=True, refused=refused) from None
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
        raise PublishError(
            queue, f"{reason} (after {self.attempts} attempts)", refused=refused
        ) from None

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
            if exc.reply_code == NOT_FOUND:
                return None  # the channel is closed: the next call opens another
            raise BrokerError(self._redact.describe(exc)) from None
        except RETRYABLE as exc:
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

    def _close_channel(self) -> None:
        """Close this thread's channel (the connection stays): the next attempt opens
        another."""
        link: _Link | None = getattr(self._local, "link", None)
        if link is not None and link.channel.is_open:
            try:
                link.channel.close()
            except RETRYABLE:
                self._drop()

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
