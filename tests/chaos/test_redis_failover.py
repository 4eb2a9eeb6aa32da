"""The ledger on a replicated Redis with Sentinel: the replica down, the primary killed.

Each test uses ``redis_sentinel`` (``tests.services``: a primary, one replica and three
Sentinels of the suite's own), given to the workers as ``REDIS_URL=redis+sentinel://...``,
and the shared RabbitMQ. What they establish (docs/reliability.md):

- The engine itself (with ``--chaos-engines``): killing the primary makes the Sentinels
  promote the replica, which has the data; the old primary, started again empty, is made
  a replica of the new one and syncs.
- With ``LEDGER_MIN_REPLICAS=1`` and the only replica down, no request is POSTed: each
  waits, as a delayed message, until a replica acknowledges its ``SUBMITTING`` record;
  when the replica returns, the request completes, POSTed once.
- The primary killed (SIGKILL) mid-run with ``LEDGER_MIN_REPLICAS=1``: Sentinel promotes the
  replica, the workers follow it without a restart, and every request ends with one
  result, none POSTed twice.
- The measurement behind ``--chaos-unreplicated``: the replica lagging (its link to the
  primary cut) when the primary is killed, with ``LEDGER_MIN_REPLICAS=0`` and then ``1``; the
  writes the replica never received are lost with the primary, and what that costs is
  counted (the figure that justifies the setting).
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import httpx
import pytest

from producers import wire
from producers.consumer import ResultConsumer
from producers.contract import Status
from simulator.testing import RunningSimulator, wait_until
from tests.chaos.conftest import ChaosSize, StackFactory
from tests.chaos.harness import (
    Progress,
    RunFigures,
    check_guarantees,
    check_hostile,
    prepare_simulator,
    run_chaos,
    wait_for,
)
from tests.e2e.conftest import Stack
from tests.services import PrivateRedisSentinel
from worker.deadletters.queues import read_dead_letters

WORKERS = 2
#: A WAIT for the replica gives up after this (the default is 1 s: shorter here, so that a
#: run held for the replica moves on quickly once it is back).
REPLICA_TIMEOUT_S = "0.5"


#: Generous deadlines: the machine may be busy with other tests.
FAILOVER_TIMEOUT_S = 30.0


def test_sentinel_promotes_the_replica_and_the_old_primary_returns_as_replica(
    chaos_engines: None, redis_sentinel: PrivateRedisSentinel
) -> None:
    """SIGKILL the primary: the Sentinels promote the replica, which has the data; the old
    primary, started again, is made a replica of the new one and syncs it."""
    hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in redis_sentinel.sentinels)
    assert redis_sentinel.url == f"redis+sentinel://{hosts}/{redis_sentinel.service}/0"
    old, replica = redis_sentinel.primary(), redis_sentinel.replica()
    assert old is not replica
    assert old.replication()["role"] == "master"
    redis_sentinel.wait_replica_synced(timeout_s=FAILOVER_TIMEOUT_S)
    key = f"engines:{secrets.token_hex(4)}"
    with old.client() as client:
        client.set(key, "kept")
        # WAIT: the write reached the replica before the primary dies.
        assert client.wait(1, 5000) >= 1
    old.kill()
    assert not old.running
    seconds = redis_sentinel.wait_failover(old, timeout_s=FAILOVER_TIMEOUT_S)
    assert 0 < seconds < FAILOVER_TIMEOUT_S
    assert redis_sentinel.primary() is replica
    assert redis_sentinel.replica() is old
    assert replica.replication()["role"] == "master"
    with replica.client() as client:
        assert client.get(key) == b"kept"

    old.start()  # returns once Sentinel has made it a replica with its link up
    info = old.replication()
    assert info["role"] == "slave"
    assert info["master_port"] == replica.port
    assert info["master_link_status"] == "up"
    assert redis_sentinel.primary() is replica  # no second failover to the empty server
    redis_sentinel.wait_replica_synced(timeout_s=FAILOVER_TIMEOUT_S)

    def synced_key() -> bool:
        with old.client() as client:
            return bool(client.get(key) == b"kept")

    wait_until(synced_key, timeout_s=FAILOVER_TIMEOUT_S, message="the key on the new replica")
    with replica.client() as client:
        client.delete(key)


def _replicated(stack: Stack, min_replicas: int) -> None:
    stack.settings |= {
        "LEDGER_MIN_REPLICAS": str(min_replicas),
        "LEDGER_REPLICA_TIMEOUT_S": REPLICA_TIMEOUT_S,
    }


def _metric(worker_metrics_url: str, name: str, labels: str) -> float:
    text = httpx.get(worker_metrics_url, timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_with_the_only_replica_down_nothing_is_posted_until_it_returns(
    chaos_stack: StackFactory,
    amqp_url: str,
    redis_sentinel: PrivateRedisSentinel,
    sim: RunningSimulator,
) -> None:
    stack = chaos_stack(amqp_url, redis_sentinel.url)
    _replicated(stack, 1)
    prepare_simulator(sim)
    replica = redis_sentinel.replica()
    replica.stop()
    request_id = f"held-{uuid.uuid4().hex}"
    worker = stack.start_worker()
    try:
        with ResultConsumer.private(amqp_url, prefix=f"{stack.name}.r") as replies:
            stack.publish_one(request_id, replies.queue)
            wait_for(
                lambda: (
                    sum(
                        event.get("event") == "submit.held_for_replicas"
                        for event in worker.events()
                    )
                    >= 2
                ),
                "the request to be held twice",
            )
            held = _metric(
                worker.metrics_url, "segmind_ledger_replicas_short_total", 'step="before_post"'
            )
            assert sim.stats()["submits_by_client_request_id"].get(request_id, 0) == 0
            replica.start()
            redis_sentinel.wait_replica_synced(timeout_s=60)
            result = replies.wait([request_id], timeout_s=90)[request_id]
            replies.delete_queue(if_empty=False)
    finally:
        if not replica.running:
            replica.start()
    assert held >= 2
    assert result.status is Status.COMPLETED
    stats = sim.stats()
    assert stats["submits_by_client_request_id"][request_id] == 1
    assert stats["jobs_by_client_request_id"][request_id] == 1


def test_a_failover_with_one_replica_acknowledging_pays_once_and_loses_nothing(
    chaos_stack: StackFactory,
    amqp_url: str,
    redis_sentinel: PrivateRedisSentinel,
    sim: RunningSimulator,
    chaos_size: ChaosSize,
) -> None:
    stack = chaos_stack(amqp_url, redis_sentinel.url)
    _replicated(stack, 1)
    prepare_simulator(sim)
    for _ in range(WORKERS):
        stack.start_worker(threads=4)
    timings: dict[str, float] = {}

    def harm(progress: Progress) -> None:
        if not progress.wait_fraction(0.3, timeout_s=600):
            return
        primary = redis_sentinel.primary()
        primary.kill()
        timings["failover s"] = round(redis_sentinel.wait_failover(primary, timeout_s=60), 1)
        # The new primary has no replica until the old one is back as its replica.
        began = time.monotonic()
        primary.start()
        redis_sentinel.wait_replica_synced(timeout_s=60)
        timings["replica back s"] = round(time.monotonic() - began, 1)

    jobs = chaos_size.jobs
    figures, received, stats = run_chaos(
        "redis primary killed (LEDGER_MIN_REPLICAS=1)",
        stack,
        sim,
        jobs=jobs,
        harm=harm,
        timeout_s=180 + jobs * 0.5,
    )
    assert "failover s" in timings, "the primary was not killed"
    figures.notes |= timings
    check_guarantees(figures, stats)
    check_hostile(received)
    assert figures.max_posts_per_request <= 1


def _lagging_failover(
    name: str,
    stack: Stack,
    sim: RunningSimulator,
    redis_sentinel: PrivateRedisSentinel,
    jobs: int,
) -> tuple[RunFigures, dict[str, Any]]:
    """A run in which the replica stops receiving writes (``cut_replication``) at 20 % of
    the results; once five POSTs have been sent while it lags (or a request was held for
    want of an acknowledgement), the primary is killed and the lagging replica promoted."""
    timings: dict[str, float] = {}

    def held() -> bool:
        return any(
            event.get("event") == "submit.held_for_replicas"
            for worker in stack.workers
            for event in worker.events()
        )

    def harm(progress: Progress) -> None:
        if not progress.wait_fraction(0.2, timeout_s=600):
            return
        primary, replica = redis_sentinel.primary(), redis_sentinel.replica()
        replica.cut_replication()
        posts = sim.stats()["submits"]
        wait_for(lambda: sim.stats()["submits"] >= posts + 5 or held(), "POSTs while it lags")
        primary.kill()
        replica.restore_replication()
        timings["failover s"] = round(redis_sentinel.wait_failover(primary, timeout_s=60), 1)
        primary.start()
        redis_sentinel.wait_replica_synced(timeout_s=60)

    figures, received, stats = run_chaos(
        name, stack, sim, jobs=jobs, harm=harm, timeout_s=60 + jobs * 0.3
    )
    figures.notes |= timings
    paid: dict[str, int] = stats["jobs_by_client_request_id"]
    figures.notes["paid twice"] = sum(1 for i in figures.request_ids if paid.get(i, 0) > 1)
    unanswered = {i for i in figures.request_ids if paid.get(i, 0) and i not in received}
    figures.notes["paid, no result"] = len(unanswered)
    # Of those, the ones an operator finds in `segmind-queue dlq list`.
    dead = {
        letter.request_id
        for queue in (stack.requests_queue, stack.polls_queue)
        for letter in read_dead_letters(stack.amqp_url, wire.dead_letter_queue(queue))
    }
    figures.notes["of them dead-lettered"] = len(unanswered & dead)
    return figures, stats


def test_a_failover_to_a_lagging_replica_with_and_without_acknowledgements(
    chaos_stack: StackFactory,
    amqp_url: str,
    redis_sentinel: PrivateRedisSentinel,
    sim: RunningSimulator,
    chaos_size: ChaosSize,
    pytestconfig: pytest.Config,
) -> None:
    """The measurement of docs/reliability.md: what an asynchronous replica loses with the
    primary, and what ``LEDGER_MIN_REPLICAS=1`` saves, in the same run."""
    if not pytestconfig.getoption("chaos_unreplicated"):
        pytest.skip("a measurement, run with --chaos-unreplicated (docs/reliability.md)")
    jobs = max(chaos_size.jobs, 100)
    for min_replicas in (0, 1):
        stack = chaos_stack(amqp_url, redis_sentinel.url)
        _replicated(stack, min_replicas)
        prepare_simulator(sim)
        # Segmind answers a POST in about a second: a POST is in flight when Redis fails.
        sim.add_faults({"endpoint": "submit", "hold_s": 1.0})
        for _ in range(WORKERS):
            stack.start_worker(threads=4)
        figures, stats = _lagging_failover(
            f"redis failover to a lagging replica (LEDGER_MIN_REPLICAS={min_replicas})",
            stack,
            sim,
            redis_sentinel,
            jobs,
        )
        if min_replicas:
            check_guarantees(figures, stats)
