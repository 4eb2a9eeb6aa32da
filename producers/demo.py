"""``segmind-queue demo``: the five seed workflows end to end, on local defaults.

With no Segmind key configured it starts the local simulator (time-scaled, so the ~674 s
workflow takes seconds) and runs every seed workflow with its default inputs through the
Segmind client: validation against the contract, submit, polls at Segmind's interval
(scaled), 429s and transient errors backed off, and one contract ``Result`` per job.

With ``SEGMIND_API_KEY`` (or ``SEGMIND_API_KEY_FILE``) set it runs against the real API,
which costs money, and so only with ``--yes``.

The demo polls from one thread with a schedule: it is a terminal program that waits for the
user; the service itself never holds a thread between polls.
"""

from __future__ import annotations

import random
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from producers.catalog import Catalog, default_catalog
from producers.contract import (
    AcceptedRequest,
    ErrorCode,
    ErrorInfo,
    Result,
    Status,
    Timings,
    validate_request,
)
from worker.backoff import retry_delay
from worker.client import SegmindClient
from worker.errors import RateLimitedError, SegmindError, TransientError
from worker.responses import JobStatus
from worker.settings import Settings

#: Segmind asks for 7 s between polls; the simulator's time scale shrinks it.
SEGMIND_POLL_INTERVAL_S = 7.0
MAX_TRANSIENT_RETRIES = 5
DEADLINE_S = 3000.0  # under Segmind's ~1 h retention
_BACKOFF = {"base_s": 1.0, "cap_s": 60.0}


@dataclass
class _Job:
    accepted: AcceptedRequest
    due: float = 0.0
    state: str = "waiting"
    poll_url: str | None = None
    segmind_request_id: str | None = None
    submitted_at: datetime | None = None
    polls: int = 0
    retries: int = 0
    result: Result | None = None
    queued_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def name(self) -> str:
        return self.accepted.workflow.name


def estimated_cost(catalog: Catalog) -> tuple[float, list[str]]:
    """The catalog price of one run of every workflow, and the names of unpriced ones."""
    priced = sum(w.price_usd or 0.0 for w in catalog)
    unpriced = [w.name for w in catalog if w.price_usd is None]
    return priced, unpriced


def run_demo(*, time_scale: float, yes: bool, console: Console) -> int:
    """Run the demo; returns the process exit code (0 when every job completed).

    Args:
        time_scale: the simulator's time factor (ignored against the real API).
        yes: consent to spend real credits when a Segmind key is configured.
        console: where progress and results are printed.
    """
    settings = Settings()
    catalog = default_catalog()
    with ExitStack() as stack:
        if settings.api_key_configured:
            cost, unpriced = estimated_cost(catalog)
            note = f" plus {', '.join(unpriced)} (price unknown)" if unpriced else ""
            if not yes:
                console.print(
                    f"A Segmind key is set: the demo would run {len(catalog)} workflows on "
                    f"{settings.segmind_api_url} for about ${cost:.2f}{note}. "
                    "Pass --yes to spend it, or unset SEGMIND_API_KEY to use the simulator."
                )
                return 2
            client = stack.enter_context(SegmindClient.from_settings(settings))
            interval = SEGMIND_POLL_INTERVAL_S
            console.print(f"Running against {client.api_url} (about ${cost:.2f}{note}).")
        else:
            # Imported here: the simulator's server stack is not needed against the real API.
            from simulator.config import SimulatorConfig
            from simulator.testing import run_simulator

            key = SecretStr("demo-" + secrets.token_hex(12))
            # The rate window is scaled with everything else: 50 requests per scaled minute.
            config = SimulatorConfig(
                api_key=key, time_scale=time_scale, rpm=50, rate_window_s=60.0 * time_scale
            )
            sim = stack.enter_context(run_simulator(config))
            client = stack.enter_context(SegmindClient(api_url=sim.url, api_key=key))
            interval = max(0.1, SEGMIND_POLL_INTERVAL_S * time_scale)
            console.print(
                f"No SEGMIND_API_KEY set: using the local simulator at {sim.url} "
                f"(time scale {time_scale:g}, 50 requests per scaled minute)."
            )
        jobs = [
            _Job(validate_request({"workflow": w.name, "inputs": w.default_inputs()}, catalog))
            for w in catalog
        ]
        with Live(_table(jobs), console=console, refresh_per_second=8) as live:
            while pending := [job for job in jobs if job.result is None]:
                job = min(pending, key=lambda j: j.due)
                time.sleep(max(0.0, job.due - time.monotonic()))
                _step(client, job, interval)
                live.update(_table(jobs))
        console.print()
        for job in jobs:
            assert job.result is not None
            console.print_json(job.result.model_dump_json(exclude_none=True))
        if not settings.api_key_configured:
            stats = sim.stats()
            console.print(
                f"Simulator: {stats['submits']} submits, {stats['polls']} polls, "
                f"{stats['rate_limited']} answered 429, ${stats['credits_charged_usd']:.4f} "
                "charged."
            )
    completed = sum(
        job.result is not None and job.result.status is Status.COMPLETED for job in jobs
    )
    console.print(f"{completed} of {len(jobs)} workflows completed.")
    return 0 if completed == len(jobs) else 1


def _step(client: SegmindClient, job: _Job, interval: float) -> None:
    """One call for ``job``: its submit, or its next poll; schedules the one after."""
    now = time.monotonic()
    try:
        if job.poll_url is None:
            submission = client.submit(
                job.accepted.workflow.workflow_id,
                job.accepted.inputs,
                client_request_id=job.accepted.request.request_id,
            )
            job.poll_url = submission.poll_url
            job.segmind_request_id = submission.segmind_request_id
            job.submitted_at = datetime.now(UTC)
            job.state = submission.status
            job.due = now + interval
            return
        job.polls += 1
        polled = client.poll(job.poll_url)
    except RateLimitedError as error:
        job.state = "rate limited"
        job.due = now + retry_delay(job.retries, error.wait_s, **_BACKOFF, rand=random.random())
        job.retries += 1
        return
    except TransientError as error:
        # A submit that may have reached Segmind may have created a billed job: never re-POST.
        unsafe = job.poll_url is None and error.may_have_been_processed
        if unsafe or job.retries >= MAX_TRANSIENT_RETRIES:
            code = ErrorCode.SUBMIT_OUTCOME_UNKNOWN if unsafe else error.code
            _finish(job, Status.FAILED, error=ErrorInfo(code=code, message=error.message))
            return
        job.state = f"retrying ({error.code})"
        job.due = now + retry_delay(job.retries, None, **_BACKOFF, rand=random.random())
        job.retries += 1
        return
    except SegmindError as error:  # final: 4xx, expired, a refused poll_url
        _finish(job, Status.FAILED, error=error.to_error_info())
        return
    job.retries = 0
    job.state = polled.raw_status or polled.status
    if polled.status is JobStatus.COMPLETED:
        _finish(job, Status.COMPLETED, outputs=polled.outputs or [])
    elif polled.status is JobStatus.FAILED:
        message = polled.error_message or "Segmind reported the generation FAILED"
        _finish(
            job, Status.FAILED, error=ErrorInfo(code=ErrorCode.GENERATION_FAILED, message=message)
        )
    elif (datetime.now(UTC) - job.queued_at).total_seconds() > DEADLINE_S:
        message = f"not finished after {DEADLINE_S:.0f} s"
        _finish(
            job,
            Status.TIMED_OUT,
            error=ErrorInfo(code=ErrorCode.DEADLINE_EXCEEDED, message=message),
        )
    else:
        job.due = now + interval


def _finish(job: _Job, status: Status, **fields: object) -> None:
    done = datetime.now(UTC)
    submitted = job.submitted_at
    job.state = status
    job.result = Result.model_validate(
        {
            "request_id": job.accepted.request.request_id,
            "workflow": job.name,
            "workflow_id": job.accepted.workflow.workflow_id,
            "status": status,
            "segmind_request_id": job.segmind_request_id,
            "cost_usd": job.accepted.workflow.price_usd if submitted else 0.0,
            "polls": job.polls,
            "timings": Timings(
                queued_at=job.queued_at,
                submitted_at=submitted,
                completed_at=done,
                queue_wait_s=(submitted - job.queued_at).total_seconds() if submitted else None,
                generation_s=(done - submitted).total_seconds() if submitted else None,
                total_s=(done - job.queued_at).total_seconds(),
            ),
            **fields,
        }
    )


def _table(jobs: list[_Job]) -> Table:
    table = Table(title="segmind-queue demo")
    for column in ("workflow", "state", "polls", "elapsed"):
        table.add_column(column)
    now = datetime.now(UTC)
    for job in jobs:
        end = job.result.timings.completed_at if job.result else None
        elapsed = ((end or now) - job.queued_at).total_seconds()
        table.add_row(job.name, str(job.state), str(job.polls), f"{elapsed:.1f} s")
    return table
