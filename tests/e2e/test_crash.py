"""A worker killed with SIGKILL mid-step: the next worker resumes, and nothing is POSTed twice.

Each test has its own queues (``fresh_stack``), so the worker it kills is the only one that
could have taken the message.
"""

from __future__ import annotations

import uuid

from producers.consumer import ResultConsumer
from producers.contract import ErrorCode, Status
from simulator.testing import RunningSimulator, wait_until
from tests.e2e.conftest import Stack, wait_for_job


def test_killed_after_the_post_before_the_ledger_records_it(
    fresh_stack: Stack, sim: RunningSimulator
) -> None:
    """The POST reached Segmind and the worker died before reading the answer: the
    redelivered request finds SUBMITTING, waits out the POST's lease and ends FAILED
    ``submit_outcome_unknown``; it is never POSTed again."""
    request_id = f"kill-post-{uuid.uuid4().hex}"
    sim.add_faults({"endpoint": "submit", "hold_s": 60, "count": 1})
    # The lease the next worker waits out is this worker's: the sum of its five Segmind
    # timeouts and a 5 s grace. Getting a pooled connection, connecting to the local
    # simulator and writing the request take no time here, so their timeouts are cut to
    # a quarter of WORKER_ENV's (9.75 s of lease, not 12); the read and total timeouts,
    # which the held answer runs into, stay 2 s: the kill comes well before them.
    first = fresh_stack.start_worker(
        SEGMIND_POOL_TIMEOUT_S="0.25",
        SEGMIND_CONNECT_TIMEOUT_S="0.25",
        SEGMIND_WRITE_TIMEOUT_S="0.25",
    )
    with ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r") as replies:
        fresh_stack.publish_one(request_id, replies.queue)
        wait_for_job(sim, request_id)
        first.kill()
        fresh_stack.start_worker()
        result = replies.wait([request_id], timeout_s=60)[request_id]
        replies.delete_queue(if_empty=False)
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
    assert result.cost_usd is None
    stats = sim.stats()
    assert stats["submits_by_client_request_id"] == {request_id: 1}
    assert stats["jobs_by_client_request_id"] == {request_id: 1}


def test_killed_during_a_poll_resumes_polling(fresh_stack: Stack, sim: RunningSimulator) -> None:
    """The worker died with a poll in flight: the poll message is redelivered to the next
    worker, which polls the same job to its end."""
    request_id = f"kill-poll-{uuid.uuid4().hex}"
    sim.add_faults({"endpoint": "poll", "hold_s": 60, "count": 1})
    first = fresh_stack.start_worker()
    with ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r") as replies:
        fresh_stack.publish_one(request_id, replies.queue)
        wait_until(
            lambda: sim.stats()["polls"] >= 1,
            timeout_s=30,
            interval_s=0.01,
            message="the first poll",
        )
        first.kill()
        fresh_stack.start_worker()
        result = replies.wait([request_id], timeout_s=60)[request_id]
        replies.delete_queue(if_empty=False)
    assert result.status is Status.COMPLETED
    assert result.outputs
    stats = sim.stats()
    assert stats["submits_by_client_request_id"] == {request_id: 1}
    assert stats["polls"] >= 2
