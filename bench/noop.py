"""A no-op Dramatiq actor: the broker's own message rate, the throughput scenario's baseline.

``dramatiq bench.noop --processes P --threads T`` runs it with ``BENCH_NOOP_QUEUE`` naming
its queue (and ``AMQP_URL`` RabbitMQ). Its broker is configured like the worker's (publisher
confirms, queues with ``x-max-priority``), with Dramatiq's default middleware only.
The benchmark publishes the messages itself (``envelope``), so importing this module without
``BENCH_NOOP_QUEUE`` declares nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Final

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from producers import wire
from producers.wire import DEFAULT_AMQP_URL

QUEUE_ENV: Final = "BENCH_NOOP_QUEUE"
ACTOR_NAME: Final = "bench_noop"


def noop() -> None:
    """Do nothing."""


def envelope(queue: str) -> dict[str, Any]:
    """The Dramatiq message that calls the no-op actor on ``queue``."""
    return {
        "queue_name": queue,
        "actor_name": ACTOR_NAME,
        "args": [],
        "kwargs": {},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": time.time_ns() // 1_000_000,
    }


if QUEUE_ENV in os.environ:
    broker = RabbitmqBroker(
        url=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL),
        confirm_delivery=True,
        max_priority=wire.MAX_PRIORITY,
    )
    dramatiq.set_broker(broker)
    dramatiq.actor(actor_name=ACTOR_NAME, queue_name=os.environ[QUEUE_ENV], broker=broker)(noop)
