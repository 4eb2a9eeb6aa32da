"""The budget guard: new submits wait while the credit floor or the daily spend cap would
be crossed. Pure rules plus a holder of the latest figures.

The figures are the fleet's (``worker.monitor`` refreshes them every ``METRICS_REFRESH_S``):
the balance as last read, the price of the jobs in flight, and today's spend (UTC,
``worker.spend``), so a check costs no I/O. Jobs in flight count at their catalog price:
they will be charged. Polls never wait: a job already paid for is always followed to its end.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final

#: How often a waiting submit looks at the budget again.
RECHECK_S: Final = 60.0


@dataclass(frozen=True)
class Budget:
    """The fleet's money, as last read.

    Attributes:
        balance_usd: paid and free credits (``None``: never read).
        reserved_usd: the price of the jobs in flight.
        spent_today_usd: what jobs that ended today (UTC) cost.
    """

    balance_usd: float | None
    reserved_usd: float
    spent_today_usd: float


def blocked_reason(
    budget: Budget, price_usd: float | None, *, floor_usd: float, cap_usd: float
) -> str | None:
    """Why a job of ``price_usd`` may not start now, or ``None`` when it may.

    Args:
        budget: the fleet's figures.
        price_usd: the job's catalog price (unknown: 0).
        floor_usd: the credit floor (0: none).
        cap_usd: the daily spend cap (0: none).
    """
    price = price_usd or 0.0
    if floor_usd > 0 and budget.balance_usd is not None:
        left = budget.balance_usd - budget.reserved_usd - price
        if left < floor_usd:
            return (
                f"the credit floor: ${budget.balance_usd:.2f} of credits less "
                f"${budget.reserved_usd:.2f} in flight and ${price:.2f} for this job would "
                f"leave ${left:.2f}, under the floor of ${floor_usd:.2f}"
            )
    if cap_usd > 0:
        total = budget.spent_today_usd + budget.reserved_usd + price
        if total > cap_usd:
            return (
                f"the daily spend cap: ${budget.spent_today_usd:.2f} spent today, "
                f"${budget.reserved_usd:.2f} in flight and ${price:.2f} for this job make "
                f"${total:.2f}, over the cap of ${cap_usd:.2f}"
            )
    return None


class BudgetGuard:
    """The latest figures and the settings, for the submit step to consult.

    Args:
        floor_usd: ``SEGMIND_CREDIT_FLOOR_USD`` (0: none).
        cap_usd: ``SEGMIND_DAILY_SPEND_CAP_USD`` (0: none).
    """

    def __init__(self, *, floor_usd: float, cap_usd: float) -> None:
        self.floor_usd = floor_usd
        self.cap_usd = cap_usd
        self._budget: Budget | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether a floor or a cap is set."""
        return self.floor_usd > 0 or self.cap_usd > 0

    def update(self, budget: Budget) -> None:
        """The fleet's latest figures."""
        with self._lock:
            self._budget = budget

    def check(self, price_usd: float | None) -> str | None:
        """Why a job of ``price_usd`` must wait, or ``None`` (also before any figures)."""
        with self._lock:
            budget = self._budget
        if budget is None or not self.enabled:
            return None
        return blocked_reason(budget, price_usd, floor_usd=self.floor_usd, cap_usd=self.cap_usd)
