"""The simulator's state without HTTP (``simulator.state``): jobs, credits, auth and
limits, reset, seeds and counters.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import SecretStr

from producers.catalog import Workflow, default_catalog
from simulator.config import HttpFault, JobFault, SimulatorConfig
from simulator.state import (
    InsufficientCreditsError,
    SimulatorState,
    UnknownWorkflowIdError,
)

KEY = "state-test-key-0123456789"
T0 = 1_800_000_000.0
RAW_ID = "0123456789abcdef01234567-v3"


class FakeClock:
    """Epoch seconds that move only when told."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_state(clock: FakeClock | None = None, **overrides: Any) -> SimulatorState:
    fields: dict[str, Any] = {
        "api_key": SecretStr(KEY),
        "seed": 7,
        "rpm": 0,
        "time_scale": 1.0,
        **overrides,
    }
    return SimulatorState(SimulatorConfig(**fields), clock=clock or FakeClock())


def workflow(name: str) -> Workflow:
    found = default_catalog().get(name)
    assert found is not None
    return found


# ----------------------------------------------------------------------------- jobs


def test_job_goes_queued_processing_completed_on_its_timeline() -> None:
    clock = FakeClock()
    state = make_state(clock, duration_spread=0.0, time_scale=0.5)
    job = state.create_job(workflow("sketch-maker").workflow_id, "req-1")
    assert job.timeline.done_at == pytest.approx(T0 + 30.0)  # 60 s x 0.5
    assert job.poll_body(clock()) == {"status": "QUEUED", "message": "Request in queue"}
    clock.now = job.timeline.processing_at
    assert job.poll_body(clock()) == {"status": "PROCESSING", "output": ""}
    clock.now = job.timeline.done_at - 0.001
    assert job.status_at(clock()) == "PROCESSING"
    clock.now = job.timeline.done_at
    body = job.poll_body(clock())
    assert body["status"] == "COMPLETED"
    assert isinstance(body["output"], str)
    items = json.loads(body["output"])
    assert items[0]["keyname"] == "image"
    assert items[0]["value"]["type"] == "image"


def test_failed_jobs_use_both_error_fields_across_a_seeded_run() -> None:
    state = make_state(fail_rate=1.0)
    fields = set()
    for index in range(30):
        job = state.create_job(RAW_ID, f"req-{index}")
        body = job.poll_body(job.timeline.done_at)
        assert body["status"] == "FAILED"
        (field,) = set(body) - {"status"}
        assert body[field]
        fields.add(field)
    assert fields == {"error", "error_message"}


def test_fail_job_fault_forces_the_error_field_and_message() -> None:
    state = make_state()
    state.faults.add([JobFault(job="fail", error_field="error", message="boom", count=1)])
    job = state.create_job(RAW_ID, "req")
    assert job.poll_body(job.timeline.done_at) == {"status": "FAILED", "error": "boom"}
    assert state.stats()["faults_served"] == {"job:fail": 1}
    assert state.create_job(RAW_ID, "req-2").outcome == "COMPLETED"


def test_unknown_status_forever_or_while_running() -> None:
    state = make_state()
    state.faults.add(
        [
            JobFault(job="status", status="CANCELLED", count=1),
            JobFault(job="status", status="PAUSED", forever=False, count=1),
        ]
    )
    forever = state.create_job(RAW_ID, "a")
    running = state.create_job(RAW_ID, "b")
    assert forever.status_at(T0) == "CANCELLED"
    assert forever.status_at(T0 + 10**6) == "CANCELLED"
    assert forever.done_at == forever.timeline.done_at  # its run ends, in that status
    assert forever.outcome == "CANCELLED"
    assert forever.poll_body(T0)["status"] == "CANCELLED"
    assert running.status_at(T0) == "PAUSED"
    assert running.status_at(running.timeline.done_at) == "COMPLETED"


def test_never_finish_stays_processing() -> None:
    state = make_state()
    state.faults.add([JobFault(job="never_finish")])
    job = state.create_job(RAW_ID, "a")
    assert job.status_at(job.timeline.processing_at + 10**6) == "PROCESSING"
    assert job.to_json(T0)["done_at"] is None


def test_output_as_list_is_not_a_string() -> None:
    state = make_state()
    state.faults.add([JobFault(job="output_as_list", count=1)])
    job = state.create_job(RAW_ID, "a")
    output = job.poll_body(job.timeline.done_at)["output"]
    assert isinstance(output, list)
    assert output[0]["value"]["type"] == "image"


def test_expiry_is_retention_times_time_scale() -> None:
    clock = FakeClock()
    state = make_state(clock, retention_s=100.0, time_scale=0.5)
    job = state.create_job(RAW_ID, "a")
    clock.advance(50.0)
    assert state.find_job(job.request_id) is job
    clock.advance(0.01)
    assert state.find_job(job.request_id) is None
    assert state.jobs_json()[0]["expired"] is True


# ----------------------------------------------------------------------- money


def test_each_job_charges_its_catalog_price() -> None:
    state = make_state(credits=10.0)
    state.create_job(workflow("scene-script").workflow_id, "a")
    state.create_job(workflow("sketch-maker").workflow_id, "b")
    assert state.credits_usd == pytest.approx(10.0 - 4.9731 - 0.1006)
    assert state.stats()["credits_charged_usd"] == pytest.approx(5.0737)


def test_unknown_price_uses_the_default_price() -> None:
    state = make_state(default_price_usd=0.5)
    assert state.create_job(workflow("product-shot").workflow_id, "a").price_usd == 0.5
    assert state.create_job(RAW_ID, "b").price_usd == 0.5


def test_insufficient_credits_refuses_without_charging() -> None:
    state = make_state(credits=1.0)
    with pytest.raises(InsufficientCreditsError):
        state.create_job(workflow("scene-script").workflow_id, "a")
    assert state.credits_usd == 1.0
    assert state.jobs == {}
    assert state.stats()["jobs_by_client_request_id"] == {}


def test_an_exact_balance_pays_for_a_job() -> None:
    state = make_state(credits=0.1006)
    state.create_job(workflow("sketch-maker").workflow_id, "a")
    assert state.credits_usd == 0.0


@pytest.mark.parametrize("bad", ["not-a-workflow", "0123456789ABCDEF01234567-v1", "abc-v1"])
def test_malformed_workflow_id_is_unknown(bad: str) -> None:
    with pytest.raises(UnknownWorkflowIdError):
        make_state().create_job(bad, "a")


def test_strict_workflows_refuses_raw_ids() -> None:
    state = make_state(strict_workflows=True)
    with pytest.raises(UnknownWorkflowIdError):
        state.create_job(RAW_ID, "a")
    state.create_job(workflow("sketch-maker").workflow_id, "b")


# ---------------------------------------------------------------- auth and limits


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"x-api-key": KEY}, True),
        ({"authorization": f"Bearer {KEY}"}, True),
        ({"authorization": f"bearer {KEY}"}, True),
        ({}, False),
        ({"x-api-key": KEY + "x"}, False),
        ({"x-api-key": ""}, False),
        ({"authorization": KEY}, False),
        ({"authorization": f"Basic {KEY}"}, False),
    ],
)
def test_authenticate(headers: dict[str, str], ok: bool) -> None:
    identity = make_state().authenticate(headers)
    assert (identity is not None) is ok
    assert identity is None or KEY not in identity


def test_polls_can_be_exempt_from_the_rate_limit() -> None:
    state = make_state(rpm=1, rate_limit_polls=False)
    assert state.rate_limit("id", "submit") is None
    assert state.rate_limit("id", "submit") is not None
    assert all(state.rate_limit("id", "poll") is None for _ in range(10))
    assert state.stats()["rate_limited"] == 1


def test_rate_limit_headers_with_retry_after() -> None:
    clock = FakeClock(1_800_000_030.0)
    state = make_state(clock, rpm=1, retry_after=True)
    headers = state.rate_limit_headers()
    assert headers["Retry-After"] == "30"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", headers["x-rate-limit-reset-at-utc"]
    )


# ----------------------------------------------------------------- reset, seeds, counters


def test_same_seed_same_jobs() -> None:
    def plan(state: SimulatorState) -> list[tuple[float, str | None, str]]:
        jobs = [state.create_job(RAW_ID, str(i)) for i in range(5)]
        return [(j.timeline.done_at, j.outcome, j.error_field) for j in jobs]

    assert plan(make_state(fail_rate=0.5)) == plan(make_state(fail_rate=0.5))


def test_reset_forgets_everything_and_applies_overrides_until_the_next_reset() -> None:
    state = make_state(credits=5.0)
    state.create_job(RAW_ID, "a")
    state.saw_submit("a")
    state.faults.add([HttpFault(status=500)])
    config = state.reset({"credits": 1.0, "rpm": 3})
    assert (config.credits, config.rpm) == (1.0, 3)
    assert state.jobs == {}
    assert state.credits_usd == 1.0
    assert state.stats()["submits"] == 0
    assert state.faults.snapshot() == []
    state.reset()
    assert (state.config.credits, state.config.rpm) == (5.0, 0)


def test_reset_rejects_bad_overrides_and_changes_nothing() -> None:
    state = make_state()
    state.create_job(RAW_ID, "a")
    with pytest.raises(ValueError, match="rpm"):
        state.reset({"rpm": -1})
    with pytest.raises(ValueError, match="port"):
        state.reset({"port": 1})
    assert len(state.jobs) == 1


def test_counters_per_client_request_and_job() -> None:
    state = make_state()
    for _ in range(3):
        state.saw_submit("req-a")
    state.saw_submit("req-b")
    job = state.create_job(RAW_ID, "req-a")
    state.saw_poll(job.request_id)
    state.saw_poll(job.request_id)
    state.saw_poll("f" * 32)  # unknown: counted in total only
    stats = state.stats()
    assert stats["submits"] == 4
    assert stats["submits_by_client_request_id"] == {"req-a": 3, "req-b": 1}
    assert stats["max_submits_per_request"] == 3
    assert stats["jobs_by_client_request_id"] == {"req-a": 1}
    assert stats["polls"] == 3
    assert stats["polls_by_job"] == {job.request_id: 2}
    assert state.jobs_json()[0]["polls"] == 2


# ---------------------------------------------------------------------- output files


def test_served_outputs_are_under_the_server_url_once_completed() -> None:
    clock = FakeClock()
    state = make_state(clock, serve_outputs=True, output_bytes={"image": 10})
    job = state.create_job(RAW_ID, "a", server_url="http://127.0.0.1:9999")
    url = job.outputs[0]["value"]["data"]
    name = url.rsplit("/", 1)[1]
    assert url == f"http://127.0.0.1:9999/outputs/{job.request_id}/{name}"
    assert job.files == {name: "image"}
    assert state.output_file_size(job.request_id, name) is None  # not COMPLETED yet
    clock.advance(job.timeline.done_at - clock.now)
    assert state.output_file_size(job.request_id, name) == 10
    assert state.output_file_size(job.request_id, "video.mp4") is None
    assert state.output_file_size("f" * 32, name) is None
    state.reset({"serve_outputs": False})
    assert state.output_file_size(job.request_id, name) is None


def test_outputs_stay_on_segmind_unless_served() -> None:
    state = make_state()
    job = state.create_job(RAW_ID, "a", server_url="http://127.0.0.1:9999")
    assert job.outputs[0]["value"]["data"].startswith("https://images.segmind.com/outputs/")
