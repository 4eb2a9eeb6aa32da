"""RabbitMQ stopped and started again in the middle of a run.

The run uses a RabbitMQ node of its own (``private_rabbitmq``): the shared one is never
touched. Once 30 % of the results are in, the node is stopped; the producer then publishes
the second half of the requests into the stopped broker (its publishes must be retried
until the node is back), the node is started again on the same database, and the workers
must reconnect and finish every job: durable queues and persistent messages survive,
messages the workers held unacked (running, or delayed polls waiting for their time) go
back to their queues, and results are published with confirms.
"""

from __future__ import annotations

import secrets
import threading
import time

import pika
import pytest

from producers.amqp import ConfirmedPublisher, PublishError
from producers.consumer import ResultConsumer
from producers.contract import ErrorCode, ErrorInfo, Result, Status
from producers.publisher import Publisher
from simulator.testing import RunningSimulator
from tests.chaos.conftest import ChaosSize, StackFactory
from tests.chaos.harness import (
    Progress,
    check_guarantees,
    check_hostile,
    prepare_simulator,
    run_chaos,
)
from tests.services import PrivateRabbitMQ
from worker.results.publish import ResultPublisher

WORKERS = 2


def test_rabbitmq_restart_mid_run(
    chaos_stack: StackFactory,
    private_rabbitmq: PrivateRabbitMQ,
    redis_url: str,
    sim: RunningSimulator,
    chaos_size: ChaosSize,
) -> None:
    stack = chaos_stack(private_rabbitmq.url, redis_url)
    prepare_simulator(sim)
    for _ in range(WORKERS):
        stack.start_worker(threads=4)
    stopped = threading.Event()
    downtime: list[float] = []

    def harm(progress: Progress) -> None:
        if not progress.wait_fraction(0.3, timeout_s=600):
            return
        began = time.monotonic()
        private_rabbitmq.stop()
        stopped.set()  # the producer publishes its second half into the stopped broker
        private_rabbitmq.start()
        downtime.append(time.monotonic() - began)

    jobs = chaos_size.jobs
    figures, received, stats = run_chaos(
        "rabbitmq restart",
        stack,
        sim,
        jobs=jobs,
        harm=harm,
        timeout_s=180 + jobs * 0.5,
        second_half_after=stopped,
    )
    assert downtime, "the broker was not restarted"
    figures.notes["broker down s"] = round(downtime[0], 1)
    check_guarantees(figures, stats)
    check_hostile(received)
    assert figures.max_posts_per_request <= 1


def test_producer_and_consumer_ride_out_a_broker_restart(
    private_rabbitmq: PrivateRabbitMQ, namespace: str
) -> None:
    """A publish made while the broker is down, and a consumer waiting for a result, both
    wait for it to come back. Their rounds of attempts here give up within a fraction of a
    second, far less than the node takes to start, so only ``retry_for_s`` carries them
    across: the request is on its queue once, and the result published after the restart
    reaches the consumer."""
    requests = f"{namespace}.{secrets.token_hex(3)}.requests"
    replies = f"{namespace}.{secrets.token_hex(3)}.results"
    request_id = f"after-restart-{secrets.token_hex(4)}"
    quick = ConfirmedPublisher(private_rabbitmq.url, attempts=2, retry_base_s=0.05, retry_cap_s=0.1)
    consumer = ResultConsumer(
        private_rabbitmq.url,
        queue=replies,
        attempts=2,
        retry_base_s=0.05,
        retry_cap_s=0.1,
        retry_for_s=120,
    )
    published: list[str] = []
    got: list[Result] = []
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            published.append(publisher.publish({"workflow": "sketch-maker"}))
        except BaseException as exc:
            failures.append(exc)

    def wait() -> None:
        try:
            got.extend(consumer.wait([request_id], timeout_s=150).values())
        except BaseException as exc:
            failures.append(exc)

    with consumer, Publisher(queue=requests, publisher=quick, retry_for_s=120) as publisher:
        publisher.publish({"workflow": "sketch-maker"})  # declares the queue
        waiting = threading.Thread(target=wait, name="consume-across-a-restart")
        waiting.start()
        private_rabbitmq.stop()
        publishing = threading.Thread(target=publish, name="publish-into-a-stopped-broker")
        publishing.start()
        try:
            private_rabbitmq.start()
            error = ErrorInfo(code=ErrorCode.GENERATION_FAILED, message="published after")
            result = Result(
                request_id=request_id, workflow="sketch-maker", status=Status.FAILED, error=error
            )
            with ConfirmedPublisher(private_rabbitmq.url) as amqp:
                ResultPublisher(amqp, dead_letter_queue=f"{replies}.XQ").publish(result, replies)
        finally:
            publishing.join(150)
            waiting.join(150)
        consumer.delete_queue(if_empty=False)
    quick.close()
    assert not failures, failures
    assert len(published) == 1
    assert [result.request_id for result in got] == [request_id]
    connection = pika.BlockingConnection(pika.URLParameters(private_rabbitmq.url))
    try:
        channel = connection.channel()
        assert channel.queue_declare(requests, passive=True).method.message_count == 2
        channel.queue_delete(requests)
    finally:
        connection.close()


def test_publisher_does_not_retry_a_refused_login(private_rabbitmq: PrivateRabbitMQ) -> None:
    """A wrong password is final: ``publish`` raises at once instead of retrying for
    ``retry_for_s``, and the password is not in the error."""
    url = private_rabbitmq.url.replace("guest:guest", "guest:wrong-password-123")
    began = time.monotonic()
    with (
        Publisher(url, queue="never.used", retry_for_s=120) as publisher,
        pytest.raises(PublishError) as raised,
    ):
        publisher.publish({"workflow": "sketch-maker"})
    assert raised.value.permanent
    assert time.monotonic() - began < 30
    assert "wrong-password-123" not in str(raised.value)
