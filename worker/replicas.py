"""Holding POSTs while the ledger's Redis has too few replicas (``LEDGER_MIN_REPLICAS``).

Redis replicates asynchronously: a replica promoted after its primary failed may lack the
primary's last writes, and a lost ``SUBMITTING`` record lets a redelivered request be POSTed
(paid) again. With ``LEDGER_MIN_REPLICAS`` > 0 the ledger write guarding each POST waits
(Redis ``WAIT``) for that many replicas, and a request whose write they do not acknowledge
is not POSTed: it waits as a delayed message and looks again every ``RECHECK_S``.

``ReplicaCheck`` spares those waits while replicas are known to be missing: it reads how
many replicas the primary has online (``INFO replication``) at most once a ``CHECK_TTL_S``
per process, and a request finding too few is held at once, without writing anything. The
check only saves work: the ``WAIT`` after the write is what guarantees.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: How long a request held for replicas waits before it looks again (seconds).
RECHECK_S: Final = 5.0
#: How long one reading of the replicas online is trusted (seconds).
CHECK_TTL_S: Final = 1.0


def hold_delay_s(rand: float) -> float:
    """The wait of a request held for replicas: ``RECHECK_S``, spread by up to half of it
    (``rand`` uniform in [0, 1)) so that held requests do not all come back together."""
    return RECHECK_S * (1.0 + 0.5 * rand)


class ReplicaCheck:
    """How many replicas the primary has online, read at most every ``CHECK_TTL_S``.

    Args:
        read: reads the number (``Ledger.replicas_online``).
        required: ``LEDGER_MIN_REPLICAS``.
        on_reading: called with each fresh reading (the metric).
        clock: monotonic seconds.

    Failure modes: ``read`` raising (Redis unreachable) propagates: the caller's step
    fails and is retried, as for any ledger read.
    """

    def __init__(
        self,
        read: Callable[[], int],
        required: int,
        *,
        on_reading: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read = read
        self.required = required
        self.on_reading = on_reading
        self.clock = clock
        self._lock = threading.Lock()
        self._online: int | None = None
        self._read_at = 0.0
        self._short = False

    def online(self) -> int:
        """The replicas online, read again when the last reading is older than
        ``CHECK_TTL_S`` or was ``forget``-ten."""
        with self._lock:
            if self._online is not None and self.clock() - self._read_at < CHECK_TTL_S:
                return self._online
        online = self.read()
        with self._lock:
            self._online, self._read_at = online, self.clock()
            short = online < self.required
            if short != self._short:
                self._short = short
                report = log.warning if short else log.info
                report(
                    "ledger.replicas_short" if short else "ledger.replicas_back",
                    online=online,
                    required=self.required,
                )
        if self.on_reading is not None:
            self.on_reading(online)
        return online

    def short(self) -> bool:
        """Whether fewer replicas than required are online."""
        return self.required > 0 and self.online() < self.required

    def forget(self) -> None:
        """Distrust the last reading (a ``WAIT`` came up short after it said enough)."""
        with self._lock:
            self._online = None
