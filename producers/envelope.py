"""The envelope: the Dramatiq message around every request and poll, and its screen.

Dramatiq trusts the body of a message. ``envelope_problem`` is the check the worker runs on
every raw body before Dramatiq decodes it (``worker.broker``): one that is not a
well-formed message of an actor of the queue it arrived on is dead-lettered with the
reason. ``poll_step_arguments`` is the one rule for a poll message's arguments, shared by
the poll step and the dead-letter tools. ``plain_request_envelope`` turns a request
published in the plain form (the bare request, with AMQP ``reply_to`` / ``correlation_id``)
into the Dramatiq message the worker runs. Building a request's envelope is
``producers.wire.request_envelope``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from producers import wire
from producers.contract import REQUEST_ID_PATTERN, json_type, shorten

_MESSAGE_ID_RE = re.compile(REQUEST_ID_PATTERN)

#: The keys of a Dramatiq message; the first five are required.
ENVELOPE_KEYS: Final = (
    "queue_name",
    "actor_name",
    "args",
    "kwargs",
    "options",
    "message_id",
    "message_timestamp",
)
_REQUIRED_ENVELOPE_KEYS: Final = frozenset(ENVELOPE_KEYS[:5])
#: Options Dramatiq acts on that a message must not carry: they name actors or messages to
#: send next (callbacks, pipelines), stand for Python callables or exception classes, or
#: override the actor's own retry and time limits. The service never sets them; one from a
#: producer would turn a request into another message, or crash Dramatiq's middleware.
FORBIDDEN_OPTIONS: Final = frozenset(
    {
        "pipe_target",
        "pipe_ignore",
        "on_success",
        "on_failure",
        "on_retry_exhausted",
        "group_completion_uuid",
        "group_completion_callbacks",
        "throws",
        "retry_when",
        "max_retries",
        "min_backoff",
        "max_backoff",
        "time_limit",
        "max_age",
    }
)
#: The latest message timestamp accepted, epoch milliseconds (the year 9999).
_MAX_TIMESTAMP_MS: Final = 253_402_300_799_999


def envelope_problem(
    body: bytes, *, queue_name: str, actor_queues: Mapping[str, str]
) -> str | None:
    """Why ``body`` is not a Dramatiq message the worker may hand to Dramatiq, or ``None``.

    Dramatiq trusts the body of a message: a ``queue_name`` other than the queue it came
    from makes the worker acknowledge it on another queue's channel (or kills a worker
    thread when no such queue exists), an ``eta`` on a queue that is not a delay queue
    holds it in memory until then, options of the wrong type crash its middleware, and
    options such as ``pipe_target`` make it send other messages. This check runs first,
    on the raw body, so that such a message is dead-lettered with this reason instead.

    Args:
        body: the message body as received.
        queue_name: the queue it was received from: an actor's queue or its delay queue
            (``wire.delay_queue``).
        actor_queues: the declared actors: actor name to the queue it consumes.

    Returns:
        ``None`` for a well-formed message, else a short reason (at most
        ``MAX_REASON_CHARS`` characters, never the body itself).
    """
    try:
        fields: object = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return "the body is not UTF-8 text"
    except RecursionError:
        return "the body is not JSON: it nests too deep"
    except ValueError as exc:
        return shorten(f"the body is not JSON: {exc}")
    if not isinstance(fields, dict):
        return f"the body is {json_type(fields)}, not a Dramatiq message (a JSON object)"
    missing = sorted(_REQUIRED_ENVELOPE_KEYS.difference(fields))
    if missing:
        return f"the message has no {', '.join(missing)}"
    unknown = sorted(key for key in fields if key not in ENVELOPE_KEYS)
    if unknown:
        names = ", ".join(repr(shorten(key, 40)) for key in unknown[:5])
        return f"the message has keys a Dramatiq message does not have: {names}"
    problem = _envelope_fields_problem(fields, queue_name, actor_queues)
    return None if problem is None else shorten(problem)


def _envelope_fields_problem(
    fields: dict[str, Any], queue_name: str, actor_queues: Mapping[str, str]
) -> str | None:
    declared = fields["queue_name"]
    if declared != queue_name:
        shown = repr(shorten(declared, 80)) if isinstance(declared, str) else json_type(declared)
        return f"queue_name {shown} is not the queue it arrived on ({queue_name})"
    actor = fields["actor_name"]
    if not isinstance(actor, str) or actor not in actor_queues:
        shown = repr(shorten(actor, 80)) if isinstance(actor, str) else json_type(actor)
        return f"actor_name {shown} is not an actor of this worker"
    own = actor_queues[actor]
    delayed = queue_name == wire.delay_queue(own)
    if queue_name != own and not delayed:
        return f"actor {actor!r} does not consume queue {queue_name}"
    for key, kind in (("args", list), ("kwargs", dict), ("options", dict)):
        if not isinstance(fields[key], kind):
            wanted = "an array" if kind is list else "an object"
            return f"{key} is {json_type(fields[key])}, not {wanted}"
    message_id = fields.get("message_id")
    if "message_id" in fields and not (
        isinstance(message_id, str) and _MESSAGE_ID_RE.fullmatch(message_id)
    ):
        return "message_id is not 1-128 printable ASCII characters"
    timestamp: Any = fields.get("message_timestamp", 0)
    if not (_is_number(timestamp) and 0 <= timestamp <= _MAX_TIMESTAMP_MS):
        return "message_timestamp is not a time in epoch milliseconds"
    return _options_problem(fields["options"], delayed=delayed)


def _options_problem(options: dict[str, Any], *, delayed: bool) -> str | None:
    forbidden = sorted(FORBIDDEN_OPTIONS.intersection(options))
    if forbidden:
        return f"options {', '.join(forbidden)} may not be set on a message"
    if "eta" in options and not delayed:
        return "option eta is only for delay queues"
    eta = options.get("eta")
    if eta is not None and not _is_number(eta):
        return "option eta is not a time in epoch milliseconds"
    priority = options.get("broker_priority")
    if priority is not None and not (
        isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority <= 9
    ):
        return "option broker_priority is not an integer from 0 to 9"
    retries = options.get("retries")
    if retries is not None and not (
        isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0
    ):
        return "option retries is not a count"
    if options.get("traceback") is not None and not isinstance(options["traceback"], str):
        return "option traceback is not a string"
    if options.get("requeue_timestamp") is not None and not _is_number(
        options["requeue_timestamp"]
    ):
        return "option requeue_timestamp is not a time in epoch milliseconds"
    return None


def _is_number(value: object) -> bool:
    """A finite JSON number (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def poll_step_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, int] | None:
    """``(request_id, step)`` of a poll message's arguments, or ``None`` when they are not
    exactly a string and a step >= 1."""
    if (
        len(args) == 2
        and not kwargs
        and isinstance(args[0], str)
        and isinstance(args[1], int)
        and not isinstance(args[1], bool)
        and args[1] >= 1
    ):
        return args[0], args[1]
    return None


#: The keys that make a JSON object a Dramatiq message rather than a bare request.
_ENVELOPE_KEY_SET: Final = frozenset(ENVELOPE_KEYS)


def plain_request_envelope(
    body: bytes,
    *,
    queue_name: str,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    message_id: str | None = None,
    priority: int | None = None,
    timestamp_s: int | None = None,
) -> bytes | None:
    """The Dramatiq message for a request published in the plain form, or ``None`` when
    ``body`` is not one (a Dramatiq message, or not a JSON object: the screen judges it).

    The plain form is RabbitMQ's RPC convention: the body is the bare request object, and
    the AMQP properties fill what it leaves out. ``reply_to`` comes from the body, else the
    ``reply_to`` property; ``request_id`` from the body, else ``correlation_id``, else
    ``message_id``; ``priority`` from the body, else the AMQP priority; the publish time
    from the AMQP ``timestamp`` (epoch seconds), else now. The request is then validated
    like any other: what the properties add is checked like what the body says.

    The message's id is the AMQP ``message_id`` when it is a valid one, else a digest of the
    body and the properties used: the same delivery always gets the same id, so the ledger
    recognises a redelivery as one.

    Args:
        body: the message body as received.
        queue_name: the requests queue it arrived on.
        reply_to, correlation_id, message_id, priority, timestamp_s: its AMQP properties.
    """
    fields = _bare_object(body)
    if fields is None:
        return None
    request: dict[str, Any] = dict(fields)
    if "reply_to" not in request and reply_to:
        request["reply_to"] = reply_to
    if "request_id" not in request and (correlation_id or message_id):
        request["request_id"] = correlation_id or message_id
    if "priority" not in request and priority is not None:
        request["priority"] = priority
    identity = message_id if message_id and _MESSAGE_ID_RE.fullmatch(message_id) else None
    if identity is None:
        seen = json.dumps([reply_to, correlation_id, priority]).encode()
        identity = "plain-" + hashlib.sha256(body + b"\x00" + seen).hexdigest()[:32]
    published_ms = None
    if isinstance(timestamp_s, int) and 0 < timestamp_s * 1000 <= _MAX_TIMESTAMP_MS:
        published_ms = timestamp_s * 1000
    message = wire.request_envelope(
        request, queue_name=queue_name, message_id=identity, timestamp_ms=published_ms
    )
    return _ascii_json(message)


def plain_cancel_envelope(
    body: bytes, *, queue_name: str, message_id: str | None = None
) -> bytes | None:
    """The Dramatiq message for a cancel published in the plain form (the bare
    ``{"request_ids": [...]}`` object on the cancels queue), or ``None`` when ``body`` is not
    a JSON object without a key of a Dramatiq message (the screen judges it). Its id is the
    AMQP ``message_id`` when valid, else a digest of the body."""
    fields = _bare_object(body)
    if fields is None:
        return None
    identity = message_id if message_id and _MESSAGE_ID_RE.fullmatch(message_id) else None
    message = {
        "queue_name": queue_name,
        "actor_name": wire.CANCEL_ACTOR,
        "args": [fields],
        "kwargs": {},
        "options": {},
        "message_id": identity or "cancel-" + hashlib.sha256(body).hexdigest()[:32],
        "message_timestamp": time.time_ns() // 1_000_000,
    }
    return _ascii_json(message)


def _bare_object(body: bytes) -> dict[str, Any] | None:
    """``body`` as a JSON object holding no key of a Dramatiq message, else ``None``."""
    try:
        fields: object = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(fields, dict) or not _ENVELOPE_KEY_SET.isdisjoint(fields):
        return None
    return fields


def _ascii_json(message: dict[str, Any]) -> bytes | None:
    try:
        # ASCII escapes: a lone surrogate in the body must survive to the validator.
        return json.dumps(message, separators=(",", ":")).encode("ascii")
    except (ValueError, RecursionError):
        return None


def with_message_id(body: bytes) -> bytes | None:
    """A Dramatiq message that has no ``message_id``, given one, or ``None`` when ``body``
    has one (or is not a Dramatiq message).

    Dramatiq would invent a new id at each delivery, so a redelivered request without a
    ``request_id`` (which defaults to the message's id) would become a new request and be
    paid for again. The id given is a digest of the body: the same on every delivery.
    """
    try:
        fields: object = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if (
        not isinstance(fields, dict)
        or "message_id" in fields
        or _ENVELOPE_KEY_SET.isdisjoint(fields)
    ):
        return None
    fields["message_id"] = "message-" + hashlib.sha256(body).hexdigest()[:32]
    try:
        return json.dumps(fields, separators=(",", ":")).encode("ascii")
    except (ValueError, RecursionError):
        return None
