"""Assembling a worker: broker, actors, Segmind client, ledger and result publisher.

Two assemblies share every actor and rule:

- ``create_app(settings)``: the service. Dramatiq's RabbitMQ broker with publisher confirms
  and queue priorities, the ledger in Redis, results published with confirms.
- ``create_app(settings, local=True)``: the single-process local mode (``segmind-queue
  demo`` when RabbitMQ or Redis does not answer, and unit tests). Dramatiq's in-memory
  broker, the in-memory ledger and result queues held in memory (``MemoryAmqp``).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, default_middleware

from producers import wire
from producers.amqp import ConfirmedPublisher
from producers.catalog import Catalog, load_catalog
from worker.actors import Actors, declare_actors
from worker.client import SegmindClient
from worker.ledger import Ledger, MemoryStore, RedisStore, Store
from worker.pipeline import Pipeline
from worker.results import AmqpPublish, MemoryAmqp, ResultPublisher
from worker.settings import Settings


@dataclass
class App:
    """A worker's parts. ``close()`` releases their connections."""

    settings: Settings
    broker: dramatiq.Broker
    actors: Actors
    pipeline: Pipeline
    store: Store
    amqp: AmqpPublish
    client: SegmindClient
    closers: list[Any] = field(default_factory=list)

    @property
    def ledger(self) -> Ledger:
        """The submit ledger."""
        return self.pipeline.ledger

    def close(self) -> None:
        """Close the client, the publisher, the ledger's connections and the broker."""
        for close in self.closers:
            with suppress(Exception):  # closing is best effort: the process is ending
                close()


def broker_middleware() -> list[dramatiq.Middleware]:
    """Dramatiq's default middleware plus ``CurrentMessage`` (the actors read it)."""
    return [*(m() for m in default_middleware), CurrentMessage()]


def create_app(
    settings: Settings,
    *,
    local: bool = False,
    client: SegmindClient | None = None,
    catalog: Catalog | None = None,
) -> App:
    """Build a worker's parts and declare its actors.

    Args:
        settings: the settings.
        local: the in-process local mode instead of RabbitMQ and Redis.
        client: the Segmind client (default: one from ``settings``, which needs a key).
        catalog: the workflows (default: the seeds plus ``SEGMIND_WORKFLOWS_FILE``).

    Raises:
        worker.settings.SettingsError: no usable API key (when ``client`` is not given).
        producers.catalog.CatalogError: ``SEGMIND_WORKFLOWS_FILE`` is unusable.
    """
    segmind = client or SegmindClient.from_settings(settings)
    broker: dramatiq.Broker
    store: Store
    amqp: AmqpPublish
    closers: list[Any] = []
    if local:
        broker = StubBroker(middleware=broker_middleware())
        store = MemoryStore()
        amqp = MemoryAmqp()
    else:
        broker = RabbitmqBroker(
            url=settings.amqp_url.get_secret_value(),
            confirm_delivery=True,
            max_priority=wire.MAX_PRIORITY,
            middleware=broker_middleware(),
        )
        redis_store = RedisStore.from_url(settings.redis_url.get_secret_value())
        publisher = ConfirmedPublisher(settings.amqp_url)
        store, amqp = redis_store, publisher
        closers += [publisher.close, redis_store.close]
    closers += [segmind.close, broker.close]
    pipeline = Pipeline(
        settings=settings,
        catalog=catalog or load_catalog(),
        client=segmind,
        ledger=Ledger(store, prefix=settings.redis_key_prefix, ttl_s=settings.ledger_ttl_s),
        results=ResultPublisher(
            amqp, dead_letter_queue=wire.dead_letter_queue(settings.requests_queue)
        ),
    )
    actors = declare_actors(
        broker,
        pipeline,
        requests_queue=settings.requests_queue,
        polls_queue=settings.polls_queue,
    )
    return App(
        settings=settings,
        broker=broker,
        actors=actors,
        pipeline=pipeline,
        store=store,
        amqp=amqp,
        client=segmind,
        closers=closers,
    )
