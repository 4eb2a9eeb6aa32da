"""The queues' arguments: classic ones as Dramatiq declares them, quorum ones RabbitMQ
accepts (the real server), and the rule of when the worker acts before the delivery limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from producers import wire
from producers.topology import (
    DEAD_LETTER_TTL_MS,
    NO_DELIVERY_LIMIT,
    QueueType,
    Topology,
    near_delivery_limit,
    queue_type_from_env,
)
from tests.conftest import queue_types

QUORUM = Topology(QueueType.QUORUM, 20)


def test_classic_arguments_are_dramatiq_s_own() -> None:
    broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/", max_priority=wire.MAX_PRIORITY)
    dramatiq_arguments: Callable[[str], dict[str, Any]] = broker._build_queue_arguments
    for queue in ("segmind.requests", "segmind.polls", "t.x.cancels"):
        assert Topology().work_queue_arguments(queue) == dramatiq_arguments(queue)
    assert Topology().dead_letter_queue_arguments() == {"x-message-ttl": DEAD_LETTER_TTL_MS}
    assert Topology().reply_queue_arguments({"x-expires": 5}) == {"x-expires": 5}


def test_quorum_arguments_carry_no_priority_and_a_deliberate_limit() -> None:
    arguments = QUORUM.work_queue_arguments("segmind.polls.DQ")
    assert arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        # A delay queue's dead letters go where its queue's do.
        "x-dead-letter-routing-key": "segmind.polls.XQ",
        "x-delivery-limit": 20,
    }
    for other in (
        QUORUM.dead_letter_queue_arguments(),
        QUORUM.results_dead_letter_queue_arguments(),
        QUORUM.reply_queue_arguments(),
    ):
        assert other["x-queue-type"] == "quorum"
        # Browsing and requeueing hand messages back: no limit those could reach.
        assert other["x-delivery-limit"] == NO_DELIVERY_LIMIT


def test_the_service_queues_are_each_actor_queue_with_its_companions() -> None:
    declared = QUORUM.service_queues(["a.requests", "a.polls"], "a.results.XQ")
    assert list(declared) == [
        "a.requests",
        "a.requests.DQ",
        "a.requests.XQ",
        "a.polls",
        "a.polls.DQ",
        "a.polls.XQ",
        "a.results.XQ",
    ]
    assert QUORUM.other().queue_type is QueueType.CLASSIC


def test_the_type_comes_from_the_environment() -> None:
    assert queue_type_from_env({}) is QueueType.CLASSIC
    assert queue_type_from_env({"AMQP_QUEUE_TYPE": " Quorum "}) is QueueType.QUORUM
    assert Topology.from_env({"AMQP_QUEUE_TYPE": "quorum", "AMQP_DELIVERY_LIMIT": "7"}) == (
        Topology(QueueType.QUORUM, 7)
    )
    with pytest.raises(ValueError, match="classic or quorum"):
        queue_type_from_env({"AMQP_QUEUE_TYPE": "stream"})
    with pytest.raises(ValueError, match=">= 2"):
        Topology(QueueType.QUORUM, 1)


@pytest.mark.parametrize(
    ("count", "limit", "refresh"),
    [
        (None, 20, False),
        (0, 20, False),
        (9, 20, False),
        (10, 20, True),
        (25, 20, True),
        (1, 2, True),
        (1, 3, True),
        (True, 2, False),
        ("10", 20, False),
    ],
)
def test_the_worker_acts_at_half_the_delivery_limit(
    count: object, limit: int, refresh: bool
) -> None:
    assert near_delivery_limit(count, limit) is refresh


def test_rabbitmq_accepts_every_quorum_declaration(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    requests, polls = queues("requests"), queues("polls")
    results_xq = queues("results") + ".XQ"
    declared = QUORUM.service_queues([requests, polls], results_xq)
    reply = queues("reply")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for name, arguments in declared.items():
            channel.queue_declare(name, durable=True, arguments=arguments)
        channel.queue_declare(reply, durable=True, arguments=QUORUM.reply_queue_arguments())
        # The classic form of the same queue is refused: the types cannot be mixed.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(
                requests, durable=True, arguments=Topology().work_queue_arguments(requests)
            )
        assert refused.value.reply_code == 406
        channel = connection.channel()
        channel.queue_delete(results_xq)
    finally:
        connection.close()
    types = {name: kind for name, kind in queue_types().items() if name in {*declared, reply}}
    assert results_xq not in types  # deleted above (the queues fixture does not know it)
    assert types == {name: "quorum" for name in (*declared, reply) if name != results_xq}
