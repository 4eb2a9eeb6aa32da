"""Dead letters, the pure half: why a message is in a ``.XQ`` and what replaying it does.

Two kinds of messages reach ``<queue>.XQ``:

- requests the worker cannot answer (no usable ``reply_to``) and messages the screen
  refuses (``worker.broker``): the worker publishes them there itself, with the reason in
  the header ``x-segmind-dead-letter-reason``;
- results their reply queue refused go to the results dead-letter queue
  (``RESULTS_DEAD_LETTER_QUEUE``), with the reason and the reply queue
  (``x-segmind-reply-to``) in headers: replaying one publishes it to that queue again;
- messages Dramatiq gives up on (retries exhausted, a malformed poll message, a poll whose
  ledger record is gone, an undecodable body, an unknown actor): it nacks them and RabbitMQ
  moves the unchanged body there with an ``x-death`` header. ``reason_fields`` is what the
  ``worker.deadletters.middleware`` records in the store just before that nack
  (``dead_letter_key``).

Bytes and headers in, facts out: decoding a message (``decode_envelope``),
``explain_dead_letter`` (why it is there), ``replay_problem`` (why it cannot be replayed),
``replay_body`` (the message sent back) and ``replay_plan`` (what the worker will do with it,
given the request's ledger record: the worker's own ``submit_decision`` and
``poll_decision``). The I/O is ``worker.deadletters.queues``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from producers import wire
from producers.envelope import ENVELOPE_KEYS, plain_request_envelope, poll_step_arguments
from producers.redaction import redact
from worker.ledger import (
    PollAction,
    Record,
    State,
    SubmitAction,
    poll_decision,
    submit_decision,
)

#: The keys of a Dramatiq message (its JSON encoder writes exactly these).
_REQUIRED_KEYS: Final = ENVELOPE_KEYS[:5]
_OPTIONAL_KEYS: Final = ENVELOPE_KEYS[5:]
#: The options a replayed message keeps: its rank. Every other one (``retries``,
#: ``traceback``, ``eta``, a poll's due time or reserved token slot) belongs to the
#: deliveries that failed.
KEPT_OPTIONS: Final = ("broker_priority",)
#: The actors this service runs.
ACTORS: Final = (wire.SUBMIT_ACTOR, wire.POLL_ACTOR)
#: The longest part of a producer-controlled value shown in a reason.
_SHOWN_CHARS: Final = 80
#: How long the reason of a dead letter is kept: twice RabbitMQ's 7-day dead-letter TTL.
DEAD_LETTER_TTL_S: Final = 14 * 24 * 3600
#: The longest exception message stored (a producer's data may end up in it).
MAX_REASON_CHARS: Final = 1000


def dead_letter_key(prefix: str, message_id: str) -> str:
    """The Redis key of the reason a message was dead-lettered."""
    return f"{prefix}:deadletter:{message_id}"


def reason_fields(
    exception: BaseException | None,
    *,
    actor: str,
    queue: str,
    retries: int,
    at: float,
    secrets: Iterable[str] = (),
) -> dict[str, str]:
    """What is stored about a dead-lettered message (a pure function).

    Args:
        exception: the exception the last delivery failed with (``None``: none recorded).
        actor: the message's actor name.
        queue: the queue it was consumed from.
        retries: Dramatiq's retry count of the message.
        at: when it was dead-lettered (epoch seconds).
        secrets: texts scrubbed out of the exception's message (the API key, passwords).

    Returns:
        String fields: ``exception`` (class name, empty when none), ``message`` (scrubbed,
        at most ``MAX_REASON_CHARS``), ``reason`` (``Class: message``, never empty),
        ``actor``, ``queue``, ``retries``, ``at``.
    """
    if exception is None:
        name, text = "", ""
        reason = f"failed after {retries} retries (no exception recorded)"
    else:
        name = type(exception).__name__
        try:
            text = str(exception)
        except Exception:  # a broken __str__ must not stop the nack
            text = "<unprintable>"
        text = redact(" ".join(text.split()), secrets)[:MAX_REASON_CHARS]
        reason = f"{name}: {text}" if text else name
        if retries:
            reason = f"{reason} (after {retries} retries)"
    return {
        "reason": reason,
        "exception": name,
        "message": text,
        "actor": actor,
        "queue": queue,
        "retries": str(retries),
        "at": repr(at),
    }


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
        reply_to: for a result its reply queue refused (``RESULTS_DEAD_LETTER_QUEUE``),
            that reply queue; ``None`` for a message.
        message: the Dramatiq message the body stands for: the body itself, or for a
            request in the plain form (a bare request, RabbitMQ dead-letters it as it was
            published) the message the worker made of it, which a replay sends.
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
    reply_to: str | None = None
    message: bytes = b""

    @property
    def is_result(self) -> bool:
        """Whether this is a result its reply queue refused (not a request or poll)."""
        return self.reply_to is not None


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
    if not queue or wire.dead_letter_source(queue) is not None:
        return None
    return wire.delayed_source(queue)


def dead_letter_from(
    queue: str,
    body: bytes,
    *,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    timestamp: int | None = None,
    priority: int | None = None,
    recorded: Mapping[str, str] | None = None,
    amqp_reply_to: str | None = None,
    correlation_id: str | None = None,
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
        amqp_reply_to, correlation_id: its AMQP ``reply_to`` and ``correlation_id`` (what a
            request in the plain form may take its reply queue and id from).
    """
    headers = dict(headers or {})
    reply_to = _text(headers.get(wire.REPLY_TO_HEADER))
    if reply_to:
        return _result_letter(queue, body, headers, reply_to, message_id, timestamp, priority)
    message = body
    source = source_queue_of(headers, None)
    if source is not None:
        # A bare request: the worker ran it as this message, and recorded its reason so.
        plain = plain_request_envelope(
            body,
            queue_name=source,
            reply_to=amqp_reply_to,
            correlation_id=correlation_id,
            message_id=message_id,
            priority=priority,
            timestamp_s=timestamp,
        )
        message = plain if plain is not None else body
    envelope, _problem = decode_envelope(message)
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
        reason=explain_dead_letter(message, headers, recorded),
        dead_lettered_at=_dead_lettered_at(headers, timestamp, recorded),
        body=body,
        headers=headers,
        envelope=envelope,
        retries=retries if isinstance(retries, int) and not isinstance(retries, bool) else 0,
        priority=priority,
        message=message,
    )


def _result_letter(
    queue: str,
    body: bytes,
    headers: dict[str, Any],
    reply_to: str,
    message_id: str | None,
    timestamp: int | None,
    priority: int | None,
) -> DeadLetter:
    """A result its reply queue refused: its ids come from the result itself."""
    try:
        result = json.loads(body.decode("utf-8"))
    except ValueError:
        result = None
    fields = result if isinstance(result, dict) else {}
    request_id, workflow = fields.get("request_id"), fields.get("workflow")
    request_id = request_id[:200] if isinstance(request_id, str) else None
    return DeadLetter(
        id=request_id or (message_id or "") or body_digest(body),
        queue=queue,
        source_queue=reply_to,
        actor=None,
        request_id=request_id,
        workflow=workflow[:200] if isinstance(workflow, str) else None,
        reason=explain_dead_letter(body, headers),
        dead_lettered_at=_dead_lettered_at(headers, timestamp, None),
        body=body,
        headers=headers,
        priority=priority,
        reply_to=reply_to,
    )


def with_recorded_reason(letter: DeadLetter, recorded: Mapping[str, str]) -> DeadLetter:
    """``letter`` explained by the reason the middleware recorded for it (``reason_fields``)."""
    return replace(
        letter,
        reason=explain_dead_letter(letter.message or letter.body, letter.headers, recorded),
        dead_lettered_at=letter.dead_lettered_at or _dead_lettered_at({}, None, recorded),
    )


def body_digest(body: bytes) -> str:
    """The id of a message that carries none: a digest of its body."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:16]


def replay_problem(letter: DeadLetter) -> str | None:
    """Why ``letter`` cannot be replayed, or ``None`` when it can.

    A body that is not a well-formed message of this service's actors would only be
    dead-lettered again; so would a message the worker dead-lettered itself with its
    reason header (a request with no usable ``reply_to``, a malformed envelope); and a
    message must know its source queue. A result is sent on to its reply queue as it is.
    """
    if letter.is_result:
        return None
    _envelope, problem = decode_envelope(letter.message or letter.body)
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
    in ``KEPT_OPTIONS``, so Dramatiq counts its retries from zero. A result is sent as it
    is.

    Raises:
        ValueError: ``replay_problem(letter)`` is not ``None``.
    """
    problem = replay_problem(letter)
    if problem is not None:
        raise ValueError(problem)
    if letter.is_result:
        return letter.body
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
    if letter.is_result:
        return "the result is published to its reply queue again (no Segmind call)"
    if letter.actor == wire.SUBMIT_ACTOR:
        return _submit_plan(letter, record, now, resubmit_unknown_outcome)
    step = letter.envelope["args"][1] if letter.envelope is not None else 0
    action = poll_decision(record, step, letter.id)
    if action is PollAction.MISSING:
        return "dead-lettered again: the request has no ledger record (expired or lost)"
    assert record is not None
    if record.state is State.DONE:
        return _done_plan(action is PollAction.REPUBLISH)
    if action is PollAction.BEHIND:
        return (
            f"ends FAILED submit_outcome_unknown: the request is {record.state}, its "
            "submission lost with Redis's latest writes (nothing is POSTed)"
        )
    if action is PollAction.DROP:
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
