"""The budget guard: new submits wait while the credit floor or the daily spend cap would
be crossed, for the fleet or for the request's tenant. Pure rules plus a holder of the
latest figures.

The figures are the fleet's (``worker.monitor`` refreshes them every ``METRICS_REFRESH_S``):
the balance as last read, the price of the jobs in flight, and today's spend (UTC,
``worker.spend``), each also per tenant, so a check costs no I/O. Jobs in flight count at
their catalog price: they will be charged. A tenant's policy (``worker.tenants``) adds its
own daily cap, and the credits reserved for the other tenants raise its floor. Polls never
wait: a job already paid for is always followed to its end.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from producers.contract import DEFAULT_TENANT
from worker.tenants import TenantsFile, TenantTable

#: How often a waiting submit looks at the budget again.
RECHECK_S: Final = 60.0


@dataclass(frozen=True)
class Budget:
    """The fleet's money, as last read.

    Attributes:
        balance_usd: paid and free credits (``None``: never read).
        reserved_usd: the price of the jobs in flight.
        spent_today_usd: what jobs that ended today (UTC) cost.
        tenant_reserved_usd: ``reserved_usd`` by tenant.
        tenant_spent_today_usd: ``spent_today_usd`` by tenant.
    """

    balance_usd: float | None
    reserved_usd: float
    spent_today_usd: float
    tenant_reserved_usd: Mapping[str, float] = field(default_factory=dict)
    tenant_spent_today_usd: Mapping[str, float] = field(default_factory=dict)


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


def tenant_blocked_reason(
    budget: Budget, price_usd: float | None, *, tenant: str, cap_usd: float
) -> str | None:
    """Why a job of ``price_usd`` may not start now for ``tenant``, whose daily cap is
    ``cap_usd`` (0: none), or ``None`` when it may."""
    if cap_usd <= 0:
        return None
    price = price_usd or 0.0
    spent = budget.tenant_spent_today_usd.get(tenant, 0.0)
    reserved = budget.tenant_reserved_usd.get(tenant, 0.0)
    total = spent + reserved + price
    if total <= cap_usd:
        return None
    return (
        f"tenant {tenant!r}'s daily spend cap: ${spent:.2f} spent today, ${reserved:.2f} in "
        f"flight and ${price:.2f} for this job make ${total:.2f}, over its cap of "
        f"${cap_usd:.2f}"
    )


class BudgetGuard:
    """The latest figures and the settings, for the submit step to consult.

    Args:
        floor_usd: ``SEGMIND_CREDIT_FLOOR_USD`` (0: none).
        cap_usd: ``SEGMIND_DAILY_SPEND_CAP_USD`` (0: none).
        tenants: the tenants' policies (``None``: none).
    """

    def __init__(
        self, *, floor_usd: float, cap_usd: float, tenants: TenantsFile | None = None
    ) -> None:
        self.floor_usd = floor_usd
        self.cap_usd = cap_usd
        self.tenants = tenants
        self._budget: Budget | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether a floor or a cap is set, for the fleet or any tenant."""
        if self.floor_usd > 0 or self.cap_usd > 0:
            return True
        table = self._table()
        policies = [table.default, *table.tenants.values()]
        return any(p.daily_cap_usd > 0 or p.reserve_usd > 0 for p in policies)

    def _table(self) -> TenantTable:
        return self.tenants.table() if self.tenants is not None else TenantTable()

    def update(self, budget: Budget) -> None:
        """The fleet's latest figures."""
        with self._lock:
            self._budget = budget

    def check(self, price_usd: float | None, tenant: str = DEFAULT_TENANT) -> str | None:
        """Why a job of ``price_usd`` for ``tenant`` must wait, or ``None`` (also before
        any figures)."""
        with self._lock:
            budget = self._budget
        if budget is None or not self.enabled:
            return None
        table = self._table()
        reserved_for_others = table.reserved_for_others(tenant)
        # The floor counts only when set or when others hold reservations.
        floor = self.floor_usd + reserved_for_others
        reason = blocked_reason(budget, price_usd, floor_usd=floor, cap_usd=self.cap_usd)
        if reason is not None and reserved_for_others and self.floor_usd == 0:
            reason = f"{reason} (credits reserved for other tenants)"
        if reason is not None:
            return reason
        cap = table.policy(tenant).daily_cap_usd
        return tenant_blocked_reason(budget, price_usd, tenant=tenant, cap_usd=cap)
