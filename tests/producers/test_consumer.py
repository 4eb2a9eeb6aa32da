"""The result consumer against the real RabbitMQ."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pika
import pika.exceptions
import pytest

from producers import wire
from producers.consumer import (
    PRIVATE_QUEUE_EXPIRES_MS,
    ConsumeError,
    ResultConsumer,
    ResultTimeout,
)
from producers.contract import (
    ErrorCode,
    ErrorInfo,
    Output,
    Progress,
    ProgressEvent,
    Result,
    Status,
)
from simulator.testing import wait_until
from tests.producers.test_amqp import CuttableProxy, proxy

__all__ = ["proxy"]  # the fixture, shared with test_amqp

PASSWORD = "pw-DISTINCTIVE-4"


def _result(request_id: str, status: Status = Status.COMPLETED) -> Result:
    if status is Status.COMPLETED:
        outputs = [Output(keyname="image", type="image", data="https://cdn.example/x.png")]
        return Result(
            request_id=request_id, workflow="sketch-maker", status=status, outputs=outputs
        )
    error = ErrorInfo(code=ErrorCode.SERVER_ERROR, message="boom")
    return Result(request_id=request_id, workflow="sketch-maker", status=status, error=error)


def _progress(request_id: str, event: ProgressEvent = ProgressEvent.POLLED) -> Progress:
    return Progress(
        request_id=request_id,
        workflow="sketch-maker",
        event=event,
        state="SUBMITTED",
        polls=2,
        at=datetime.now(UTC),
    )


def _publish(amqp_url: str, queue: str, *bodies: Result | Progress | bytes) -> None:
    """Publish results, progress messages (or raw bodies) as the worker does, confirmed."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            if isinstance(body, Result):
                properties = pika.BasicProperties(**wire.result_properties(body.request_id))
                body = body.model_dump_json(exclude_none=True).encode()
            elif isinstance(body, Progress):
                properties = pika.BasicProperties(**wire.progress_properties(body.request_id))
                body = body.model_dump_json(exclude_none=True).encode()
            else:
                properties = pika.BasicProperties(delivery_mode=2)
            channel.basic_publish("", queue, body, properties, mandatory=True)
    finally:
        connection.close()


def _count(amqp_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def _exists(amqp_url: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return False
    finally:
        connection.close()
    return True


def test_wait_returns_the_results_of_the_given_ids(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("results")
    seen: list[str] = []
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        _publish(amqp_url, queue, _result("a"), _result("other"), _result("b", Status.FAILED))
        got = consumer.wait(["a", "b"], timeout_s=10, on_result=lambda r: seen.append(r.request_id))
        assert set(got) == {"a", "b"}
        assert got["b"].status is Status.FAILED
        assert got["a"].outputs is not None
        assert seen == ["a", "b"]
        # Not waited for: acked and kept.
        assert [r.request_id for r in consumer.others] == ["other"]
    assert _count(amqp_url, queue) == 0


def test_duplicates_are_returned_once_and_counted(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        # FIFO: the duplicate of "a" arrives before "b" ends the wait.
        _publish(amqp_url, queue, _result("a"), _result("a"), _result("b"))
        got = consumer.wait(["a", "b"], timeout_s=10)
        assert sorted(got) == ["a", "b"]
        assert consumer.duplicates == 1
        # The same id later, through results(): dropped too.
        _publish(amqp_url, queue, _result("a"), _result("c"), _result("c"))
        assert [r.request_id for r in consumer.results(timeout_s=10, idle_timeout_s=0.5)] == ["c"]
        assert consumer.duplicates == 3
    assert _count(amqp_url, queue) == 0


def test_malformed_bodies_are_acked_counted_and_skipped(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        _publish(
            amqp_url,
            queue,
            b"not json",
            b'{"request_id": "x"}',
            b"\xff\xfe",
            _result("a"),
        )
        assert list(consumer.wait(["a"], timeout_s=10)) == ["a"]
        assert consumer.malformed == 3
    assert _count(amqp_url, queue) == 0  # the malformed ones were acked, not requeued


def test_progress_messages_go_to_on_progress_and_are_never_taken_for_results(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("results")
    heard: list[tuple[str, ProgressEvent]] = []
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        _publish(
            amqp_url,
            queue,
            _progress("a", ProgressEvent.ACCEPTED),
            _progress("other"),
            _progress("a", ProgressEvent.SUBMITTED),
            _result("a"),
        )
        got = consumer.wait(
            ["a"], timeout_s=10, on_progress=lambda p: heard.append((p.request_id, p.event))
        )
        assert list(got) == ["a"]
        assert heard == [("a", ProgressEvent.ACCEPTED), ("a", ProgressEvent.SUBMITTED)]
        # Another request's progress is not a result of its own: dropped, counted.
        assert consumer.others == []
        assert consumer.progress_skipped == 1
        # Without a callback, results() yields only results.
        _publish(amqp_url, queue, _progress("b"), _result("b"), b"{}")
        found = list(consumer.results(timeout_s=10, idle_timeout_s=0.5))
        assert [r.request_id for r in found] == ["b"]
        assert consumer.progress_skipped == 2
        assert consumer.malformed == 1
    assert _count(amqp_url, queue) == 0


def test_a_malformed_progress_message_is_skipped_and_a_shared_queue_keeps_others(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            bad = pika.BasicProperties(**wire.progress_properties("a"))
            connection.channel().basic_publish("", queue, b'{"request_id": "a"}', bad)
        finally:
            connection.close()
        _publish(amqp_url, queue, _progress("someone-else"), _result("a"))
        assert list(consumer.wait(["a"], timeout_s=10, requeue_others=True)) == ["a"]
        assert consumer.malformed == 1
    # The other request's progress went back for its own consumer.
    assert _count(amqp_url, queue) == 1


def test_a_timeout_carries_the_missing_ids(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        _publish(amqp_url, queue, _result("a"))
        started = time.monotonic()
        with pytest.raises(ResultTimeout) as raised:
            consumer.wait(["a", "b", "c"], timeout_s=0.5)
        assert 0.5 <= time.monotonic() - started < 3
    assert raised.value.missing == {"b", "c"}
    assert set(raised.value.received) == {"a"}
    assert "2 of 3 results" in str(raised.value)


def test_results_stops_when_idle(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        _publish(amqp_url, queue, _result("a"), _result("b"))
        started = time.monotonic()
        got = [r.request_id for r in consumer.results(timeout_s=30, idle_timeout_s=0.3)]
        elapsed = time.monotonic() - started
    assert got == ["a", "b"]
    assert 0.3 <= elapsed < 3


def test_results_stops_at_its_deadline(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        started = time.monotonic()
        assert list(consumer.results(timeout_s=0.4)) == []
        assert 0.4 <= time.monotonic() - started < 3


def test_a_result_arriving_at_the_deadline_goes_back_to_the_queue(
    amqp_url: str, queues: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline passes as a message arrives: it is requeued at once, not left unacked
    on the channel until the consumer's connection closes."""
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        _publish(amqp_url, queue, _result("late"))
        readings = iter([0.0])  # the call starts at 0 s; every later reading is past 10 s
        monkeypatch.setattr("producers.consumer.time.monotonic", lambda: next(readings, 100.0))
        assert list(consumer.results(timeout_s=10)) == []
        monkeypatch.undo()
        wait_until(
            lambda: _count(amqp_url, queue) == 1,
            timeout_s=10,
            message="the late result to be ready on the queue again",
        )


def test_a_result_is_acked_once_handed_over_and_the_rest_go_back(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        _publish(amqp_url, queue, _result("a"), _result("b"), _result("c"))
        stream = consumer.results(timeout_s=10)
        assert next(stream).request_id == "a"
        stream.close()  # "a" was handed over: acked; "b" and "c" were only sent ahead
    assert _count(amqp_url, queue) == 2


def test_a_broken_connection_is_reopened_and_nothing_is_yielded_twice(
    amqp_url: str, queues: Callable[[str], str], proxy: CuttableProxy
) -> None:
    queue = queues("results")
    with ResultConsumer(proxy.url(amqp_url), queue=queue, retry_base_s=0.01) as consumer:
        _publish(amqp_url, queue, _result("a"), _result("b"))
        stream = consumer.results(timeout_s=20, idle_timeout_s=0.5)
        assert next(stream).request_id == "a"
        proxy.cut()  # the ack of "a" cannot reach RabbitMQ: it is delivered again
        rest = [result.request_id for result in stream]
        assert proxy.accepted == 2
        assert rest == ["b"]
        # "a" for sure; "b" too when it was yielded from the buffer before the break showed.
        assert consumer.duplicates in (1, 2)
    assert _count(amqp_url, queue) == 0


def test_wait_can_requeue_other_results(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("results")
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        _publish(amqp_url, queue, _result("someone-else"), _result("a"))
        assert list(consumer.wait(["a"], timeout_s=10, requeue_others=True)) == ["a"]
        assert consumer.others == []
    assert _count(amqp_url, queue) == 1
    with ResultConsumer(amqp_url, queue=queue) as consumer:
        assert [r.request_id for r in consumer.results(timeout_s=10, idle_timeout_s=0.3)] == [
            "someone-else"
        ]


def test_a_requeued_result_reaches_another_consumer_during_the_wait(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("shared")
    first = ResultConsumer(amqp_url, queue=queue)
    second = ResultConsumer(amqp_url, queue=queue)
    got_first: dict[str, Result] = {}
    failures: list[BaseException] = []

    def wait_first() -> None:
        try:
            got_first.update(first.wait(["mine", "late"], timeout_s=20, requeue_others=True))
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            failures.append(exc)

    try:
        # Only the first consumer is there: it is sent "theirs" too, and holds it.
        _publish(amqp_url, queue, _result("theirs"), _result("mine"))
        thread = threading.Thread(target=wait_first)
        thread.start()
        deadline = time.monotonic() + 10
        while _count(amqp_url, queue) and time.monotonic() < deadline:
            pass  # until the first consumer holds both (no message ready on the queue)
        assert _count(amqp_url, queue) == 0
        # ...until it requeues "theirs", while still waiting, and the second one takes it.
        got_second = second.wait(["theirs"], timeout_s=10, requeue_others=True)
        _publish(amqp_url, queue, _result("late"))
        thread.join(timeout=30)
    finally:
        first.close()
        second.close()
    assert not failures
    assert set(got_second) == {"theirs"}
    assert set(got_first) == {"mine", "late"}
    assert _count(amqp_url, queue) == 0


def test_a_private_queue_expires_and_can_be_deleted(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    prefix = queues("private")
    consumer = ResultConsumer.private(amqp_url, prefix=prefix)
    try:
        assert re.fullmatch(re.escape(prefix) + r"\.[0-9a-f]{8}", consumer.queue)
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            # Same arguments: accepted; any others would be refused (406).
            channel.queue_declare(
                consumer.queue, durable=True, arguments={"x-expires": PRIVATE_QUEUE_EXPIRES_MS}
            )
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="PRECONDITION"):
                connection.channel().queue_declare(consumer.queue, durable=True)
        finally:
            connection.close()
        _publish(amqp_url, consumer.queue, _result("a"))
        assert not consumer.delete_queue(if_empty=True)  # it holds a result
        assert list(consumer.wait(["a"], timeout_s=10)) == ["a"]
        assert consumer.delete_queue(if_empty=True)
        assert not _exists(amqp_url, consumer.queue)
    finally:
        consumer.delete_queue(if_empty=False)
        consumer.close()


def test_a_missing_queue_without_declare_is_a_consume_error(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("missing")
    with pytest.raises(ConsumeError, match="does not exist"):
        ResultConsumer(amqp_url, queue=queue, declare=False)
    assert not _exists(amqp_url, queue)


def test_an_existing_queue_is_consumed_as_it_is(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("results")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().queue_declare(queue, durable=True, arguments={"x-max-length": 10})
    connection.close()
    with ResultConsumer(amqp_url, queue=queue, queue_arguments={"x-expires": 1000}) as consumer:
        _publish(amqp_url, queue, _result("a"))
        assert list(consumer.wait(["a"], timeout_s=10)) == ["a"]


def test_an_unreachable_broker_is_a_consume_error_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(ConsumeError) as raised:
        ResultConsumer(
            f"amqp://guest:{PASSWORD}@127.0.0.1:1/",
            queue="q",
            attempts=2,
            retry_base_s=0.01,
            connect_timeout_s=2,
        )
    assert time.monotonic() - started < 5
    assert "after 2 attempts" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    assert PASSWORD not in repr(raised.value)
