"""Graceful shutdown: SIGTERM finishes the running step, and what the worker held in memory
goes back to RabbitMQ at once for another worker to resume.

Each test has its own queues (``fresh_stack``); SIGTERM goes to the main process only, as
Docker and Kubernetes send it.
"""

from __future__ import annotations

import inspect
import time
import uuid

import pika

from producers import wire
from producers.amqp import ConfirmedPublisher, broker_parameters, parse_amqp_urls
from producers.consumer import ResultConsumer
from producers.contract import Status
from producers.wire import DEFAULT_AMQP_URL
from simulator.testing import RunningSimulator, wait_until
from tests.e2e.conftest import WORKER_ENV, Stack, wait_for_job
from worker.ledger import Ledger, State
from worker.settings import LEDGER_WRITE_BOUND_S, PUBLISH_BOUND_S, Settings
from worker.store import RedisStore


def timeouts(**overrides: float) -> Settings:
    """Settings with the five Segmind timeouts at their defaults, but ``overrides``."""
    values = {
        "segmind_pool_timeout_s": 5.0,
        "segmind_connect_timeout_s": 5.0,
        "segmind_write_timeout_s": 10.0,
        "segmind_read_timeout_s": 30.0,
        "segmind_total_timeout_s": 60.0,
    }
    return Settings.model_validate(values | overrides)


def test_the_longest_step_is_the_call_the_ledger_and_the_publish() -> None:
    """Segmind's call (5 + 5 + 10 + 30 + 60 s), a stalled ledger write (20 s) and a
    publish that reconnects (15 s)."""
    assert timeouts().longest_step_s == 145.0
    assert timeouts(segmind_read_timeout_s=10, segmind_total_timeout_s=20).longest_step_s == 85
    # It outlasts the POST's own lease: a POST under way at SIGTERM is always recorded.
    assert timeouts().longest_step_s > timeouts().submit_lease_s


def test_the_step_bounds_match_the_clients_timeouts() -> None:
    """The ledger's and the publishers' timeouts, as the clients are really made."""
    store = RedisStore.from_url("redis://127.0.0.1:6379/0")
    try:
        options = store.client.connection_pool.connection_kwargs
    finally:
        store.close()
    assert options["retry_on_timeout"] is True  # a timed-out command is sent twice
    per_try_s = options["socket_connect_timeout"] + options["socket_timeout"]
    assert per_try_s * 2 == LEDGER_WRITE_BOUND_S
    # The poll goes through Dramatiq's broker (pika's defaults), the result through
    # ConfirmedPublisher (its connect timeout is pika's stack timeout).
    [broker] = broker_parameters(DEFAULT_AMQP_URL)
    assert pika.ConnectionParameters(**broker).stack_timeout <= PUBLISH_BOUND_S
    default = inspect.signature(ConfirmedPublisher).parameters["connect_timeout_s"].default
    [params], _, _ = parse_amqp_urls(DEFAULT_AMQP_URL, connect_timeout_s=default)
    assert params.stack_timeout <= PUBLISH_BOUND_S


def worker_settings(**env: str) -> Settings:
    """The settings of a worker started with ``env`` on top of ``WORKER_ENV``."""
    return Settings.model_validate(
        {name.lower(): value for name, value in (WORKER_ENV | env).items()}
    )


def ledger_states(stack: Stack, *request_ids: str) -> list[State | None]:
    """Each request's state in the stack's ledger (``None``: no record)."""
    store = RedisStore.from_url(stack.redis_url)
    try:
        ledger = Ledger(store, prefix=stack.name, ttl_s=3600)
        records = [ledger.get(request_id) for request_id in request_ids]
    finally:
        store.close()
    return [None if record is None else record.state for record in records]


def test_sigterm_during_a_post_finishes_it_and_another_worker_completes_the_job(
    fresh_stack: Stack, sim: RunningSimulator
) -> None:
    """The POST in progress is answered, recorded and its first poll sent before the
    worker exits 0; the next worker polls the job to its end: one POST, COMPLETED."""
    request_id = f"term-post-{uuid.uuid4().hex}"
    sim.add_faults({"endpoint": "submit", "hold_s": 2, "count": 1})
    # Segmind's answer is held 2 s: the read timeouts must outlast it (WORKER_ENV's: 2 s).
    slow = {"SEGMIND_READ_TIMEOUT_S": "10", "SEGMIND_TOTAL_TIMEOUT_S": "10"}
    first = fresh_stack.start_worker(SEGMIND_READ_TIMEOUT_S="10", SEGMIND_TOTAL_TIMEOUT_S="10")
    timeout_s = worker_settings(**slow).longest_step_s
    with ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r") as replies:
        fresh_stack.publish_one(request_id, replies.queue)
        wait_for_job(sim, request_id)
        started = time.monotonic()
        assert first.terminate(timeout_s=timeout_s + 10) == 0
        took_s = time.monotonic() - started
        # Recorded and the first poll sent, before the exit: nothing is left to chance.
        assert ledger_states(fresh_stack, request_id) == [State.SUBMITTED]
        # The poll waits in RabbitMQ: still delayed, or already moved to its queue when due.
        polls = fresh_stack.polls_queue
        waiting = [fresh_stack.queue_counts(q)[0] for q in (polls, wire.delay_queue(polls))]
        assert sum(waiting) == 1
        assert "submit.accepted" in {event.get("event") for event in first.events()}
        fresh_stack.start_worker()
        result = replies.wait([request_id], timeout_s=60)[request_id]
        replies.delete_queue(if_empty=False)
    assert result.status is Status.COMPLETED
    assert result.outputs
    stats = sim.stats()
    assert stats["submits_by_client_request_id"] == {request_id: 1}
    assert stats["jobs_by_client_request_id"] == {request_id: 1}
    assert took_s < timeout_s


def test_sigterm_returns_delayed_polls_at_once_and_another_worker_ends_them_all(
    fresh_stack: Stack, sim: RunningSimulator
) -> None:
    """Jobs waiting as delayed poll messages in the worker's memory go back to RabbitMQ when
    it exits (seconds, not at their due time); the next worker ends every one of them, with
    exactly one result each and one POST each."""
    count = 20
    # The first polls are due this long after their POSTs: every job is submitted and held
    # in a fraction of a second and the worker exits about 2 s after SIGTERM, well before.
    interval_s = 10.0
    # The simulator runs 500 times fast: keep its jobs past the first poll (1 h is 7.2 s).
    sim.reset(retention_s=50 * 3600)
    first = fresh_stack.start_worker(
        SEGMIND_ADAPTIVE_POLLING="false", SEGMIND_MIN_POLL_INTERVAL_S=str(interval_s)
    )
    delay_queue = wire.delay_queue(fresh_stack.polls_queue)
    with ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r") as replies:
        with fresh_stack.publisher() as publisher:
            ids = [
                publisher.publish(
                    {
                        "request_id": f"term-delayed-{n}-{uuid.uuid4().hex}",
                        "workflow": "sketch-maker",
                        "reply_to": replies.queue,
                    }
                )
                for n in range(count)
            ]
        submitted_at = time.monotonic()

        def all_held_in_memory() -> bool:
            submits = sim.stats()["submits_by_client_request_id"]
            return (
                len(submits) == count
                and fresh_stack.queue_counts(fresh_stack.requests_queue)[0] == 0
                and fresh_stack.queue_counts(delay_queue)[0] == 0
                and ledger_states(fresh_stack, *ids) == [State.SUBMITTED] * count
            )

        wait_until(
            all_held_in_memory,
            # What is left of the interval after this, for SIGTERM and the checks below.
            timeout_s=interval_s - 6,
            interval_s=0.1,
            message="every job submitted, its first poll held by the worker",
        )
        assert first.terminate(timeout_s=30) == 0
        # Back in RabbitMQ well before any of them is due.
        assert fresh_stack.queue_counts(delay_queue)[0] == count
        assert time.monotonic() - submitted_at < interval_s
        assert sim.stats()["polls"] == 0
        second = fresh_stack.start_worker()
        results = replies.wait(ids, timeout_s=60 + interval_s)
        # Once the second worker has stopped, no result can still come: none is left over.
        assert second.terminate(timeout_s=60) == 0
        assert fresh_stack.queue_counts(replies.queue)[0] == 0
        assert replies.duplicates == 0
        replies.delete_queue(if_empty=False)
    assert {r.status for r in results.values()} == {Status.COMPLETED}
    submits = sim.stats()["submits_by_client_request_id"]
    assert submits == dict.fromkeys(ids, 1)
