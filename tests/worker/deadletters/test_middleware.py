"""The reasons of dead letters: what is stored (pure), and the middleware in a real Dramatiq
worker on the real RabbitMQ, writing to the real Redis (or failing to, harmlessly)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import default_middleware

from producers import wire
from simulator.testing import wait_until
from tests.conftest import free_port
from worker.deadletters.middleware import DeadLetterReasons
from worker.deadletters.queues import read_dead_letters, with_recorded_reasons
from worker.deadletters.rules import (
    DEAD_LETTER_TTL_S,
    MAX_REASON_CHARS,
    dead_letter_key,
    reason_fields,
)
from worker.store import RedisStore

SECRET = "s3cret-api-key-value"


def test_the_reason_names_the_exception_scrubbed() -> None:
    fields = reason_fields(
        RuntimeError(f"Redis at redis://:{SECRET}@host\nrefused"),
        actor="submit_workflow",
        queue="app.requests",
        retries=20,
        at=1.5,
        secrets=[SECRET],
    )
    assert fields == {
        "reason": "RuntimeError: Redis at redis://:[redacted]@host refused (after 20 retries)",
        "exception": "RuntimeError",
        "message": "Redis at redis://:[redacted]@host refused",
        "actor": "submit_workflow",
        "queue": "app.requests",
        "retries": "20",
        "at": "1.5",
    }


def test_a_reason_is_never_empty_and_never_huge() -> None:
    bare = reason_fields(KeyError(), actor="a", queue="q", retries=0, at=0.0)
    assert bare["reason"] == "KeyError"
    none = reason_fields(None, actor="a", queue="q", retries=3, at=0.0)
    assert none["reason"] == "failed after 3 retries (no exception recorded)"
    long = reason_fields(ValueError("x" * 5000), actor="a", queue="q", retries=0, at=0.0)
    assert len(long["message"]) == MAX_REASON_CHARS


@pytest.fixture
def prefix(redis_url: str, namespace: str) -> Iterator[str]:
    name = f"{namespace}-dl-{secrets.token_hex(3)}"
    yield name
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(f"{name}:*"))
        if keys:
            client.delete(*keys)


def _run_failing_actor(
    amqp_url: str, queue: str, reasons: DeadLetterReasons
) -> tuple[str, list[str]]:
    """Run a worker whose actor fails for good once; the message's id and the XQ's ids."""
    broker = RabbitmqBroker(
        url=amqp_url,
        confirm_delivery=True,
        middleware=[m() for m in default_middleware],
    )
    broker.add_middleware(reasons)

    def explode(request_id: str, step: int) -> None:
        raise ValueError(f"the key {SECRET} was refused")

    # A well-formed poll message, so that the reason comes from the record, not the body.
    actor = dramatiq.actor(
        actor_name=wire.POLL_ACTOR, queue_name=queue, broker=broker, throws=(ValueError,)
    )(explode)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        message = actor.send("r-1", 1)
        xq = wire.dead_letter_queue(queue)
        letters = wait_until(
            lambda: read_dead_letters(amqp_url, xq),
            timeout_s=30,
            interval_s=0.1,
            message="the message to be dead-lettered",
        )
        return message.message_id, [letter.id for letter in letters]
    finally:
        worker.stop()
        broker.close()


def test_a_dead_lettered_message_has_its_reason_in_redis(
    amqp_url: str, redis_url: str, queues: Callable[[str], str], prefix: str
) -> None:
    store = RedisStore.from_url(redis_url)
    try:
        reasons = DeadLetterReasons(store, prefix, secrets=[SECRET])
        queue = queues("explode")
        message_id, in_xq = _run_failing_actor(amqp_url, queue, reasons)
        assert in_xq == [message_id]
        key = dead_letter_key(prefix, message_id)
        stored = store.get(key)
        assert stored is not None
        assert stored["reason"] == "ValueError: the key [redacted] was refused"
        assert stored["queue"] == queue
        assert SECRET not in repr(stored)
        assert DEAD_LETTER_TTL_S - 60 < store.client.ttl(key) <= DEAD_LETTER_TTL_S
        # What `dlq list` shows for it.
        letters = read_dead_letters(amqp_url, wire.dead_letter_queue(queue))
        [letter], problem = with_recorded_reasons(letters, store, prefix)
        assert problem is None
        assert letter.reason == stored["reason"]
    finally:
        store.close()


def test_a_message_is_dead_lettered_even_when_redis_is_unreachable(
    amqp_url: str, queues: Callable[[str], str], prefix: str
) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        reasons = DeadLetterReasons(store, prefix, secrets=[SECRET])
        message_id, in_xq = _run_failing_actor(amqp_url, queues("explode"), reasons)
        assert in_xq == [message_id]
    finally:
        store.close()
