"""Observability end to end: a real Prometheus scrapes a real worker (two processes) that ran
jobs through the simulator, loads the shipped alert rules, and evaluates every dashboard
panel query and every alert expression through its HTTP API.

Each expression must return data, except those listed in ``EMPTY_PANELS`` and
``QUIET_ALERTS`` with the reason this run leaves them empty; an empty result anywhere else,
or data where a quiet alert expects none, fails. The run is built so that the alerts in
``FIRING_ALERTS`` have their condition met: a $30 balance burned at this run's rate, a
429 ratio over 5 %, five rejected requests, and two dead letters.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from producers import wire
from producers.catalog import default_catalog
from producers.contract import Result, Status
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import free_port, prometheus_tool
from tests.deploy.queries import REPO_ROOT, RULES_PATH, alert_queries, dashboard_queries
from tests.e2e.conftest import Stack, Worker, new_stack, publish_raw

PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
JOB = "segmind-queue"

#: Alert expressions this run makes true.
FIRING_ALERTS = {
    "SegmindCreditsExhaustedWithin24h": "$30 of credits, ~$10 spent in a minute",
    "SegmindCreditsExhaustedWithin6h": "the same burn rate",
    "SegmindRateLimitedRatioHigh": "ten submits answered 429",
    "SegmindRequestsRejected": "five requests naming no workflow",
    "SegmindDeadLetterQueueGrowing": "a request without reply_to and a broken poll message",
}
#: Alert expressions this run leaves empty, and why.
QUIET_ALERTS = {
    "SegmindCreditsLow": "about $20 remain, above the $5 floor",
    "SegmindBudgetBlocked": "no credit floor or spend cap is set",
    "SegmindTenantNearDailyCap": "no TENANTS_FILE: no tenant has a daily cap",
    "SegmindResultsDeadLettered": "every reply queue of this run takes its results",
    "SegmindCreditsStale": "the credits are read every second",
    "SegmindCreditsNeverRead": "the credits were read",
    "SegmindJobsStuck": "every job ended",
    "SegmindJobFailureRatioHigh": "one failure in five jobs is under the 10-job minimum",
    "SegmindWorkerDown": "the worker is up",
    "SegmindWorkerAbsent": "the worker is scraped",
    "SegmindLedgerReplicasShort": "LEDGER_MIN_REPLICAS is 0: no ledger write waits for replicas",
}
#: Panel queries (by a part of their source) this run leaves empty, and why.
EMPTY_PANELS: dict[str, str] = {
    "daily cap, waiting in line' B": "no TENANTS_FILE: no tenant has a daily cap",
    "'Output copies: files, bytes and failures' C": "no OUTPUT_STORE: no copy fails",
}


@dataclass
class Prometheus:
    """A Prometheus server of the test's own."""

    url: str
    process: subprocess.Popen[bytes]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr``.

        Raises:
            AssertionError: Prometheus refused the expression.
        """
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = reply.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``, or ``None`` when it has no data."""
        samples = self.query(expr)
        return float(samples[0]["value"][1]) if samples else None


def start_prometheus(binary: str, directory: Path, targets: Path) -> Prometheus:
    """Prometheus with the shipped config and rules, scraping every second the target that
    ``add_target`` writes to ``targets`` (file-based discovery: Prometheus hands the targets
    it discovers to its scrapes only every 5 s, so it is started before the worker is, and
    the worker's start takes none of the 5 s before the first scrape)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (scrape,) = (job for job in config["scrape_configs"] if job["job_name"] == JOB)
    scrape.pop("scrape_interval", None)
    scrape.pop("static_configs", None)
    scrape["file_sd_configs"] = [{"files": [str(targets)]}]
    config["rule_files"] = [str(RULES_PATH)]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError((directory / "prometheus.log").read_text())
        try:
            return httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout_s=60, interval_s=0.1, message="Prometheus to be ready")
    return server


def add_target(targets: Path, target: str) -> None:
    """Have the Prometheus of ``targets`` scrape ``target`` (written whole at once)."""
    partial = targets.with_suffix(".tmp")
    partial.write_text(json.dumps([{"targets": [target]}]))
    partial.replace(targets)


@dataclass
class Observed:
    """What the run did, as its producer saw it."""

    stack: Stack
    worker: Worker
    prometheus: Prometheus
    results: dict[str, Result]
    sim_stats: dict[str, Any]


@pytest.fixture(scope="module")
def observed(
    amqp_url: str,
    redis_url: str,
    simulator: RunningSimulator,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Observed]:
    binary = prometheus_tool("prometheus")
    directory = tmp_path_factory.mktemp("observability")
    simulator.reset(credits=30.0)
    simulator.add_faults(
        {"endpoint": "submit", "status": 429, "count": 10, "headers": {"retry-after": "0"}},
        {"job": "fail", "count": 1, "message": "the GPU caught fire"},
    )
    stack = new_stack(amqp_url, redis_url, simulator, namespace, directory)
    prometheus: Prometheus | None = None
    targets = directory / "targets.json"
    try:
        prometheus = start_prometheus(binary, directory, targets)
        worker = stack.start_worker(
            processes=2, METRICS_REFRESH_S="0.5", SEGMIND_CREDITS_INTERVAL_S="1"
        )
        add_target(targets, f"127.0.0.1:{worker.metrics_port}")
        dead_letters = wire.dead_letter_queue(stack.requests_queue)
        # The dead-letter queues' depth is scraped at 0 before anything lands there.
        wait_until(
            lambda: (
                prometheus is not None
                and prometheus.query(f'segmind_queue_messages{{queue="{dead_letters}"}}')
            ),
            timeout_s=30,
            interval_s=0.2,
            message="the first scrape of the queue depths",
        )
        seeds = [
            {"workflow": workflow.name, "inputs": workflow.default_inputs()}
            for workflow in default_catalog()
        ]
        invalid = [{"workflow": f"no-such-workflow-{n}"} for n in range(5)]
        results = stack.run(*seeds, *invalid)
        # Not a request object: nowhere to answer, so it is dead-lettered.
        unanswerable = wire.request_envelope({}, queue_name=stack.requests_queue)
        unanswerable["args"] = [["not", "an", "object"]]
        publish_raw(amqp_url, stack.requests_queue, unanswerable)
        publish_raw(
            amqp_url,
            stack.polls_queue,
            {
                "queue_name": stack.polls_queue,
                "actor_name": wire.POLL_ACTOR,
                "args": ["not", "a", "poll"],
                "kwargs": {},
                "options": {},
                "message_id": str(uuid.uuid4()),
                "message_timestamp": 0,
            },
        )
        total = len(seeds) + len(invalid) + 1
        wait_until(
            lambda: (
                prometheus is not None
                and prometheus.value("sum(segmind_jobs_total)") == total
                and prometheus.value('sum(segmind_queue_messages{queue=~".+[.]XQ"})') == 2
                and (prometheus.value("max(segmind_credits_remaining)") or 30) < 30
            ),
            timeout_s=60,
            interval_s=0.2,
            message="Prometheus to see every job, both dead letters and the spend",
        )
        yield Observed(stack, worker, prometheus, results, simulator.stats())
    finally:
        if prometheus is not None:
            prometheus.process.terminate()
            prometheus.process.wait(timeout=30)
        stack.cleanup()
        simulator.reset()


def test_the_endpoint_adds_up_both_processes(observed: Observed) -> None:
    """The worker's own endpoint, read directly: the figures match what happened."""
    text = httpx.get(observed.worker.metrics_url, timeout=10).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def total(name: str, **labels: str) -> float:
        return sum(
            value
            for (sample, sample_labels), value in samples.items()
            if sample == name and set(labels.items()) <= set(sample_labels)
        )

    results = observed.results.values()
    by_status = {status: sum(r.status is status for r in results) for status in Status}
    assert by_status[Status.COMPLETED] == 4
    assert by_status[Status.FAILED] == 1
    for status in (Status.COMPLETED, Status.FAILED):
        assert total("segmind_jobs_total", status=status.value) == by_status[status]
    # Five answered REJECTED, and one dead-lettered: it could not even name a reply_to.
    assert total("segmind_jobs_total", status="REJECTED") == 6
    assert total("segmind_jobs_total", workflow="unknown") == 6
    spent = sum(r.cost_usd or 0 for r in results)
    assert total("segmind_credits_spent_usd_total") == pytest.approx(spent)
    stats = observed.sim_stats
    assert total("segmind_rate_limited_total", endpoint="submit") == stats["rate_limited"] == 10
    assert total("segmind_http_requests_total", endpoint="submit", code="200") == 5
    assert total("segmind_http_requests_total", endpoint="poll") == stats["polls"]
    assert total("segmind_polls_per_job_sum") == stats["polls"]
    assert total("segmind_generation_duration_seconds_count") == 4
    assert total("segmind_queue_wait_seconds_count") == 5
    assert total("segmind_end_to_end_seconds_count") == 5
    assert total("segmind_jobs_in_flight") == 0
    assert total("segmind_credits_reserved_usd") == 0
    # Dramatiq's middleware counts the messages of both processes in the same place.
    assert total("dramatiq_messages_total", actor_name=wire.SUBMIT_ACTOR) >= 11
    assert total("dramatiq_message_rejects_total", actor_name=wire.POLL_ACTOR) == 1


def test_the_shipped_rules_load_and_evaluate_cleanly(observed: Observed) -> None:
    reply = httpx.get(f"{observed.prometheus.url}/api/v1/rules", timeout=10).json()
    rules = [rule for group in reply["data"]["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == set(FIRING_ALERTS) | set(QUIET_ALERTS)
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert broken == {}


@pytest.mark.parametrize("query", alert_queries(), ids=lambda query: query.source)
def test_every_alert_expression(observed: Observed, query: Any) -> None:
    name = query.source.removeprefix("alert ")
    samples = observed.prometheus.query(query.expr)
    if name in FIRING_ALERTS:
        assert samples, f"{name} should fire: {FIRING_ALERTS[name]}"
    else:
        assert name in QUIET_ALERTS, f"{name}: say whether this run makes it fire"
        assert samples == [], f"{name} should be quiet: {QUIET_ALERTS[name]}"


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda query: query.source)
def test_every_dashboard_query(observed: Observed, query: Any) -> None:
    samples = observed.prometheus.query(query.expr)
    reason = next((why for part, why in EMPTY_PANELS.items() if part in query.source), None)
    if reason is None:
        assert samples, f"{query.source} returned no data: {query.expr}"
    else:
        assert samples == [], f"{query.source} was expected empty ({reason})"
