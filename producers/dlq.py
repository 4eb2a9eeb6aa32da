"""Dead letters: reading the ``.XQ`` queues, explaining each message, replaying them safely.

Two kinds of messages reach ``<queue>.XQ``:

- requests the worker cannot answer (no usable ``reply_to``): it publishes them there
  itself, with the reason in the header ``x-segmind-dead-letter-reason``;
- messages Dramatiq gives up on (retries exhausted, a malformed poll message, a poll whose
  ledger record is gone, an undecodable body, an unknown actor): it nacks them and RabbitMQ
  moves the unchanged body there with an ``x-death`` header. The worker's
  ``worker.deadletters.DeadLetterReasons`` middleware records the exception in Redis
  (``<REDIS_KEY_PREFIX>:deadletter:<message_id>``) just before the nack.

The first half of this module is pure (bytes and headers in, facts out): decoding a
message, ``explain_dead_letter`` (why it is there), ``replay_problem`` (why it cannot be
replayed), ``replay_body`` (the message sent back) and ``replay_plan`` (what the worker will
do with it, given the request's ledger record: the worker's own ``submit_decision`` and
``poll_decision``). The second half does the I/O: ``read_dead_letters`` browses a queue
without removing anything, ``with_recorded_reasons`` adds the reasons stored in Redis, and
``replay_dead_letters`` sends chosen messages back to their source queue.

Browsing: AMQP has no "peek", so a browse takes the messages with ``basic.get`` without
acknowledging them, then rejects them all with ``requeue``: RabbitMQ puts requeued
messages back at their original place, so the queue's order is kept. While a browse or a
replay holds them (a fraction of a second for a few thousand messages), another browse
does not see them.

Replay: each chosen message is republished, with publisher confirms and ``mandatory``, to
its source queue as a new delivery (the same ``message_id``; Dramatiq's retry count and
options reset), and only once RabbitMQ has confirmed it is the dead letter acked (removed).
A crash in between leaves both copies: a duplicate, never a loss, and the ledger makes the
duplicate harmless (see ``replay_plan``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

import pika
import pika.exceptions

from producers import wire
from producers.amqp import BrokerError, close_quietly, connect, parse_amqp_urls
from worker.deadletters import dead_letter_key
from worker.ledger import (
    PollAction,
    Record,
    State,
    Store,
    SubmitAction,
    poll_decision,
    submit_decision,
)
from worker.pipeline import poll_step_arguments

#: The keys of a Dramatiq message (its JSON encoder writes exactly these).
_REQUIRED_KEYS: Final = ("queue_name", "actor_name", "args", "kwargs", "options")
_OPTIONAL_KEYS: Final = ("message_id", "message_timestamp")
#: The options a replayed message keeps: its rank. Every other one (``retries``,
#: ``traceback``, ``eta``, a poll's due time or reserved token slot) belongs to the
#: deliveries that failed.
KEPT_OPTIONS: Final = ("broker_priority",)
#: The actors this service runs.
ACTORS: Final = (wire.SUBMIT_ACTOR, wire.POLL_ACTOR)
_CONNECT_TIMEOUT_S: Final = 10.0
_NOT_FOUND: Final = 404
#: The longest part of a producer-controlled value shown in a reason.
_SHOWN_CHARS: Final = 80


# ------------------------------------------------------------------------------ pure


@dataclass(frozen=True)
class DeadLetter:
    """One message of a dead-letter queue.

    Attributes:
        id: the Dramatiq ``message_id``, else the AMQP ``message_id``, else ``sha256:`` and
            the first 16 hex digits of the body's digest (stable across reads).
        queue: the dead-letter queue it is in (``<queue>.XQ``).
        source_queue: the queue it came from (``x-death``, else the envelope's
            ``queue_name``; a delay queue ``.DQ`` is named by its queue), or ``None``.
        actor: the envelope's ``actor_name``, when it is a string.
        request_id: the request's id, when the message names one.
        workflow: the request's workflow, when the message names one.
        reason: why it was dead-lettered (never empty; see ``explain_dead_letter``).
        dead_lettered_at: when (``x-death``'s time, else the message's timestamp, else
            the recorded time), or ``None``.
        body: the message body, as it is.
        headers: the AMQP headers, as RabbitMQ delivered them.
        envelope: the decoded Dramatiq message, or ``None`` when the body is not one.
        retries: Dramatiq's retry count in the envelope's options (0 when none).
        priority: the AMQP priority it was delivered with.
    """

    id: str
    queue: str
    source_queue: str | None
    actor: str | None
    request_id: str | None
    workflow: str | None
    reason: str
    dead_lettered_at: datetime | None
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    envelope: Mapping[str, Any] | None = None
    retries: int = 0
    priority: int | None = None


def decode_envelope(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """``(envelope, None)`` when ``body`` is a Dramatiq message of one of this service's
    actors with the arguments it takes, else ``(envelope or None, what is wrong)``.

    The envelope is returned whenever the body is a Dramatiq message, even with a problem
    of its arguments or actor, so that its ids can still be shown.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    try:
        data = json.loads(text)
    except ValueError:
        return None, "not JSON"
    except RecursionError:
        return None, "not JSON: it nests too deep"
    if not isinstance(data, dict):
        return None, f"not a Dramatiq message: a JSON {type(data).__name__}, not an object"
    for key in _REQUIRED_KEYS:
        if key not in data:
            return None, f"not a Dramatiq message: no {key}"
    extra = sorted(str(key) for key in data if key not in _REQUIRED_KEYS + _OPTIONAL_KEYS)
    if extra:
        return None, f"not a Dramatiq message: unknown keys {', '.join(extra)}"
    actor = data["actor_name"]
    if not isinstance(actor, str):
        return None, "not a Dramatiq message: actor_name is not a string"
    if not isinstance(data["args"], list):
        return None, "not a Dramatiq message: args is not a list"
    if not isinstance(data["kwargs"], dict) or not isinstance(data["options"], dict):
        return None, "not a Dramatiq message: kwargs or options is not an object"
    if actor not in ACTORS:
        return data, f"unknown actor {_shown(actor)}"
    args, kwargs = data["args"], data["kwargs"]
    if actor == wire.SUBMIT_ACTOR and (len(args) != 1 or kwargs):
        return data, "args are not (request)"
    if actor == wire.POLL_ACTOR and poll_step_arguments(args, kwargs) is None:
        return data, "args are not (request_id, step)"
    return data, None


def explain_dead_letter(
    body: bytes, headers: Mapping[str, Any], recorded: Mapping[str, str] | None = None
) -> str:
    """Why a message is in a dead-letter queue (never empty).

    In order: the worker's own reason header; what is wrong with the body; the exception
    the ``DeadLetterReasons`` middleware recorded (``recorded``: the stored fields);
    RabbitMQ's reason when it is not a rejection (expired, a length limit); the last error
    Dramatiq kept in the message's options; else that the worker rejected it unexplained.

    Args:
        body: the message body.
        headers: its AMQP headers (``None`` counts as none).
        recorded: the fields stored for it in Redis, if any.
    """
    ours = _text(headers.get(wire.DEAD_LETTER_REASON_HEADER))
    if ours:
        return ours
    envelope, problem = decode_envelope(body)
    if problem is not None:
        return problem
    assert envelope is not None
    if recorded and recorded.get("reason"):
        return recorded["reason"]
    death = _first_death(headers)
    death_reason = _text(death.get("reason")) if death else ""
    where = _text(death.get("queue")) if death else ""
    if death_reason and death_reason != "rejected":
        return f"RabbitMQ dead-lettered it from {where or '?'}: {death_reason}"
    options = envelope["options"]
    retries = options.get("retries")
    last = _last_line(options.get("traceback"))
    if last:
        return f"failed after {retries} retries; an earlier attempt raised {last}"
    if death:
        return (
            f"rejected from {where or '?'} with no reason recorded (Redis was unreachable "
            "when it failed, or another consumer rejected it)"
        )
    return "no reason recorded (published to the dead-letter queue directly)"


def source_queue_of(headers: Mapping[str, Any], envelope: Mapping[str, Any] | None) -> str | None:
    """The queue a dead letter came from: the first ``x-death`` entry's queue, else the
    envelope's ``queue_name``; a delay queue (``.DQ``) is named by its queue, where a
    replayed message belongs."""
    death = _first_death(headers)
    queue = _text(death.get("queue")) if death else ""
    if not queue and envelope is not None:
        queue = _text(envelope.get("queue_name"))
    if not queue or queue.endswith(".XQ"):
        return None
    return queue.removesuffix(".DQ")


def dead_letter_from(
    queue: str,
    body: bytes,
    *,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    timestamp: int | None = None,
    priority: int | None = None,
    recorded: Mapping[str, str] | None = None,
) -> DeadLetter:
    """The ``DeadLetter`` of one message of ``queue`` (its AMQP properties given apart).

    Args:
        queue: the dead-letter queue.
        body: the body.
        headers: the AMQP headers.
        message_id: the AMQP ``message_id`` property.
        timestamp: the AMQP ``timestamp`` property (epoch seconds).
        priority: the AMQP priority.
        recorded: the reason fields stored in Redis for it, if any.
    """
    headers = dict(headers or {})
    envelope, _problem = decode_envelope(body)
    dramatiq_id = _text(envelope.get("message_id")) if envelope is not None else ""
    letter_id = dramatiq_id or (message_id or "") or body_digest(body)
    actor = _text(envelope.get("actor_name")) if envelope is not None else ""
    request_id, workflow = _request_fields(envelope)
    retries = envelope["options"].get("retries") if envelope is not None else None
    return DeadLetter(
        id=letter_id,
        queue=queue,
        source_queue=source_queue_of(headers, envelope),
        actor=actor or None,
        request_id=request_id,
        workflow=workflow,
        reason=explain_dead_letter(body, headers, recorded),
        dead_lettered_at=_dead_lettered_at(headers, timestamp, recorded),
        body=body,
        headers=headers,
        envelope=envelope,
        retries=retries if isinstance(retries, int) and not isinstance(retries, bool) else 0,
        priority=priority,
    )


def body_digest(body: bytes) -> str:
    """The id of a message that carries none: a digest of its body."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:16]


def replay_problem(letter: DeadLetter) -> str | None:
    """Why ``letter`` cannot be replayed, or ``None`` when it can.

    A body that is not a well-formed message of this service's actors would only be
    dead-lettered again; so would a message the worker dead-lettered itself with its
    reason header (a request with no usable ``reply_to``, a malformed envelope); and a
    message must know its source queue.
    """
    _envelope, problem = decode_envelope(letter.body)
    if problem is not None:
        return f"cannot be replayed: {problem}"
    if _text(letter.headers.get(wire.DEAD_LETTER_REASON_HEADER)):
        return "cannot be replayed: the worker refused it for good (see its reason)"
    if letter.source_queue is None:
        return "cannot be replayed: no source queue (no x-death and no queue_name)"
    return None


def replay_body(letter: DeadLetter) -> bytes:
    """The message ``letter`` is replayed as: the same envelope (same ``message_id``,
    arguments and timestamp) with the source queue as ``queue_name`` and only the options
    in ``KEPT_OPTIONS``, so Dramatiq counts its retries from zero.

    Raises:
        ValueError: ``replay_problem(letter)`` is not ``None``.
    """
    problem = replay_problem(letter)
    if problem is not None:
        raise ValueError(problem)
    assert letter.envelope is not None
    assert letter.source_queue is not None
    envelope = dict(letter.envelope)
    envelope["queue_name"] = letter.source_queue
    envelope["options"] = {
        key: value for key, value in envelope["options"].items() if key in KEPT_OPTIONS
    }
    envelope["message_id"] = letter.id
    return wire.encode(envelope)


def replay_plan(
    letter: DeadLetter,
    record: Record | None,
    *,
    now: float,
    resubmit_unknown_outcome: bool = False,
) -> str:
    """What the worker will do with ``letter`` once replayed, given its request's ledger
    record as read now (the worker's own rules: ``submit_decision``, ``poll_decision``).

    Args:
        letter: the dead letter.
        record: the request's ledger record, or ``None`` when there is none.
        now: the current time (epoch seconds).
        resubmit_unknown_outcome: the workers' ``SEGMIND_RESUBMIT_UNKNOWN_OUTCOME``.
    """
    problem = replay_problem(letter)
    if problem is not None:
        return f"stays in the dead-letter queue ({problem})"
    if letter.actor == wire.SUBMIT_ACTOR:
        return _submit_plan(letter, record, now, resubmit_unknown_outcome)
    step = letter.envelope["args"][1] if letter.envelope is not None else 0
    action = poll_decision(record, step, letter.id)
    if action is PollAction.MISSING:
        return "dead-lettered again: the request has no ledger record (expired or lost)"
    assert record is not None
    if record.state is State.DONE:
        return _done_plan(action is PollAction.REPUBLISH)
    if action is PollAction.DROP:
        if record.state is not State.SUBMITTED:
            return f"nothing: the request is {record.state}, not being polled"
        return "nothing: a later poll step already follows the job"
    return f"polling resumes at step {step} (the job was submitted; nothing is POSTed)"


def _submit_plan(letter: DeadLetter, record: Record | None, now: float, resubmit: bool) -> str:
    if record is None:
        return "submitted fresh (no ledger record): one POST"
    action, _wait_s = submit_decision(record, letter.id, now)
    if action is SubmitAction.POST:
        return "POSTed once: the request was never sent (NEW, held by this message)"
    if action is SubmitAction.TAKE_OVER:
        return "POSTed once: the request was never sent (NEW, its holder's lease lapsed)"
    if action is SubmitAction.WAIT:
        if record.state is State.SUBMITTING:
            return "waits for the POST in flight, then follows its outcome (never a second POST)"
        return "waits for the delivery holding the request (NEW), then follows its outcome"
    if action is SubmitAction.OUTCOME_UNKNOWN:
        if resubmit:
            return "POSTed again (SUBMITTING: outcome unknown; SEGMIND_RESUBMIT_UNKNOWN_OUTCOME)"
        return "ends FAILED submit_outcome_unknown (SUBMITTING: never a second POST)"
    if action is SubmitAction.START_POLLING:
        return "polling resumes (SUBMITTED: the job was accepted; nothing is POSTed)"
    if record.state is State.DONE:
        return _done_plan(action is SubmitAction.REPUBLISH)
    return "nothing: the job is SUBMITTED and its poll messages follow it"


def _done_plan(republish: bool) -> str:
    if republish:
        return "publishes the stored result (DONE, its publication unconfirmed); no POST"
    return "nothing: answered already (DONE); the replay is acked, no POST, no result"


def _request_fields(envelope: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    if envelope is None:
        return None, None
    args = envelope.get("args")
    first = args[0] if isinstance(args, list) and args else None
    if envelope.get("actor_name") == wire.POLL_ACTOR:
        return (first[:200] if isinstance(first, str) else None), None
    if isinstance(first, dict):
        request_id, workflow = first.get("request_id"), first.get("workflow")
        return (
            request_id[:200] if isinstance(request_id, str) else None,
            workflow[:200] if isinstance(workflow, str) else None,
        )
    return None, None


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return None


def _dead_lettered_at(
    headers: Mapping[str, Any], timestamp: int | None, recorded: Mapping[str, str] | None
) -> datetime | None:
    death = _first_death(headers)
    when = death.get("time") if death else None
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    if isinstance(when, int) and not isinstance(when, bool):
        return datetime.fromtimestamp(when, UTC)
    if isinstance(timestamp, int) and timestamp > 0:
        return datetime.fromtimestamp(timestamp, UTC)
    at = (recorded or {}).get("at")
    try:
        return datetime.fromtimestamp(float(at), UTC) if at else None
    except (ValueError, OverflowError, OSError):
        return None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else ""


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "...")


def _last_line(traceback: object) -> str:
    if not isinstance(traceback, str):
        return ""
    lines = [line.strip() for line in traceback.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


# ------------------------------------------------------------------------------ I/O


def read_dead_letters(amqp_url: str, queue: str, *, limit: int | None = None) -> list[DeadLetter]:
    """The messages of dead-letter queue ``queue``, oldest first, left in the queue.

    Args:
        amqp_url: RabbitMQ's URL (several separated by ``;``); never shown in errors.
        queue: the dead-letter queue (``<queue>.XQ``).
        limit: read at most this many (from the head of the queue); ``None``: all.

    Returns:
        The dead letters in queue order; ``[]`` when the queue does not exist. Reasons
        come from the messages alone: ``with_recorded_reasons`` adds the ones in Redis.

    Raises:
        BrokerError: RabbitMQ could not be reached or refused the access.
        ValueError: ``amqp_url`` is not a valid AMQP URL, or ``limit`` is negative.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    with _Browser(amqp_url, queue, confirm=False) as browser:
        return [letter for _tag, letter in browser.take(limit)]


def with_recorded_reasons(
    letters: list[DeadLetter], store: Store, prefix: str
) -> tuple[list[DeadLetter], str | None]:
    """``letters`` with the reasons the worker recorded in ``store`` (Redis).

    Returns:
        The letters (each with its recorded reason when one exists) and ``None``, or the
        letters unchanged and why the store could not be read (the reasons from the
        messages alone still stand).
    """
    updated: list[DeadLetter] = []
    for letter in letters:
        try:
            recorded = store.get(dead_letter_key(prefix, letter.id))
        except Exception as exc:  # the store's own errors name no secret
            return letters, f"{type(exc).__name__}: {exc}"
        if recorded:
            updated.append(
                replace(
                    letter,
                    reason=explain_dead_letter(letter.body, letter.headers, recorded),
                    dead_lettered_at=letter.dead_lettered_at
                    or _dead_lettered_at({}, None, recorded),
                )
            )
        else:
            updated.append(letter)
    return updated, None


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did with one chosen dead letter.

    Attributes:
        letter: the dead letter.
        outcome: ``replayed`` (republished, confirmed, removed from the XQ), ``planned``
            (``--dry-run``), or ``kept`` (left in the XQ: see ``detail``).
        detail: the plan (what the worker will do with it), or why it was kept.
    """

    letter: DeadLetter
    outcome: Literal["replayed", "planned", "kept"]
    detail: str


@dataclass
class ReplayReport:
    """The outcome of ``replay_dead_letters``."""

    outcomes: list[ReplayOutcome] = field(default_factory=list)
    #: The ids asked for that no message of the queue carries.
    not_found: list[str] = field(default_factory=list)


def replay_dead_letters(
    amqp_url: str,
    queue: str,
    *,
    ids: Collection[str] | None,
    dry_run: bool = False,
    plan: Callable[[DeadLetter], str] | None = None,
    enrich: Callable[[list[DeadLetter]], list[DeadLetter]] | None = None,
) -> ReplayReport:
    """Send dead letters of ``queue`` back to their source queues.

    Each chosen message that can be replayed (``replay_problem``) is published as
    ``replay_body`` to its source queue (persistent, its priority kept, ``mandatory``,
    publisher confirms), and acked in the XQ only once RabbitMQ confirmed the publication;
    everything else is put back in place. A crash or a broken connection between the
    confirm and the ack leaves the message in the XQ as well: a duplicate, never a loss.

    Args:
        amqp_url: RabbitMQ's URL.
        queue: the dead-letter queue.
        ids: the ids to replay (every message carrying one of them); ``None``: all.
        dry_run: only report what would be replayed; nothing moves.
        plan: what the worker will do with a letter (shown in each outcome).
        enrich: applied to the letters read, before they are chosen and planned (adds
            the reasons recorded in Redis).

    Raises:
        BrokerError: RabbitMQ could not be reached, or the connection broke. Messages
            already replayed stay replayed; the others are back in the XQ.
        ValueError: ``amqp_url`` is not a valid AMQP URL.
    """
    wanted = None if ids is None else set(ids)
    report = ReplayReport()
    with _Browser(amqp_url, queue, confirm=not dry_run) as browser:
        taken = browser.take(None)
        letters = [letter for _tag, letter in taken]
        if enrich is not None:
            letters = enrich(letters)
        found: set[str] = set()
        for (tag, _raw), letter in zip(taken, letters, strict=True):
            if wanted is not None and letter.id not in wanted:
                continue
            found.add(letter.id)
            problem = replay_problem(letter)
            if problem is not None:
                report.outcomes.append(ReplayOutcome(letter, "kept", problem))
                continue
            detail = plan(letter) if plan is not None else "replayed"
            if dry_run:
                report.outcomes.append(ReplayOutcome(letter, "planned", detail))
                continue
            failure = browser.republish(tag, letter)
            if failure is None:
                report.outcomes.append(ReplayOutcome(letter, "replayed", detail))
            else:
                report.outcomes.append(ReplayOutcome(letter, "kept", failure))
        if wanted is not None:
            report.not_found = sorted(wanted - found)
    return report


class _Browser:
    """One connection and channel holding the messages of a queue unacknowledged; on
    exit, everything not acked is requeued in place and the connection closed."""

    def __init__(self, amqp_url: str, queue: str, *, confirm: bool) -> None:
        parameters, self._redact, _hosts = parse_amqp_urls(
            amqp_url, connect_timeout_s=_CONNECT_TIMEOUT_S
        )
        self.queue = queue
        try:
            self._connection = connect(parameters)
            self._channel = self._connection.channel()
            if confirm:
                self._channel.confirm_delivery()
        except (pika.exceptions.AMQPError, OSError) as exc:
            if getattr(self, "_connection", None) is not None:
                close_quietly(self._connection)
            raise BrokerError(self._redact.describe(exc)) from None
        self._held = False

    def __enter__(self) -> _Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._held and self._channel.is_open:
                # Everything not acked goes back, each message at its original place.
                self._channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        except (pika.exceptions.AMQPError, OSError):
            pass  # closing the connection requeues them as well
        close_quietly(self._connection)

    def take(self, limit: int | None) -> list[tuple[int, DeadLetter]]:
        """Take (unacknowledged) up to ``limit`` messages from the head of the queue: at
        most as many as it held when asked, so that messages arriving meanwhile cannot
        keep the loop going."""
        try:
            declared = self._channel.queue_declare(self.queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                return []
            raise BrokerError(self._redact.describe(exc)) from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerError(self._redact.describe(exc)) from None
        count = int(declared.method.message_count)
        if limit is not None:
            count = min(count, limit)
        taken: list[tuple[int, DeadLetter]] = []
        try:
            for _ in range(count):
                method, properties, body = self._channel.basic_get(self.queue, auto_ack=False)
                if method is None:
                    break
                self._held = True
                letter = dead_letter_from(
                    self.queue,
                    body,
                    headers=properties.headers,
                    message_id=properties.message_id,
                    timestamp=properties.timestamp,
                    priority=properties.priority,
                )
                taken.append((method.delivery_tag, letter))
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerError(self._redact.describe(exc)) from None
        return taken

    def republish(self, tag: int, letter: DeadLetter) -> str | None:
        """Publish ``letter`` to its source queue and, once confirmed, ack it here.

        Returns:
            ``None``, or why it stays in the XQ (unroutable: the source queue does not
            exist; nacked by RabbitMQ).

        Raises:
            BrokerError: the connection or channel broke.
        """
        assert letter.source_queue is not None
        priority = letter.priority
        if priority is None and letter.envelope is not None:
            # Dramatiq publishes a message with its ``broker_priority`` option as priority.
            option = letter.envelope["options"].get("broker_priority")
            priority = option if isinstance(option, int) and not isinstance(option, bool) else None
        properties = pika.BasicProperties(
            content_type=wire.CONTENT_TYPE,
            content_encoding=wire.CONTENT_ENCODING,
            delivery_mode=wire.PERSISTENT,
            priority=priority,
            message_id=letter.id,
        )
        try:
            self._channel.basic_publish(
                exchange="",
                routing_key=letter.source_queue,
                body=replay_body(letter),
                properties=properties,
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            return f"kept: queue {letter.source_queue!r} does not exist (start a worker first)"
        except pika.exceptions.NackError:
            return "kept: RabbitMQ refused the republished message (nack)"
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerError(self._redact.describe(exc)) from None
        try:
            self._channel.basic_ack(delivery_tag=tag)
        except (pika.exceptions.AMQPError, OSError) as exc:
            # Republished but not removed: it is requeued in the XQ, a harmless duplicate.
            raise BrokerError(self._redact.describe(exc)) from None
        return None
