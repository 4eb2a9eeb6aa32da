"""What the actors do with each message: submit a request, poll a job, end it with a result.

``Pipeline`` wires the pure rules (validation, ``worker.ledger``'s decisions, error classes,
backoff, the poll schedule, ``worker.results.build``) to I/O (Segmind, the ledger, the result
publisher). Every wait is a message delayed in RabbitMQ, either the same message retried
(``dramatiq.Retry``: a submit waiting out a 429) or the next poll step; the one exception
is the ledger write of Segmind's answer to a POST, retried in place for at most the POST's
lease (that answer exists nowhere else).

Failure modes, for both steps: a ledger or publish failure raises, and Dramatiq retries the
message with backoff (the ledger makes every step safe to repeat); a poll message whose
record is gone raises ``MissingRecordError`` and is dead-lettered; anything a request or
Segmind can do ends in exactly one result on the request's ``reply_to``.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import dramatiq
import structlog
from pydantic import ValidationError

from producers.amqp import PublishError
from producers.catalog import Catalog
from producers.contract import (
    DEFAULT_TENANT,
    AcceptedRequest,
    Cancel,
    ErrorCode,
    ErrorInfo,
    Output,
    ProgressEvent,
    RequestRejected,
    Result,
    Status,
    readable_fields,
    validate_request,
)
from producers.envelope import poll_step_arguments
from producers.jitter import full_jitter
from worker.backoff import retry_delay, write_retry_delay
from worker.budget import RECHECK_S, BudgetGuard
from worker.cancel import CancelOutcome, cancel_request, cancelled_error
from worker.history import DurationHistory
from worker.ledger import (
    Job,
    Ledger,
    LedgerError,
    PollAction,
    Record,
    ReplicasShortError,
    State,
    SubmitAction,
    poll_decision,
    submit_decision,
)
from worker.logs import bind_job
from worker.metrics import Metrics
from worker.outputs.keep import OutputKeeper
from worker.polling import History, completion_sample, next_poll_delay, planned_delay
from worker.progress import build_progress, poll_event
from worker.ratelimit.admission import Admission, OpenAdmission
from worker.ratelimit.fairness import grants_allowed, rank
from worker.ratelimit.limiter import RateLimiter, Unlimited
from worker.replicas import ReplicaCheck, hold_delay_s
from worker.results.build import build_result, charged_after_final_submit_error
from worker.results.publish import ResultPublisher
from worker.segmind.client import SegmindClient
from worker.segmind.errors import RateLimitedError, SegmindError, TransientError
from worker.segmind.responses import JobStatus, Submission
from worker.settings import MAX_DELAY_S, Settings
from worker.spend import DailySpend
from worker.store import StoreError
from worker.tenants import TenantPolicy, TenantsFile

log = structlog.get_logger(__name__)

#: How many times one delivery re-reads a record that another delivery changed under it
#: before giving the message back to Dramatiq to retry.
_MAX_RACES: Final = 5
#: The delay of a message retried because another delivery changed the record under it.
_RACE_RETRY_MS: Final = 200

#: The message option holding when a poll message is due (epoch milliseconds); set by
#: ``worker.actors``.
DUE_OPTION: Final = "segmind_due_ms"
#: The message option of a message the pipeline made wait (``worker.actors``): its
#: lateness is on purpose, and its ``retries`` count only failures.
WAITED_OPTION: Final = "segmind_waited"
#: The message option of a poll holding a reserved token slot (see ``_take_token``).
RESERVED_OPTION: Final = "segmind_token_reserved"
#: The message option counting a COMPLETED poll's attempts at copying its outputs.
STORE_ATTEMPTS_OPTION: Final = "segmind_store_attempts"
#: The message option holding a COMPLETED job's outputs while their copies are retried.
OUTPUTS_OPTION: Final = "segmind_outputs"
#: A submit told by the bucket to wait comes back after that wait times 1 to 1 + this.
SUBMIT_SPREAD: Final = 0.25
#: The backoff of a submission's ledger write retried in place (see ``_record_submission``).
_RECORD_RETRY_BASE_S: Final = 0.1
_RECORD_RETRY_CAP_S: Final = 1.0

#: Schedules poll step ``step`` of ``request_id`` in ``delay_s`` seconds.
SchedulePoll = Callable[[str, int, float], None]


class MissingRecordError(Exception):
    """A poll message whose ledger record is gone (expired, or Redis lost its data): the
    job cannot be followed or answered, so the message is dead-lettered."""


class MalformedMessageError(Exception):
    """A message on the polls queue that is not ``(request_id, step)``: dead-lettered."""


class MessageLike(Protocol):
    """What the pipeline reads of a Dramatiq message."""

    @property
    def message_id(self) -> str:
        """The message's id; redeliveries and retries keep it."""

    @property
    def message_timestamp(self) -> int:
        """When the message was first published (epoch milliseconds)."""

    @property
    def options(self) -> dict[str, Any]:
        """The message's options (``DUE_OPTION``: when a poll was due, epoch ms)."""

    def encode(self) -> bytes:
        """The message as sent on the wire."""


@dataclass
class Pipeline:
    """The submit and poll steps.

    Args:
        settings: the worker's settings.
        catalog: the workflows requests may name.
        client: the Segmind client.
        ledger: the submit ledger.
        results: where results and dead letters go.
        metrics: the service's metrics.
        schedule_poll: sends a poll message (``worker.actors.poll_scheduler``).
        spend: the fleet's spend per day, where each decided job's cost is added.
        limiter: the fleet's shared rate (a token before every call).
        history: the workflows' learned durations (``None``: polls at the fixed interval).
        budget: the credit floor and daily spend cap (``None``: none).
        keeper: copies COMPLETED jobs' files to ``OUTPUT_STORE`` (``None``: not copied).
        admission: the line waiting submits take their turns in, by tenant.
        tenants: the tenants' policies (``None``: every tenant has the default one).
        replicas: how many replicas the ledger's Redis has online, when
            ``LEDGER_MIN_REPLICAS`` > 0 (``None``: not asked).
        clock: the wall clock (epoch seconds).
        rand: uniform random numbers in [0, 1), for backoff jitter.
        sleep: waits between the retries of a submission's ledger write, the one wait
            a thread makes (seconds, bounded by the POST's lease).
    """

    settings: Settings
    catalog: Catalog
    client: SegmindClient
    ledger: Ledger
    results: ResultPublisher
    metrics: Metrics
    schedule_poll: SchedulePoll
    spend: DailySpend
    limiter: RateLimiter = field(default_factory=Unlimited)
    history: DurationHistory | None = None
    budget: BudgetGuard | None = None
    keeper: OutputKeeper | None = None
    admission: Admission = field(default_factory=OpenAdmission)
    tenants: TenantsFile | None = None
    replicas: ReplicaCheck | None = None
    clock: Callable[[], float] = time.time
    rand: Callable[[], float] = random.random
    sleep: Callable[[float], None] = time.sleep

    # ------------------------------------------------------------------ submit

    def submit(self, message: MessageLike, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Handle one delivery of a request (the ``submit_workflow`` actor).

        Raises:
            dramatiq.Retry: to wait (a 429, a transient error, another delivery holding
                the request) without holding a thread.
            StoreError: the store failed, or a record kept changing (``LedgerError``);
                Dramatiq retries.
            Exception: publishing failed; Dramatiq retries.
        """
        try:
            if len(args) != 1 or kwargs:
                raise RequestRejected(
                    ErrorCode.INVALID_REQUEST,
                    "a submit_workflow message carries exactly one argument: the request",
                    **readable_fields(args[0] if args else None),
                )
            payload = args[0]
            if isinstance(payload, dict) and "request_id" not in payload:
                # The message's id, stable across redeliveries and retries: a generated
                # one would make a redelivered request a new one, and pay for it twice.
                payload = {**payload, "request_id": message.message_id}
            accepted = validate_request(payload, self.catalog)
        except RequestRejected as rejected:
            self._reject(message, rejected)
            return
        request = accepted.request
        now = self.clock()
        job = Job(
            request_id=request.request_id,
            workflow=request.workflow,
            workflow_id=accepted.workflow.workflow_id,
            reply_to=request.reply_to,
            # A producer's clock may run ahead: the queue wait starts no later than now.
            queued_at=min(message.message_timestamp / 1000, now),
            deadline_s=request.deadline_s or self.settings.segmind_job_deadline_s,
            price_usd=accepted.workflow.price_usd,
            expected_duration_s=accepted.workflow.expected_duration_s,
            priority=request.priority,
            metadata=request.metadata,
            start_by_s=request.start_by_s,
            progress=bool(request.progress),
            tenant=request.tenant or DEFAULT_TENANT,
        )
        record, created = self.ledger.opened(
            job, message.message_id, now + self.settings.submit_lease_s
        )
        for _ in range(_MAX_RACES):
            bound = _logger(record)
            action, wait_s = submit_decision(record, message.message_id, now)
            if action is SubmitAction.POST:
                self._post(message, record, accepted, announce=created)
                return
            if action is SubmitAction.TAKE_OVER:
                taken = self.ledger.take_over(
                    record, message.message_id, now + self.settings.submit_lease_s
                )
                if taken is not None:
                    bound.info("request.taken_over", previous_owner=record.owner)
                    self._post(message, taken, accepted)
                    return
            elif action is SubmitAction.WAIT:
                # Look again at the lease's end, or sooner: the holder usually ends early.
                wait_s = min(wait_s, self.settings.segmind_min_poll_interval_s)
                bound.info("request.held_elsewhere", state=record.state, wait_s=round(wait_s, 3))
                raise dramatiq.Retry(delay=_ms(wait_s))
            elif action is SubmitAction.OUTCOME_UNKNOWN:
                self._outcome_unknown(message, record, None)
                return
            elif action is SubmitAction.START_POLLING:
                bound.info("request.resumed_polling")
                self._schedule(record, 1)
                return
            elif action is SubmitAction.REPUBLISH:
                self._publish(record)
                return
            else:
                bound.info("request.duplicate_ignored", state=record.state)
                return
            record = self._reread(job.request_id)
            now = self.clock()
        raise LedgerError(f"the record of {job.request_id!r} kept changing")

    def _post(
        self,
        message: MessageLike,
        record: Record,
        accepted: AcceptedRequest,
        *,
        announce: bool = False,
    ) -> None:
        """Check, wait for budget and a turn, take a token, POST and record the answer.
        ``announce``: the request is new here (its ``accepted`` progress is due)."""
        if record.cancel_requested or self.ledger.cancel_marked(record.request_id):
            # Cancelled while it waited, or before any worker received it: never POSTed.
            self._end_cancelled(message, record, charged=False)
            return
        if self._too_late_to_start(message, record):
            return
        if not self._within_budget(message, record, announce=announce):
            return
        if self.replicas is not None and self.replicas.short():
            # Before the turn: a request held for replicas takes no token.
            self._hold_for_replicas(record, announce=announce)
        self._take_turn(message, record, announce=announce)
        token = uuid.uuid4().hex
        try:
            sending = self.ledger.begin_submit(
                record, token, self.clock() + self.settings.submit_lease_s
            )
        except ReplicasShortError as short:
            # SUBMITTING is on the primary only: undone, and nothing is POSTed.
            if self.replicas is not None:
                self.replicas.forget()
            delay = hold_delay_s(self.rand())
            self.ledger.withdraw(short.record, self.clock() + delay + self.settings.submit_lease_s)
            self._hold_for_replicas(record, announce=False, acknowledged=short.acknowledged)
        if sending is None:
            raise dramatiq.Retry(delay=_RACE_RETRY_MS)
        bound = _logger(record)
        try:
            submission = self.client.submit(
                accepted.workflow.workflow_id,
                accepted.inputs,
                client_request_id=record.request_id,
            )
        except RateLimitedError as error:
            self._rate_limited(error)
            self._retry_submit(message, sending, error, error.wait_s)
            return
        except TransientError as error:
            if error.may_have_been_processed:
                self._outcome_unknown(message, sending, error)
            else:
                self._retry_submit(message, sending, error, None)
            return
        except SegmindError as error:
            bound.warning("submit.failed", code=error.code, http_status=error.http_status)
            self._finish(
                message,
                sending,
                Status.FAILED,
                error=error.to_error_info(),
                charged=charged_after_final_submit_error(error.http_status),
            )
            return
        submitted = self._record_submission(sending, submission)
        if submitted is None:
            # Only possible when this POST outlived its lease and another delivery has
            # already reported its outcome unknown, or when Redis lost the record (its
            # data lost, see docs/reliability.md): the job runs at Segmind unfollowed.
            # The request goes to the dead-letter queue with Segmind's id, so an operator
            # sees it (`segmind-queue dlq list`); a message with this reason header is
            # never replayed, which could only POST it again.
            reason = (
                "submit_recorded_too_late: Segmind accepted the job "
                f"{submission.segmind_request_id} (paid) after the ledger record had "
                "ended or was lost; it runs unfollowed"
            )
            self.results.dead_letter(message.encode(), reason, message_id=message.message_id)
            bound.error(
                "submit.recorded_too_late", segmind_request_id=submission.segmind_request_id
            )
            return
        bound = _logger(submitted)
        bound.info("submit.accepted")
        assert submitted.submitted_at is not None
        self.metrics.job_accepted(
            submitted.job.workflow,
            submitted.submitted_at - submitted.job.queued_at,
            submitted.job.tenant,
        )
        # A cancel that came during the POST asked this delivery to end it (charged).
        fresh = self.ledger.get(submitted.request_id)
        if fresh is not None and fresh.state is State.SUBMITTED and fresh.cancel_requested:
            self._end_cancelled(message, fresh, charged=True)
            return
        self._progress(submitted, ProgressEvent.SUBMITTED)
        self._schedule(submitted, 1)

    def _end_cancelled(self, message: MessageLike, record: Record, *, charged: bool) -> None:
        """End a request a cancel asked to end: CANCELLED, unpaid or charged."""
        _logger(record).info("request.cancelled", charged=charged)
        result = self._finish(
            message,
            record,
            Status.CANCELLED,
            error=cancelled_error(record, charged=charged),
            charged=charged,
        )
        self.metrics.cancelled(result, charged=charged)

    # ------------------------------------------------------------------ cancel

    def cancel(self, message: MessageLike, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Handle a cancel message (the ``cancel_workflow`` actor): ``{"request_ids": [...]}``.

        Raises:
            MalformedMessageError: the message is not one cancel object; dead-lettered.
            StoreError, PublishError: Dramatiq retries (a cancel is safe to repeat).
        """
        try:
            if len(args) != 1 or kwargs:
                raise ValueError("one argument")
            cancel = Cancel.model_validate(args[0])
        except (ValueError, ValidationError):
            raise MalformedMessageError(
                'a cancel message carries one object: {"request_ids": [1 to 1000 request ids]}'
            ) from None
        for request_id in cancel.request_ids:
            done = cancel_request(
                self.ledger,
                self.results,
                request_id,
                canceller=message.message_id,
                now=self.clock(),
            )
            log.info(
                "request.cancel", request_id=request_id, outcome=done.outcome, detail=done.detail
            )
            if done.result is not None:
                tenant = done.result.tenant or DEFAULT_TENANT
                if done.outcome is CancelOutcome.CANCELLED_UNPAID:
                    self.admission.leave(tenant, request_id)
                self.metrics.job_ended(done.result)
                if done.result.cost_usd:
                    self.spend.add(done.result.cost_usd, tenant)
                self.metrics.cancelled(
                    done.result, charged=done.outcome is CancelOutcome.CANCELLED_CHARGED
                )
                if done.refused is not None:
                    self.metrics.result_dead_lettered(done.result)

    def _record_submission(self, sending: Record, submission: Submission) -> Record | None:
        """SUBMITTING -> SUBMITTED with Segmind's answer, acknowledged by
        ``LEDGER_MIN_REPLICAS`` replicas.

        The answer (the poll_url) exists only in this process: a ledger write that fails
        (Redis restarting or failing over) or that too few replicas acknowledge is tried
        again here until the POST's lease ends, instead of the message being retried,
        whose redelivery could only report the outcome unknown of a job that runs and is
        paid for. A write that was applied although its reply was lost (the connection
        broke) is recognised by Segmind's id. Replicas still short at the lease's end: the
        job is followed all the same (the primary has its record), and said so.

        Returns:
            The SUBMITTED record, or ``None`` when the record has moved on without this
            answer (outcome reported unknown by another delivery, or lost with Redis's data).

        Raises:
            StoreError: the write still failed at the lease's end.
        """
        attempt = races = 0
        written: Record | None = None
        while True:
            try:
                if written is None:
                    submitted = self.ledger.submitted(
                        sending,
                        poll_url=submission.poll_url,
                        segmind_request_id=submission.segmind_request_id,
                        submitted_at=self.clock(),
                        cost_usd=submission.cost_usd,
                    )
                    if submitted is not None:
                        return submitted
                    found = self._answer_recorded(sending.request_id, submission)
                    if found is None or found.state is State.DONE or not self.ledger.min_replicas:
                        return found
                    written = found
                replicated = self.ledger.replicate(written)
                if replicated is not None:
                    return replicated
                # Moved under us (a failover to an older copy): write the answer again.
                written = None
                races += 1
                if races > _MAX_RACES:
                    raise LedgerError(f"the record of {sending.request_id!r} kept changing")
                continue
            except ReplicasShortError as short:
                written = short.record
                self.metrics.ledger_replicas_came_short("after_post")
                if self.replicas is not None:
                    self.replicas.forget()
                problem: Exception = short
            except StoreError as error:
                problem = error
            delay = write_retry_delay(
                attempt,
                now=self.clock(),
                until=sending.lease_until,
                base_s=_RECORD_RETRY_BASE_S,
                cap_s=_RECORD_RETRY_CAP_S,
                rand=self.rand(),
            )
            if delay is None:
                if written is None:
                    raise problem
                _logger(written).error("ledger.unreplicated", error=str(problem))
                return written
            _logger(sending).warning(
                "submit.record_retry", error=str(problem), attempt=attempt + 1, delay_s=delay
            )
            self.sleep(delay)
            attempt += 1

    def _answer_recorded(self, request_id: str, submission: Submission) -> Record | None:
        """The request's record when it already holds this POST's answer (a write applied
        whose reply was lost), else ``None``."""
        found = self.ledger.get(request_id)
        if (
            found is not None
            and found.state in (State.SUBMITTED, State.DONE)
            and found.segmind_request_id == submission.segmind_request_id
        ):
            return found
        return None

    def _retry_submit(
        self,
        message: MessageLike,
        sending: Record,
        error: SegmindError,
        requested_s: float | None,
    ) -> None:
        """A POST that did not reach Segmind: retry it later, or fail past the limit."""
        if sending.attempts > self.settings.segmind_submit_max_retries:
            info = error.to_error_info()
            info.message = f"{info.message} (after {sending.attempts} attempts)"
            self._finish(message, sending, Status.FAILED, error=info, charged=False)
            return
        delay = min(
            retry_delay(
                max(0, sending.attempts - 1),
                requested_s,
                base_s=self.settings.segmind_retry_base_s,
                cap_s=self.settings.segmind_retry_cap_s,
                rand=self.rand(),
                spread_s=self.settings.segmind_retry_base_s,
            ),
            MAX_DELAY_S,
        )
        lease = self.clock() + delay + self.settings.submit_lease_s
        if self.ledger.release(sending, message.message_id, lease) is None:
            return  # the lease lapsed and another delivery ended the request
        _logger(sending).info(
            "submit.retry",
            code=error.code,
            attempt=sending.attempts,
            delay_s=round(delay, 3),
        )
        raise dramatiq.Retry(delay=_ms(delay))

    def _outcome_unknown(
        self,
        message: MessageLike,
        record: Record,
        error: SegmindError | None,
    ) -> None:
        """A POST that may have reached Segmind and whose answer was lost."""
        if self.settings.segmind_resubmit_unknown_outcome:
            retry_error = error or TransientError(
                ErrorCode.SUBMIT_OUTCOME_UNKNOWN,
                "the worker stopped during the POST",
                endpoint="submit",
            )
            self._retry_submit(message, record, retry_error, None)
            return
        detail = error.message if error is not None else "the worker stopped during the POST"
        info = ErrorInfo(
            code=ErrorCode.SUBMIT_OUTCOME_UNKNOWN,
            message=(
                f"the submit's outcome is unknown ({detail}): Segmind may have started and "
                "charged the job. It is not submitted again, so that it is not paid twice; "
                "publish it with a new request_id to run it again"
            ),
            http_status=error.http_status if error is not None else None,
        )
        _logger(record).warning("submit.outcome_unknown", reason=detail)
        self._finish(message, record, Status.FAILED, error=info, charged=None)

    def _reject(self, message: MessageLike, rejected: RequestRejected) -> None:
        """Answer a request that cannot be valid; no Segmind call."""
        bound = log.bind(request_id=rejected.request_id, workflow=rejected.workflow)
        if rejected.request_id is not None and self.ledger.get(rejected.request_id):
            # An invalid message reusing the id of a known request: that request's own
            # result answers the id; a second, contradicting one must not.
            bound.warning("request.invalid_duplicate_ignored", code=rejected.code)
            return
        result = rejected.to_result(message.message_id)
        if rejected.reply_to is None:
            reason = f"{rejected.code}: {rejected.message} (no usable reply_to)"
            self.results.dead_letter(message.encode(), reason, message_id=message.message_id)
            bound.warning("request.dead_lettered", code=rejected.code)
        elif self._deliver(result, rejected.reply_to):
            bound.info("request.rejected", code=rejected.code, reason=rejected.message)
        self.metrics.job_ended(result)

    # ------------------------------------------------------------------ poll

    def poll(self, message: MessageLike, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Handle poll step ``args = (request_id, step)`` (the ``poll_workflow`` actor).

        Raises:
            MalformedMessageError: the message is not ``(request_id, step)``.
            MissingRecordError: the request's record is gone.
            StoreError: the store failed, or a record kept changing (``LedgerError``);
                Dramatiq retries.
            Exception: publishing failed; Dramatiq retries.
        """
        request_id, step = _poll_arguments(args, kwargs)
        due_ms = message.options.get(DUE_OPTION)
        # A message retried or made to wait (for a token, say) is late on purpose.
        on_time = not message.options.get("retries") and not message.options.get(WAITED_OPTION)
        if isinstance(due_ms, int | float) and on_time:
            self.metrics.poll_started(self.clock() - due_ms / 1000)
        for _ in range(_MAX_RACES):
            record = self.ledger.get(request_id)
            action = poll_decision(record, step, message.message_id)
            if action is PollAction.MISSING:
                raise MissingRecordError(f"no ledger record for request {request_id!r}")
            assert record is not None
            if action is PollAction.DROP:
                return
            if action is PollAction.BEHIND:
                self._end_behind(message, record)
                return
            if action is PollAction.REPUBLISH:
                self._publish(record)
                return
            if action is PollAction.POLL:
                self._poll_once(message, record)
                return
            claimed = self.ledger.claim_poll(record, step, message.message_id)
            if claimed is not None:
                self._poll_once(message, claimed)
                return
        raise LedgerError(f"the record of {request_id!r} kept changing")

    def _end_behind(self, message: MessageLike, record: Record) -> None:
        """A poll whose record lost its submission (``PollAction.BEHIND``): the job was
        created and may be charged, but its id is gone with the lost writes, so it cannot be
        followed; the request ends ``FAILED`` ``submit_outcome_unknown`` rather than never."""
        info = ErrorInfo(
            code=ErrorCode.SUBMIT_OUTCOME_UNKNOWN,
            message=(
                "Segmind accepted the job, but the ledger lost the record of it (Redis lost "
                "its latest writes, as in a failover with LEDGER_MIN_REPLICAS=0), so it "
                "cannot be followed: it may be charged. It is not submitted again; publish "
                "it with a new request_id to run it again"
            ),
        )
        _logger(record).error("poll.record_behind", state=record.state)
        self._finish(message, record, Status.FAILED, error=info, charged=None)

    def _poll_once(self, message: MessageLike, record: Record) -> None:
        if record.cancel_requested:
            # Asked during the POST, by a delivery that stopped before it could end it.
            self._end_cancelled(message, record, charged=True)
            return
        held = message.options.get(OUTPUTS_OPTION)
        if isinstance(held, list):
            # Completed already: this delivery retries the copies of its outputs.
            outputs = [Output.model_validate(item) for item in held]
            kept = self._keep_outputs(message, record, outputs)
            self._finish(message, record, Status.COMPLETED, outputs=kept)
            return
        bound = _logger(record)
        self._take_token(message, record)
        try:
            polled = self.client.poll(record.poll_url)
        except RateLimitedError as error:
            self._rate_limited(error)
            self._poll_failed(message, record, error, error.wait_s)
            return
        except TransientError as error:
            backoff = full_jitter(
                record.poll_errors,
                base_s=self.settings.segmind_retry_base_s,
                cap_s=self.settings.segmind_retry_cap_s,
                rand=self.rand(),
            )
            self._poll_failed(message, record, error, backoff)
            return
        except SegmindError as error:  # expired (404), a refused poll_url, another 4xx
            bound.warning("poll.failed", code=error.code, http_status=error.http_status)
            self._finish(message, record, Status.FAILED, error=error.to_error_info())
            return
        answered_at = self.clock()
        event = None
        if record.job.progress and polled.status not in (JobStatus.COMPLETED, JobStatus.FAILED):
            event = poll_event(
                status=polled.raw_status,
                first_processing=record.processing_at_poll is None,
                last_progress_at=record.progress_at,
                now=answered_at,
                interval_s=self.settings.progress_interval_s,
            )
        counted = self.ledger.polled(
            record,
            status=polled.raw_status,
            failed=False,
            at=answered_at,
            progress_at=answered_at if event is not None else None,
        )
        if counted is None:
            return  # a newer poll step took over
        if polled.status is JobStatus.COMPLETED:
            self._learn(counted, answered_at)
            outputs = self._keep_outputs(message, counted, polled.outputs or [])
            self._finish(message, counted, Status.COMPLETED, outputs=outputs)
        elif polled.status is JobStatus.FAILED:
            info = ErrorInfo(
                code=ErrorCode.GENERATION_FAILED,
                message=polled.error_message or "Segmind reported the generation FAILED",
            )
            self._finish(message, counted, Status.FAILED, error=info)
        elif not self._timed_out(message, counted):
            bound.debug("poll.pending", status=polled.raw_status, polls=counted.polls)
            if event is not None:
                self._progress(counted, event)
            self._schedule(counted, counted.poll_step + 1)

    def _keep_outputs(
        self, message: MessageLike, record: Record, outputs: list[Output]
    ) -> list[Output]:
        """Copy a COMPLETED job's files to ``OUTPUT_STORE`` before its result is decided;
        the outputs as the result carries them.

        A copy that failed for a passing reason is tried again as this poll step's message
        delayed with backoff, carrying the outputs (``OUTPUTS_OPTION``: no second poll, and
        no risk of Segmind forgetting the job meanwhile), up to ``OUTPUT_STORE_RETRIES``
        times; then, or for a reason that never passes, the output keeps Segmind's URL with
        ``stored: false`` and the reason.
        """
        if self.keeper is None:
            return outputs
        attempt = int(message.options.get(STORE_ATTEMPTS_OPTION, 0))
        last = attempt >= self.settings.output_store_retries
        kept = self.keeper.keep(record.request_id, outputs, last_attempt=last)
        for size, seconds in kept.copied:
            self.metrics.output_copied(record.job.workflow, size, seconds)
        for failure in kept.failures:
            self.metrics.output_failed(failure.kind)
            _logger(record).warning(
                "output.copy_failed",
                keyname=failure.keyname,
                reason=failure.reason,
                transient=failure.transient,
                attempt=attempt + 1,
            )
        if kept.retry and not last:
            delay = full_jitter(
                attempt,
                base_s=self.settings.segmind_retry_base_s,
                cap_s=self.settings.segmind_retry_cap_s,
                rand=self.rand(),
            )
            message.options[STORE_ATTEMPTS_OPTION] = attempt + 1
            message.options[OUTPUTS_OPTION] = [o.model_dump(mode="json") for o in outputs]
            raise dramatiq.Retry(delay=_ms(delay))
        if kept.copied:
            _logger(record).info("output.stored", files=len(kept.copied))
        return kept.outputs

    def _too_late_to_start(self, message: MessageLike, record: Record) -> bool:
        """Whether the request's ``start_by_s`` has passed: it then ends CANCELLED
        ``start_deadline``, unpaid (it is checked right before every POST, so a request
        that waited for rate, budget or a retry is never POSTed after it)."""
        start_by = record.job.start_by
        now = self.clock()
        if start_by is None or now <= start_by:
            return False
        info = ErrorInfo(
            code=ErrorCode.START_DEADLINE,
            message=(
                f"not submitted within start_by_s={record.job.start_by_s:g} s of publishing "
                f"({now - record.job.queued_at:.0f} s waited); never sent to Segmind"
            ),
        )
        _logger(record).info("submit.start_deadline", waited_s=round(now - record.job.queued_at, 3))
        self._finish(message, record, Status.CANCELLED, error=info, charged=False)
        return True

    def _within_budget(self, message: MessageLike, record: Record, *, announce: bool) -> bool:
        """Whether the job may start; it waits (``dramatiq.Retry``) while the floor or a
        cap (the fleet's or its tenant's) would be crossed, and ends REJECTED
        ``budget_exhausted`` (False) once it has waited ``SEGMIND_BUDGET_WAIT_S`` since it
        was published."""
        job = record.job
        reason = self.budget.check(job.price_usd, job.tenant) if self.budget is not None else None
        if reason is None:
            return True
        waited_s = self.clock() - record.job.queued_at
        left_s = self.settings.segmind_budget_wait_s - waited_s
        if left_s <= 0:
            info = ErrorInfo(
                code=ErrorCode.BUDGET_EXHAUSTED,
                message=f"not submitted after waiting {waited_s:.0f} s for budget: {reason}",
            )
            _logger(record).warning("budget.rejected", reason=reason)
            self._finish(message, record, Status.REJECTED, error=info, charged=False)
            return False
        _logger(record).info("budget.waiting", reason=reason)
        if announce:
            self._progress(record, ProgressEvent.ACCEPTED)
        raise dramatiq.Retry(delay=_ms(min(RECHECK_S, left_s)))

    def _hold_for_replicas(
        self, record: Record, *, announce: bool, acknowledged: int | None = None
    ) -> None:
        """Hold the request, unpaid, while fewer Redis replicas than
        ``LEDGER_MIN_REPLICAS`` have the ledger's writes: a failover now could lose its
        ``SUBMITTING`` record and let it be paid twice. It looks again in
        ``worker.replicas.RECHECK_S`` (a delayed message: no thread waits).

        Raises:
            dramatiq.Retry: always.
        """
        self.metrics.ledger_replicas_came_short("before_post")
        _logger(record).info(
            "submit.held_for_replicas",
            required=self.ledger.min_replicas,
            acknowledged=acknowledged,
        )
        if announce:
            self._progress(record, ProgressEvent.ACCEPTED)
        raise dramatiq.Retry(delay=_ms(hold_delay_s(self.rand())))

    def _take_turn(self, message: MessageLike, record: Record, *, announce: bool) -> None:
        """Wait for the request's turn in the admission line (its tenant's, in turn with
        the other tenants'), then for a token from the fleet's bucket; neither holds a
        thread (``dramatiq.Retry``). A request given its token leaves the line."""
        job = record.job
        policy = self.tenants.policy(job.tenant) if self.tenants is not None else TenantPolicy()
        rate = self.settings.segmind_rate_limit_per_minute
        window_s = self.settings.segmind_rate_limit_window_s
        turn = self.admission.ask(
            job.tenant,
            job.request_id,
            rank=rank(job.priority, job.queued_at),
            weight=policy.weight,
            grants_allowed=grants_allowed(policy.rate_share, rate, window_s),
            rate_per_min=rate,
            window_s=window_s,
        )
        if announce:
            self._progress(record, ProgressEvent.ACCEPTED, queue_position=turn.ahead)
        if not turn.go:
            _logger(record).debug("admission.waiting", ahead=turn.ahead, wait_s=turn.wait_s)
            raise dramatiq.Retry(delay=_ms(turn.wait_s))
        grant = self.limiter.acquire(submit=True)
        if grant.go:
            self.admission.admitted(job.tenant, job.request_id, weight=policy.weight)
            return
        # Only the requests whose turn is near ask. Each comes back at its own turn, not
        # all at the bucket's next token (the first would win by chance, not by order),
        # with a small spread to keep equals apart.
        turn_s = turn.ahead * 60.0 / rate
        wait_s = max(grant.wait_s, turn_s) * (1.0 + SUBMIT_SPREAD * self.rand())
        _logger(record).debug("rate.waiting", submit=True, wait_s=round(wait_s, 3))
        raise dramatiq.Retry(delay=_ms(wait_s))

    def _take_token(self, message: MessageLike, record: Record) -> None:
        """Take a token from the fleet's bucket for a poll, or wait for one without
        holding a thread: the message is retried (same id, so a claimed poll step stays
        this message's).

        A poll given a reserved slot carries ``RESERVED_OPTION`` into its retry and goes
        at its slot without asking again; one told to wait (a 429's block) asks again
        after a wait spread at random, so that the askers told the same wait do not all
        come back together.
        """
        if message.options.pop(RESERVED_OPTION, None):
            wait_s = self.limiter.redeem()
            if wait_s <= 0:
                return
        else:
            grant = self.limiter.acquire(submit=False)
            if grant.go:
                return
            wait_s = grant.wait_s
            if grant.reserved:
                message.options[RESERVED_OPTION] = True
            else:
                wait_s *= 1.0 + self.rand()
        _logger(record).debug("rate.waiting", submit=False, wait_s=round(wait_s, 3))
        raise dramatiq.Retry(delay=_ms(wait_s))

    def _rate_limited(self, error: RateLimitedError) -> None:
        """Tell the fleet's bucket: it blocks every call until the wait is over."""
        wait_s = error.wait_s if error.wait_s is not None else self.settings.segmind_retry_base_s
        self.limiter.rate_limited(wait_s)

    def _poll_failed(
        self,
        message: MessageLike,
        record: Record,
        error: SegmindError,
        requested_s: float | None,
    ) -> None:
        """A poll that got no status: poll again later (a poll costs nothing but budget)."""
        counted = self.ledger.polled(record, status="", failed=True)
        if counted is None:
            return
        _logger(record).info(
            "poll.retry",
            code=error.code,
            consecutive_errors=counted.poll_errors,
        )
        if not self._timed_out(message, counted, error):
            self._schedule(counted, counted.poll_step + 1, requested_s)

    def _timed_out(
        self, message: MessageLike, record: Record, error: SegmindError | None = None
    ) -> bool:
        """End the job TIMED_OUT if its deadline has passed; whether it did."""
        deadline = record.deadline_at
        if deadline is None or self.clock() < deadline:
            return False
        last = record.last_status or "none"
        detail = f"; the last poll failed: {error.message}" if error is not None else ""
        info = ErrorInfo(
            code=ErrorCode.DEADLINE_EXCEEDED,
            message=(
                f"the generation had not ended {record.job.deadline_s:g} s after it was "
                f"submitted (last status: {last}{detail})"
            ),
        )
        self._finish(message, record, Status.TIMED_OUT, error=info)
        return True

    def _schedule(self, record: Record, step: int, requested_s: float | None = None) -> None:
        now = self.clock()
        deadline = record.deadline_at
        wait_s = requested_s
        if self.history is not None and record.submitted_at is not None:
            planned = planned_delay(
                history=self.history.get(record.job.workflow),
                expected_s=_scaled(record.job.expected_duration_s, self.settings),
                elapsed_s=now - record.submitted_at,
                last_status=record.last_status,
                min_interval_s=self.settings.segmind_min_poll_interval_s,
            )
            wait_s = max(planned, requested_s or 0.0)
        delay = next_poll_delay(
            min_interval_s=self.settings.segmind_min_poll_interval_s,
            remaining_s=None if deadline is None else deadline - now,
            requested_s=wait_s,
        )
        self.schedule_poll(record.request_id, step, delay)

    def _learn(self, record: Record, detected_at: float) -> None:
        """Add a completed job's duration to its workflow's history (best effort: a
        history that cannot be written only makes later schedules less sharp)."""
        if self.history is None or record.submitted_at is None:
            return
        total_s, processing_s = completion_sample(
            submitted_at=record.submitted_at,
            detected_at=detected_at,
            pending_at=record.pending_at,
            queued_at=record.queued_at_poll,
            processing_at=record.processing_at_poll,
            min_interval_s=self.settings.segmind_min_poll_interval_s,
        )
        try:
            self.history.record(record.job.workflow, total_s, processing_s)
        except StoreError:
            _logger(record).warning("history.unavailable")

    # ------------------------------------------------------------------ results

    def _finish(
        self,
        message: MessageLike,
        record: Record,
        status: Status,
        *,
        outputs: list[Output] | None = None,
        error: ErrorInfo | None = None,
        charged: bool | None = None,
    ) -> Result:
        """Decide the request's result (once: a compare-and-set), then publish it; the
        result decided."""
        result = build_result(
            record,
            status,
            completed_at=self.clock(),
            outputs=outputs,
            error=error,
            charged=charged,
        )
        done = self.ledger.finish(
            record, result.model_dump_json(exclude_none=True), message.message_id
        )
        if done is None:
            # Another delivery moved the record first; look at it again.
            raise dramatiq.Retry(delay=_RACE_RETRY_MS)
        if record.state is State.NEW:
            # Ended before its token (cancelled, rejected, too late): out of the line.
            self.admission.leave(record.job.tenant, record.request_id)
        # Counted here, where the compare-and-set made this delivery the only one to decide
        # the result: a republication after a crash is not a second job.
        self.metrics.job_ended(result)
        if result.cost_usd:
            self.spend.add(result.cost_usd, record.job.tenant)
        self._publish(done)
        return result

    def _publish(self, record: Record) -> None:
        result = Result.model_validate_json(record.result)
        if self._deliver(result, record.job.reply_to, priority=record.job.priority):
            _logger(record).info(
                "result.published",
                status=result.status,
                polls=result.polls,
                code=result.error.code if result.error else None,
            )
        self.ledger.mark_published(record)

    def _progress(
        self, record: Record, event: ProgressEvent, *, queue_position: int | None = None
    ) -> None:
        """Publish a progress message to the request's ``reply_to`` if it asked for them.

        Best effort: one that cannot be published (RabbitMQ unreachable, the queue
        refused) is logged and dropped, so that it never holds up or repeats the step.
        It is published before the step's next message, so it always precedes the result.
        """
        if not record.job.progress:
            return
        now = self.clock()
        history = self.history.get(record.job.workflow) if self.history is not None else History()
        progress = build_progress(
            record,
            event,
            now=now,
            history=history,
            time_scale=self.settings.segmind_time_scale,
            queue_position=queue_position,
        )
        try:
            self.results.progress(progress, record.job.reply_to, priority=record.job.priority)
        except (PublishError, StoreError) as error:
            _logger(record).warning("progress.dropped", progress_event=event, error=str(error))
            return
        self.metrics.progress_published(event)
        _logger(record).debug("progress.published", progress_event=event)

    def _deliver(self, result: Result, reply_to: str, *, priority: int | None = None) -> bool:
        """Publish ``result`` to ``reply_to``; True when it got there.

        A reply queue that RabbitMQ refuses (after the publisher's bounded attempts: a
        refused access, a nack, a queue that cannot be declared) does not hold the result
        back: it goes to the results dead-letter queue with the reason, where ``dlq``
        lists and replays it, and False is returned.

        Raises:
            PublishError: RabbitMQ could not be reached (nor the dead-letter queue);
                Dramatiq retries the message, and the ledger publishes the same result.
        """
        refused = self.results.deliver(result, reply_to, priority=priority)
        if refused is None:
            return True
        self.metrics.result_dead_lettered(result)
        log.warning(
            "result.dead_lettered",
            request_id=result.request_id,
            workflow=result.workflow,
            status=result.status,
            reply_to=reply_to,
            reason=refused,
        )
        return False

    def _reread(self, request_id: str) -> Record:
        record = self.ledger.get(request_id)
        if record is None:
            raise LedgerError(f"the record of {request_id!r} disappeared")
        return record


def _logger(record: Record) -> Any:
    """The log of a request's lines. The request's fields are bound to the message's log
    context, so that Dramatiq's own lines about the message name the job too: its id, its
    workflow, its tenant and, once Segmind accepted it, Segmind's id."""
    bind_job(
        request_id=record.request_id,
        workflow=record.job.workflow,
        tenant=record.job.tenant,
        segmind_request_id=record.segmind_request_id or None,
    )
    return log


def _poll_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, int]:
    arguments = poll_step_arguments(args, kwargs)
    if arguments is None:
        raise MalformedMessageError("a poll message carries (request_id, step >= 1)")
    return arguments


def _scaled(expected_s: float | None, settings: Settings) -> float | None:
    return None if expected_s is None else expected_s * settings.segmind_time_scale


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))
