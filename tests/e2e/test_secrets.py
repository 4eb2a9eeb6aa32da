"""The API key never leaves the client: a worker runs jobs with a distinctive key, at debug
log level, against a simulator that even echoes the key back in its error texts, and the key
is then looked for in every log line, the metrics, every result and every dead letter."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pika
import pytest
from pydantic import SecretStr

from producers import wire
from producers.catalog import default_catalog
from simulator.config import SimulatorConfig
from simulator.testing import RunningSimulator, run_simulator, wait_until
from tests.e2e.conftest import Stack, publish_raw


@pytest.fixture
def canary() -> str:
    return f"sk-canary-{secrets.token_hex(16)}"


@pytest.fixture
def leaky_simulator(canary: str) -> Iterator[RunningSimulator]:
    config = SimulatorConfig(
        api_key=SecretStr(canary), time_scale=0.002, rpm=0, credits=1000.0, seed=7
    )
    with run_simulator(config) as running:
        yield running


def drain(amqp_url: str, queue: str) -> list[bytes]:
    """Every message of ``queue``: body and headers, as bytes."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    found: list[bytes] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found += [body, repr(properties).encode()]
    finally:
        connection.close()


def test_the_key_appears_in_no_log_metric_result_or_dead_letter(
    fresh_stack: Stack, leaky_simulator: RunningSimulator, canary: str
) -> None:
    echo = f"invalid request for key {canary}"
    leaky_simulator.add_faults(
        {"endpoint": "submit", "status": 500, "count": 1, "message": echo},
        {"endpoint": "poll", "status": 502, "body": "html", "count": 1},
        {"endpoint": "submit", "status": 429, "count": 1, "headers": {"retry-after": "0"}},
        {"job": "fail", "count": 1, "message": f"worker crashed holding {canary}"},
        {
            "endpoint": "submit",
            "status": 406,
            "body": "text",
            "workflow_id": "66cec9a38aeef98f887211f1-v1",
            "message": echo,
        },
    )
    worker = fresh_stack.start_worker(
        SEGMIND_API_KEY=canary,
        SEGMIND_API_URL=leaky_simulator.url,
        LOG_LEVEL="DEBUG",
        METRICS_REFRESH_S="0.2",
        SEGMIND_CREDITS_INTERVAL_S="0.5",
    )
    requests = [
        {"workflow": workflow.name, "inputs": workflow.default_inputs()}
        for workflow in default_catalog()
    ]
    results = fresh_stack.run(*requests, {"workflow": "no-such-workflow"})
    unanswerable = wire.request_envelope({}, queue_name=fresh_stack.requests_queue)
    unanswerable["args"] = [["not", "an", "object"]]
    publish_raw(fresh_stack.amqp_url, fresh_stack.requests_queue, unanswerable)
    dead_letters = wire.dead_letter_queue(fresh_stack.requests_queue)
    wait_until(
        lambda: fresh_stack.queue_counts(dead_letters)[0] == 1,
        timeout_s=30,
        message="the dead letter",
    )
    wait_until(
        lambda: "segmind_credits_remaining" in httpx.get(worker.metrics_url, timeout=10).text,
        timeout_s=30,
        message="the credits to be read",
    )
    metrics = httpx.get(worker.metrics_url, timeout=10).text

    # The key was in play: every fault was served, and the jobs ran on it.
    stats = leaky_simulator.stats()
    assert stats["jobs"] >= 3
    assert sum(stats["faults_served"].values()) == 5
    statuses = {str(result.status) for result in results.values()}
    assert {"COMPLETED", "FAILED", "REJECTED"} <= statuses
    log = worker.log()
    assert '"level": "debug"' in log, "debug logging was not on"
    assert "send_request_headers" in log, "httpx's own debug lines were not logged"

    places = {
        "log": log,
        "metrics": metrics,
        "results": "\n".join(result.model_dump_json() for result in results.values()),
        "dead letters": b"\n".join(drain(fresh_stack.amqp_url, dead_letters)).decode(),
    }
    for where, text in places.items():
        assert canary not in text, f"the key leaked into the {where}"
        assert canary.removeprefix("sk-canary-")[:12] not in text, f"part of the key: {where}"
