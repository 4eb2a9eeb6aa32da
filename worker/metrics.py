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

from producers.contract import ProgressEvent, Result, Status
from worker.segmind.errors import Endpoint

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Gauge

#: The ``workflow`` label of a rejected request that names no known workflow: label values
#: come from the catalog only, so a producer cannot grow the series without bound.
UNKNOWN_WORKFLOW: Final = "unknown"
#: The ``code`` label of a Segmind call that got no HTTP response.
NO_RESPONSE: Final = "error"
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

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

    Raises:
        MetricsImportError: multiprocess mode is set but prometheus_client was imported
            before it was.
    """

    def __init__(self, workflows: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        _multiprocess_ready()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.workflows = frozenset(workflows)
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
            ["workflow", "status"],
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
            ["workflow"],
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
            ["workflow"],
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
            ["workflow"],
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
            for status in Status:
                self.jobs.labels(workflow=workflow, status=status.value)
                self.results_dead_lettered.labels(workflow=workflow, status=status.value)
            for stage in ("unpaid", "charged"):
                self.cancellations.labels(workflow=workflow, stage=stage)
            self.spent.labels(workflow=workflow)
            for histogram in (self.generation, self.queue_wait, self.end_to_end):
                histogram.labels(workflow=workflow)
            self.polls_per_job.labels(workflow=workflow)
        for event in ProgressEvent:
            self.progress.labels(event=event.value)
        for endpoint in get_args(Endpoint):
            self.rate_limited.labels(endpoint=endpoint)
            self.http_duration.labels(endpoint=endpoint)

    def workflow_label(self, workflow: str | None) -> str:
        """``workflow`` when the catalog knows it, else ``unknown``."""
        return workflow if workflow in self.workflows else UNKNOWN_WORKFLOW

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

    def job_accepted(self, workflow: str, queue_wait_s: float) -> None:
        """Segmind accepted a job ``queue_wait_s`` after its request was published."""
        label = self.workflow_label(workflow)
        self.queue_wait.labels(workflow=label).observe(max(0.0, queue_wait_s))

    def job_ended(self, result: Result) -> None:
        """A request's result was decided (once per request, fleet-wide)."""
        workflow = self.workflow_label(result.workflow)
        self.jobs.labels(workflow=workflow, status=result.status.value).inc()
        if result.error is not None:
            self.job_errors.labels(workflow=workflow, code=result.error.code.value).inc()
        if result.cost_usd:
            self.spent.labels(workflow=workflow).inc(result.cost_usd)
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

    def cancelled(self, result: Result, *, charged: bool) -> None:
        """A request was cancelled (its CANCELLED result decided)."""
        self.cancellations.labels(
            workflow=self.workflow_label(result.workflow), stage="charged" if charged else "unpaid"
        ).inc()

    def progress_published(self, event: ProgressEvent) -> None:
        """A progress message was published."""
        self.progress.labels(event=event.value).inc()

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
        counts: Mapping[str, int],
        oldest_age_s: Mapping[str, float],
        reserved_usd: float,
    ) -> None:
        """Requests in flight per workflow; every known workflow is set (0 when none), so
        a workflow whose last job ended reads 0 rather than its last count."""
        for workflow in self.workflows | set(counts):
            label = self.workflow_label(workflow)
            self.in_flight.labels(workflow=label).set(counts.get(workflow, 0))
            self.oldest_age.labels(workflow=label).set(oldest_age_s.get(workflow, 0.0))
        self.credits_reserved.set(reserved_usd)

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
