"""Building results from ledger records (``worker.results.build``): pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from producers.contract import ErrorCode, ErrorInfo, Output, Status
from worker.ledger import Job, Record, State
from worker.results.build import build_result, charged_after_final_submit_error

T0 = 1_800_000_000.0


def record(**fields: object) -> Record:
    job = Job(
        request_id="r1",
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        reply_to="replies",
        queued_at=T0,
        deadline_s=2700,
        price_usd=0.1006,
        metadata={"k": "v"},
    )
    return Record(job=job, **fields)  # type: ignore[arg-type]


def test_a_completed_job() -> None:
    done = record(state=State.SUBMITTED, submitted_at=T0 + 2, segmind_request_id="s1", polls=3)
    output = Output(keyname="sketch", type="image", data="https://x/y.png")
    result = build_result(done, Status.COMPLETED, completed_at=T0 + 12.5, outputs=[output])
    assert result.status is Status.COMPLETED
    assert result.outputs == [output]
    assert result.cost_usd == 0.1006
    assert result.segmind_request_id == "s1"
    assert result.polls == 3
    assert result.metadata == {"k": "v"}
    assert result.timings.queued_at == datetime.fromtimestamp(T0, UTC)
    assert (result.timings.queue_wait_s, result.timings.generation_s) == (2.0, 10.5)
    assert result.timings.total_s == 12.5


def test_the_reported_cost_wins_over_the_catalog_price() -> None:
    done = record(submitted_at=T0 + 1, cost_usd=0.25)
    error = ErrorInfo(code=ErrorCode.GENERATION_FAILED, message="x")
    assert build_result(done, Status.FAILED, completed_at=T0 + 2, error=error).cost_usd == 0.25


@pytest.mark.parametrize(("charged", "cost"), [(False, 0.0), (None, None), (True, 0.1006)])
def test_cost_of_a_job_never_accepted(charged: bool | None, cost: float | None) -> None:
    error = ErrorInfo(code=ErrorCode.SUBMIT_OUTCOME_UNKNOWN, message="x")
    result = build_result(record(), Status.FAILED, completed_at=T0, error=error, charged=charged)
    assert result.cost_usd == cost
    assert result.timings.submitted_at is None
    assert result.timings.generation_s is None


def test_a_clock_running_behind_never_gives_a_negative_duration() -> None:
    done = record(submitted_at=T0 - 5)
    error = ErrorInfo(code=ErrorCode.EXPIRED, message="x")
    result = build_result(done, Status.FAILED, completed_at=T0 - 10, error=error)
    assert result.timings.queue_wait_s == 0.0
    assert result.timings.generation_s == 0.0


@pytest.mark.parametrize(
    ("http_status", "charged"),
    [(200, None), (201, None), (400, False), (404, False), (406, False), (None, False)],
)
def test_charged_after_a_final_submit_error(http_status: int | None, charged: bool | None) -> None:
    """A 2xx whose body could not be used means Segmind took (and charged) the job: the
    charge is unknown, never reported as 0; a refusal created no job."""
    assert charged_after_final_submit_error(http_status) is charged
