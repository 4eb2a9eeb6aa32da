"""Cancel on the real RabbitMQ, Redis and simulator, through ``segmind-queue cancel`` and a
real worker: waiting requests end CANCELLED unpaid, never POSTed; the others complete; a
finished request is left as it is; a thousand waiting requests are cancelled at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from console.cli import app
from producers import ResultConsumer, Status
from simulator.testing import RunningSimulator, run_simulator, wait_until
from tests.conftest import simulator_test_config
from tests.e2e.conftest import Stack, new_stack

IMAGE = "https://example.com/cat.png"
runner = CliRunner()


def _cancel(stack: Stack, *args: str) -> Any:
    env: dict[str, str | None] = {**stack.env(), "SEGMIND_API_KEY": None}
    return runner.invoke(app, ["cancel", *args], env=env)


def _request(request_id: str, reply_to: str, **fields: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "workflow": "sketch-maker",
        "inputs": {"input_image": IMAGE},
        "reply_to": reply_to,
        **fields,
    }


@pytest.fixture
def slow_stack(
    amqp_url: str, redis_url: str, namespace: str, tmp_path: Path
) -> Iterator[tuple[Stack, RunningSimulator]]:
    """A stack on a simulator of its own whose jobs are kept 10 minutes: at a few calls a
    minute, a job waits several seconds for the token of its poll."""
    config = simulator_test_config().model_copy(update={"retention_s": 600 / 0.002})
    with run_simulator(config) as private:
        stack = new_stack(amqp_url, redis_url, private, namespace, tmp_path)
        try:
            yield stack, private
        finally:
            stack.cleanup()


def test_at_six_calls_a_minute_three_waiting_requests_are_cancelled_unpaid(
    slow_stack: tuple[Stack, RunningSimulator],
) -> None:
    fresh_stack, sim = slow_stack
    # "6 calls a minute" at a tenth of the time: 60 a real minute in windows of 6 s (the
    # bucket, its burst of one token and the strict turns of the admission line are those
    # of 6 a minute, each call 1 s apart instead of 10). The three to cancel are POSTed no
    # sooner than the three before them and their polls: about 7 s after publishing,
    # where the cancel lands within a fraction of a second.
    fresh_stack.start_worker(SEGMIND_RATE_LIMIT_PER_MINUTE="60", SEGMIND_RATE_LIMIT_WINDOW_S="6")
    run = uuid.uuid4().hex[:6]
    ids = [f"six-{run}-{n}" for n in range(6)]
    with (
        ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r") as replies,
        fresh_stack.publisher() as publisher,
    ):
        for request_id in ids:
            publisher.publish(_request(request_id, replies.queue))
        cancelled = _cancel(fresh_stack, *ids[3:])
        assert cancelled.exit_code == 0, cancelled.output
        lines = dict(line.split("\t", 1) for line in cancelled.output.splitlines())
        assert all(lines[i].startswith(("cancelled_unpaid", "marked")) for i in ids[3:]), lines
        results = replies.wait(ids, timeout_s=150)
    for request_id in ids[:3]:
        assert results[request_id].status is Status.COMPLETED
    for request_id in ids[3:]:
        result = results[request_id]
        assert (result.status, result.cost_usd) == (Status.CANCELLED, 0.0)
        assert result.error is not None
        assert result.error.code == "cancelled"
    posted = sim.stats()["submits_by_client_request_id"]
    assert {request_id: posted.get(request_id, 0) for request_id in ids} == {
        **{request_id: 1 for request_id in ids[:3]},
        **{request_id: 0 for request_id in ids[3:]},
    }

    # A finished request is left as it is, and the command says so.
    again = _cancel(fresh_stack, ids[0])
    assert again.exit_code == 0
    assert again.output.startswith(f"{ids[0]}\tfinished\talready finished (COMPLETED)")


def test_a_thousand_waiting_requests_are_cancelled_at_once(
    slow_stack: tuple[Stack, RunningSimulator],
) -> None:
    fresh_stack, sim = slow_stack
    # One call a minute: every request but the first waits for the rate.
    fresh_stack.start_worker(SEGMIND_RATE_LIMIT_PER_MINUTE="1")
    run = uuid.uuid4().hex[:6]
    ids = [f"bulk-{run}-{n:04d}" for n in range(1000)]
    with (
        ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r") as replies,
        fresh_stack.publisher() as publisher,
    ):
        publisher.publish_many(_request(request_id, replies.queue) for request_id in ids)
        dry = _cancel(fresh_stack, "--all-waiting", "--dry-run")
        assert dry.exit_code == 0
        assert dry.output.count("would be cancelled_unpaid") >= 1
        started = time.monotonic()
        cancelled = _cancel(fresh_stack, *ids, "--wait-s", "120")
        took_s = time.monotonic() - started
        assert cancelled.exit_code == 0, cancelled.output[-2000:]
        results = replies.wait(ids, timeout_s=120)
    statuses = [result.status for result in results.values()]
    print(
        f"cancelled {statuses.count(Status.CANCELLED)} of 1000 waiting requests in {took_s:.1f} s"
    )
    assert statuses.count(Status.CANCELLED) >= 998
    assert sim.stats()["submits"] <= 2
    wait_until(
        lambda: fresh_stack.queue_counts(fresh_stack.requests_queue)[0] == 0,
        timeout_s=30,
        message="every cancelled request to leave the queue",
    )
