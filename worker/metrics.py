"""The service's Prometheus metrics (the reference: docs/metrics.md).

``Metrics`` holds the instruments and one method per thing that happens (a Segmind call
answered, a job accepted, a job ended, a refresh of the fleet gauges). The pipeline, the
client's response hook and ``worker.monitor`` call those methods; nothing else touches the
instruments, so every name and label is decided here.

Multiprocess mode: ``segmind-queue worker`` runs several processes that each count their
own work. It sets ``PROMETHEUS_MULTIPROC_DIR`` before any of them starts, and
prometheus_client decides how to store values when it is first imported, so it is imported
here only inside ``Metrics()`` (and ``Metrics`` refuses to start in a process where it was
imported too early: the values would silently stay in that process). Gauges whose value is
fleet-wide (read from Redis, RabbitMQ or Segmind by every process) use the ``mostrecent``
mode: the endpoint reports the latest reading, not a sum over processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, get_args

from producers.contract import DEFAULT_TENANT, ProgressEvent, Result, Status
from worker.segmind.errors import Endpoint

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Gauge

#: The ``workflow`` label of a rejected request that names no known workflow: label values
#: come from the catalog only, so a producer cannot grow the series without bound.
UNKNOWN_WORKFLOW: Final = "unknown"
#: The ``tenant`` label of tenants past ``TENANT_LABELS_MAX``: a flood of tenant names
#: cannot grow the series without bound.
OTHER_TENANT: Final = "other"
#: The ``code`` label of a Segmind call that got no HTTP response.
NO_RESPONSE: Final = "error"
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: The ``step`` labels of ``segmind_ledger_replicas_short_total``.
REPLICA_STEPS: Final = ("before_post", "after_post")

# Generations take seconds to ~11 minutes (and end by the one-hour deadline).
GENERATION_BUCKETS: Final = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600,
                             900, 1200, 1800, 2700, 3600)  # fmt: skip
# A request waits milliseconds on an idle fleet, up to an hour behind a rate limit.
QUEUE_WAIT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                             120, 300, 600, 1200, 1800, 3600)  # fmt: skip
# Publication to result: the two above end to end.
END_TO_END_BUCKETS: Final = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180, 300, 420, 600, 900,
                             1200, 1800, 2700, 3600, 5400, 7200)  # fmt: skip
# One call: tens of milliseconds, up to the client's total timeout.
HTTP_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A delayed message runs within Dramatiq's worker timeout of its due time, or later when
# the worker is saturated.
LATENESS_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
# Copying a file: a small image in tens of milliseconds, a long video in minutes.
OUTPUT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Seven-second polls of an 11-minute job are ~96; adaptive polling aims at a handful.
POLL_BUCKETS: Final = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100, 200, 400)


class MetricsImportError(RuntimeError):
    """prometheus_client was imported before ``PROMETHEUS_MULTIPROC_DIR`` was set."""


def _multiprocess_ready() -> None:
    if not os.environ.get(MULTIPROC_ENV):
        return
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        raise MetricsImportError(
            f"prometheus_client was imported before {MULTIPROC_ENV} was set: this "
            "process's metrics would never reach the endpoint"
        )


class Metrics:
    """The service's instruments, on their own registry.

    Args:
        workflows: the catalog's workflow names (the only ``workflow`` label values besides
            ``unknown``).
        registry: where to register them (default: a new registry; in multiprocess mode
            the values go to ``PROMETHEUS_MULTIPROC_DIR`` whatever the registry).
        tenant_labels_max: how many tenants get a ``tenant`` label value of their own in
            this process, ``default`` and the first ones seen; the others are ``other``.

    Raises:
        MetricsImportError: multiprocess mode is set but prometheus_client was imported
            before it was.
    """

    def __init__(
        self,
        workflows: Iterable[str],
        registry: CollectorRegistry | None = None,
        *,
        tenant_labels_max: int = 50,
    ) -> None:
        _multiprocess_ready()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.workflows = frozenset(workflows)
        self.tenant_labels_max = tenant_labels_max
        self._tenants: set[str] = {DEFAULT_TENANT}
        # (workflow, tenant) pairs whose series exist, and the fleet gauges' pairs last set.
        self._pairs: set[tuple[str, str]] = set()
        self._in_flight_pairs: set[tuple[str, str]] = set()
        self._tenant_gauges: set[str] = set()
        self._capped: set[str] = set()
        self.registry = registry if registry is not None else CollectorRegistry()
        common: dict[str, Any] = {"registry": self.registry}
        fleet: dict[str, Any] = {"registry": self.registry, "multiprocess_mode": "mostrecent"}
        self._fleet = fleet
        self._lock = threading.Lock()
        # Created on the first reading: a gauge exists from its creation with the value 0,
        # and a balance of 0 that was never read would page someone (credits below floor).
        self._credits: tuple[Gauge, Gauge, Gauge] | None = None

        self.jobs = Counter(
            "segmind_jobs_total",
            "Requests that ended, by status.",
            ["workflow", "status", "tenant"],
            **common,
        )
        self.job_errors = Counter(
            "segmind_job_errors_total",
            "Requests that did not complete, by error code.",
            ["workflow", "code"],
            **common,
        )
        self.results_dead_lettered = Counter(
            "segmind_results_dead_lettered_total",
            "Results their reply queue refused, sent to the results dead-letter queue.",
            ["workflow", "status"],
            **common,
        )
        self.cancellations = Counter(
            "segmind_cancellations_total",
            "Requests cancelled, by stage: unpaid (never POSTed) or charged (POSTed).",
            ["workflow", "stage"],
            **common,
        )
        self.progress = Counter(
            "segmind_progress_published_total",
            "Progress messages published (requests with progress: true), by event.",
            ["event"],
            **common,
        )
        self.outputs_stored = Counter(
            "segmind_outputs_stored_total",
            "Output files copied to OUTPUT_STORE.",
            ["workflow"],
            **common,
        )
        self.output_bytes = Counter(
            "segmind_output_bytes_stored_total",
            "Bytes of output files copied to OUTPUT_STORE.",
            ["workflow"],
            **common,
        )
        self.output_failures = Counter(
            "segmind_output_store_failures_total",
            "Output copies that failed, by reason (an attempt each; transient ones retry).",
            ["reason"],
            **common,
        )
        self.output_duration = Histogram(
            "segmind_output_store_duration_seconds",
            "From the start of an output's download to its copy in OUTPUT_STORE.",
            buckets=OUTPUT_BUCKETS,
            **common,
        )
        self.ledger_replicas_short = Counter(
            "segmind_ledger_replicas_short_total",
            "Ledger writes guarding a POST that fewer Redis replicas than LEDGER_MIN_REPLICAS "
            "acknowledged, by step (before_post: the request is held, unpaid; after_post: "
            "the record of Segmind's answer, written again until they do).",
            ["step"],
            **common,
        )
        self.http_requests = Counter(
            "segmind_http_requests_total",
            "Calls to Segmind by endpoint and HTTP status (error: no response).",
            ["endpoint", "code"],
            **common,
        )
        self.http_duration = Histogram(
            "segmind_http_request_duration_seconds",
            "Duration of one call to Segmind.",
            ["endpoint"],
            buckets=HTTP_BUCKETS,
            **common,
        )
        self.rate_limited = Counter(
            "segmind_rate_limited_total", "Calls answered 429.", ["endpoint"], **common
        )
        self.spent = Counter(
            "segmind_credits_spent_usd_total",
            "What ended jobs cost (USD): Segmind's reported cost, else the catalog price.",
            ["workflow", "tenant"],
            **common,
        )
        self.generation = Histogram(
            "segmind_generation_duration_seconds",
            "From Segmind accepting a job to the poll that found it COMPLETED.",
            ["workflow"],
            buckets=GENERATION_BUCKETS,
            **common,
        )
        self.queue_wait = Histogram(
            "segmind_queue_wait_seconds",
            "From a request's publication to Segmind accepting it.",
            ["workflow", "tenant"],
            buckets=QUEUE_WAIT_BUCKETS,
            **common,
        )
        self.end_to_end = Histogram(
            "segmind_end_to_end_seconds",
            "From a request's publication to its result (every status but REJECTED).",
            ["workflow"],
            buckets=END_TO_END_BUCKETS,
            **common,
        )
        self.polls_per_job = Histogram(
            "segmind_polls_per_job",
            "Polls sent for each job Segmind accepted.",
            ["workflow"],
            buckets=POLL_BUCKETS,
            **common,
        )
        self.poll_lateness = Histogram(
            "segmind_poll_lateness_seconds",
            "How late a poll message ran after the time it was due.",
            buckets=LATENESS_BUCKETS,
            **common,
        )
        self.credits_reserved = Gauge(
            "segmind_credits_reserved_usd",
            "The catalog price of every request in flight (USD).",
            **fleet,
        )
        self.in_flight = Gauge(
            "segmind_jobs_in_flight",
            "Requests being submitted or generating.",
            ["workflow", "tenant"],
            **fleet,
        )
        self.oldest_age = Gauge(
            "segmind_oldest_job_age_seconds",
            "Age of the oldest request in flight, since its submit (0: none).",
            ["workflow"],
            **fleet,
        )
        self.expected_duration = Gauge(
            "segmind_workflow_expected_duration_seconds",
            "The catalog's expected run time of a workflow.",
            ["workflow"],
            **fleet,
        )
        self.rate_limit = Gauge(
            "segmind_rate_limit_tokens_per_minute",
            "The calls per minute the fleet allows itself.",
            **fleet,
        )
        self.budget_blocked = Gauge(
            "segmind_budget_blocked",
            "1 while the credit floor or the daily spend cap holds new submits back.",
            **fleet,
        )
        self.spent_today = Gauge(
            "segmind_credits_spent_today_usd",
            "What jobs that ended today (UTC) cost (USD), fleet-wide.",
            **fleet,
        )
        self.tenant_spent_today = Gauge(
            "segmind_tenant_spent_today_usd",
            "What a tenant's jobs that ended today (UTC) cost (USD), fleet-wide.",
            ["tenant"],
            **fleet,
        )
        self.tenant_daily_cap = Gauge(
            "segmind_tenant_daily_cap_usd",
            "A tenant's daily spend cap (USD), for the tenants that have one.",
            ["tenant"],
            **fleet,
        )
        self.admission_waiting = Gauge(
            "segmind_admission_waiting",
            "Requests waiting in the admission line for the rate, by tenant.",
            ["tenant"],
            **fleet,
        )
        self.ledger_replicas = Gauge(
            "segmind_ledger_replicas_online",
            "The Redis replicas the ledger's primary streams its writes to.",
            **fleet,
        )
        self.queue_messages = Gauge(
            "segmind_queue_messages",
            "Messages ready in a queue of the service.",
            ["queue"],
            **fleet,
        )
        self._initialize()

    def _initialize(self) -> None:
        """Create the series of every known label value at 0.

        A counter series that first appears at 1 hides that first increase from
        ``rate()`` and ``increase()``: a workflow's first job would be missing from its
        spend and throughput. Known values are the catalog's workflows, the statuses and the
        endpoints; HTTP and error codes appear as they happen.
        """
        for workflow in (*sorted(self.workflows), UNKNOWN_WORKFLOW):
            self._tenant_series(workflow, DEFAULT_TENANT)
            for status in Status:
                self.results_dead_lettered.labels(workflow=workflow, status=status.value)
            for stage in ("unpaid", "charged"):
                self.cancellations.labels(workflow=workflow, stage=stage)
            for histogram in (self.generation, self.end_to_end):
                histogram.labels(workflow=workflow)
            self.polls_per_job.labels(workflow=workflow)
            self.outputs_stored.labels(workflow=workflow)
            self.output_bytes.labels(workflow=workflow)
        for event in ProgressEvent:
            self.progress.labels(event=event.value)
        for step in REPLICA_STEPS:
            self.ledger_replicas_short.labels(step=step)
        for endpoint in get_args(Endpoint):
            self.rate_limited.labels(endpoint=endpoint)
            self.http_duration.labels(endpoint=endpoint)

    def _tenant_series(self, workflow: str, tenant: str) -> None:
        """Create a (workflow, tenant) pair's series at 0 when first seen (see
        ``_initialize``)."""
        if (workflow, tenant) in self._pairs:
            return
        self._pairs.add((workflow, tenant))
        for status in Status:
            self.jobs.labels(workflow=workflow, status=status.value, tenant=tenant)
        self.spent.labels(workflow=workflow, tenant=tenant)
        self.queue_wait.labels(workflow=workflow, tenant=tenant)

    def workflow_label(self, workflow: str | None) -> str:
        """``workflow`` when the catalog knows it, else ``unknown``."""
        return workflow if workflow in self.workflows else UNKNOWN_WORKFLOW

    def tenant_label(self, tenant: str | None) -> str:
        """``tenant`` while fewer than ``tenant_labels_max`` tenants have a label of their
        own in this process (or it has one), else ``other``; ``default`` when ``None``."""
        name = tenant or DEFAULT_TENANT
        with self._lock:
            if name in self._tenants:
                return name
            if len(self._tenants) < self.tenant_labels_max:
                self._tenants.add(name)
                return name
        return OTHER_TENANT

    # ------------------------------------------------------------------ events

    def http_response(self, endpoint: Endpoint, status: int | None, seconds: float) -> None:
        """A call to Segmind was answered (``status``) or got no response (``None``).

        The signature of ``worker.segmind.client.ResponseHook``.
        """
        code = str(status) if status is not None else NO_RESPONSE
        self.http_requests.labels(endpoint=endpoint, code=code).inc()
        self.http_duration.labels(endpoint=endpoint).observe(max(0.0, seconds))
        if status == 429:
            self.rate_limited.labels(endpoint=endpoint).inc()

    def job_accepted(self, workflow: str, queue_wait_s: float, tenant: str | None = None) -> None:
        """Segmind accepted a job ``queue_wait_s`` after its request was published."""
        label, tenant_label = self.workflow_label(workflow), self.tenant_label(tenant)
        self._tenant_series(label, tenant_label)
        self.queue_wait.labels(workflow=label, tenant=tenant_label).observe(max(0.0, queue_wait_s))

    def job_ended(self, result: Result) -> None:
        """A request's result was decided (once per request, fleet-wide)."""
        workflow, tenant = self.workflow_label(result.workflow), self.tenant_label(result.tenant)
        self._tenant_series(workflow, tenant)
        self.jobs.labels(workflow=workflow, status=result.status.value, tenant=tenant).inc()
        if result.error is not None:
            self.job_errors.labels(workflow=workflow, code=result.error.code.value).inc()
        if result.cost_usd:
            self.spent.labels(workflow=workflow, tenant=tenant).inc(result.cost_usd)
        timings = result.timings
        if result.status is Status.REJECTED or timings is None:
            return
        if timings.total_s is not None:
            self.end_to_end.labels(workflow=workflow).observe(timings.total_s)
        if timings.submitted_at is not None:
            self.polls_per_job.labels(workflow=workflow).observe(result.polls or 0)
            if result.status is Status.COMPLETED and timings.generation_s is not None:
                self.generation.labels(workflow=workflow).observe(timings.generation_s)

    def result_dead_lettered(self, result: Result) -> None:
        """``result`` could not reach its reply queue and went to the dead-letter queue."""
        self.results_dead_lettered.labels(
            workflow=self.workflow_label(result.workflow), status=result.status.value
        ).inc()

    def ledger_replicas_came_short(self, step: str) -> None:
        """A guarded ledger write got too few replicas; ``step`` is one of
        ``REPLICA_STEPS``."""
        self.ledger_replicas_short.labels(step=step).inc()

    def set_ledger_replicas(self, online: int) -> None:
        """The replicas the ledger's primary has online."""
        self.ledger_replicas.set(online)

    def cancelled(self, result: Result, *, charged: bool) -> None:
        """A request was cancelled (its CANCELLED result decided)."""
        self.cancellations.labels(
            workflow=self.workflow_label(result.workflow), stage="charged" if charged else "unpaid"
        ).inc()

    def progress_published(self, event: ProgressEvent) -> None:
        """A progress message was published."""
        self.progress.labels(event=event.value).inc()

    def output_copied(self, workflow: str, size: int, seconds: float) -> None:
        """An output file was copied to the store."""
        label = self.workflow_label(workflow)
        self.outputs_stored.labels(workflow=label).inc()
        self.output_bytes.labels(workflow=label).inc(size)
        self.output_duration.observe(max(0.0, seconds))

    def output_failed(self, reason: str) -> None:
        """An output copy failed (``reason``: the class of failure)."""
        self.output_failures.labels(reason=reason).inc()

    def poll_started(self, lateness_s: float) -> None:
        """A poll message ran ``lateness_s`` after it was due."""
        self.poll_lateness.observe(max(0.0, lateness_s))

    # ------------------------------------------------------------------ fleet gauges

    def set_credits(self, remaining: float, free: float, updated_at: float) -> None:
        """The account's credits as last read (the three gauges appear with the first)."""
        with self._lock:
            if self._credits is None:
                self._credits = self._credit_gauges()
        remaining_gauge, free_gauge, updated_gauge = self._credits
        remaining_gauge.set(remaining)
        free_gauge.set(free)
        updated_gauge.set(updated_at)

    def _credit_gauges(self) -> tuple[Gauge, Gauge, Gauge]:
        from prometheus_client import Gauge

        return (
            Gauge("segmind_credits_remaining", "The account's paid credits (USD).", **self._fleet),
            Gauge(
                "segmind_credits_free_remaining",
                "The account's free credits (USD).",
                **self._fleet,
            ),
            Gauge(
                "segmind_credits_updated_timestamp_seconds",
                "When the credits were last read (Unix time).",
                **self._fleet,
            ),
        )

    def set_in_flight(
        self,
        counts: Mapping[tuple[str, str], int],
        oldest_age_s: Mapping[str, float],
        reserved_usd: float,
    ) -> None:
        """Requests in flight per (workflow, tenant); every known workflow is set for the
        default tenant, and every pair set before (0 when none), so a workflow whose last
        job ended reads 0 rather than its last count."""
        totals: dict[tuple[str, str], int] = {}
        for (workflow, tenant), count in counts.items():
            pair = (self.workflow_label(workflow), self.tenant_label(tenant))
            totals[pair] = totals.get(pair, 0) + count
        known = {(self.workflow_label(w), DEFAULT_TENANT) for w in self.workflows}
        for workflow, tenant in known | self._in_flight_pairs | set(totals):
            self.in_flight.labels(workflow=workflow, tenant=tenant).set(
                totals.get((workflow, tenant), 0)
            )
        self._in_flight_pairs |= set(totals)
        for workflow in self.workflows | set(oldest_age_s):
            label = self.workflow_label(workflow)
            self.oldest_age.labels(workflow=label).set(oldest_age_s.get(workflow, 0.0))
        self.credits_reserved.set(reserved_usd)

    def set_tenants(
        self,
        *,
        spent_today_usd: Mapping[str, float],
        daily_caps_usd: Mapping[str, float],
        waiting: Mapping[str, int],
    ) -> None:
        """Today's spend, the daily caps and the requests waiting in the admission line,
        by tenant; a tenant set before and absent now reads 0."""
        spent: dict[str, float] = {}
        for tenant, usd in spent_today_usd.items():
            label = self.tenant_label(tenant)
            spent[label] = spent.get(label, 0.0) + usd
        lined: dict[str, int] = {}
        for tenant, count in waiting.items():
            label = self.tenant_label(tenant)
            lined[label] = lined.get(label, 0) + count
        for tenant in self._tenant_gauges | set(spent) | set(lined):
            self.tenant_spent_today.labels(tenant=tenant).set(spent.get(tenant, 0.0))
            self.admission_waiting.labels(tenant=tenant).set(lined.get(tenant, 0))
        self._tenant_gauges |= set(spent) | set(lined)
        # A cap is a tenant's own: "other" gets none. A cap taken out of the file reads 0
        # (no cap), so the near-cap alert stops.
        caps = {
            label: cap
            for tenant, cap in daily_caps_usd.items()
            if (label := self.tenant_label(tenant)) != OTHER_TENANT
        }
        for tenant in self._capped | set(caps):
            self.tenant_daily_cap.labels(tenant=tenant).set(caps.get(tenant, 0.0))
        self._capped |= set(caps)

    def set_expected_durations(self, durations: Mapping[str, float]) -> None:
        """The catalog's expected run time of the workflows that have one."""
        for workflow, seconds in durations.items():
            self.expected_duration.labels(workflow=self.workflow_label(workflow)).set(seconds)

    def set_budget(self, *, blocked: bool, spent_today_usd: float) -> None:
        """The budget guard's state and today's spend."""
        self.budget_blocked.set(1 if blocked else 0)
        self.spent_today.set(spent_today_usd)

    def set_rate_limit(self, per_minute: float) -> None:
        """The calls per minute the fleet allows itself."""
        self.rate_limit.set(per_minute)

    def set_queue_messages(self, queue: str, count: int) -> None:
        """Messages ready in ``queue``."""
        self.queue_messages.labels(queue=queue).set(count)
