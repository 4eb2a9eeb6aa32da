"""Each workflow's learned durations, shared by the fleet through the ledger's store.

Every completed job adds one sample (``worker.polling.completion_sample``) to a list per
workflow (``<prefix>:durations:<workflow>``, the newest ``KEEP`` samples, kept ``TTL_S``
after the last one). Reads are cached for ``cache_s`` in each process: the schedule of a
poll does not need the sample of the job that finished a second ago.

Failure modes: a store failure raises ``worker.store.StoreError`` from ``record``;
``get`` returns what it had (or nothing) and polls fall back to the catalog's duration or
the plain interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from worker.polling import History
from worker.store import Store, StoreError

#: Samples kept per workflow: enough for the tails, recent enough to follow a change.
KEEP: Final = 200
TTL_S: Final = 30 * 24 * 3600


class DurationHistory:
    """The learned durations of every workflow.

    Args:
        store: the ledger's store.
        prefix: the key prefix (``REDIS_KEY_PREFIX``).
        cache_s: how long a process reuses what it read.
        clock: a monotonic clock (seconds).
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        *,
        cache_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[str, tuple[float, History]] = {}
        self._lock = threading.Lock()

    def key(self, workflow: str) -> str:
        """The store key of a workflow's samples."""
        return f"{self.prefix}:durations:{workflow}"

    def record(self, workflow: str, total_s: float, processing_s: float | None) -> None:
        """Add a completed job's sample."""
        value = f"{total_s:.3f}" if processing_s is None else f"{total_s:.3f},{processing_s:.3f}"
        self.store.push(self.key(workflow), value, KEEP, TTL_S)

    def get(self, workflow: str) -> History:
        """The workflow's samples (cached; empty when the store cannot be read)."""
        now = self.clock()
        with self._lock:
            cached = self._cache.get(workflow)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        try:
            history = parse_samples(self.store.items(self.key(workflow)))
        except StoreError:
            return cached[1] if cached is not None else History()
        with self._lock:
            self._cache[workflow] = (now, history)
        return history


def parse_samples(values: list[str]) -> History:
    """A history from stored samples (``total`` or ``total,processing``); unreadable
    ones are skipped."""
    totals: list[float] = []
    processing: list[float] = []
    for value in values:
        try:
            parts = [float(part) for part in value.split(",")]
        except ValueError:
            continue
        if len(parts) in (1, 2):
            totals.append(parts[0])
            processing.extend(parts[1:])
    return History.of(totals, processing)
