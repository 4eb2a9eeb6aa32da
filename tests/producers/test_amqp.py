"""The confirmed publisher against the real RabbitMQ (and against a closed port)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions
import pytest

from producers import wire
from producers.amqp import ConfirmedPublisher, PublishError
from producers.topology import Topology

PASSWORD = "pw-DISTINCTIVE-1"
CLOSED_PORT_URL = f"amqp://guest:{PASSWORD}@127.0.0.1:1/"


class CuttableProxy:
    """A TCP proxy to RabbitMQ whose connections a test cuts, as a network failure would.

    Attributes:
        port: where it listens, on 127.0.0.1.
        accepted: how many connections it has accepted.
    """

    def __init__(self, host: str, port: int) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._target = (host, port)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, amqp_url: str) -> str:
        """``amqp_url`` through this proxy."""
        parts = urlsplit(amqp_url)
        userinfo = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{self.port}"))

    def cut(self) -> None:
        """Break every connection made so far (both ends see the stream end)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def close(self) -> None:
        self._server.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[CuttableProxy]:
    """A cuttable proxy to the test RabbitMQ."""
    parts = urlsplit(amqp_url)
    running = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    yield running
    running.close()


def _props(**extra: object) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=wire.CONTENT_TYPE, delivery_mode=wire.PERSISTENT, **extra
    )


def _count(amqp_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def _drain(amqp_url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message on ``queue`` (acked). Published with confirms, they are all there."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    messages: list[tuple[Any, bytes]] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((properties, body))
    finally:
        connection.close()


def _declare_fails(amqp_url: str, queue: str, arguments: dict[str, Any]) -> bool:
    """Whether declaring ``queue`` durable with ``arguments`` is refused (they differ)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_declare(queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        return True
    finally:
        connection.close()
    return False


def _with_password(amqp_url: str, password: str) -> str:
    parts = urlsplit(amqp_url)
    netloc = f"{parts.username or 'guest'}:{password}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_publish_lands_a_persistent_message_with_its_properties(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("confirmed")
    arguments = Topology().work_queue_arguments(queue)
    with ConfirmedPublisher(amqp_url) as publisher:
        publisher.publish(
            queue, b'{"n":1}', _props(priority=4, message_id="m-1"), arguments=arguments
        )
    [(properties, body)] = _drain(amqp_url, queue)
    assert body == b'{"n":1}'
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.priority == 4
    assert properties.message_id == "m-1"
    # The missing queue was declared durable with exactly these arguments.
    assert not _declare_fails(amqp_url, queue, arguments)
    assert _declare_fails(amqp_url, queue, {})


def test_an_existing_queue_with_other_arguments_is_used_as_is(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("operator")
    theirs = {"x-max-length": 1000, "x-message-ttl": 3_600_000}
    assert not _declare_fails(amqp_url, queue, theirs)
    with ConfirmedPublisher(amqp_url) as publisher:
        for n in range(3):
            publisher.publish(
                queue, b"%d" % n, _props(), arguments=Topology().work_queue_arguments(queue)
            )
    assert [body for _, body in _drain(amqp_url, queue)] == [b"0", b"1", b"2"]
    assert not _declare_fails(amqp_url, queue, theirs)  # unchanged


def test_a_queue_deleted_between_publishes_is_declared_again(
    amqp_url: str, queues: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    queue = queues("deleted")
    with ConfirmedPublisher(amqp_url) as publisher:
        publisher.publish(queue, b"first", _props(), arguments={})
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        connection.channel().queue_delete(queue)
        connection.close()
        with caplog.at_level(logging.WARNING, logger="producers.amqp"):
            publisher.publish(queue, b"second", _props(), arguments={})
    assert [body for _, body in _drain(amqp_url, queue)] == [b"second"]
    # It came back as unroutable on the publisher's open connection and was redeclared.
    assert any("unroutable" in record.getMessage() for record in caplog.records)


def test_a_queue_exclusive_to_another_connection_takes_the_message(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    # An RPC client's reply queue: only its own connection may declare it, even passively.
    queue = queues("exclusive")
    owner = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = owner.channel()
        channel.queue_declare(queue, exclusive=True)
        with ConfirmedPublisher(amqp_url, attempts=1) as publisher:
            publisher.publish(queue, b"result", _props())
            publisher.publish(queue, b"again", _props())
        bodies = [channel.basic_get(queue, auto_ack=True)[2] for _ in range(2)]
        assert bodies == [b"result", b"again"]
    finally:
        owner.close()


def test_an_auto_delete_queue_takes_messages_then_is_declared_durable_once_gone(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("auto-delete")
    owner = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = owner.channel()
    channel.queue_declare(queue, auto_delete=True)
    tag = channel.basic_consume(queue, lambda *_: None, auto_ack=False)
    with ConfirmedPublisher(amqp_url, attempts=2, retry_base_s=0.01) as publisher:
        publisher.publish(queue, b"while-consumed", _props())
        channel.basic_cancel(tag)  # the last consumer goes: RabbitMQ deletes the queue
        owner.close()
        publisher.publish(queue, b"after", _props())
    # The message the consumer held unacked went with the queue; the next one waits in a
    # durable queue of the same name.
    assert [body for _, body in _drain(amqp_url, queue)] == [b"after"]
    assert not _declare_fails(amqp_url, queue, {})


def test_a_queue_that_refuses_every_message_is_a_refused_publish_error(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("full")
    assert not _declare_fails(amqp_url, queue, {"x-max-length": 0, "x-overflow": "reject-publish"})
    publisher = ConfirmedPublisher(amqp_url, attempts=3, retry_base_s=0.01, retry_cap_s=0.02)
    with publisher, pytest.raises(PublishError) as raised:
        publisher.publish(queue, b"x", _props())
    assert raised.value.refused
    assert "after 3 attempts" in str(raised.value)


@pytest.mark.parametrize("queue", ["amq.gen-gone", "amq.rabbitmq.reply-to"])
def test_a_reserved_queue_name_is_refused_at_once(amqp_url: str, queue: str) -> None:
    # A server-named queue whose connection closed cannot be declared again, and RabbitMQ
    # never confirms a Direct Reply-to delivery as routed: no retry can help.
    publisher = ConfirmedPublisher(amqp_url, attempts=5, retry_base_s=1.0)
    started = time.monotonic()
    with publisher, pytest.raises(PublishError) as raised:
        publisher.publish(queue, b"x", _props())
    assert raised.value.refused
    assert time.monotonic() - started < 1.0


def test_a_broken_connection_is_reopened_and_the_publish_retried(
    amqp_url: str, queues: Callable[[str], str], proxy: CuttableProxy
) -> None:
    queue = queues("cut")
    with ConfirmedPublisher(proxy.url(amqp_url), retry_base_s=0.01) as publisher:
        publisher.publish(queue, b"1", _props())
        proxy.cut()
        publisher.publish(queue, b"2", _props())
    assert proxy.accepted == 2
    assert [body for _, body in _drain(amqp_url, queue)] == [b"1", b"2"]


def test_an_unreachable_broker_is_a_publish_error_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = ConfirmedPublisher(
        CLOSED_PORT_URL, attempts=3, retry_base_s=0.01, retry_cap_s=0.05, connect_timeout_s=2
    )
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(PublishError) as raised:
        publisher.publish("some.queue", b"x", _props())
    assert time.monotonic() - started < 5
    error = raised.value
    assert error.queue == "some.queue"
    assert "'some.queue'" in str(error)
    assert "after 3 attempts" in str(error)
    assert "Connection refused" in str(error)
    assert not error.refused  # the broker never answered: nothing refused the queue
    retries = [r for r in caplog.records if r.name == "producers.amqp" and "retry" in r.message]
    assert len(retries) == 2
    shown = [
        str(error),
        repr(error),
        repr(publisher),
        "".join(traceback.format_exception(error)),
        caplog.text,
    ]
    for text in shown:
        assert PASSWORD not in text
        assert "guest:" not in text
    publisher.close()


def test_a_refused_login_fails_at_once_without_the_password(amqp_url: str) -> None:
    wrong = "pw-DISTINCTIVE-2"
    publisher = ConfirmedPublisher(_with_password(amqp_url, wrong), attempts=6, retry_base_s=5)
    started = time.monotonic()
    with pytest.raises(PublishError) as raised:
        publisher.publish("some.queue", b"x", _props())
    assert time.monotonic() - started < 3  # no backoff: retrying cannot fix a password
    assert "ACCESS_REFUSED" in str(raised.value)
    assert wrong not in str(raised.value)
    assert wrong not in repr(publisher)


def test_several_urls_are_tried_in_turn(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("failover")
    with ConfirmedPublisher(f"{CLOSED_PORT_URL};{amqp_url}", attempts=1) as publisher:
        assert len(publisher.hosts) == 2
        publisher.publish(queue, b"x", _props())
    assert _count(amqp_url, queue) == 1


def test_an_invalid_url_is_a_value_error_without_its_text() -> None:
    with pytest.raises(ValueError, match="AMQP URL #2") as raised:
        ConfirmedPublisher(f"amqp://guest:guest@127.0.0.1/;amqp://u:{PASSWORD}@host:port/")
    assert PASSWORD not in str(raised.value)
    with pytest.raises(ValueError, match="AMQP URL #1"):
        ConfirmedPublisher("http://127.0.0.1/")
    with pytest.raises(ValueError, match="attempts"):
        ConfirmedPublisher(CLOSED_PORT_URL, attempts=0)


def test_threads_publish_on_their_own_connections(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("threads")
    failures: list[BaseException] = []
    publisher = ConfirmedPublisher(amqp_url)

    def publish_50(thread: int) -> None:
        try:
            for n in range(50):
                publisher.publish(queue, f"{thread}-{n}".encode(), _props())
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            failures.append(exc)

    threads = [threading.Thread(target=publish_50, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert len(publisher._connections) == 8
    publisher.close()
    assert not publisher._connections
    bodies = {body for _, body in _drain(amqp_url, queue)}
    assert bodies == {f"{t}-{n}".encode() for t in range(8) for n in range(50)}
    # A publish after close() opens a new connection.
    publisher.publish(queue, b"again", _props())
    publisher.close()
    assert _count(amqp_url, queue) == 1
