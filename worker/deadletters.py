"""Recording why Dramatiq dead-lettered a message, so that ``segmind-queue dlq list`` can say.

When Dramatiq gives up on a message (its retries are exhausted, its actor raised one of the
exceptions it ``throws``, its actor is unknown) it nacks it and RabbitMQ moves the body,
unchanged, to ``<queue>.XQ``: the exception is lost. ``DeadLetterReasons`` is a Dramatiq
middleware that, just before that nack, stores the exception's class and message (secrets
scrubbed) in Redis under ``<REDIS_KEY_PREFIX>:deadletter:<message_id>``, where the dead-letter
tools read it (``producers.dlq``).

Why a record in Redis, written before the nack:

- RabbitMQ's dead-lettering cannot add a header, and republishing the message to the XQ
  ourselves (instead of a nack) would replace Dramatiq's own dead-lettering, with its
  ``x-death`` record. A record beside the message keeps the broker's behaviour as it is.
- Written before the nack, the reason exists by the time the message shows up in the XQ.
  When the nack then fails (the connection broke), the message is redelivered and the record
  is only stale: the next dead-lettering overwrites it, and it expires.
- It is kept ``DEAD_LETTER_TTL_S`` (14 days): twice the 7 days RabbitMQ keeps a dead letter
  (the XQ's ``x-message-ttl``), longer than any sane retention of a dead-letter queue, so the
  record outlives the message it explains and no unbounded set of keys builds up.
- Best effort: when Redis cannot be written (the very failure that exhausted the retries,
  often) the nack still happens and ``dlq list`` falls back on what the message itself holds
  (Dramatiq's retry count and last traceback).

Messages Dramatiq could not decode never reach it: the screen (``worker.screening``)
dead-letters them with the reason in a header. Should one reach Dramatiq anyway, its
consumer nacks it before any middleware sees it, and its body tells why
(``producers.dlq.explain_dead_letter``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

import dramatiq
import structlog

from worker.ledger import LedgerError, Store
from worker.logs import redact_secrets

log = structlog.get_logger(__name__)

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
        text = scrub(" ".join(text.split()), secrets)[:MAX_REASON_CHARS]
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


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``[redacted]`` (``worker.logs``' rule)."""
    event = redact_secrets(secrets)(None, "", {"text": text})
    scrubbed = event.get("text") if isinstance(event, Mapping) else None
    return scrubbed if isinstance(scrubbed, str) else text


class DeadLetterReasons(dramatiq.Middleware):
    """Stores why each dead-lettered message failed (see the module docstring).

    Args:
        store: where the reasons go (``worker.ledger.RedisStore`` in the service).
        prefix: ``REDIS_KEY_PREFIX``.
        secrets: texts never stored (``worker.logs.secrets_of(settings)``).
        ttl_s: how long a reason is kept.
        clock: the wall clock (epoch seconds).

    Failure modes: a store that fails is logged (``deadletter.reason_unrecorded``) and the
    message is dead-lettered all the same; this middleware never raises.
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        *,
        secrets: Iterable[str] = (),
        ttl_s: int = DEAD_LETTER_TTL_S,
        clock: Any = time.time,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.secrets = list(secrets)
        self.ttl_s = ttl_s
        self.clock = clock

    def before_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        """Record the failure of ``message`` (a ``MessageProxy``) before it is nacked."""
        try:
            message_id = str(message.message_id)
            # Dramatiq keeps the exception on the proxy until the message is acked or nacked.
            exception = getattr(message, "_exception", None)
            retries = message.options.get("retries", 0)
            fields = reason_fields(
                exception if isinstance(exception, BaseException) else None,
                actor=str(message.actor_name),
                queue=str(message.queue_name),
                retries=retries if isinstance(retries, int) else 0,
                at=self.clock(),
                secrets=self.secrets,
            )
        except Exception as exc:  # a message this cannot read is still dead-lettered
            log.warning("deadletter.reason_unrecorded", error=type(exc).__name__)
            return
        try:
            self.store.put(dead_letter_key(self.prefix, message_id), fields, self.ttl_s)
        except (LedgerError, OSError) as exc:
            log.warning("deadletter.reason_unrecorded", error=scrub(str(exc), self.secrets))
            return
        log.info("deadletter.recorded", reason=fields["reason"])
