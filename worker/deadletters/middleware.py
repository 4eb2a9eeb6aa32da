"""Recording why Dramatiq dead-lettered a message, so that ``segmind-queue dlq list`` can say.

When Dramatiq gives up on a message (its retries are exhausted, its actor raised one of the
exceptions it ``throws``, its actor is unknown) it nacks it and RabbitMQ moves the body,
unchanged, to ``<queue>.XQ``: the exception is lost. ``DeadLetterReasons`` is a Dramatiq
middleware that, just before that nack, stores the exception's class and message (secrets
scrubbed) in Redis under ``<REDIS_KEY_PREFIX>:deadletter:<message_id>``, where the dead-letter
tools read it (``worker.deadletters.queues``).

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

Messages Dramatiq could not decode never reach it: the screen (``worker.broker``)
dead-letters them with the reason in a header. Should one reach Dramatiq anyway, its
consumer nacks it before any middleware sees it, and its body tells why
(``worker.deadletters.rules.explain_dead_letter``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import dramatiq
import structlog

from producers.redaction import Redactor
from worker.deadletters.rules import DEAD_LETTER_TTL_S, dead_letter_key, reason_fields
from worker.store import Store, StoreError

log = structlog.get_logger(__name__)


class DeadLetterReasons(dramatiq.Middleware):
    """Stores why each dead-lettered message failed (see the module docstring).

    Args:
        store: where the reasons go (``worker.store.RedisStore`` in the service).
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
        except (StoreError, OSError) as exc:
            log.warning("deadletter.reason_unrecorded", error=Redactor(self.secrets)(str(exc)))
            return
        log.info("deadletter.recorded", reason=fields["reason"])
