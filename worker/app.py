"""Assembling a worker: broker, actors, Segmind client, ledger and result publisher.

Two assemblies share every actor and rule:

- ``create_app(settings)``: the service. Dramatiq's RabbitMQ broker with publisher confirms
  and queue priorities, the ledger in Redis, results published with confirms.
- ``create_app(settings, local=True)``: the single-process local mode (``segmind-queue
  demo`` when RabbitMQ or Redis does not answer, and unit tests). Dramatiq's in-memory
  broker, the in-memory ledger and result queues held in memory (``MemoryAmqp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import httpx
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, default_middleware

from producers import wire
from producers.amqp import ConfirmedPublisher, broker_parameters
from producers.catalog import Catalog, load_catalog
from worker.actors import Actors, declare_actors, poll_scheduler
from worker.broker import ScreeningBroker
from worker.budget import BudgetGuard
from worker.deadletters.middleware import DeadLetterReasons
from worker.history import DurationHistory
from worker.ledger import Ledger
from worker.logs import LogContext, secrets_of
from worker.metrics import Metrics
from worker.monitor import Monitor, MonitorMiddleware, QueueDepth
from worker.outputs.fetch import OutputFetcher
from worker.outputs.keep import OutputKeeper
from worker.outputs.policy import parse_fetch_hosts
from worker.outputs.store import open_output_store
from worker.pipeline import Pipeline
from worker.ratelimit.admission import (
    Admission,
    MemoryAdmission,
    OpenAdmission,
    RedisAdmission,
)
from worker.ratelimit.bucket import Limits
from worker.ratelimit.limiter import (
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    Unlimited,
    bucket_key,
)
from worker.replicas import ReplicaCheck
from worker.results.publish import AmqpPublish, MemoryAmqp, ResultPublisher
from worker.segmind.client import SegmindClient
from worker.settings import Settings
from worker.spend import DailySpend
from worker.store import MemoryStore, RedisStore, Store
from worker.tenants import TenantsFile


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
    metrics: Metrics
    monitor: Monitor
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
    """Dramatiq's default middleware plus ``CurrentMessage`` (the actors read it) and
    ``LogContext`` (every line logged while a message runs names its job). ``LogContext``
    comes first: Dramatiq runs the ``after_*`` hooks in reverse order, so the job's fields
    stay bound while the others (``Retries`` logs its retries there) run."""
    return [LogContext(), *(m() for m in default_middleware), CurrentMessage()]


def create_app(
    settings: Settings,
    *,
    local: bool = False,
    client: SegmindClient | None = None,
    catalog: Catalog | None = None,
    metrics: Metrics | None = None,
    middleware: Sequence[dramatiq.Middleware] = (),
) -> App:
    """Build a worker's parts and declare its actors.

    Args:
        settings: the settings.
        local: the in-process local mode instead of RabbitMQ and Redis.
        client: the Segmind client (default: one from ``settings``, which needs a key).
            Its calls are counted in ``metrics`` unless it already has a response hook.
        catalog: the workflows (default: the seeds plus ``SEGMIND_WORKFLOWS_FILE``).
        metrics: the metrics (default: new instruments on a registry of their own).
        middleware: more broker middleware (``worker.main`` adds Dramatiq's Prometheus
            middleware, which works only under Dramatiq's command line).

    Raises:
        worker.settings.SettingsError: no usable API key (when ``client`` is not given).
        ValueError: ``AMQP_URL`` or ``REDIS_URL`` is unusable (an AMQP URL is named by its
            position, never its text).
        producers.catalog.CatalogError: ``SEGMIND_WORKFLOWS_FILE`` is unusable.
        worker.tenants.TenantsFileError: ``TENANTS_FILE`` is unreadable or invalid.
        worker.metrics.MetricsImportError: prometheus_client was imported before
            ``PROMETHEUS_MULTIPROC_DIR`` was set.
    """
    workflows = catalog or load_catalog()
    metrics = metrics or Metrics(
        (workflow.name for workflow in workflows), tenant_labels_max=settings.tenant_labels_max
    )
    tenants = TenantsFile(settings.tenants_file)
    segmind = client or SegmindClient.from_settings(settings)
    if segmind.on_response is None:
        segmind.on_response = metrics.http_response
    broker: dramatiq.Broker
    store: Store
    amqp: AmqpPublish
    queue_depth: QueueDepth
    limiter: RateLimiter
    admission: Admission
    limits = Limits.for_ceiling(
        settings.segmind_rate_limit_per_minute, settings.segmind_rate_limit_window_s
    )
    closers: list[Any] = []
    if local:
        stub = StubBroker(middleware=broker_middleware())
        broker, store, amqp = stub, MemoryStore(), MemoryAmqp()
        queue_depth = _stub_depth(stub)
        limiter = MemoryRateLimiter(limits)
        admission = MemoryAdmission()
    else:
        publisher = ConfirmedPublisher(settings.amqp_url)
        broker = ScreeningBroker(
            dead_letters=publisher,
            # Parsed here, not by Dramatiq: amqps:// must verify the server (producers.amqp).
            parameters=broker_parameters(settings.amqp_url),
            confirm_delivery=True,
            topology=settings.topology,
            middleware=broker_middleware(),
        )
        redis_store = RedisStore.from_url(
            settings.redis_url.get_secret_value(),
            sentinel_password=settings.redis_sentinel_secret(),
        )
        store, amqp = redis_store, publisher
        queue_depth = publisher.message_count
        key = bucket_key(settings.redis_key_prefix, segmind.key_digest)
        limiter = RedisRateLimiter(redis_store.client, key, limits)
        admission = RedisAdmission(redis_store.client, settings.redis_key_prefix)
        closers += [publisher.close, redis_store.close]
    if not settings.segmind_rate_limiter_enabled:
        limiter = Unlimited()
    if not settings.segmind_rate_limiter_enabled or not settings.fair_admission:
        admission = OpenAdmission()
    closers += [segmind.close, broker.close]
    # The local mode's memory has no replicas to wait for.
    min_replicas = 0 if local else settings.ledger_min_replicas
    ledger = Ledger(
        store,
        prefix=settings.redis_key_prefix,
        ttl_s=settings.ledger_ttl_s,
        min_replicas=min_replicas,
        replica_timeout_s=settings.ledger_replica_timeout_s,
    )
    spend = DailySpend(store, settings.redis_key_prefix)
    budget = BudgetGuard(
        floor_usd=settings.segmind_credit_floor_usd,
        cap_usd=settings.segmind_daily_spend_cap_usd,
        tenants=tenants,
    )
    monitor = Monitor(
        settings=settings,
        ledger=ledger,
        client=segmind,
        metrics=metrics,
        spend=spend,
        expected_durations={
            workflow.name: workflow.expected_duration_s
            for workflow in workflows
            if workflow.expected_duration_s is not None
        },
        queue_depth=queue_depth,
        limiter=limiter,
        budget=budget,
        admission=admission,
        tenants=tenants,
    )
    broker.add_middleware(MonitorMiddleware(monitor, settings.metrics_refresh_s))
    # Why Dramatiq dead-lettered a message, for `segmind-queue dlq list`.
    broker.add_middleware(
        DeadLetterReasons(store, settings.redis_key_prefix, secrets=secrets_of(settings))
    )
    for extra in middleware:
        broker.add_middleware(extra)
    pipeline = Pipeline(
        settings=settings,
        catalog=workflows,
        client=segmind,
        ledger=ledger,
        results=ResultPublisher(
            amqp,
            dead_letter_queue=wire.dead_letter_queue(settings.requests_queue),
            results_dead_letter_queue=settings.results_dead_letter_queue,
            topology=settings.topology,
        ),
        metrics=metrics,
        schedule_poll=poll_scheduler(broker, settings.polls_queue),
        spend=spend,
        limiter=limiter,
        history=(
            DurationHistory(store, settings.redis_key_prefix)
            if settings.segmind_adaptive_polling
            else None
        ),
        budget=budget,
        keeper=_keeper(settings, closers),
        admission=admission,
        tenants=tenants,
        replicas=(
            ReplicaCheck(
                ledger.replicas_online, min_replicas, on_reading=metrics.set_ledger_replicas
            )
            if min_replicas
            else None
        ),
    )
    actors = declare_actors(
        broker,
        pipeline,
        requests_queue=settings.requests_queue,
        polls_queue=settings.polls_queue,
        cancels_queue=settings.cancels_queue,
    )
    return App(
        settings=settings,
        broker=broker,
        actors=actors,
        pipeline=pipeline,
        store=store,
        amqp=amqp,
        client=segmind,
        metrics=metrics,
        monitor=monitor,
        closers=closers,
    )


def _keeper(settings: Settings, closers: list[Any]) -> OutputKeeper | None:
    """What copies outputs to ``OUTPUT_STORE`` (``None`` when it is unset)."""
    if settings.output_store is None:
        return None
    fetcher = OutputFetcher(
        parse_fetch_hosts(settings.output_fetch_hosts),
        allow_private=settings.output_allow_private,
        max_bytes=settings.output_max_bytes,
        timeout=httpx.Timeout(
            connect=settings.output_connect_timeout_s,
            read=settings.output_read_timeout_s,
            write=settings.output_read_timeout_s,
            pool=settings.output_connect_timeout_s,
        ),
    )
    closers.append(fetcher.close)
    return OutputKeeper(fetcher, open_output_store(settings.output_store))


def _stub_depth(broker: StubBroker) -> QueueDepth:
    """Queue depths in the local mode: the in-memory broker's queues."""

    def depth(queue: str) -> int | None:
        source = wire.dead_letter_source(queue)
        if source is not None:
            letters = broker.dead_letters_by_queue.get(source)
            return None if letters is None else len(letters)
        found = broker.queues.get(queue)
        return None if found is None else found.qsize()

    return depth
