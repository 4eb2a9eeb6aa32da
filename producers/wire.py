"""The wire format: the defaults (AMQP URL, queue names), the envelope of a request message,
a result's properties.

Producers in any language publish a request as a Dramatiq message: a JSON object (UTF-8)
published with the default exchange to the requests queue::

    {"queue_name": "segmind.requests", "actor_name": "submit_workflow",
     "args": [<request>], "kwargs": {}, "options": {},
     "message_id": "<uuid4>", "message_timestamp": <epoch milliseconds>}

A result is the contract's ``Result`` as JSON, published persistent to the request's
``reply_to`` queue with ``correlation_id`` = ``request_id``. ``docs/wire-format.md`` is the
reference; this module is its single source in code, used by the publisher, the worker's
result publisher and the tests.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Final

#: The AMQP URL every part uses unless told otherwise (``AMQP_URL``): a local RabbitMQ.
DEFAULT_AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_REQUESTS_QUEUE: Final = "segmind.requests"
DEFAULT_POLLS_QUEUE: Final = "segmind.polls"
#: The actor of the requests queue; the name every request message carries.
SUBMIT_ACTOR: Final = "submit_workflow"
#: The actor of the polls queue (internal: producers never publish to it).
POLL_ACTOR: Final = "poll_workflow"
#: The actor of the cancels queue: ``{"request_ids": [...]}`` cancels those requests.
CANCEL_ACTOR: Final = "cancel_workflow"
DEFAULT_CANCELS_QUEUE: Final = "segmind.cancels"
#: The most request ids one cancel message may name.
MAX_CANCEL_IDS: Final = 1000
#: Requests carry priorities 0-9; classic queues are declared with this ``x-max-priority``
#: (``producers.topology``).
MAX_PRIORITY: Final = 9
CONTENT_TYPE: Final = "application/json"
CONTENT_ENCODING: Final = "utf-8"
#: AMQP ``type`` of a result message.
RESULT_TYPE: Final = "segmind.result"
#: AMQP ``type`` of a progress message (``producers.contract.Progress``).
PROGRESS_TYPE: Final = "segmind.progress"
#: Header of a dead-lettered message holding why it could not be processed.
DEAD_LETTER_REASON_HEADER: Final = "x-segmind-dead-letter-reason"
#: Header of a dead-lettered result holding the reply queue that could not take it.
REPLY_TO_HEADER: Final = "x-segmind-reply-to"
#: Where results go that their reply queue refused (``RESULTS_DEAD_LETTER_QUEUE``).
DEFAULT_RESULTS_DEAD_LETTER_QUEUE: Final = "segmind.results.XQ"
#: AMQP delivery mode of persistent messages.
PERSISTENT: Final = 2
#: AMQP delivery mode of transient messages (progress: best effort, not worth a disk write).
TRANSIENT: Final = 1


#: Dramatiq's suffixes of a queue's dead-letter and delay queues.
DEAD_LETTER_SUFFIX: Final = ".XQ"
DELAY_SUFFIX: Final = ".DQ"


def dead_letter_queue(queue_name: str) -> str:
    """The queue that receives ``queue_name``'s dead letters (Dramatiq's ``.XQ``)."""
    return f"{queue_name}{DEAD_LETTER_SUFFIX}"


def delay_queue(queue_name: str) -> str:
    """The queue that holds ``queue_name``'s delayed messages (Dramatiq's ``.DQ``)."""
    return f"{queue_name}{DELAY_SUFFIX}"


def dead_letter_source(queue_name: str) -> str | None:
    """The queue whose dead letters ``queue_name`` holds, or ``None`` when it is not a
    dead-letter queue."""
    if queue_name.endswith(DEAD_LETTER_SUFFIX):
        return queue_name.removesuffix(DEAD_LETTER_SUFFIX)
    return None


def delayed_source(queue_name: str) -> str:
    """The queue a delay queue feeds (``queue_name`` itself when it is not one)."""
    return queue_name.removesuffix(DELAY_SUFFIX)


def request_envelope(
    request: dict[str, Any],
    *,
    queue_name: str = DEFAULT_REQUESTS_QUEUE,
    message_id: str | None = None,
    timestamp_ms: int | None = None,
) -> dict[str, Any]:
    """The Dramatiq message that carries ``request`` to the ``submit_workflow`` actor.

    Args:
        request: the request as a JSON object (see ``producers.contract.Request``).
        queue_name: the requests queue.
        message_id: the message's id (a new UUID when ``None``). Keep it when publishing
            the same message again: the worker tells redeliveries apart by it.
        timestamp_ms: when the request was published, in epoch milliseconds (now when
            ``None``); the start of the job's queue wait.
    """
    priority = request.get("priority")
    options: dict[str, Any] = {}
    if (
        isinstance(priority, int)
        and not isinstance(priority, bool)
        and 0 <= priority <= MAX_PRIORITY
    ):
        # Dramatiq reads it when it enqueues the message again (a retry), keeping its rank.
        # Out of range, it is left to the validator, which answers REJECTED.
        options["broker_priority"] = priority
    return {
        "queue_name": queue_name,
        "actor_name": SUBMIT_ACTOR,
        "args": [request],
        "kwargs": {},
        "options": options,
        "message_id": message_id or str(uuid.uuid4()),
        "message_timestamp": time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms,
    }


def encode(value: object) -> bytes:
    """``value`` as compact UTF-8 JSON, as Dramatiq's JSON encoder writes messages."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(CONTENT_ENCODING)


def progress_properties(request_id: str, *, timestamp_s: int | None = None) -> dict[str, Any]:
    """The AMQP properties of a progress message: a result's, transient, of ``PROGRESS_TYPE``."""
    return {
        **result_properties(request_id, timestamp_s=timestamp_s),
        "delivery_mode": TRANSIENT,
        "type": PROGRESS_TYPE,
    }


def result_properties(request_id: str, *, timestamp_s: int | None = None) -> dict[str, Any]:
    """The AMQP properties of a result message (keyword arguments of ``BasicProperties``)."""
    return {
        "content_type": CONTENT_TYPE,
        "content_encoding": CONTENT_ENCODING,
        "delivery_mode": PERSISTENT,
        "correlation_id": request_id,
        "type": RESULT_TYPE,
        "timestamp": int(time.time()) if timestamp_s is None else timestamp_s,
    }
