"""Logging: structlog's events rendered through the standard library's handlers.

Dramatiq's command line configures the standard library's logging for its processes; the
pipeline logs with structlog (``log.info("submit.accepted", request_id=...)``), and this
routes those events through the same handlers as ``key=value`` lines.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from enum import Enum
from typing import Any

import structlog


def plain_enums(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Render enum members by their value (``status=COMPLETED``, not the member's repr)."""
    for key, value in event.items():
        if isinstance(value, Enum):
            event[key] = value.value
    return event


def configure_logging() -> None:
    """Send structlog's events to the standard library's ``logging``; quiet httpx's line
    per request (the pipeline logs each call's outcome itself) and pika's routine ones."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Queues are checked with a passive declare first (an operator's queue is used as it
    # is), so a missing one is routine: pika's warning for that closed channel is noise.
    logging.getLogger("pika.channel").setLevel(logging.ERROR)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            plain_enums,
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
