"""Tenants on the real RabbitMQ, Redis and simulator, through a real worker: fair turns for
a newcomer behind a flood, a tenant's daily cap, spend by tenant on /metrics and from
``segmind-queue spend``, and a bounded tenant label under a flood of tenant names."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from console.cli import app
from producers import ResultConsumer, Status
from producers.contract import ErrorCode
from simulator.testing import RunningSimulator, wait_until
from tests.e2e.conftest import Stack

IMAGE = "https://example.com/cat.png"
runner = CliRunner()


def _request(request_id: str, tenant: str, reply_to: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "workflow": "sketch-maker",
        "inputs": {"input_image": IMAGE},
        "reply_to": reply_to,
        "tenant": tenant,
    }


def _metric_lines(stack: Stack, name: str) -> list[str]:
    text = httpx.get(stack.workers[-1].metrics_url, timeout=10).text
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_a_newcomer_behind_a_flood_gets_its_turns_and_everyone_completes(
    fresh_stack: Stack, sim: RunningSimulator
) -> None:
    # "30 calls a minute" at a tenth of the time: 300 a real minute in windows of 6 s.
    # Each job is polled once it can be done: the simulator's image jobs take 0.12 s, and
    # WORKER_ENV's 0.05 s between polls would spend two or three of the 5 tokens a second
    # on each job's polls, not one. The 33 POSTs still wait for the rate, behind the polls.
    run = uuid.uuid4().hex[:6]
    flood = [f"a-{run}-{n:02d}" for n in range(30)]
    newcomer = [f"b-{run}-{n}" for n in range(3)]
    with ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r") as replies:
        with fresh_stack.publisher() as publisher:
            # One batch, the flood first: the worker finds all 33 waiting when it starts.
            publisher.publish_many(_request(i, "tenant-a", replies.queue) for i in flood)
            publisher.publish_many(_request(i, "tenant-b", replies.queue) for i in newcomer)
        fresh_stack.start_worker(
            SEGMIND_RATE_LIMIT_PER_MINUTE="300",
            SEGMIND_RATE_LIMIT_WINDOW_S="6",
            SEGMIND_MIN_POLL_INTERVAL_S="0.15",
        )
        results = replies.wait(flood + newcomer, timeout_s=120)
    assert all(result.status is Status.COMPLETED for result in results.values()), results
    order = sorted(results.values(), key=lambda r: r.timings.submitted_at or 0)
    posted = [result.tenant for result in order]
    tenth_of_a = [n for n, tenant in enumerate(posted) if tenant == "tenant-a"][9]
    last_of_b = max(n for n, tenant in enumerate(posted) if tenant == "tenant-b")
    print(f"POST order: {''.join('A' if t == 'tenant-a' else 'B' for t in posted)}")
    assert last_of_b < tenth_of_a, posted
    assert sim.stats()["submits"] == 33

    # Spend by tenant: on /metrics, and from the ledger's store with `segmind-queue spend`.
    spent = _metric_lines(fresh_stack, "segmind_credits_spent_usd_total")
    assert any('tenant="tenant-b"' in line and not line.endswith(" 0.0") for line in spent)
    env: dict[str, str | None] = {**fresh_stack.env(), "SEGMIND_API_KEY": None}
    printed = runner.invoke(app, ["spend", "--by", "tenant"], env=env)
    assert printed.exit_code == 0, printed.output
    rows = dict(line.split()[:2] for line in printed.stdout.splitlines()[1:] if line.strip())
    cost_b = sum(results[i].cost_usd or 0 for i in newcomer)
    assert float(rows["tenant-b"].lstrip("$")) == round(cost_b, 4)


def test_a_tenant_over_its_cap_is_rejected_unpaid_while_another_completes(
    fresh_stack: Stack, sim: RunningSimulator, tmp_path: Path
) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text('[tenants."capped"]\ndaily_cap_usd = 0.05\n')
    fresh_stack.start_worker(
        TENANTS_FILE=str(tenants), SEGMIND_BUDGET_WAIT_S="1", METRICS_REFRESH_S="0.2"
    )
    run = uuid.uuid4().hex[:6]
    over, fine = f"over-{run}", f"fine-{run}"
    with ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r") as replies:
        with fresh_stack.publisher() as publisher:
            publisher.publish(_request(over, "capped", replies.queue))
            publisher.publish(_request(fine, "uncapped", replies.queue))
        results = replies.wait([over, fine], timeout_s=60)
    assert results[fine].status is Status.COMPLETED
    rejected = results[over]
    assert (rejected.status, rejected.cost_usd) == (Status.REJECTED, 0.0)
    assert rejected.error is not None
    assert rejected.error.code is ErrorCode.BUDGET_EXHAUSTED
    assert sim.stats()["submits_by_client_request_id"].get(over, 0) == 0
    # The cap is on /metrics for the alert on tenants near theirs.
    wait_until(
        lambda: any(
            line.startswith('segmind_tenant_daily_cap_usd{tenant="capped"}')
            for line in _metric_lines(fresh_stack, "segmind_tenant_daily_cap_usd")
        ),
        timeout_s=10,
        message="the tenant's cap on /metrics",
    )


def test_a_flood_of_tenant_names_keeps_the_tenant_label_bounded(fresh_stack: Stack) -> None:
    fresh_stack.start_worker(TENANT_LABELS_MAX="20", threads=8)
    # 500 names through a real worker here; 10,000 through the metrics themselves in
    # tests/worker/test_metrics.py.
    count = 500
    run = uuid.uuid4().hex[:6]
    replies = ResultConsumer.private(fresh_stack.amqp_url, prefix=f"{fresh_stack.name}.r")
    # An unknown workflow: each is answered REJECTED without a Segmind call, fast.
    requests = (
        {
            "request_id": f"f-{run}-{n}",
            "workflow": "no-such-workflow",
            "tenant": f"t{n}-{run}",
            "reply_to": replies.queue,
        }
        for n in range(count)
    )
    started = time.monotonic()
    with replies:
        try:
            with fresh_stack.publisher() as publisher:
                publisher.publish_many(requests)
            _wait_for_every_rejection(fresh_stack, count)
        finally:
            replies.delete_queue(if_empty=False)
    print(f"{count} requests of distinct tenants answered in {time.monotonic() - started:.1f} s")
    tenants = {
        line.split('tenant="', 1)[1].split('"', 1)[0]
        for line in _metric_lines(fresh_stack, "segmind_jobs_total")
    }
    assert len(tenants) <= 21  # 20 of their own (default among them) and "other"
    assert "other" in tenants


def _wait_for_every_rejection(stack: Stack, count: int) -> None:

    def answered() -> bool:
        lines = _metric_lines(stack, "segmind_jobs_total")
        rejected = [line for line in lines if 'status="REJECTED"' in line]
        return sum(float(line.rsplit(" ", 1)[1]) for line in rejected) >= count

    wait_until(answered, timeout_s=180, interval_s=0.1, message="every rejection counted")
