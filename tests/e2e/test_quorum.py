"""Quorum queues through ``segmind-queue worker``: the delivery limit never bites a held poll.

A quorum queue counts the deliveries of each message and dead-letters one delivered more
than its ``x-delivery-limit``. A worker holds a delayed poll unacknowledged until it is due,
and hands it back whenever it stops: a job whose poll waits through several worker
restarts would be dead-lettered, its paid job left unfollowed, unless the worker refreshes
the poll first (``worker.broker``). The rest of the pipeline on quorum queues (submits,
delayed polls, dead letters, replay) is ``tests/e2e/test_dlq.py``, run on both types.
"""

from __future__ import annotations

from producers import wire
from producers.consumer import ResultConsumer
from producers.contract import Status
from simulator.testing import RunningSimulator, wait_until
from tests.e2e.conftest import Stack

#: The simulator's time scale here: the character video (~674 s at Segmind) runs ~6.7 s,
#: and its first poll is held while the worker restarts.
TIME_SCALE = "0.01"
RESTARTS = 4
LIMIT = 2


def test_a_poll_held_through_more_restarts_than_its_delivery_limit_is_never_dead_lettered(
    fresh_stack: Stack, sim: RunningSimulator
) -> None:
    stack = fresh_stack
    stack.settings |= {
        "AMQP_QUEUE_TYPE": "quorum",
        "AMQP_DELIVERY_LIMIT": str(LIMIT),
        "SEGMIND_TIME_SCALE": TIME_SCALE,
        "SEGMIND_MIN_POLL_INTERVAL_S": "0.2",
    }
    sim.reset(time_scale=float(TIME_SCALE))
    request_id = f"{stack.name}-held"
    worker = stack.start_worker()
    with ResultConsumer.private(stack.amqp_url, prefix=f"{stack.name}.r") as replies:
        with stack.publisher() as publisher:
            publisher.publish(
                {"request_id": request_id, "workflow": "character-video", "reply_to": replies.queue}
            )
        delayed = wire.delay_queue(stack.polls_queue)
        wait_until(
            lambda: bool(sim.stats()["jobs_by_client_request_id"].get(request_id)),
            timeout_s=30,
            message="Segmind to create the job",
        )
        workers = [worker]
        for _ in range(RESTARTS):
            # The first poll waits in this worker's memory, unacknowledged, until it is due.
            wait_until(
                lambda: stack.queue_counts(delayed)[0] == 0,
                timeout_s=30,
                interval_s=0.05,
                message="the worker to hold the delayed poll",
            )
            workers[-1].kill()  # its connection closes: RabbitMQ hands the poll back
            workers.append(stack.start_worker())
        result = replies.wait([request_id], timeout_s=60)[request_id]
        replies.delete_queue(if_empty=False)
    refreshed = [
        event for w in workers for event in w.events() if event.get("event") == "message.refreshed"
    ]
    assert result.status is Status.COMPLETED
    assert stack.queue_counts(wire.dead_letter_queue(stack.polls_queue))[0] == 0
    assert sim.stats()["submits_by_client_request_id"] == {request_id: 1}
    # Handed back RESTARTS times: past the limit of LIMIT deliveries but for the refreshes.
    assert len(refreshed) >= RESTARTS - LIMIT + 1, refreshed
