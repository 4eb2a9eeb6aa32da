"""The metrics: what each event records, and multiprocess mode across real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from producers.contract import ErrorCode, ErrorInfo, Output, Result, Status, Timings
from worker.metrics import UNKNOWN_WORKFLOW, Metrics

WORKFLOWS = ("sketch-maker", "product-ad")
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def result(
    status: Status,
    *,
    workflow: str = "sketch-maker",
    cost_usd: float | None = 0.1006,
    submitted: bool = True,
    polls: int = 4,
    error: ErrorInfo | None = None,
) -> Result:
    return Result(
        request_id="r1",
        workflow=workflow,
        status=status,
        cost_usd=cost_usd,
        polls=polls,
        error=error,
        outputs=[Output(keyname="image", type="image", data="https://x/1.png")]
        if status is Status.COMPLETED
        else None,
        timings=Timings(
            queued_at=T0,
            submitted_at=T0 if submitted else None,
            completed_at=T0,
            queue_wait_s=0.25 if submitted else None,
            generation_s=41.5 if submitted else None,
            total_s=41.75,
        ),
    )


def test_a_completed_job_counts_its_spend_latencies_and_polls() -> None:
    metrics = Metrics(WORKFLOWS)
    metrics.job_ended(result(Status.COMPLETED))
    labels = {"workflow": "sketch-maker"}
    mine = {**labels, "tenant": "default"}
    assert value(metrics, "segmind_jobs_total", status="COMPLETED", **mine) == 1
    assert value(metrics, "segmind_credits_spent_usd_total", **mine) == pytest.approx(0.1006)
    assert value(metrics, "segmind_generation_duration_seconds_sum", **labels) == 41.5
    assert value(metrics, "segmind_generation_duration_seconds_bucket", le="45.0", **labels) == 1
    assert value(metrics, "segmind_generation_duration_seconds_bucket", le="30.0", **labels) == 0
    assert value(metrics, "segmind_end_to_end_seconds_sum", **labels) == 41.75
    assert value(metrics, "segmind_polls_per_job_sum", **labels) == 4


def test_a_failed_job_counts_its_error_code_but_no_generation_time() -> None:
    metrics = Metrics(WORKFLOWS)
    info = ErrorInfo(code=ErrorCode.GENERATION_FAILED, message="boom")
    metrics.job_ended(result(Status.FAILED, error=info))
    labels = {"workflow": "sketch-maker"}
    assert value(metrics, "segmind_jobs_total", status="FAILED", tenant="default", **labels) == 1
    assert value(metrics, "segmind_job_errors_total", code="generation_failed", **labels) == 1
    assert value(metrics, "segmind_generation_duration_seconds_count", **labels) == 0
    assert value(metrics, "segmind_end_to_end_seconds_count", **labels) == 1


def test_an_unknown_outcome_adds_no_spend() -> None:
    metrics = Metrics(WORKFLOWS)
    info = ErrorInfo(code=ErrorCode.SUBMIT_OUTCOME_UNKNOWN, message="504")
    metrics.job_ended(result(Status.FAILED, cost_usd=None, submitted=False, error=info))
    spent = value(
        metrics, "segmind_credits_spent_usd_total", workflow="sketch-maker", tenant="default"
    )
    assert spent == 0
    # Never accepted by Segmind: no polls to count.
    assert value(metrics, "segmind_polls_per_job_count", workflow="sketch-maker") == 0


def test_a_rejected_request_naming_no_known_workflow_is_labelled_unknown() -> None:
    metrics = Metrics(WORKFLOWS)
    info = ErrorInfo(code=ErrorCode.UNKNOWN_WORKFLOW, message="no such workflow")
    rejected = result(
        Status.REJECTED, workflow="x" * 300, cost_usd=0.0, submitted=False, error=info
    )
    metrics.job_ended(rejected)
    labels = {"workflow": UNKNOWN_WORKFLOW}
    assert value(metrics, "segmind_jobs_total", status="REJECTED", tenant="default", **labels) == 1
    assert value(metrics, "segmind_job_errors_total", code="unknown_workflow", **labels) == 1
    assert value(metrics, "segmind_end_to_end_seconds_count", **labels) == 0


def test_segmind_calls_by_endpoint_and_code() -> None:
    metrics = Metrics(WORKFLOWS)
    metrics.http_response("submit", 200, 0.2)
    metrics.http_response("submit", 429, 0.01)
    metrics.http_response("poll", None, 5.0)
    assert value(metrics, "segmind_http_requests_total", endpoint="submit", code="200") == 1
    assert value(metrics, "segmind_http_requests_total", endpoint="submit", code="429") == 1
    assert value(metrics, "segmind_http_requests_total", endpoint="poll", code="error") == 1
    assert value(metrics, "segmind_rate_limited_total", endpoint="submit") == 1
    assert value(metrics, "segmind_rate_limited_total", endpoint="poll") == 0
    assert value(metrics, "segmind_http_request_duration_seconds_count", endpoint="submit") == 2


def test_queue_wait_is_observed_when_segmind_accepts() -> None:
    metrics = Metrics(WORKFLOWS)
    metrics.job_accepted("product-ad", 0.003, "acme")
    metrics.job_accepted("product-ad", -1.0, "acme")  # clocks disagree: counted as 0
    labels = {"workflow": "product-ad", "tenant": "acme"}
    assert value(metrics, "segmind_queue_wait_seconds_bucket", le="0.005", **labels) == 2
    assert value(metrics, "segmind_queue_wait_seconds_sum", **labels) == pytest.approx(0.003)


def test_every_known_series_starts_at_zero() -> None:
    """So that ``rate()`` sees a workflow's first job (a series born at 1 hides it)."""
    metrics = Metrics(WORKFLOWS)
    for workflow in (*WORKFLOWS, UNKNOWN_WORKFLOW):
        mine = {"workflow": workflow, "tenant": "default"}
        for status in Status:
            assert value(metrics, "segmind_jobs_total", status=status.value, **mine) == 0
        assert value(metrics, "segmind_credits_spent_usd_total", **mine) == 0
        assert value(metrics, "segmind_generation_duration_seconds_count", workflow=workflow) == 0
    for endpoint in ("submit", "poll", "credits"):
        assert value(metrics, "segmind_rate_limited_total", endpoint=endpoint) == 0


def test_in_flight_gauges_read_zero_for_workflows_without_jobs() -> None:
    metrics = Metrics(WORKFLOWS)
    counts = {("sketch-maker", "acme"): 2}
    metrics.set_in_flight(counts, {"sketch-maker": 30.0}, reserved_usd=0.2)
    assert value(metrics, "segmind_jobs_in_flight", workflow="sketch-maker", tenant="acme") == 2
    metrics.set_in_flight({}, {}, reserved_usd=0.0)
    for workflow in WORKFLOWS:
        assert value(metrics, "segmind_jobs_in_flight", workflow=workflow, tenant="default") == 0
        assert value(metrics, "segmind_oldest_job_age_seconds", workflow=workflow) == 0
    # A tenant whose last job ended reads 0, not its last count.
    assert value(metrics, "segmind_jobs_in_flight", workflow="sketch-maker", tenant="acme") == 0
    assert value(metrics, "segmind_credits_reserved_usd") == 0


def test_a_flood_of_tenant_names_keeps_the_series_bounded() -> None:
    metrics = Metrics(WORKFLOWS, tenant_labels_max=5)
    for n in range(10_000):
        ended = result(Status.COMPLETED).model_copy(update={"tenant": f"tenant-{n}"})
        metrics.job_ended(ended)
    families = {
        sample.labels.get("tenant")
        for family in metrics.registry.collect()
        for sample in family.samples
        if family.name == "segmind_jobs"
    }
    # default, the first four seen, and "other" for the 9,996 after them.
    assert families == {"default", "tenant-0", "tenant-1", "tenant-2", "tenant-3", "other"}
    other = {"workflow": "sketch-maker", "tenant": "other"}
    assert value(metrics, "segmind_jobs_total", status="COMPLETED", **other) == 9_996
    assert value(metrics, "segmind_credits_spent_usd_total", **other) == pytest.approx(
        9_996 * 0.1006
    )


def test_tenant_gauges_report_spend_caps_and_the_line() -> None:
    metrics = Metrics(WORKFLOWS)
    metrics.set_tenants(
        spent_today_usd={"acme": 4.5}, daily_caps_usd={"acme": 5.0}, waiting={"beta": 3}
    )
    assert value(metrics, "segmind_tenant_spent_today_usd", tenant="acme") == 4.5
    assert value(metrics, "segmind_tenant_daily_cap_usd", tenant="acme") == 5.0
    assert value(metrics, "segmind_admission_waiting", tenant="beta") == 3
    metrics.set_tenants(spent_today_usd={}, daily_caps_usd={}, waiting={})
    assert value(metrics, "segmind_admission_waiting", tenant="beta") == 0
    assert value(metrics, "segmind_tenant_spent_today_usd", tenant="acme") == 0
    assert value(metrics, "segmind_tenant_daily_cap_usd", tenant="acme") == 0  # cap removed


# ---------------------------------------------------------------- multiprocess mode

_WORKER_PROCESS = textwrap.dedent(
    """
    import sys
    from producers.contract import Result, Status
    from worker.metrics import Metrics

    metrics = Metrics(["sketch-maker"])
    metrics.job_ended(Result(request_id=sys.argv[1], workflow="sketch-maker",
                             status=Status.FAILED, cost_usd=0.5,
                             error={"code": "generation_failed", "message": "x"}))
    metrics.set_credits(float(sys.argv[2]), 1.0, float(sys.argv[2]))
    """
)


def run_python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_several_processes_add_up_at_one_endpoint(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for request_id, credits in (("a", "10"), ("b", "7")):
        done = run_python(_WORKER_PROCESS, request_id, credits, env=env)
        assert done.returncode == 0, done.stderr
    collect = textwrap.dedent(
        """
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """
    )
    exposed = run_python(collect, env=env)
    assert exposed.returncode == 0, exposed.stderr
    lines = exposed.stdout.splitlines()
    # Counters add up across processes; a fleet gauge reports the latest reading.
    assert (
        'segmind_jobs_total{status="FAILED",tenant="default",workflow="sketch-maker"} 2.0' in lines
    )
    assert 'segmind_credits_spent_usd_total{tenant="default",workflow="sketch-maker"} 1.0' in lines
    assert "segmind_credits_remaining 7.0" in lines


def test_importing_prometheus_client_before_the_directory_is_set_is_refused(
    tmp_path: Path,
) -> None:
    code = textwrap.dedent(
        f"""
        import os
        import prometheus_client
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(tmp_path)!r}
        from worker.metrics import Metrics, MetricsImportError
        try:
            Metrics(["sketch-maker"])
        except MetricsImportError as exc:
            print("refused:", exc)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = run_python(code, env=env)
    assert done.returncode == 0, done.stderr
    assert "refused: prometheus_client was imported before" in done.stdout
