"""The queue check before a worker starts, on the real RabbitMQ: a queue of the other type
is named with its type, one with other arguments with RabbitMQ's words, and the missing
ones are declared as the worker would."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pika
import pytest

from producers.amqp import BrokerError
from producers.topology import QueueType, Topology
from tests.conftest import free_port
from worker.declare import Mismatch, check_queues, service_queues
from worker.settings import Settings


@pytest.fixture
def settings(amqp_url: str, queues: Callable[[str], str]) -> Iterator[Settings]:
    made = Settings(
        amqp_url=amqp_url,
        requests_queue=queues("requests"),
        polls_queue=queues("polls"),
        cancels_queue=queues("cancels"),
        results_dead_letter_queue=queues("results") + ".XQ",
        amqp_queue_type=QueueType.QUORUM,
    )
    yield made
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_delete(made.results_dead_letter_queue)
    finally:
        connection.close()


def _declare(amqp_url: str, queue: str, arguments: dict[str, object]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_declare(queue, durable=True, arguments=arguments)
    finally:
        connection.close()


def test_missing_queues_are_declared_and_then_found_fine(settings: Settings) -> None:
    assert check_queues(settings) == []
    assert check_queues(settings) == []  # declaring again changes nothing


def test_a_queue_of_the_other_type_is_named_with_its_type(
    amqp_url: str, settings: Settings
) -> None:
    polls = settings.polls_queue
    _declare(amqp_url, polls, Topology().work_queue_arguments(polls))
    (mismatch,) = check_queues(settings)
    assert (mismatch.queue, mismatch.found_type) == (polls, "classic")
    line = mismatch.describe(settings.topology)
    assert line.startswith(f"queue {polls!r} exists as a classic queue, but AMQP_QUEUE_TYPE=quorum")
    assert "docs/reliability.md" in line


def test_a_quorum_queue_with_another_limit_is_named_with_rabbitmq_s_words(
    amqp_url: str, settings: Settings
) -> None:
    requests = settings.requests_queue
    _declare(amqp_url, requests, Topology(QueueType.QUORUM, 50).work_queue_arguments(requests))
    (mismatch,) = check_queues(settings)
    assert mismatch.found_type is None
    assert "x-delivery-limit" in mismatch.reason
    assert "AMQP_DELIVERY_LIMIT=20" in mismatch.describe(settings.topology)


def test_every_queue_the_worker_declares_is_checked(settings: Settings) -> None:
    assert len(service_queues(settings)) == 3 * 3 + 1


def test_an_unreachable_rabbitmq_is_a_broker_error_without_the_password() -> None:
    settings = Settings(amqp_url=f"amqp://guest:s3cret@127.0.0.1:{free_port()}/%2F")
    with pytest.raises(BrokerError) as failed:
        check_queues(settings)
    assert "s3cret" not in str(failed.value)


def test_a_mismatch_says_what_to_set() -> None:
    line = Mismatch("q", "quorum", "inequivalent arg").describe(Topology())
    assert "set AMQP_QUEUE_TYPE=quorum" in line
