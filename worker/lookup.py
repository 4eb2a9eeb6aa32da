"""Where a request stands, from its ledger record alone (``segmind-queue get``): a pure
function of the record, the workflow's learned durations and the clock; no Segmind call."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from worker.ledger import Record, State
from worker.polling import History, expected_completion


def describe(
    record: Record, *, history: History, now: float, time_scale: float = 1.0
) -> dict[str, Any]:
    """The request's state as JSON-ready fields.

    Args:
        record: its ledger record.
        history: its workflow's learned durations (for the ETA).
        now: the current time (epoch seconds).
        time_scale: ``SEGMIND_TIME_SCALE`` (scales the catalog's expected duration).

    Returns:
        ``request_id``, ``workflow``, ``state`` (the ledger's), ``segmind_status`` (the
        last poll's), ``segmind_request_id``, ``polls``, ``attempts`` (POSTs tried),
        ``queued_at`` / ``submitted_at`` / ``eta`` (ISO 8601, UTC; ``eta`` while the job
        runs, from the learned durations), ``eta_s`` (seconds from now; negative when
        overdue), ``cost_usd`` and, once DONE, ``result`` and ``published``. Unknown
        values are ``None``.
    """
    job = record.job
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "workflow": job.workflow,
        "state": record.state.value,
        "segmind_status": record.last_status or None,
        "segmind_request_id": record.segmind_request_id or None,
        "polls": record.polls,
        "attempts": record.attempts,
        "queued_at": _iso(job.queued_at),
        "submitted_at": _iso(record.submitted_at),
        "eta": None,
        "eta_s": None,
        "cost_usd": record.cost_usd,
    }
    if record.state is State.SUBMITTED:
        eta = completion_eta(record, history, time_scale)
        if eta is not None:
            fields["eta"], fields["eta_s"] = _iso(eta), round(eta - now, 1)
    if record.state is State.DONE and record.result:
        result = json.loads(record.result)
        fields["result"] = result
        fields["published"] = record.published
        fields["cost_usd"] = result.get("cost_usd")
    return fields


def completion_eta(record: Record, history: History, time_scale: float = 1.0) -> float | None:
    """When a submitted job will likely end (epoch seconds; ``None`` before submission or
    when nothing is known of its workflow's durations)."""
    if record.submitted_at is None:
        return None
    expected_s = record.job.expected_duration_s
    scaled = None if expected_s is None else expected_s * time_scale
    return expected_completion(record.submitted_at, history, scaled)


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")
