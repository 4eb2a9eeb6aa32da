"""Dead-letter messages as the tests build them: Dramatiq envelopes, bodies, x-death headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from producers import wire
from producers.topology import Topology

NOW = 1_800_000_000.0


def envelope(
    actor: str = wire.SUBMIT_ACTOR,
    args: list[Any] | None = None,
    *,
    queue: str = "app.requests",
    message_id: str = "m-1",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if args is None:
        args = [{"request_id": "r-1", "workflow": "sketch-maker", "inputs": {}}]
    return {
        "queue_name": queue,
        "actor_name": actor,
        "args": args,
        "kwargs": {},
        "options": options or {},
        "message_id": message_id,
        "message_timestamp": 1_700_000_000_000,
    }


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def death(queue: str = "app.requests", reason: str = "rejected") -> dict[str, Any]:
    return {
        "x-death": [
            {
                "count": 1,
                "reason": reason,
                "queue": queue,
                "time": datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC),
                "exchange": "",
                "routing-keys": [queue],
            }
        ]
    }


def declare_with_xq(channel: Any, queue: str) -> str:
    """``queue`` with Dramatiq's arguments and its XQ; returns the XQ."""
    channel.queue_declare(queue, durable=True, arguments=Topology().work_queue_arguments(queue))
    xq = wire.dead_letter_queue(queue)
    channel.queue_declare(xq, durable=True)
    return xq
