"""Progress messages: when a request that asked for them gets one, and what it says. Pure
functions, no I/O (``worker.pipeline`` publishes them, best effort).

A request with ``progress: true`` hears when it is accepted, when Segmind accepted it
(``submitted``), when a poll first finds it PROCESSING, and on the other polls at most once
every ``PROGRESS_INTERVAL_S`` (``polled``), so a fast poll schedule does not flood its reply
queue. The final result is never a progress message.
"""

from __future__ import annotations

from datetime import UTC, datetime

from producers.contract import Progress, ProgressEvent
from worker.ledger import Record
from worker.lookup import completion_eta
from worker.polling import History


def poll_event(
    *,
    status: str,
    first_processing: bool,
    last_progress_at: float | None,
    now: float,
    interval_s: float,
) -> ProgressEvent | None:
    """The progress event a poll that found the job still running publishes, if any.

    Args:
        status: what the poll read (QUEUED, PROCESSING, ...).
        first_processing: whether no earlier poll had found the job PROCESSING.
        last_progress_at: when a poll last published one (``None``: none has).
        now: when the poll was answered (epoch seconds).
        interval_s: the least time between two ``polled`` events.

    Returns:
        ``PROCESSING`` the first time the job is seen PROCESSING (always sent),
        ``POLLED`` when ``interval_s`` has passed since the last one (or there was none),
        else ``None``.
    """
    if status == "PROCESSING" and first_processing:
        return ProgressEvent.PROCESSING
    if last_progress_at is None or now - last_progress_at >= interval_s:
        return ProgressEvent.POLLED
    return None


def build_progress(
    record: Record,
    event: ProgressEvent,
    *,
    now: float,
    history: History,
    time_scale: float = 1.0,
    queue_position: int | None = None,
) -> Progress:
    """The progress message of ``record`` at ``now``.

    Args:
        record: the request's record after the event.
        event: what happened.
        now: when (epoch seconds).
        history: the workflow's learned durations, for the ETA.
        time_scale: ``SEGMIND_TIME_SCALE`` (scales the catalog's expected duration).
        queue_position: requests ahead of it in the admission line, where known.
    """
    job = record.job
    eta = completion_eta(record, history, time_scale)
    return Progress(
        request_id=job.request_id,
        workflow=job.workflow,
        event=event,
        state=record.state.value,
        segmind_status=record.last_status or None,
        segmind_request_id=record.segmind_request_id or None,
        polls=record.polls,
        queue_position=queue_position,
        eta=None if eta is None else datetime.fromtimestamp(eta, UTC),
        eta_s=None if eta is None else round(eta - now, 1),
        at=datetime.fromtimestamp(now, UTC),
    )
