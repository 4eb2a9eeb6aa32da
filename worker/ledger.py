"""The submit ledger: one record per request_id, so that no request is ever paid for twice.

Segmind has no idempotency key, and RabbitMQ delivers at least once: the same request can
reach a worker twice (a redelivery after a crash, a producer that published twice). The
ledger, written before and after every POST, decides what each delivery may do::

    NEW --> SUBMITTING --> SUBMITTED(poll_url) --> DONE(result)
     ^          |                                   ^
     +----------+ (429 / not processed: retry)      | (final error, unknown outcome)
                +-----------------------------------+

- NEW: the request is known and held by one message (``owner``) until ``lease_until``.
  Only the owner may POST; a duplicate waits for the lease, and takes the request over
  when it has lapsed (nothing was POSTed, so taking over is safe).
- SUBMITTING: a POST is in flight (``submit_token``) until ``lease_until``, the longest a
  POST can take. Whoever finds it past its lease knows the worker died mid-POST: the
  outcome is unknown and the request is not POSTed again (unless configured).
- SUBMITTED: Segmind accepted the job; a chain of poll messages follows it. Polls are
  numbered: a poll message runs only if it claims the next step (``poll_step``) or is
  the owner of the current one (a redelivery), so duplicated poll messages die out.
- DONE: the result is decided and stored in the record; ``published`` says whether its
  publication was confirmed. The message that decided it (``finisher``) publishes it again
  if it is redelivered before that, so after a crash the same result may be published
  twice (identical bodies; consumers deduplicate by request_id), never two different ones.

Each transition is a compare-and-set on the record's fields (a Lua script in Redis, a lock
in memory), so concurrent workers cannot both win. ``submit_decision`` and
``poll_decision`` are the pure rules; ``Ledger`` does the I/O.

The in-flight index (``<prefix>:inflight``, one hash field per request in SUBMITTING or
SUBMITTED) is changed by the same compare-and-set as the record, so it never drifts from
the records: it is what the fleet gauges (jobs in flight, reserved credits, the oldest
job's age) are read from without scanning every record. Keeping both keys in one script
means one Redis primary (with replicas or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any, Final, TypeVar

from pydantic import JsonValue

from producers.contract import DEFAULT_TENANT
from worker.store import IndexChange, Store, StoreError

#: Seconds a delivery that found the request held by another waits past that holder's
#: lease before looking again: time for the holder to write its outcome.
LEASE_GRACE_S: Final = 1.0

_A = TypeVar("_A", "SubmitAction", "PollAction")


class State(StrEnum):
    """Where a request stands (see the module docstring)."""

    NEW = "NEW"
    SUBMITTING = "SUBMITTING"
    SUBMITTED = "SUBMITTED"
    DONE = "DONE"


@dataclass(frozen=True, slots=True)
class Job:
    """What a request needs until it ends, fixed when it is first seen.

    Attributes:
        request_id: the caller's idempotency key.
        workflow: the workflow as the request named it.
        workflow_id: Segmind's workflow id.
        reply_to: the queue of the result.
        queued_at: when the request was published (epoch seconds).
        deadline_s: seconds from submission after which the job is TIMED_OUT.
        price_usd: the catalog price, when known.
        expected_duration_s: the catalog's expected run time, when known.
        priority: the request's priority, when given.
        metadata: the request's metadata, echoed in the result.
        start_by_s: seconds from ``queued_at`` within which it must be POSTed, if any.
        progress: whether the request asked for progress messages.
        tenant: whose request it is.
    """

    request_id: str
    workflow: str
    workflow_id: str
    reply_to: str
    queued_at: float
    deadline_s: float
    price_usd: float | None = None
    expected_duration_s: float | None = None
    priority: int | None = None
    metadata: dict[str, JsonValue] | None = None
    start_by_s: float | None = None
    progress: bool = False
    tenant: str = DEFAULT_TENANT

    @property
    def start_by(self) -> float | None:
        """When the job must have been POSTed by (epoch seconds), if ever."""
        return None if self.start_by_s is None else self.queued_at + self.start_by_s

    def to_json(self) -> str:
        """The job as compact JSON (stored in the record)."""
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Job:
        """The job stored by ``to_json``."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True, slots=True)
class Record:
    """A request's ledger record.

    Attributes:
        job: the request's fixed facts.
        state: where the request stands.
        owner: the message id that holds a NEW request.
        lease_until: NEW: until when the owner holds it; SUBMITTING: until when the POST
            may still be running (epoch seconds).
        submit_token: the id of the POST attempt in flight (SUBMITTING).
        attempts: POSTs attempted for this request (at most one reached Segmind).
        poll_url: where to poll (SUBMITTED on).
        segmind_request_id: Segmind's id for the generation.
        submitted_at: when Segmind accepted the job (epoch seconds).
        cost_usd: the cost Segmind reported at submit, if it did.
        poll_step: the number of the last poll step claimed (0: none yet).
        poll_owner: the message id that claimed ``poll_step``.
        polls: polls sent to Segmind.
        poll_errors: consecutive polls that failed (reset by a successful poll).
        last_status: the status the last successful poll read.
        pending_at: when a poll last found the job not ended (epoch seconds).
        queued_at_poll: when a poll last found the job QUEUED.
        processing_at_poll: when a poll first found the job PROCESSING.
        result: the result as JSON (DONE).
        finisher: the message id that decided the result (``CANCEL_FINISHER`` and the
            canceller's id when a cancel decided it).
        published: whether the result's publication was confirmed.
        cancel_requested: a cancel arrived while the POST was in flight: the job ends
            CANCELLED as soon as the POST's outcome is known.
        progress_at: when a poll last published a progress message (epoch seconds).
    """

    job: Job
    state: State = State.NEW
    owner: str = ""
    lease_until: float = 0.0
    submit_token: str = ""
    attempts: int = 0
    poll_url: str = ""
    segmind_request_id: str = ""
    submitted_at: float | None = None
    cost_usd: float | None = None
    poll_step: int = 0
    poll_owner: str = ""
    polls: int = 0
    poll_errors: int = 0
    last_status: str = ""
    pending_at: float | None = None
    queued_at_poll: float | None = None
    processing_at_poll: float | None = None
    result: str = ""
    finisher: str = ""
    published: bool = False
    cancel_requested: bool = False
    progress_at: float | None = None

    @property
    def request_id(self) -> str:
        """The request's id."""
        return self.job.request_id

    @property
    def deadline_at(self) -> float | None:
        """When the job times out (epoch seconds); ``None`` before submission."""
        if self.submitted_at is None:
            return None
        return self.submitted_at + self.job.deadline_s

    def to_fields(self) -> dict[str, str]:
        """The record as the string fields it is stored as."""
        out: dict[str, str] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            out[item.name] = _encode(value)
        return out

    @classmethod
    def from_fields(cls, stored: Mapping[str, str]) -> Record:
        """A record from its stored fields (missing ones take their defaults).

        Raises:
            LedgerError: the stored fields are not a record (no job, a bad value).
        """
        try:
            values: dict[str, Any] = {"job": Job.from_json(stored["job"])}
            for item in fields(cls):
                if item.name == "job" or item.name not in stored:
                    continue
                values[item.name] = _decode(item.name, stored[item.name])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"unreadable ledger record: {type(exc).__name__}") from None


_INT_FIELDS: Final = frozenset({"attempts", "poll_step", "polls", "poll_errors"})
_FLOAT_FIELDS: Final = frozenset({"lease_until"})
_OPTIONAL_FLOAT_FIELDS: Final = frozenset(
    {
        "submitted_at",
        "cost_usd",
        "pending_at",
        "queued_at_poll",
        "processing_at_poll",
        "progress_at",
    }
)


def _encode(value: object) -> str:
    if isinstance(value, Job):
        return value.to_json()
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _decode(name: str, text: str) -> object:
    if name == "state":
        return State(text)
    if name in ("published", "cancel_requested"):
        return text == "1"
    if name in _INT_FIELDS:
        return int(text)
    if name in _FLOAT_FIELDS:
        return float(text)
    if name in _OPTIONAL_FLOAT_FIELDS:
        return float(text) if text else None
    return text


class LedgerError(StoreError):
    """A record is unreadable, or kept changing or disappearing under a delivery. A kind
    of ``StoreError``: the message is retried like one."""


class ReplicasShortError(Exception):
    """A guarded write (``SUBMITTING``, or the record of a POST's answer) was applied on
    the primary, but fewer replicas than ``LEDGER_MIN_REPLICAS`` acknowledged it within
    the timeout: a failover now could lose it.

    Attributes:
        record: the record as written.
        acknowledged: the replicas that acknowledged it.
        required: ``LEDGER_MIN_REPLICAS``.
    """

    def __init__(self, record: Record, acknowledged: int, required: int) -> None:
        super().__init__(
            f"{acknowledged} of the {required} Redis replicas required acknowledged the "
            f"ledger write of {record.request_id!r}"
        )
        self.record = record
        self.acknowledged = acknowledged
        self.required = required


# ---------------------------------------------------------------------------- the rules


class SubmitAction(StrEnum):
    """What a delivery of a request may do, given the request's record."""

    #: This delivery holds the request and may POST it.
    POST = "post"
    #: A lapsed NEW held by another delivery: take it over, then POST.
    TAKE_OVER = "take_over"
    #: Another delivery holds the request (NEW) or is POSTing it: look again later.
    WAIT = "wait"
    #: A POST was abandoned mid-way (its lease lapsed): its outcome is unknown.
    OUTCOME_UNKNOWN = "outcome_unknown"
    #: Segmind accepted the job but no poll has run yet: start (or restart) polling.
    START_POLLING = "start_polling"
    #: This delivery decided the result and its publication is unconfirmed: publish it.
    REPUBLISH = "republish"
    #: A duplicate of a request being polled or done: nothing to do.
    DROP = "drop"


class PollAction(StrEnum):
    """What a poll message may do, given its request's record."""

    #: The next step: claim it, then poll.
    CLAIM = "claim"
    #: The current step, and this message owns it (a redelivery): poll.
    POLL = "poll"
    #: This message decided the result and its publication is unconfirmed: publish it.
    REPUBLISH = "republish"
    #: A stale or duplicated poll message, or the request is done: nothing to do.
    DROP = "drop"
    #: No record: the ledger lost it (expired, or Redis lost its data).
    MISSING = "missing"
    #: The record is back before SUBMITTED (NEW or SUBMITTING), though a poll message
    #: exists only once SUBMITTED was written: Redis lost its latest writes (a failover to
    #: a replica that lacked them) and, with them, Segmind's job id.
    BEHIND = "behind"


def submit_decision(record: Record, message_id: str, now: float) -> tuple[SubmitAction, float]:
    """What a delivery of a request may do: ``(action, seconds to wait for WAIT else 0)``.

    Args:
        record: the request's record, as read.
        message_id: the delivery's message id (redeliveries keep it).
        now: the current time (epoch seconds).
    """
    state = record.state
    if state is State.NEW:
        if record.owner == message_id:
            return SubmitAction.POST, 0.0
        if record.lease_until <= now:
            return SubmitAction.TAKE_OVER, 0.0
        return SubmitAction.WAIT, record.lease_until - now + LEASE_GRACE_S
    if state is State.SUBMITTING:
        if record.lease_until > now:
            return SubmitAction.WAIT, record.lease_until - now + LEASE_GRACE_S
        return SubmitAction.OUTCOME_UNKNOWN, 0.0
    if state is State.SUBMITTED:
        # Whoever finds no poll claimed yet starts one: the submitter may have died before
        # sending it, and a duplicated first poll dies out at its claim.
        return (SubmitAction.START_POLLING if record.poll_step == 0 else SubmitAction.DROP), 0.0
    return _done_decision(record, message_id, SubmitAction.REPUBLISH, SubmitAction.DROP), 0.0


def poll_decision(record: Record | None, step: int, message_id: str) -> PollAction:
    """What a poll message for step ``step`` may do.

    Args:
        record: the request's record, or ``None`` when there is none.
        step: the message's step number (1 for the first poll).
        message_id: the message's id.
    """
    if record is None:
        return PollAction.MISSING
    if record.state is State.DONE:
        return _done_decision(record, message_id, PollAction.REPUBLISH, PollAction.DROP)
    if record.state is not State.SUBMITTED:
        return PollAction.BEHIND
    if step > record.poll_step:
        return PollAction.CLAIM
    if step == record.poll_step and record.poll_owner == message_id:
        return PollAction.POLL
    return PollAction.DROP


def _done_decision(record: Record, message_id: str, republish: _A, drop: _A) -> _A:
    # A result a cancel decided has no message to publish it again after a crash: any
    # delivery of the request does (the same result; consumers deduplicate).
    mine = record.finisher == message_id or record.finisher.startswith(CANCEL_FINISHER)
    if not record.published and mine:
        return republish
    return drop


#: The prefix of ``finisher`` when a cancel decided the result.
CANCEL_FINISHER: Final = "cancel:"


class CancelAction(StrEnum):
    """What a cancel may do, given the request's record."""

    #: NEW (never POSTed): end it CANCELLED, unpaid.
    CANCEL_UNPAID = "cancel_unpaid"
    #: SUBMITTED (Segmind runs it, paid): stop following it, end it CANCELLED, charged.
    CANCEL_CHARGED = "cancel_charged"
    #: SUBMITTING (the POST in flight): ask the POST's delivery to end it once answered.
    REQUEST = "request"
    #: The POST's delivery has been asked already.
    REQUESTED = "requested"
    #: DONE: its result is decided; nothing changes.
    FINISHED = "finished"


def cancel_decision(record: Record) -> CancelAction:
    """What a cancel of the request may do (the ledger's compare-and-set makes it race-free:
    a cancel and a POST never both win)."""
    if record.state is State.NEW:
        return CancelAction.CANCEL_UNPAID
    if record.state is State.SUBMITTED:
        return CancelAction.CANCEL_CHARGED
    if record.state is State.SUBMITTING:
        return CancelAction.REQUESTED if record.cancel_requested else CancelAction.REQUEST
    return CancelAction.FINISHED


# ---------------------------------------------------------------------------- the index


@dataclass(frozen=True, slots=True)
class InFlight:
    """A request in the in-flight index.

    Attributes:
        request_id: the request.
        workflow: its workflow.
        price_usd: its catalog price, when known.
        since: when its first POST began (epoch seconds).
        tenant: whose request it is.
    """

    request_id: str
    workflow: str
    price_usd: float | None
    since: float
    tenant: str = DEFAULT_TENANT

    def to_json(self) -> str:
        """The index entry's value (the request id is the field)."""
        return json.dumps(
            {
                "workflow": self.workflow,
                "price_usd": self.price_usd,
                "since": self.since,
                "tenant": self.tenant,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, request_id: str, text: str) -> InFlight | None:
        """The entry stored by ``to_json``, or ``None`` when it is unreadable."""
        try:
            data = json.loads(text)
            price = data.get("price_usd")
            return cls(
                request_id=request_id,
                workflow=str(data["workflow"]),
                price_usd=float(price) if price is not None else None,
                since=float(data["since"]),
                tenant=str(data.get("tenant", DEFAULT_TENANT)),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


# ---------------------------------------------------------------------------- the ledger


class Ledger:
    """The transitions of request records over a ``Store``.

    Every method that changes a record is a compare-and-set: it returns the new record, or
    ``None`` when the record was not in the expected state (another delivery moved it
    first: read it again and decide again).

    Args:
        store: where records live.
        prefix: the prefix of every key (``<prefix>:ledger:<request_id>``).
        ttl_s: how long a record is kept after its last change (a DONE record this long
            after the end: duplicates within it are not paid for again).
        clock: the wall clock (epoch seconds), for the in-flight index's times.
        min_replicas: the replicas that must acknowledge the writes guarding a POST
            (``begin_submit``, ``submitted``, ``replicate``) before they return; 0: none.
        replica_timeout_s: how long such a write waits for them.

    Raises (every method):
        StoreError: the store failed (``LedgerError``: a record is unreadable or keeps
            disappearing); the caller's message is retried.
        ReplicasShortError: (the guarded writes) applied, but too few replicas have it.
    """

    def __init__(
        self,
        store: Store,
        *,
        prefix: str,
        ttl_s: int,
        clock: Callable[[], float] = time.time,
        min_replicas: int = 0,
        replica_timeout_s: float = 1.0,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.clock = clock
        self.min_replicas = min_replicas
        self.replica_timeout_s = replica_timeout_s

    def key(self, request_id: str) -> str:
        """The store key of a request's record."""
        return f"{self.prefix}:ledger:{request_id}"

    @property
    def in_flight_key(self) -> str:
        """The store key of the in-flight index."""
        return f"{self.prefix}:inflight"

    def in_flight(self) -> list[InFlight]:
        """Every request in SUBMITTING or SUBMITTED (unreadable entries are skipped)."""
        stored = self.store.get(self.in_flight_key) or {}
        entries = (InFlight.from_json(request_id, text) for request_id, text in stored.items())
        return [entry for entry in entries if entry is not None]

    def get(self, request_id: str) -> Record | None:
        """The request's record, or ``None``."""
        stored = self.store.get(self.key(request_id))
        return Record.from_fields(stored) if stored is not None else None

    def open(self, job: Job, message_id: str, lease_until: float) -> Record:
        """The request's record, created NEW and held by ``message_id`` if there is none.

        Returns:
            The record as it stands: the new one, or the one found (a duplicate or a
            redelivery; ``submit_decision`` says what to do with it).
        """
        return self.opened(job, message_id, lease_until)[0]

    def opened(self, job: Job, message_id: str, lease_until: float) -> tuple[Record, bool]:
        """``open``, and whether this call created the record (the request is new)."""
        record = Record(job=job, owner=message_id, lease_until=lease_until)
        for _ in range(3):
            if self.store.create(self.key(job.request_id), record.to_fields(), self.ttl_s):
                return record, True
            found = self.get(job.request_id)
            if found is not None:
                return found, False
            # Expired between the two calls: create it again.
        raise LedgerError(f"the record of {job.request_id!r} keeps disappearing")

    def take_over(self, record: Record, message_id: str, lease_until: float) -> Record | None:
        """NEW held by another delivery whose lease lapsed -> NEW held by ``message_id``."""
        return self._move(
            record,
            {"state": State.NEW, "owner": record.owner},
            owner=message_id,
            lease_until=lease_until,
        )

    def begin_submit(self, record: Record, token: str, lease_until: float) -> Record | None:
        """NEW held by ``record.owner`` -> SUBMITTING (a POST is about to be sent); the
        request enters the in-flight index."""
        job = record.job
        entry = InFlight(
            job.request_id, job.workflow, job.price_usd, since=self.clock(), tenant=job.tenant
        )
        return self._move(
            record,
            {"state": State.NEW, "owner": record.owner},
            index=self._index(record, entry.to_json()),
            guarded=True,
            state=State.SUBMITTING,
            submit_token=token,
            lease_until=lease_until,
            attempts=record.attempts + 1,
        )

    def release(self, record: Record, owner: str, lease_until: float) -> Record | None:
        """SUBMITTING -> NEW held by ``owner``: the POST certainly did not reach Segmind
        (429, connect error) and will be retried by ``owner`` before ``lease_until``; the
        request leaves the in-flight index until its next POST."""
        return self._move(
            record,
            {"state": State.SUBMITTING, "submit_token": record.submit_token},
            index=self._index(record, None),
            state=State.NEW,
            owner=owner,
            submit_token="",
            lease_until=lease_until,
        )

    def withdraw(self, record: Record, lease_until: float) -> Record | None:
        """SUBMITTING -> NEW held by the same delivery, before any POST was sent: the
        guarded write came up short of replicas (``ReplicasShortError``), so the request
        waits for them. The attempt is not counted; the request leaves the in-flight
        index."""
        return self._move(
            record,
            {"state": State.SUBMITTING, "submit_token": record.submit_token},
            index=self._index(record, None),
            state=State.NEW,
            submit_token="",
            lease_until=lease_until,
            attempts=max(0, record.attempts - 1),
        )

    def submitted(
        self,
        record: Record,
        *,
        poll_url: str,
        segmind_request_id: str,
        submitted_at: float,
        cost_usd: float | None,
    ) -> Record | None:
        """SUBMITTING (this POST) -> SUBMITTED: Segmind accepted the job."""
        return self._move(
            record,
            {"state": State.SUBMITTING, "submit_token": record.submit_token},
            guarded=True,
            state=State.SUBMITTED,
            lease_until=0.0,
            poll_url=poll_url,
            segmind_request_id=segmind_request_id,
            submitted_at=submitted_at,
            cost_usd=cost_usd,
        )

    def replicate(self, record: Record) -> Record | None:
        """Write a SUBMITTED record's state again and wait for the replicas: the guarded
        write of a POST's answer whose replicas came up short, tried again (a ``WAIT`` on
        its own says nothing: it counts the replicas of its connection's writes).

        Returns:
            The record, or ``None`` when it is no longer this SUBMITTED one.
        """
        return self._move(
            record,
            {"state": State.SUBMITTED, "segmind_request_id": record.segmind_request_id},
            guarded=True,
            state=State.SUBMITTED,
        )

    def replicas_online(self) -> int:
        """The replicas the store's primary streams its writes to now."""
        return self.store.replicas_online()

    def claim_poll(self, record: Record, step: int, message_id: str) -> Record | None:
        """SUBMITTED at an earlier step -> poll step ``step`` owned by ``message_id``."""
        return self._move(
            record,
            {
                "state": State.SUBMITTED,
                "poll_step": str(record.poll_step),
                "poll_owner": record.poll_owner,
            },
            poll_step=step,
            poll_owner=message_id,
        )

    def polled(
        self,
        record: Record,
        *,
        status: str,
        failed: bool,
        at: float | None = None,
        progress_at: float | None = None,
    ) -> Record | None:
        """Count a poll of the current step (its owner only): the status it read, or one
        more consecutive failure. ``at`` (when the poll was answered) dates what it saw, for
        learning the workflow's durations: the last time the job was still pending, still
        QUEUED, and the first time it was PROCESSING. ``progress_at``: this poll publishes
        a progress message (at that time)."""
        seen: dict[str, Any] = {}
        if progress_at is not None:
            seen["progress_at"] = progress_at
        if at is not None and not failed and status not in ("COMPLETED", "FAILED"):
            seen["pending_at"] = at
            if status == "QUEUED":
                seen["queued_at_poll"] = at
            elif status == "PROCESSING" and record.processing_at_poll is None:
                seen["processing_at_poll"] = at
        return self._move(
            record,
            {
                "state": State.SUBMITTED,
                "poll_step": str(record.poll_step),
                "poll_owner": record.poll_owner,
            },
            polls=record.polls + 1,
            poll_errors=record.poll_errors + 1 if failed else 0,
            last_status=status if not failed else record.last_status,
            **seen,
        )

    def finish(self, record: Record, result_json: str, finisher: str) -> Record | None:
        """Any state but DONE, as read -> DONE with the result (publication unconfirmed);
        the request leaves the in-flight index.

        The expected fields are the ones that identify the record's current holder, so a
        delivery that lost a race cannot overwrite the winner's outcome.
        """
        expected: dict[str, object] = {"state": record.state}
        if record.state is State.NEW:
            expected["owner"] = record.owner
        elif record.state is State.SUBMITTING:
            expected["submit_token"] = record.submit_token
        elif record.state is State.SUBMITTED:
            expected["poll_step"] = str(record.poll_step)
            expected["poll_owner"] = record.poll_owner
        else:
            raise ValueError("the record is already DONE")
        return self._move(
            record,
            expected,
            index=self._index(record, None),
            state=State.DONE,
            result=result_json,
            finisher=finisher,
            published=False,
            lease_until=0.0,
        )

    def records(self) -> list[Record]:
        """Every record (a scan of the store, for tools such as ``segmind-queue cancel
        --all-waiting``; unreadable ones are skipped)."""
        found: list[Record] = []
        for key in self.store.keys(self.key("")):
            stored = self.store.get(key)
            if stored is None:
                continue
            try:
                found.append(Record.from_fields(stored))
            except LedgerError:
                continue
        return found

    def request_cancel(self, record: Record) -> Record | None:
        """SUBMITTING (this POST) -> SUBMITTING with ``cancel_requested``: the POST's
        delivery ends the job CANCELLED once Segmind answered (charged) or the POST
        certainly failed (unpaid)."""
        return self._move(
            record,
            {"state": State.SUBMITTING, "submit_token": record.submit_token},
            cancel_requested=True,
        )

    def cancel_key(self, request_id: str) -> str:
        """The store key of a cancel that found no record (the request not received yet)."""
        return f"{self.prefix}:cancel:{request_id}"

    def mark_cancelled(self, request_id: str) -> None:
        """Remember a cancel of a request no worker has received yet (for ``ttl_s``): its
        first POST attempt finds it and ends it CANCELLED, unpaid."""
        self.store.put(self.cancel_key(request_id), {"at": repr(self.clock())}, self.ttl_s)

    def cancel_marked(self, request_id: str) -> bool:
        """Whether a cancel arrived for ``request_id`` before its record existed."""
        return self.store.get(self.cancel_key(request_id)) is not None

    def mark_published(self, record: Record) -> Record | None:
        """DONE, unconfirmed -> DONE, published: the result's publication was confirmed."""
        return self._move(record, {"state": State.DONE, "published": "0"}, published=True)

    def delete(self, request_id: str) -> None:
        """Forget a request (tests and tools only: a forgotten request can be paid again)."""
        self.store.delete(self.key(request_id))

    def _index(self, record: Record, value: str | None) -> IndexChange:
        return IndexChange(self.in_flight_key, record.request_id, value)

    def _move(
        self,
        record: Record,
        expected: Mapping[str, object],
        *,
        index: IndexChange | None = None,
        guarded: bool = False,
        **changes: Any,
    ) -> Record | None:
        updated = replace(record, **changes)
        new_fields = updated.to_fields()
        changed = {name: new_fields[name] for name in changes}
        condition = {name: _encode(value) for name, value in expected.items()}
        key = self.key(record.request_id)
        if not guarded or self.min_replicas <= 0:
            applied = self.store.update(key, condition, changed, self.ttl_s, index)
            return updated if applied or self._applied_before(key, changed) else None
        applied, acknowledged = self.store.update_replicated(
            key,
            condition,
            changed,
            self.ttl_s,
            index,
            replicas=self.min_replicas,
            timeout_s=self.replica_timeout_s,
        )
        if not applied:
            if not self._applied_before(key, changed):
                return None
            # The WAIT after the refused retry counted nothing of the first write.
            raise ReplicasShortError(updated, 0, self.min_replicas)
        if acknowledged < self.min_replicas:
            raise ReplicasShortError(updated, acknowledged, self.min_replicas)
        return updated

    def _applied_before(self, key: str, changed: Mapping[str, str]) -> bool:
        """Whether a refused compare-and-set finds the record holding its own changes: the
        client sent the update again after the connection broke under the first one (a
        Redis restart or failover), which had been applied. Every transition writes a
        value of its own (a token, a message id, a time), so another delivery's write
        never looks like this one's."""
        stored = self.store.get(key)
        return stored is not None and all(stored.get(k, "") == v for k, v in changed.items())
