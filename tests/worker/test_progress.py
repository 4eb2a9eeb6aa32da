"""The progress rules: which poll publishes one, and what it says."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from producers.contract import ProgressEvent
from worker.ledger import Job, Record, State
from worker.polling import History
from worker.progress import build_progress, poll_event

NOW = 1_800_000_000.0


def _event(
    status: str = "QUEUED",
    *,
    first_processing: bool = True,
    last: float | None = None,
    now: float = NOW,
    interval_s: float = 10.0,
) -> ProgressEvent | None:
    return poll_event(
        status=status,
        first_processing=first_processing,
        last_progress_at=last,
        now=now,
        interval_s=interval_s,
    )


def test_the_first_poll_publishes_and_later_ones_wait_out_the_interval() -> None:
    assert _event(last=None) is ProgressEvent.POLLED
    assert _event(last=NOW - 9.9) is None
    assert _event(last=NOW - 10.0) is ProgressEvent.POLLED
    assert _event(last=NOW, interval_s=0.0) is ProgressEvent.POLLED


def test_the_first_processing_is_always_told_and_only_once() -> None:
    assert _event("PROCESSING", first_processing=True, last=NOW - 1) is ProgressEvent.PROCESSING
    assert _event("PROCESSING", first_processing=False, last=NOW - 1) is None
    assert _event("PROCESSING", first_processing=False, last=NOW - 11) is ProgressEvent.POLLED


def _record(**changes: object) -> Record:
    job = Job(
        request_id="r1",
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        reply_to="replies",
        queued_at=NOW - 20,
        deadline_s=600,
        expected_duration_s=40.0,
        progress=True,
    )
    return Record(job=job, **changes)  # type: ignore[arg-type]


def test_a_waiting_request_has_no_eta() -> None:
    progress = build_progress(
        _record(), ProgressEvent.ACCEPTED, now=NOW, history=History(), queue_position=3
    )
    assert (progress.event, progress.state, progress.queue_position) == ("accepted", "NEW", 3)
    assert progress.eta is None
    assert progress.eta_s is None
    assert progress.at == datetime.fromtimestamp(NOW, UTC)
    assert "status" not in progress.model_dump()  # never mistaken for a result


@pytest.mark.parametrize(
    ("history", "expected_eta_s"),
    [
        (History(), 40.0 * 0.5 - 10),  # the catalog's duration, scaled
        (History.of([30, 31, 32, 33, 34]), 32.0 - 10),  # the learned median
    ],
)
def test_a_running_job_carries_its_eta(history: History, expected_eta_s: float) -> None:
    record = _record(
        state=State.SUBMITTED,
        submitted_at=NOW - 10,
        segmind_request_id="seg-1",
        polls=2,
        last_status="PROCESSING",
    )
    progress = build_progress(
        record, ProgressEvent.POLLED, now=NOW, history=history, time_scale=0.5
    )
    assert progress.eta_s == pytest.approx(expected_eta_s)
    assert progress.segmind_status == "PROCESSING"
    assert progress.segmind_request_id == "seg-1"
    assert progress.polls == 2
