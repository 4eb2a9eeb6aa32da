"""End to end: requests published to the real RabbitMQ, ``segmind-queue worker`` processes
with the ledger in the real Redis, the simulator over its socket, results on reply queues.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pika
import pytest

from producers import wire
from producers.catalog import default_catalog
from producers.consumer import ResultConsumer
from producers.contract import ErrorCode, Result, Status
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import SIM_API_KEY
from tests.e2e.conftest import Stack

CATALOG = default_catalog()
SKETCH = CATALOG.resolve("sketch-maker")
IMAGE = "https://example.com/cat.png"


def sketch(**fields: Any) -> dict[str, Any]:
    """A sketch-maker request (the quickest seed workflow) with a fresh request_id."""
    return {"request_id": f"req-{uuid.uuid4().hex}", "workflow": "sketch-maker"} | fields


def only(results: dict[str, Result]) -> Result:
    (result,) = results.values()
    return result


def raw_results(amqp_url: str, queue: str, count: int, timeout_s: float) -> list[Any]:
    """``count`` messages of ``queue`` as ``(properties, decoded body)``, read with pika."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)  # as the worker would: it may not exist yet
    found: list[Any] = []

    def take() -> bool:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            found.append((properties, json.loads(body)))
        return len(found) >= count

    try:
        wait_until(take, timeout_s=timeout_s, interval_s=0.02, message=f"{count} results")
    finally:
        connection.close()
    return found


# ---------------------------------------------------------------- the happy path


def test_the_five_seed_workflows_complete(stack: Stack, sim: RunningSimulator) -> None:
    reply = f"{stack.name}.seed-results"
    requests = {f"seed-{workflow.name}-{uuid.uuid4().hex[:8]}": workflow for workflow in CATALOG}
    try:
        with stack.publisher() as publisher:
            for request_id, workflow in requests.items():
                publisher.publish(
                    {
                        "request_id": request_id,
                        "workflow": workflow.name,
                        "inputs": workflow.default_inputs(),
                        "reply_to": reply,
                        "metadata": {"case": workflow.name},
                    }
                )
        received = raw_results(stack.amqp_url, reply, len(requests), timeout_s=60)
    finally:
        with ResultConsumer(stack.amqp_url, queue=reply) as cleanup:
            cleanup.delete_queue(if_empty=False)

    jobs = {job["client_request_id"]: job for job in sim.jobs()}
    assert sorted(body["request_id"] for _, body in received) == sorted(requests)
    for properties, body in received:
        workflow = requests[body["request_id"]]
        result = Result.model_validate(body)
        assert properties.correlation_id == result.request_id
        assert properties.delivery_mode == wire.PERSISTENT
        assert properties.content_type == wire.CONTENT_TYPE
        assert result.status is Status.COMPLETED, result.error
        assert result.workflow_id == workflow.workflow_id
        assert result.metadata == {"case": workflow.name}
        assert result.outputs
        expected = {(o.keyname, o.type) for o in workflow.outputs or ()}
        assert {(o.keyname, o.type) for o in result.outputs} <= expected
        assert all(isinstance(o.data, str) and o.data for o in result.outputs)
        assert result.segmind_request_id == jobs[result.request_id]["request_id"]
        assert result.cost_usd == workflow.price_usd
        assert result.polls >= 1
        timings = result.timings
        assert timings.queued_at
        assert timings.submitted_at
        assert timings.completed_at
        assert timings.queued_at <= timings.submitted_at <= timings.completed_at
        assert timings.total_s is not None
        assert timings.generation_s is not None
        assert timings.total_s >= timings.generation_s
    stats = sim.stats()
    assert stats["max_submits_per_request"] == 1
    assert stats["jobs"] == len(requests)
    # Every line about a job names it, its workflow and Segmind's id; none holds the key.
    events = [event for worker in stack.workers for event in worker.events()]
    for _, body in received:
        lines = {
            event["event"]: event
            for event in events
            if event.get("request_id") == body["request_id"]
        }
        for name in ("submit.accepted", "result.published"):
            assert lines[name]["workflow"] == body["workflow"], name
            assert lines[name]["segmind_request_id"] == body["segmind_request_id"], name
    assert SIM_API_KEY not in "".join(worker.log() for worker in stack.workers)


def test_a_request_published_with_plain_pika(stack: Stack, sim: RunningSimulator) -> None:
    """The documented wire format, with no project code on the producer's side."""
    request_id = f"plain-{uuid.uuid4().hex}"
    reply = f"{stack.name}.plain-replies"
    envelope = {
        "queue_name": stack.requests_queue,
        "actor_name": "submit_workflow",
        "args": [
            {
                "request_id": request_id,
                "workflow": "sketch-maker",
                "inputs": {"input_image": IMAGE},
                "reply_to": reply,
                "metadata": {"from": "pika"},
            }
        ],
        "kwargs": {},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(reply, durable=True)
    channel.basic_publish(
        exchange="",
        routing_key=stack.requests_queue,
        body=json.dumps(envelope).encode(),
        properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
        mandatory=True,
    )
    body: dict[str, Any] = {}

    def answered() -> bool:
        method, properties, raw = channel.basic_get(reply, auto_ack=True)
        if method is None:
            return False
        assert properties.correlation_id == request_id
        body.update(json.loads(raw))
        return True

    try:
        wait_until(answered, timeout_s=30, interval_s=0.02, message="the result")
    finally:
        channel.queue_delete(reply)
        connection.close()
    assert body["request_id"] == request_id
    assert body["status"] == "COMPLETED"
    assert body["metadata"] == {"from": "pika"}
    assert SKETCH.outputs
    assert body["outputs"][0]["keyname"] == SKETCH.outputs[0].keyname
    assert sim.stats()["submits_by_client_request_id"] == {request_id: 1}


# ---------------------------------------------------------------- how jobs end


@pytest.mark.parametrize(
    ("fault", "code", "http_status"),
    [
        ({"endpoint": "submit", "status": 401}, ErrorCode.UNAUTHORIZED, 401),
        ({"endpoint": "submit", "status": 403}, ErrorCode.FORBIDDEN, 403),
        ({"endpoint": "submit", "status": 404}, ErrorCode.WORKFLOW_NOT_FOUND, 404),
        ({"endpoint": "submit", "status": 400, "body": "html"}, ErrorCode.BAD_REQUEST, 400),
    ],
)
def test_final_submit_errors_fail_without_a_retry(
    stack: Stack, sim: RunningSimulator, fault: dict[str, Any], code: ErrorCode, http_status: int
) -> None:
    sim.add_faults(fault | {"count": 1})
    result = only(stack.run(sketch(inputs={"input_image": IMAGE})))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is code
    assert result.error.http_status == http_status
    assert result.error.message
    assert result.cost_usd == 0.0
    assert sim.stats()["submits"] == 1


def test_406_insufficient_credits_carries_segmind_s_text(
    stack: Stack, sim: RunningSimulator
) -> None:
    sim.reset(credits=0.0)
    result = only(stack.run(sketch()))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.INSUFFICIENT_CREDITS
    assert result.error.http_status == 406
    assert "Insufficient credits" in result.error.message
    assert sim.stats()["jobs"] == 0


@pytest.mark.parametrize("field", ["error", "error_message"])
def test_a_failed_generation_carries_segmind_s_reason(
    stack: Stack, sim: RunningSimulator, field: str
) -> None:
    sim.add_faults({"job": "fail", "error_field": field, "message": f"NSFW via {field}"})
    result = only(stack.run(sketch()))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.GENERATION_FAILED
    assert result.error.message == f"NSFW via {field}"
    assert result.segmind_request_id
    assert result.cost_usd == SKETCH.price_usd


def test_an_unknown_status_is_polled_through(stack: Stack, sim: RunningSimulator) -> None:
    sim.add_faults({"job": "status", "status": "STARTING", "forever": False})
    result = only(stack.run(sketch()))
    assert result.status is Status.COMPLETED
    assert result.polls >= 2


def test_an_unknown_status_to_the_end_times_out(stack: Stack, sim: RunningSimulator) -> None:
    sim.add_faults({"job": "status", "status": "CANCELLED"})
    result = only(stack.run(sketch(deadline_s=1.0)))
    assert result.status is Status.TIMED_OUT
    assert result.error is not None
    assert result.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert "CANCELLED" in result.error.message


def test_a_job_past_its_deadline_times_out(stack: Stack, sim: RunningSimulator) -> None:
    sim.add_faults({"job": "never_finish"})
    result = only(stack.run(sketch(deadline_s=0.5)))
    assert result.status is Status.TIMED_OUT
    assert result.error is not None
    assert result.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert result.timings.generation_s is not None
    assert result.timings.generation_s >= 0.5
    # Segmind accepted the job: it is paid for even though nobody waited for it.
    assert result.cost_usd == SKETCH.price_usd


def test_429_then_success(stack: Stack, sim: RunningSimulator) -> None:
    sim.add_faults(
        {"endpoint": "submit", "status": 429, "count": 2},
        {"endpoint": "poll", "status": 429, "count": 2},
    )
    result = only(stack.run(sketch()))
    assert result.status is Status.COMPLETED
    stats = sim.stats()
    assert stats["faults_served"] == {"429": 4}
    assert stats["submits_by_client_request_id"] == {result.request_id: 3}
    assert stats["jobs_by_client_request_id"] == {result.request_id: 1}


def test_a_5xx_burst_then_success(stack: Stack, sim: RunningSimulator) -> None:
    sim.add_faults(
        {"endpoint": "submit", "status": 500, "count": 2},
        {"endpoint": "submit", "status": 503, "body": "html", "count": 1},
        {"endpoint": "poll", "status": 502, "count": 2},
        {"endpoint": "poll", "drop": True, "count": 1},
    )
    result = only(stack.run(sketch()))
    assert result.status is Status.COMPLETED
    stats = sim.stats()
    assert stats["faults_served"] == {"500": 2, "503": 1, "502": 2, "drop": 1}
    assert stats["jobs_by_client_request_id"] == {result.request_id: 1}


def test_a_submit_answered_504_is_not_submitted_again(stack: Stack, sim: RunningSimulator) -> None:
    sim.add_faults({"endpoint": "submit", "status": 504, "after_effect": True, "count": 1})
    result = only(stack.run(sketch()))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
    assert result.error.http_status == 504
    assert result.cost_usd is None  # unknown: Segmind created the job, the worker cannot know
    assert sim.stats()["submits"] == 1


def test_an_expired_job_fails(stack: Stack, sim: RunningSimulator) -> None:
    sim.add_faults({"job": "never_finish"}, {"endpoint": "poll", "status": 404})
    result = only(stack.run(sketch()))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.EXPIRED


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"workflow": "no-such-workflow"}, ErrorCode.UNKNOWN_WORKFLOW),
        ({"workflow": "sketch-maker", "inputs": {"nope": 1}}, ErrorCode.UNKNOWN_INPUT),
        (
            {"workflow": "sketch-maker", "inputs": {"input_image": "file:///etc/passwd"}},
            ErrorCode.INVALID_INPUT,
        ),
        ({"workflow": "sketch-maker", "deadline_s": -1}, ErrorCode.INVALID_REQUEST),
        ({"workflow": "sketch-maker", "surprise": True}, ErrorCode.INVALID_REQUEST),
    ],
)
def test_a_bad_request_is_rejected_without_a_segmind_call(
    stack: Stack, sim: RunningSimulator, request_fields: dict[str, Any], code: ErrorCode
) -> None:
    request_id = f"bad-{uuid.uuid4().hex}"
    with ResultConsumer.private(stack.amqp_url, prefix=f"{stack.name}.bad") as consumer:
        envelope = wire.request_envelope(
            {"request_id": request_id, "reply_to": consumer.queue, **request_fields},
            queue_name=stack.requests_queue,
        )
        # Published raw: the project's publisher would refuse the malformed ones.
        connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
        connection.channel().basic_publish(
            "", stack.requests_queue, wire.encode(envelope), pika.BasicProperties(delivery_mode=2)
        )
        connection.close()
        result = consumer.wait([request_id], timeout_s=30)[request_id]
        consumer.delete_queue(if_empty=False)
    assert result.status is Status.REJECTED
    assert result.error is not None
    assert result.error.code is code
    assert result.error.message
    assert result.cost_usd == 0.0
    stats = sim.stats()
    assert (stats["submits"], stats["polls"]) == (0, 0)


def test_a_request_without_a_usable_reply_to_is_dead_lettered(
    stack: Stack, sim: RunningSimulator
) -> None:
    envelope = wire.request_envelope({}, queue_name=stack.requests_queue)
    envelope["args"] = [["not", "an", "object"]]
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    channel = connection.channel()
    channel.basic_publish("", stack.requests_queue, wire.encode(envelope))
    dead_letters = wire.dead_letter_queue(stack.requests_queue)
    found: list[Any] = []

    def dead_lettered() -> bool:
        method, properties, body = channel.basic_get(dead_letters, auto_ack=False)
        if method is None:
            return False
        if json.loads(body)["message_id"] != envelope["message_id"]:
            channel.basic_nack(method.delivery_tag, requeue=True)
            return False
        channel.basic_ack(method.delivery_tag)
        found.append(properties.headers[wire.DEAD_LETTER_REASON_HEADER])
        return True

    try:
        wait_until(dead_lettered, timeout_s=30, interval_s=0.05, message="the dead letter")
    finally:
        connection.close()
    assert found[0].startswith("invalid_request")
    assert sim.stats()["submits"] == 0


# ---------------------------------------------------------------- never paid twice


def test_the_same_request_id_published_twice_costs_one_post(
    stack: Stack, sim: RunningSimulator
) -> None:
    request = sketch()
    first = only(stack.run(request))
    assert first.status is Status.COMPLETED
    with ResultConsumer.private(stack.amqp_url, prefix=f"{stack.name}.dup") as consumer:
        with stack.publisher() as publisher:
            publisher.publish({**request, "reply_to": consumer.queue})
        wait_until(
            lambda: len(_copy_outcomes(stack, request["request_id"])) == 1,
            timeout_s=30,
            message="the worker to ignore the duplicate",
        )
        # The duplicate was handled (dropped) and nothing was published for it.
        assert stack.queue_counts(consumer.queue)[0] == 0
        consumer.delete_queue(if_empty=False)
    stats = sim.stats()
    assert stats["submits_by_client_request_id"] == {request["request_id"]: 1}


def test_simultaneous_duplicates_cost_one_post_and_one_result(
    stack: Stack, sim: RunningSimulator
) -> None:
    request = sketch()
    with ResultConsumer.private(stack.amqp_url, prefix=f"{stack.name}.dup2") as consumer:
        with stack.publisher() as publisher:
            for _ in range(3):
                publisher.publish({**request, "reply_to": consumer.queue})
        result = consumer.wait([request["request_id"]], timeout_s=30)[request["request_id"]]
        assert result.status is Status.COMPLETED
        # Each other copy ends as a dropped duplicate, or (when it found the job accepted
        # and not yet polled) by starting a poll that dies at its claim. Once both have,
        # nothing more can answer: the reply queue must still be empty.
        wait_until(
            lambda: len(_copy_outcomes(stack, request["request_id"])) == 2,
            timeout_s=30,
            message="both copies to be handled",
        )
        assert stack.queue_counts(consumer.queue)[0] == 0
        consumer.delete_queue(if_empty=False)
    assert sim.stats()["submits_by_client_request_id"] == {request["request_id"]: 1}


def _copy_outcomes(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    """The log lines saying how extra copies of a request were handled."""
    return [
        event
        for worker in stack.workers
        for event in worker.events()
        if event.get("request_id") == request_id
        and event.get("event") in ("request.duplicate_ignored", "request.resumed_polling")
    ]
