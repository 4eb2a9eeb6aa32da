"""Redis restarted in the middle of a run: with its data (an append-only file) and without.

Each test uses a Redis server of its own (``private_redis_aof``, ``private_redis_volatile``)
and the shared RabbitMQ, in a namespace of its own.

What they establish (docs/reliability.md):

- Redis restarting with its data (``appendonly yes``, a clean shutdown) changes nothing:
  the workers' Redis calls fail while it is down, the messages are retried, and every
  request ends with one result, none paid twice.
- Redis losing its data breaks the ledger's guarantees for the requests in flight at that
  moment, and only for them: a poll message whose record is gone is dead-lettered
  (``MissingRecordError``, no result is published), and a request redelivered with no
  record is POSTed again: paid twice. With the data kept the same redelivery ends FAILED
  ``submit_outcome_unknown`` and is not POSTed again.
"""

from __future__ import annotations

import json
import uuid

import pika
import pytest

from producers import wire
from producers.consumer import ResultConsumer
from producers.contract import ErrorCode, Status
from simulator.testing import RunningSimulator
from tests.chaos.conftest import ChaosSize, StackFactory
from tests.chaos.harness import (
    Progress,
    check_guarantees,
    check_hostile,
    drain,
    prepare_simulator,
    run_chaos,
    wait_for,
)
from tests.e2e.conftest import Stack, wait_for_job
from tests.services import PrivateRedis

WORKERS = 2


def test_redis_restart_with_its_data_mid_run(
    chaos_stack: StackFactory,
    amqp_url: str,
    private_redis_aof: PrivateRedis,
    sim: RunningSimulator,
    chaos_size: ChaosSize,
) -> None:
    """Redis (append-only file) restarted once 30 % of the results are in: nothing lost,
    nothing paid twice."""
    stack = chaos_stack(amqp_url, private_redis_aof.url)
    prepare_simulator(sim)
    for _ in range(WORKERS):
        stack.start_worker(threads=4)
    restarts: list[int] = []

    def harm(progress: Progress) -> None:
        if progress.wait_fraction(0.3, timeout_s=600):
            private_redis_aof.restart()
            restarts.append(private_redis_aof.starts)

    jobs = chaos_size.jobs
    figures, received, stats = run_chaos(
        "redis restart (appendonly yes)",
        stack,
        sim,
        jobs=jobs,
        harm=harm,
        timeout_s=180 + jobs * 0.5,
    )
    assert restarts, "Redis was not restarted"
    check_guarantees(figures, stats)
    check_hostile(received)
    assert figures.max_posts_per_request <= 1


def _dead_letters(amqp_url: str, queue: str) -> list[dict[str, object]]:
    """The Dramatiq messages on ``queue``'s dead-letter queue (taken off it)."""
    letters: list[dict[str, object]] = []
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        while True:
            method, _properties, body = channel.basic_get(
                wire.dead_letter_queue(queue), auto_ack=True
            )
            if method is None:
                return letters
            letters.append(json.loads(body))
    finally:
        connection.close()


def test_redis_losing_its_data_dead_letters_the_polls_in_flight(
    chaos_stack: StackFactory,
    amqp_url: str,
    private_redis_volatile: PrivateRedis,
    sim: RunningSimulator,
) -> None:
    """Jobs being polled when Redis restarts empty: every poll message finds no record
    and is dead-lettered; no result is published for them (the jobs were paid once)."""
    stack = chaos_stack(amqp_url, private_redis_volatile.url)
    count = 4
    # The jobs never end, so they are all being polled when Redis loses its data.
    sim.add_faults({"job": "never_finish"})
    stack.start_worker(threads=4)
    with ResultConsumer.private(amqp_url, prefix=f"{stack.name}.r") as replies:
        with stack.publisher() as publisher:
            ids = [
                publisher.publish(
                    {
                        "request_id": f"lost-data-{uuid.uuid4().hex}",
                        "workflow": "sketch-maker",
                        "reply_to": replies.queue,
                    }
                )
                for _ in range(count)
            ]
        wait_for(lambda: len(sim.stats()["polls_by_job"]) == count, "every job to be polled")
        private_redis_volatile.restart()
        letters: list[dict[str, object]] = []

        def all_dead_lettered() -> bool:
            letters.extend(_dead_letters(amqp_url, stack.polls_queue))
            return len(letters) >= count

        wait_for(all_dead_lettered, "the poll messages to be dead-lettered")
        # Nothing is left to answer these requests: the reply queue stays empty.
        leftover = drain(amqp_url, replies.queue)
        replies.delete_queue(if_empty=False)
    assert sorted(letter["args"][0] for letter in letters) == sorted(ids)  # type: ignore[index]
    assert {letter["actor_name"] for letter in letters} == {wire.POLL_ACTOR}
    assert leftover == []
    stats = sim.stats()
    assert all(stats["jobs_by_client_request_id"][i] == 1 for i in ids)


@pytest.mark.parametrize("keeps_data", [True, False], ids=["appendonly", "no-persistence"])
def test_request_redelivered_after_redis_restart(
    chaos_stack: StackFactory,
    amqp_url: str,
    private_redis_aof: PrivateRedis,
    private_redis_volatile: PrivateRedis,
    sim: RunningSimulator,
    keeps_data: bool,
) -> None:
    """A worker dies after its POST created the job and before it recorded the answer,
    and Redis restarts before the request is redelivered. With its data the record says
    SUBMITTING: FAILED ``submit_outcome_unknown``, POSTed once. Without it the
    redelivered request looks new and is POSTed again: the job is paid twice."""
    server = private_redis_aof if keeps_data else private_redis_volatile
    stack: Stack = chaos_stack(amqp_url, server.url)
    request_id = f"redis-redelivery-{uuid.uuid4().hex}"
    sim.add_faults({"endpoint": "submit", "hold_s": 60, "count": 1})
    first = stack.start_worker()
    with ResultConsumer.private(amqp_url, prefix=f"{stack.name}.r") as replies:
        stack.publish_one(request_id, replies.queue)
        wait_for_job(sim, request_id)
        first.kill()
        server.restart()
        stack.start_worker()
        result = replies.wait([request_id], timeout_s=90)[request_id]
        replies.delete_queue(if_empty=False)
    stats = sim.stats()
    if keeps_data:
        assert result.status is Status.FAILED
        assert result.error is not None
        assert result.error.code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
        assert stats["submits_by_client_request_id"][request_id] == 1
        assert stats["jobs_by_client_request_id"][request_id] == 1
    else:
        # The guarantee is gone with the data: a second POST, a second charge.
        assert result.status is Status.COMPLETED
        assert stats["submits_by_client_request_id"][request_id] == 2
        assert stats["jobs_by_client_request_id"][request_id] == 2


def test_redis_down_when_segmind_answers_a_post(
    chaos_stack: StackFactory,
    amqp_url: str,
    private_redis_aof: PrivateRedis,
    sim: RunningSimulator,
) -> None:
    """Redis is down at the moment Segmind's answer to a POST arrives: the worker retries
    recording the answer (it exists nowhere else) until Redis is back, and follows the
    job to COMPLETED, POSTed and paid once, instead of leaving it SUBMITTING, which a
    redelivery could only end FAILED ``submit_outcome_unknown``."""
    stack = chaos_stack(amqp_url, private_redis_aof.url)
    prepare_simulator(sim)
    request_id = f"redis-blip-{uuid.uuid4().hex}"
    # The job is created at once and the answer held a second: Redis is stopped meanwhile.
    sim.add_faults({"endpoint": "submit", "hold_s": 1.0, "count": 1})
    worker = stack.start_worker()
    with ResultConsumer.private(amqp_url, prefix=f"{stack.name}.r") as replies:
        stack.publish_one(request_id, replies.queue)
        wait_for_job(sim, request_id)
        private_redis_aof.stop()
        wait_for(
            lambda: any(e.get("event") == "submit.record_retry" for e in worker.events()),
            "the worker to retry recording Segmind's answer",
        )
        private_redis_aof.start()
        result = replies.wait([request_id], timeout_s=60)[request_id]
        replies.delete_queue(if_empty=False)
    assert result.status is Status.COMPLETED
    stats = sim.stats()
    assert stats["submits_by_client_request_id"][request_id] == 1
    assert stats["jobs_by_client_request_id"][request_id] == 1
