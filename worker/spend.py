"""The day's spend: what the jobs that ended each UTC day cost, for the fleet and by tenant.

The pipeline adds a job's cost when it decides the job's result (once per job, whatever
the redeliveries); the monitor reads today's totals for the budget guard's daily caps and
the ``segmind_credits_spent_today_usd`` gauges; ``segmind-queue spend`` reads the days.
One counter per UTC day in the store (``<prefix>:spend:<YYYY-MM-DD>``), kept
``SPEND_KEPT_S`` so yesterday's can still be read, and one record per day of the spend by
tenant (``<prefix>:spend:<YYYY-MM-DD>:tenants``), kept ``TENANT_SPEND_KEPT_S``.

Failure modes: both methods raise ``worker.store.StoreError`` when the store fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Final

from producers.contract import DEFAULT_TENANT
from worker.store import Store

#: How long a day's total is kept.
SPEND_KEPT_S: Final = 8 * 24 * 3600
#: How long a day's spend by tenant is kept (what ``spend --since`` can reach back to).
TENANT_SPEND_KEPT_S: Final = 400 * 24 * 3600


def spend_key(prefix: str, at: float) -> str:
    """The store key of the spend of the UTC day holding ``at`` (epoch seconds)."""
    return f"{prefix}:spend:{datetime.fromtimestamp(at, UTC):%Y-%m-%d}"


def tenant_spend_key(prefix: str, day: date) -> str:
    """The store key of a UTC day's spend by tenant."""
    return f"{prefix}:spend:{day:%Y-%m-%d}:tenants"


def _utc_day(at: float) -> date:
    return datetime.fromtimestamp(at, UTC).date()


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

    def add(self, cost_usd: float, tenant: str = DEFAULT_TENANT) -> float:
        """Add a job's cost to today's totals, the fleet's and its tenant's; the fleet's
        new total."""
        now = self.clock()
        key = tenant_spend_key(self.prefix, _utc_day(now))
        self.store.add_field(key, tenant, cost_usd, TENANT_SPEND_KEPT_S)
        return self.store.add(spend_key(self.prefix, now), cost_usd, SPEND_KEPT_S)

    def today(self) -> float:
        """Today's total (0 before any job ended today)."""
        return self.store.number(spend_key(self.prefix, self.clock()))

    def today_by_tenant(self) -> dict[str, float]:
        """Today's spend by tenant (tenants that spent nothing are absent)."""
        return self.on(_utc_day(self.clock()))

    def on(self, day: date) -> dict[str, float]:
        """A UTC day's spend by tenant."""
        stored = self.store.get(tenant_spend_key(self.prefix, day)) or {}
        return {tenant: float(value) for tenant, value in stored.items()}

    def by_day(self, since: date) -> dict[date, dict[str, float]]:
        """The spend by tenant of every UTC day from ``since`` to today (days with none
        are absent). One read per day."""
        today = _utc_day(self.clock())
        days: dict[date, dict[str, float]] = {}
        day = since
        while day <= today:
            spent = self.on(day)
            if spent:
                days[day] = spent
            day += timedelta(days=1)
        return days
