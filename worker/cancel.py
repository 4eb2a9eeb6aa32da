"""Cancelling a request: the one place a cancel's decision becomes ledger writes and a
CANCELLED result, shared by ``segmind-queue cancel`` and the worker.

Segmind has no cancel call, so what a cancel means depends on where the request stands
(``worker.ledger.cancel_decision``):

- never POSTed (NEW, waiting in the queue, for rate, budget or a retry): it ends CANCELLED,
  ``cost_usd`` 0, and is never POSTed;
- POSTed (SUBMITTED): it is no longer followed, and ends CANCELLED with the error saying
  it was charged and Segmind's id;
- mid-POST (SUBMITTING): the POST's delivery is asked to end it once Segmind answered
  (charged) or the POST certainly failed (unpaid);
- finished (DONE): nothing changes;
- not received by any worker yet: a mark is kept (``LEDGER_TTL_S``), and its first POST
  attempt ends it CANCELLED, unpaid.

Every transition is the ledger's compare-and-set, so a cancel racing a POST either wins
(no POST) or loses (the POST's delivery sees the cancel), never both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from producers.contract import ErrorCode, ErrorInfo, Result, Status
from worker.ledger import (
    CANCEL_FINISHER,
    CancelAction,
    Ledger,
    LedgerError,
    Record,
    cancel_decision,
)
from worker.results.build import build_result
from worker.results.publish import ResultPublisher

#: How many times a cancel reads a record that a worker changed under it again.
_MAX_RACES: Final = 10


class CancelOutcome(StrEnum):
    """What a cancel did (or, with ``dry_run``, would do)."""

    CANCELLED_UNPAID = "cancelled_unpaid"
    CANCELLED_CHARGED = "cancelled_charged"
    REQUESTED = "requested"
    FINISHED = "finished"
    MARKED = "marked"


@dataclass(frozen=True)
class Cancelled:
    """A cancel's outcome for one request.

    Attributes:
        request_id: the request.
        outcome: what happened.
        detail: a sentence for a person.
        result: the CANCELLED result published (the two ``cancelled_*`` outcomes).
        refused: why its reply queue refused the result (it went to the results
            dead-letter queue), else ``None``.
    """

    request_id: str
    outcome: CancelOutcome
    detail: str
    result: Result | None = None
    refused: str | None = None


def cancelled_error(record: Record, *, charged: bool) -> ErrorInfo:
    """The error of a cancelled request: unpaid, or charged with Segmind's id."""
    if not charged:
        return ErrorInfo(
            code=ErrorCode.CANCELLED, message="cancelled before it was submitted; not charged"
        )
    return ErrorInfo(
        code=ErrorCode.CANCELLED,
        message=(
            "cancelled after Segmind accepted it (charged; Segmind has no cancel): "
            f"generation {record.segmind_request_id or '?'} is no longer followed"
        ),
    )


def cancel_request(
    ledger: Ledger,
    results: ResultPublisher | None,
    request_id: str,
    *,
    canceller: str,
    now: float,
    dry_run: bool = False,
) -> Cancelled:
    """Cancel ``request_id`` (see the module docstring) and publish its CANCELLED result.

    Args:
        ledger: the submit ledger.
        results: where the CANCELLED result goes (its reply queue, or the results
            dead-letter queue when that refuses it); ``None`` only with ``dry_run``.
        request_id: the request.
        canceller: who cancels (recorded in the record's ``finisher``).
        now: the current time (epoch seconds).
        dry_run: only say what would happen.

    Raises:
        StoreError: the ledger could not be read or written (``LedgerError``: the record
            kept changing).
        PublishError: RabbitMQ could not be reached; the record is DONE and any later
            delivery of the request publishes the result.
    """
    for _ in range(_MAX_RACES):
        record = ledger.get(request_id)
        if record is None:
            if not dry_run:
                ledger.mark_cancelled(request_id)
            return Cancelled(
                request_id,
                CancelOutcome.MARKED,
                "no worker has received it yet: it ends CANCELLED, unpaid, when one does "
                "(if it is ever published)",
            )
        action = cancel_decision(record)
        if action is CancelAction.FINISHED:
            status = Result.model_validate_json(record.result).status if record.result else "?"
            return Cancelled(
                request_id, CancelOutcome.FINISHED, f"already finished ({status}): nothing changed"
            )
        if action is CancelAction.REQUESTED:
            return Cancelled(
                request_id, CancelOutcome.REQUESTED, "being POSTed; cancel already asked"
            )
        if action is CancelAction.REQUEST:
            detail = (
                "being POSTed: it ends CANCELLED once Segmind answered (charged if it accepted)"
            )
            if dry_run or ledger.request_cancel(record) is not None:
                return Cancelled(request_id, CancelOutcome.REQUESTED, detail)
            continue
        charged = action is CancelAction.CANCEL_CHARGED
        outcome = CancelOutcome.CANCELLED_CHARGED if charged else CancelOutcome.CANCELLED_UNPAID
        result = build_result(
            record,
            Status.CANCELLED,
            completed_at=now,
            error=cancelled_error(record, charged=charged),
            charged=charged,
        )
        detail = result.error.message if result.error is not None else ""
        if dry_run:
            return Cancelled(request_id, outcome, detail)
        if results is None:
            raise ValueError("a cancel that is not a dry run needs the result publisher")
        done = ledger.finish(
            record, result.model_dump_json(exclude_none=True), CANCEL_FINISHER + canceller
        )
        if done is None:
            continue  # a worker moved it first: decide again
        refused = results.deliver(result, record.job.reply_to, priority=record.job.priority)
        ledger.mark_published(done)
        return Cancelled(request_id, outcome, detail, result, refused)
    raise LedgerError(f"the record of {request_id!r} kept changing")
