"""The day's spend: what the jobs that ended each UTC day cost, for the whole fleet.

The pipeline adds a job's cost when it decides the job's result (once per job, whatever
the redeliveries); the monitor reads today's total for the budget guard's daily cap and
the ``segmind_spent_today_usd`` gauge. One counter per UTC day in the store
(``<prefix>:spend:<YYYY-MM-DD>``), kept ``SPEND_KEPT_S`` so yesterday's can still be read.

Failure modes: both methods raise ``worker.store.StoreError`` when the store fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from worker.store import Store

#: How long a day's total is kept.
SPEND_KEPT_S: Final = 8 * 24 * 3600


def spend_key(prefix: str, at: float) -> str:
    """The store key of the spend of the UTC day holding ``at`` (epoch seconds)."""
    return f"{prefix}:spend:{datetime.fromtimestamp(at, UTC):%Y-%m-%d}"


class DailySpend:
    """The fleet's spend per UTC day, in USD.

    Args:
        store: where the totals live (shared by the fleet).
        prefix: ``REDIS_KEY_PREFIX``.
        clock: the wall clock (epoch seconds): it picks the day.
    """

    def __init__(self, store: Store, prefix: str, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.prefix = prefix
        self.clock = clock

    def add(self, cost_usd: float) -> float:
        """Add a job's cost to today's total; the new total."""
        return self.store.add(spend_key(self.prefix, self.clock()), cost_usd, SPEND_KEPT_S)

    def today(self) -> float:
        """Today's total (0 before any job ended today)."""
        return self.store.number(spend_key(self.prefix, self.clock()))
