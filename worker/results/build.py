"""Building a job's result from its ledger record: pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from producers.contract import ErrorInfo, Output, Result, Status, Timings
from worker.ledger import Record


def build_result(
    record: Record,
    status: Status,
    *,
    completed_at: float,
    outputs: list[Output] | None = None,
    error: ErrorInfo | None = None,
    charged: bool | None = None,
) -> Result:
    """The terminal result of a request.

    Args:
        record: the request's record as it stands when it ends.
        status: how it ended.
        completed_at: when it ended (epoch seconds).
        outputs: the generation's outputs (COMPLETED).
        error: why it did not complete (any other status).
        charged: whether Segmind charged for it: ``True`` once it accepted the job,
            ``False`` when it certainly did not, ``None`` when unknown (a POST whose
            outcome is unknown). Defaults to whether the record has a submission.

    Returns:
        The result; ``cost_usd`` is Segmind's reported cost, else the catalog price, for a
        charged job, 0 for an uncharged one, ``None`` when unknown.
    """
    job = record.job
    if charged is None and record.submitted_at is not None:
        charged = True
    if charged is None:
        cost = None
    elif charged:
        cost = record.cost_usd if record.cost_usd is not None else job.price_usd
    else:
        cost = 0.0
    submitted = record.submitted_at
    return Result(
        request_id=job.request_id,
        workflow=job.workflow,
        workflow_id=job.workflow_id,
        status=status,
        outputs=outputs,
        error=error,
        segmind_request_id=record.segmind_request_id or None,
        cost_usd=cost,
        polls=record.polls,
        tenant=job.tenant,
        metadata=job.metadata,
        timings=Timings(
            queued_at=_utc(job.queued_at),
            submitted_at=_utc(submitted),
            completed_at=_utc(completed_at),
            queue_wait_s=_span(job.queued_at, submitted),
            generation_s=_span(submitted, completed_at),
            total_s=_span(job.queued_at, completed_at),
        ),
    )


def _utc(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)


def _span(start: float | None, end: float | None) -> float | None:
    # Clocks of different hosts may disagree slightly: a negative span is reported as 0.
    return None if start is None or end is None else round(max(0.0, end - start), 3)


def charged_after_final_submit_error(http_status: int | None) -> bool | None:
    """Whether Segmind charged for a submit that ended in a final error.

    Args:
        http_status: the status of Segmind's answer, ``None`` when there was none.

    Returns:
        ``None`` (unknown: probably charged) when Segmind answered 2xx: it accepted the
        job, but the answer could not be used (a malformed or too large body); ``False``
        for a refusal (4xx), which creates no job.
    """
    if http_status is not None and 200 <= http_status < 300:
        return None
    return False
