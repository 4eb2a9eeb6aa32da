"""The simulator's domain, free of HTTP: jobs, credits, counters, and the
``SimulatorState`` that ties them to the rate window, fault rules and outputs.

A job's outputs and expected duration come from ``simulator.outputs``, its timeline
from ``simulator.timeline``; the rate window is ``simulator.ratelimit`` and the active
fault rules ``simulator.faults``. Everything is plain Python so it can be unit-tested
with a fake clock. The HTTP layer (``simulator.app``) owns one ``SimulatorState`` and
calls it from its event loop thread only; nothing here locks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from producers.catalog import WORKFLOW_ID_PATTERN, Catalog, Workflow, default_catalog
from simulator.config import Endpoint, FailureField, JobFault, SimulatorConfig
from simulator.faults import FaultBook, OutputFaultBook
from simulator.outputs import expected_duration_s, output_file_size, output_files, output_items
from simulator.ratelimit import RateWindow, format_reset
from simulator.timeline import Timeline, plan_timeline

Clock = Callable[[], float]

_WORKFLOW_ID_RE = re.compile(WORKFLOW_ID_PATTERN)
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")

_FAILURE_MESSAGES = (
    "Workflow execution failed: CUDA out of memory on node KSampler",
    "Workflow execution failed: could not download input image",
    "Workflow execution failed: upstream model returned no output",
    "Internal error while running the workflow, please retry",
)


# -------------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One accepted submit and everything decided about it when it was created.

    ``outcome`` is the status the job ends in at ``timeline.done_at``: COMPLETED,
    FAILED, or the unknown status of a ``status`` fault shown forever; ``None`` (and
    ``done_at`` too) for a ``never_finish`` job, which stays PROCESSING. ``files`` are
    its file outputs' names (``<keyname>.<ext>``) and types, which ``serve_outputs``
    serves once it is COMPLETED.
    """

    request_id: str
    workflow_id: str
    client_request_id: str
    price_usd: float
    timeline: Timeline
    expires_at: float
    outcome: str | None
    outputs: list[dict[str, Any]]
    error_field: FailureField
    error_text: str
    output_as_list: bool = False
    odd_status: str | None = None
    odd_status_forever: bool = False
    fault: str | None = None
    polls: int = 0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def done_at(self) -> float | None:
        """When the job becomes terminal (epoch seconds), or ``None`` if never."""
        return None if self.outcome is None else self.timeline.done_at

    def expired(self, now: float) -> bool:
        """Whether the record is gone: polls answer 404 from then on."""
        return now > self.expires_at

    def status_at(self, now: float) -> str:
        """The status a poll at ``now`` reports."""
        if self.odd_status is not None and self.odd_status_forever:
            return self.odd_status
        done_at = self.done_at
        if done_at is not None and now >= done_at:
            assert self.outcome is not None
            return self.outcome
        if self.odd_status is not None:
            return self.odd_status
        return "QUEUED" if now < self.timeline.processing_at else "PROCESSING"

    def poll_body(self, now: float) -> dict[str, Any]:
        """The JSON body of a 200 poll answer at ``now``."""
        status = self.status_at(now)
        if status == "QUEUED":
            return {"status": "QUEUED", "message": "Request in queue"}
        if status == "PROCESSING":
            return {"status": "PROCESSING", "output": ""}
        if status == "COMPLETED":
            output: Any = self.outputs if self.output_as_list else json.dumps(self.outputs)
            return {"status": "COMPLETED", "output": output}
        if status == "FAILED":
            return {"status": "FAILED", self.error_field: self.error_text}
        return {"status": status, "message": f"Request {status.lower()}"}

    def to_json(self, now: float) -> dict[str, Any]:
        """The job as ``GET /_sim/jobs`` shows it."""
        return {
            "request_id": self.request_id,
            "workflow_id": self.workflow_id,
            "client_request_id": self.client_request_id,
            "status": self.status_at(now),
            "expired": self.expired(now),
            "submitted_at": self.timeline.submitted_at,
            "processing_at": self.timeline.processing_at,
            "done_at": self.done_at,
            "expires_at": self.expires_at,
            "polls": self.polls,
            "price_usd": self.price_usd,
            "outcome": self.outcome,
            "error_field": self.error_field if self.outcome == "FAILED" else None,
            "fault": self.fault,
        }


class UnknownWorkflowIdError(LookupError):
    """The workflow id is malformed, or not in the catalog with ``strict_workflows``."""


class InsufficientCreditsError(Exception):
    """The remaining credits do not cover the job's price; nothing was charged."""

    def __init__(self, price_usd: float, remaining_usd: float) -> None:
        self.price_usd = price_usd
        self.remaining_usd = remaining_usd
        super().__init__(f"job costs ${price_usd:.4f}, ${remaining_usd:.4f} left")


# ---------------------------------------------------------------------------- counters


@dataclass
class Counters:
    """What the simulator saw since the last reset."""

    submits: int = 0
    polls: int = 0
    credits_calls: int = 0
    rate_limited: int = 0
    credits_charged_usd: float = 0.0
    faults_served: Counter[str] = field(default_factory=Counter)
    submits_by_client_request_id: Counter[str] = field(default_factory=Counter)
    jobs_by_client_request_id: Counter[str] = field(default_factory=Counter)
    polls_by_job: Counter[str] = field(default_factory=Counter)
    output_downloads: Counter[str] = field(default_factory=Counter)
    output_responses: Counter[str] = field(default_factory=Counter)
    responses: dict[str, Counter[str]] = field(default_factory=dict)

    def response(self, endpoint: str, outcome: str) -> None:
        """Count one answer (a status code, or ``drop``) on an endpoint."""
        self.responses.setdefault(endpoint, Counter())[outcome] += 1


def body_fingerprint(body: bytes) -> str:
    """Stands in for the client request id of a submit without the header."""
    return "body-sha256:" + hashlib.sha256(body).hexdigest()[:16]


def _key_identity(key: str) -> str:
    # The rate window is kept per key, under a digest: the raw key is never stored twice.
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class SimulatorState:
    """Jobs, credits, rate windows, fault rules and counters of one simulator.

    Args:
        config: the base config; ``reset`` returns to it (plus overrides).
        catalog: the workflows (prices, durations, outputs); the process default if omitted.
        clock: epoch seconds; ``time.time`` if omitted (tests pass a fake).
    """

    config: SimulatorConfig
    rng: random.Random
    jobs: dict[str, Job]
    credits_usd: float
    rate: RateWindow
    faults: FaultBook
    output_faults: OutputFaultBook
    counters: Counters

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        catalog: Catalog | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.base_config = config
        self.catalog = catalog if catalog is not None else default_catalog()
        self.clock = clock
        #: Bumped by every reset, so a request that straddles one can drop its effects.
        self.generation = 0
        self.reset()  # sets everything else

    def reset(self, overrides: Mapping[str, Any] | None = None) -> SimulatorConfig:
        """Forget jobs, counters, faults and rate windows; restore credits and the RNG.

        The new config is the base config with ``overrides`` (valid until the next reset).

        Raises:
            ValueError: an override is unknown, startup-only or invalid (nothing changes).
        """
        config = self.base_config.with_overrides(dict(overrides or {}))
        self.generation += 1
        self.config = config
        self.rng = random.Random(config.seed)
        self.jobs = {}
        self.credits_usd = config.credits
        self.rate = RateWindow(config.rpm, config.rate_window_s)
        self.faults = FaultBook()
        self.faults.add(list(config.faults))
        self.output_faults = OutputFaultBook()
        self.output_faults.add(list(config.output_faults))
        self.counters = Counters()
        return config

    # -- auth and limits

    def authenticate(self, headers: Mapping[str, str]) -> str | None:
        """The caller's identity if ``x-api-key`` or ``Authorization: Bearer`` holds the
        configured key, else ``None``.
        """
        expected = self.config.api_key.get_secret_value().encode()
        presented = headers.get("x-api-key")
        if presented is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        if presented and hmac.compare_digest(presented.encode(), expected):
            return _key_identity(presented)
        return None

    def rate_limit(self, identity: str, endpoint: Endpoint) -> float | None:
        """Count a call against the window; ``None`` if allowed, else the reset time."""
        if endpoint == "poll" and not self.config.rate_limit_polls:
            return None
        reset_at = self.rate.hit(identity, self.clock())
        if reset_at is not None:
            self.counters.rate_limited += 1
        return reset_at

    def rate_limit_headers(self, reset_at: float | None = None) -> dict[str, str]:
        """The headers of a 429: reset time, and ``Retry-After`` if configured."""
        now = self.clock()
        reset_at = self.rate.reset_at(now) if reset_at is None else reset_at
        headers = {
            "x-rate-limit-reset-at-utc": format_reset(reset_at, self.config.reset_header_format)
        }
        if self.config.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(reset_at - now)))
        return headers

    # -- counting what arrives

    def saw_submit(self, client_request_id: str) -> None:
        """Count a submit as it arrives, whatever its answer will be."""
        self.counters.submits += 1
        self.counters.submits_by_client_request_id[client_request_id] += 1

    def saw_poll(self, request_id: str) -> None:
        """Count a poll as it arrives, per job when the job is known."""
        self.counters.polls += 1
        job = self.jobs.get(request_id)
        if job is not None:
            job.polls += 1
            self.counters.polls_by_job[request_id] += 1

    def saw_credits_call(self) -> None:
        """Count a credits call as it arrives."""
        self.counters.credits_calls += 1

    def served_fault(self, name: str) -> None:
        """Count an injected fault (a status code, ``drop``, ``malformed``, ``delay``)."""
        self.counters.faults_served[name] += 1
        if name == "429":
            self.counters.rate_limited += 1

    # -- jobs

    def price_of(self, workflow: Workflow | None) -> float:
        """The catalog price, else the configured default."""
        if workflow is not None and workflow.price_usd is not None:
            return workflow.price_usd
        return self.config.default_price_usd

    def create_job(
        self, workflow_id: str, client_request_id: str, *, server_url: str | None = None
    ) -> Job:
        """Accept a submit: check the id and credits, charge, and plan the job.

        ``server_url`` is this server's URL as the client reached it: with
        ``serve_outputs`` (and no ``outputs_url``) the file outputs are under it.

        Raises:
            UnknownWorkflowIdError: malformed id, or not catalogued with strict_workflows.
            InsufficientCreditsError: credits below the price (nothing charged).
        """
        if not _WORKFLOW_ID_RE.match(workflow_id):
            raise UnknownWorkflowIdError(workflow_id)
        workflow = self.catalog.get(workflow_id)
        if workflow is None and self.config.strict_workflows:
            raise UnknownWorkflowIdError(workflow_id)
        price = self.price_of(workflow)
        # A small epsilon: 0.1 + 0.2 style float dust must not refuse an exact balance.
        if price > self.credits_usd + 1e-9:
            raise InsufficientCreditsError(price, self.credits_usd)
        self.credits_usd = max(0.0, self.credits_usd - price)
        self.counters.credits_charged_usd += price

        now = self.clock()
        rng = self.rng
        config = self.config
        request_id = uuid.uuid4().hex  # not seeded: ids stay unique across resets
        timeline = plan_timeline(
            expected_duration_s(workflow),
            spread=config.duration_spread,
            time_scale=config.time_scale,
            submitted_at=now,
            rng=rng,
        )
        failed = config.fail_rate > 0 and rng.random() < config.fail_rate
        job = Job(
            request_id=request_id,
            workflow_id=workflow_id,
            client_request_id=client_request_id,
            price_usd=price,
            timeline=timeline,
            expires_at=now + config.retention_s * config.time_scale,
            outcome="FAILED" if failed else "COMPLETED",
            outputs=output_items(workflow, request_id, rng, config.outputs_base(server_url)),
            error_field=rng.choice(("error", "error_message")),
            error_text=rng.choice(_FAILURE_MESSAGES),
        )
        job.files = output_files(job.outputs)
        fault = self.faults.match_job(workflow_id, rng)
        if fault is not None:
            _apply_job_fault(job, fault)
            self.served_fault(fault.action)
        self.jobs[request_id] = job
        self.counters.jobs_by_client_request_id[client_request_id] += 1
        return job

    def find_job(self, request_id: str) -> Job | None:
        """The live job with this id; ``None`` if unknown or expired."""
        job = self.jobs.get(request_id)
        if job is None or job.expired(self.clock()):
            return None
        return job

    # -- output files

    def output_file_size(self, request_id: str, name: str) -> int | None:
        """The size of the output file ``<request_id>/<name>`` if this server serves it
        now (``serve_outputs``, a job that is COMPLETED and has that file), else ``None``.
        """
        if not self.config.serve_outputs:
            return None
        job = self.jobs.get(request_id)
        if job is None or name not in job.files:
            return None
        if job.status_at(self.clock()) != "COMPLETED":
            return None
        return output_file_size(name, self.config.output_bytes)

    def saw_output_download(self, request_id: str, name: str) -> None:
        """Count a GET or HEAD of a served output file, whatever its answer will be."""
        self.counters.output_downloads[f"{request_id}/{name}"] += 1

    def output_response(self, outcome: str) -> None:
        """Count an answer (a status code, or ``drop``) on ``/outputs/``."""
        self.counters.output_responses[outcome] += 1

    # -- introspection

    def stats(self) -> dict[str, Any]:
        """The counters, as ``GET /_sim/stats`` shows them."""
        c = self.counters
        return {
            "submits": c.submits,
            "polls": c.polls,
            "credits_calls": c.credits_calls,
            "rate_limited": c.rate_limited,
            "faults_served": dict(c.faults_served),
            "credits_charged_usd": round(c.credits_charged_usd, 6),
            "credits_remaining_usd": round(self.credits_usd, 6),
            "submits_by_client_request_id": dict(c.submits_by_client_request_id),
            "max_submits_per_request": max(c.submits_by_client_request_id.values(), default=0),
            "jobs_by_client_request_id": dict(c.jobs_by_client_request_id),
            "max_jobs_per_request": max(c.jobs_by_client_request_id.values(), default=0),
            "polls_by_job": dict(c.polls_by_job),
            "output_downloads": dict(c.output_downloads),
            "output_downloads_total": sum(c.output_downloads.values()),
            "output_responses": dict(c.output_responses),
            "jobs": len(self.jobs),
            "responses": {name: dict(codes) for name, codes in c.responses.items()},
        }

    def jobs_json(self) -> list[dict[str, Any]]:
        """Every job (expired ones too) in submission order, as ``GET /_sim/jobs`` shows."""
        now = self.clock()
        return [job.to_json(now) for job in self.jobs.values()]


def _apply_job_fault(job: Job, fault: JobFault) -> None:
    job.fault = fault.job
    if fault.job == "fail":
        job.outcome = "FAILED"
        if fault.error_field is not None:
            job.error_field = fault.error_field
        if fault.message is not None:
            job.error_text = fault.message
    elif fault.job == "never_finish":
        job.outcome = None
    elif fault.job == "output_as_list":
        job.output_as_list = True
    else:  # status
        job.odd_status = fault.status
        job.odd_status_forever = fault.forever
        if fault.forever:
            # Its run still ends at done_at (tests wait for that), in the odd status.
            job.outcome = fault.status
