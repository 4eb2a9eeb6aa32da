"""The fleet gauges: credits, jobs in flight, reserved spend, queue depths, ledger replicas.

Counters are counted where the work happens; these values are not any one process's: they
live in Redis (the in-flight index, the last credits reading, the replicas of its primary),
RabbitMQ (queue depths) and
at Segmind (the balance). ``Monitor.refresh()`` reads them into ``worker.metrics``; the
``MonitorMiddleware`` calls it every ``METRICS_REFRESH_S`` seconds in each worker process,
on a thread of its own, from worker boot to worker shutdown.

The balance costs a Segmind call (which counts against the rate limit), so the fleet makes
one per ``SEGMIND_CREDITS_INTERVAL_S``, not one per process: the process that creates the
lease key ``<prefix>:credits:lease`` (expiring after the interval) reads the balance and
stores it at ``<prefix>:credits``; every process reports what is stored.

Failure modes: each source is read on its own; one that fails (Redis, RabbitMQ or Segmind
unreachable) is logged and leaves its gauges at their last value, and the others are
still refreshed. ``refresh`` never raises.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import dramatiq
import structlog

from producers import wire
from worker.budget import Budget, BudgetGuard
from worker.ledger import InFlight, Ledger
from worker.metrics import Metrics
from worker.ratelimit.admission import Admission, OpenAdmission
from worker.ratelimit.limiter import RateLimiter, Unlimited
from worker.segmind.client import SegmindClient
from worker.segmind.errors import RateLimitedError, SegmindError
from worker.settings import Settings
from worker.spend import DailySpend
from worker.store import Store
from worker.tenants import TenantsFile

log = structlog.get_logger(__name__)

#: How long a credits reading is kept in Redis: long past the interval, so a fleet whose
#: reader fails for a while still shows the last known balance (with its timestamp).
CREDITS_KEEP_S: Final = 7 * 24 * 3600
#: How long ``MonitorMiddleware`` waits for the refresh thread at shutdown.
_JOIN_TIMEOUT_S: Final = 10.0

#: Messages ready in a queue, or ``None`` when the queue does not exist.
QueueDepth = Callable[[str], "int | None"]


@dataclass(frozen=True)
class InFlightSummary:
    """The in-flight index, per workflow.

    Attributes:
        counts: requests in flight, by (workflow, tenant).
        oldest_age_s: seconds since the oldest one's submit began, by workflow.
        reserved_usd: the catalog price of them all (requests without a price add 0).
        tenant_reserved_usd: ``reserved_usd`` by tenant.
    """

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_age_s: dict[str, float] = field(default_factory=dict)
    reserved_usd: float = 0.0
    tenant_reserved_usd: dict[str, float] = field(default_factory=dict)


def summarize_in_flight(entries: Iterable[InFlight], now: float) -> InFlightSummary:
    """Count the in-flight index per workflow (a pure function).

    Args:
        entries: the index's entries.
        now: the current time (epoch seconds); an entry from a host whose clock runs ahead
            is 0 s old, not negative.
    """
    counts: dict[tuple[str, str], int] = {}
    oldest: dict[str, float] = {}
    reserved = 0.0
    by_tenant: dict[str, float] = {}
    for entry in entries:
        pair = (entry.workflow, entry.tenant)
        counts[pair] = counts.get(pair, 0) + 1
        age = max(0.0, now - entry.since)
        oldest[entry.workflow] = max(oldest.get(entry.workflow, 0.0), age)
        reserved += entry.price_usd or 0.0
        by_tenant[entry.tenant] = by_tenant.get(entry.tenant, 0.0) + (entry.price_usd or 0.0)
    return InFlightSummary(
        counts=counts,
        oldest_age_s=oldest,
        reserved_usd=round(reserved, 6),
        tenant_reserved_usd={tenant: round(usd, 6) for tenant, usd in by_tenant.items()},
    )


def service_queues(
    requests_queue: str, polls_queue: str, results_dead_letter_queue: str
) -> list[str]:
    """The queues whose depth is reported: each actor's queue, its delay and dead-letter
    queues, and the results dead-letter queue."""
    return [
        *(
            name
            for queue in (requests_queue, polls_queue)
            for name in (queue, wire.delay_queue(queue), wire.dead_letter_queue(queue))
        ),
        results_dead_letter_queue,
    ]


@dataclass
class Monitor:
    """Reads the fleet gauges into ``metrics``.

    Args:
        settings: the worker's settings (intervals, queues, the rate limit).
        ledger: the ledger (its in-flight index, and its store for the credits reading).
        client: the Segmind client, for the balance.
        metrics: where the values go.
        spend: the fleet's spend per day (today's total feeds the budget guard).
        expected_durations: the catalog's expected run time per workflow, where known.
        queue_depth: reads a queue's depth (``None``: depths are not reported).
        limiter: the fleet's rate (the credits call takes a token too; its rate is shown).
        budget: receives the fleet's money figures at each refresh.
        admission: the admission line (its waiting requests by tenant are reported).
        tenants: the tenants' policies (their daily caps are reported).
        clock: the wall clock (epoch seconds).
    """

    settings: Settings
    ledger: Ledger
    client: SegmindClient
    metrics: Metrics
    spend: DailySpend
    expected_durations: Mapping[str, float] = field(default_factory=dict)
    queue_depth: QueueDepth | None = None
    limiter: RateLimiter = field(default_factory=Unlimited)
    budget: BudgetGuard | None = None
    admission: Admission = field(default_factory=OpenAdmission)
    tenants: TenantsFile | None = None
    clock: Callable[[], float] = time.time
    _failing: set[str] = field(default_factory=set, init=False)
    _reserved_usd: float = field(default=0.0, init=False)
    _tenant_reserved_usd: dict[str, float] = field(default_factory=dict, init=False)
    _balance_usd: float | None = field(default=None, init=False)

    @property
    def store(self) -> Store:
        """Where the credits reading is shared."""
        return self.ledger.store

    @property
    def credits_key(self) -> str:
        """The key of the fleet's last credits reading."""
        return f"{self.ledger.prefix}:credits"

    def refresh(self) -> None:
        """Read every source once; never raises (see the module docstring)."""
        self.metrics.set_expected_durations(self.expected_durations)
        self._guarded("rate", self._refresh_rate)
        self._guarded("in_flight", self._refresh_in_flight)
        if self.settings.segmind_credits_interval_s > 0:
            self._guarded("credits", self._refresh_credits)
        self._guarded("budget", self._refresh_budget)
        self._guarded("replicas", self._refresh_replicas)
        if self.queue_depth is not None:
            self._guarded("queues", self._refresh_queues)

    def _refresh_rate(self) -> None:
        rate = self.limiter.rate_per_min()
        # Without a bucket, the configured rate is still the budget the fleet works to.
        self.metrics.set_rate_limit(
            rate if rate is not None else self.settings.segmind_rate_limit_per_minute
        )

    def _refresh_in_flight(self) -> None:
        summary = summarize_in_flight(self.ledger.in_flight(), self.clock())
        self.metrics.set_in_flight(summary.counts, summary.oldest_age_s, summary.reserved_usd)
        self._reserved_usd = summary.reserved_usd
        self._tenant_reserved_usd = summary.tenant_reserved_usd

    def _refresh_budget(self) -> None:
        spent = self.spend.today()
        by_tenant = self.spend.today_by_tenant()
        figures = Budget(
            self._balance_usd,
            self._reserved_usd,
            spent,
            tenant_reserved_usd=dict(self._tenant_reserved_usd),
            tenant_spent_today_usd=by_tenant,
        )
        blocked = False
        if self.budget is not None:
            self.budget.update(figures)
            blocked = self.budget.check(0.0) is not None
        self.metrics.set_budget(blocked=blocked, spent_today_usd=spent)
        caps = self.tenants.table().capped() if self.tenants is not None else {}
        self.metrics.set_tenants(
            spent_today_usd=by_tenant,
            daily_caps_usd=caps,
            waiting=self.admission.waiting(),
        )

    def _refresh_credits(self) -> None:
        interval = self.settings.segmind_credits_interval_s
        holder = {"holder": f"{socket.gethostname()}:{os.getpid()}"}
        lease = f"{self.credits_key}:lease"
        if self.store.create(lease, holder, max(1, math.ceil(interval))):
            self._read_credits(lease, interval)
        stored = self.store.get(self.credits_key)
        if stored:
            paid, free = float(stored["credits"]), float(stored["free_credits"])
            self.metrics.set_credits(paid, free, float(stored["updated_at"]))
            self._balance_usd = paid + free

    def _read_credits(self, lease: str, interval: float) -> None:
        """Read the balance for the fleet (this process holds the lease) and store it."""
        if not self.limiter.acquire(submit=True).go:
            # Calls for jobs come first (it never borrows, like a submit): the next
            # refresh, here or in another process, reads it.
            self.store.delete(lease)
            return
        try:
            credits = self.client.credits()
        except RateLimitedError as error:
            self.limiter.rate_limited(error.wait_s or interval)
            raise
        reading = {
            "credits": repr(credits.credits),
            "free_credits": repr(credits.free_credits),
            "updated_at": repr(self.clock()),
        }
        self.store.put(self.credits_key, reading, CREDITS_KEEP_S)
        log.debug("credits.read", credits=credits.credits, free_credits=credits.free_credits)

    def _refresh_replicas(self) -> None:
        # Shown whatever LEDGER_MIN_REPLICAS is: what a failover could cost is worth seeing
        # before the setting asks for replicas.
        self.metrics.set_ledger_replicas(self.ledger.replicas_online())

    def _refresh_queues(self) -> None:
        assert self.queue_depth is not None
        queues = service_queues(
            self.settings.requests_queue,
            self.settings.polls_queue,
            self.settings.results_dead_letter_queue,
        )
        for queue in queues:
            count = self.queue_depth(queue)
            if count is not None:
                self.metrics.set_queue_messages(queue, count)

    def _guarded(self, source: str, read: Callable[[], None]) -> None:
        try:
            read()
        except Exception as exc:  # whatever a source raises, the others and the thread go on
            self._report(source, exc)
        else:
            if source in self._failing:
                self._failing.discard(source)
                log.info("metrics.source_recovered", source=source)

    def _report(self, source: str, exc: Exception) -> None:
        # Once per outage, not every refresh: the gauges' staleness shows the rest.
        if source not in self._failing:
            self._failing.add(source)
            reason = exc.message if isinstance(exc, SegmindError) else str(exc)
            log.warning(
                "metrics.source_failed", source=source, error=type(exc).__name__, reason=reason
            )


class MonitorMiddleware(dramatiq.Middleware):
    """Runs ``monitor.refresh()`` every ``interval_s`` on a thread, while the worker runs.

    Args:
        monitor: what to run.
        interval_s: seconds between two refreshes.
    """

    def __init__(self, monitor: Monitor, interval_s: float) -> None:
        self.monitor = monitor
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="segmind-monitor", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        # Only signal here: joining now would delay Dramatiq's stopping of the worker
        # threads, which keep taking messages (and POSTing) meanwhile.
        self._stop.set()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT_S)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.monitor.refresh()
            self._stop.wait(self.interval_s)
