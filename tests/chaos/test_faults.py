"""Every fault Segmind is known for (docs/segmind-api.md), through the real worker.

Each submit and job fault is tied to a workflow id of its own (the simulator matches HTTP
submit faults and job faults on it), so the whole table runs as one batch on one worker
and each row is checked on its own request: the result's status, error code and cost, how
many times it was POSTed and how many jobs (charges) Segmind created for it. Poll faults
cannot be tied to a job, so they run in batches of their own: the transient ones (each
retried, the job still completes), then an expired record (a poll answered 404).

Rows (``fault -> outcome -> paid?``) are the table of docs/reliability.md.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from producers.contract import ErrorCode, Result, Status
from simulator.testing import RunningSimulator
from tests.chaos.conftest import StackFactory
from tests.chaos.harness import check_guarantees, check_hostile, prepare_simulator, run_chaos

Paid = Literal["no", "yes", "unknown"]
#: The deadline of the requests whose jobs never end (seconds after submission).
SHORT_DEADLINE_S = 2.0


@dataclass(frozen=True)
class Case:
    """One row: the faults of a workflow of its own and what must come of them."""

    name: str
    faults: list[dict[str, Any]]
    status: Status
    code: ErrorCode | None
    posts: int
    jobs: int
    paid: Paid
    request: dict[str, Any] = field(default_factory=dict)
    #: A part of Segmind's own message that the result must carry.
    message: str | None = None


def submit(**fault: Any) -> dict[str, Any]:
    return {"endpoint": "submit", **fault}


# Retries: SEGMIND_SUBMIT_MAX_RETRIES defaults to 8, so 9 POSTs in all.
_MAX_POSTS = 9

CASES = [
    Case("400 bad request", [submit(status=400, message="Bad input: seed")], Status.FAILED,
         ErrorCode.BAD_REQUEST, 1, 0, "no", message="Bad input: seed"),
    Case("401 unauthorized", [submit(status=401)], Status.FAILED, ErrorCode.UNAUTHORIZED,
         1, 0, "no"),
    Case("403 forbidden, HTML body", [submit(status=403, body="html", message="Forbidden zone")],
         Status.FAILED, ErrorCode.FORBIDDEN, 1, 0, "no", message="Forbidden zone"),
    Case("404 workflow not found", [submit(status=404)], Status.FAILED,
         ErrorCode.WORKFLOW_NOT_FOUND, 1, 0, "no"),
    Case("406 text body", [submit(status=406, body="text", message="Insufficient credits")],
         Status.FAILED, ErrorCode.INSUFFICIENT_CREDITS, 1, 0, "no",
         message="Insufficient credits"),
    Case("429 storm then success", [submit(status=429, count=5)], Status.COMPLETED, None,
         6, 1, "yes"),
    Case("429 without end", [submit(status=429)], Status.FAILED, ErrorCode.RATE_LIMITED,
         _MAX_POSTS, 0, "no"),
    Case("500 burst then success", [submit(status=500, count=3)], Status.COMPLETED, None,
         4, 1, "yes"),
    Case("502 HTML burst then success", [submit(status=502, body="html", count=3)],
         Status.COMPLETED, None, 4, 1, "yes"),
    Case("500 without end", [submit(status=500)], Status.FAILED, ErrorCode.SERVER_ERROR,
         _MAX_POSTS, 0, "no"),
    Case("504 (job created)", [submit(status=504, after_effect=True, count=1)],
         Status.FAILED, ErrorCode.SUBMIT_OUTCOME_UNKNOWN, 1, 1, "unknown"),
    Case("504 (no job)", [submit(status=504, count=1)], Status.FAILED,
         ErrorCode.SUBMIT_OUTCOME_UNKNOWN, 1, 0, "unknown"),
    Case("dropped connection", [submit(drop=True, count=1)], Status.FAILED,
         ErrorCode.SUBMIT_OUTCOME_UNKNOWN, 1, 0, "unknown"),
    # The answer is held longer than SEGMIND_READ_TIMEOUT_S (2 s in tests), its job
    # already created: the worker gives up reading a POST that did reach Segmind. (A
    # delay before the job is created would race the worker's hang-up.)
    Case("read timeout", [submit(hold_s=3.0, count=1)], Status.FAILED,
         ErrorCode.SUBMIT_OUTCOME_UNKNOWN, 1, 1, "unknown"),
    # Segmind answered 200: the job exists, whatever the body says.
    Case("malformed JSON (200)", [submit(malformed=True, after_effect=True, count=1)],
         Status.FAILED, ErrorCode.MALFORMED_RESPONSE, 1, 1, "unknown"),
    Case("generation FAILED", [{"job": "fail", "message": "NSFW content"}], Status.FAILED,
         ErrorCode.GENERATION_FAILED, 1, 1, "yes", message="NSFW content"),
    Case("unknown status, then COMPLETED", [{"job": "status", "status": "CANCELLED",
         "forever": False}], Status.COMPLETED, None, 1, 1, "yes"),
    Case("unknown status for ever", [{"job": "status", "status": "CANCELLED"}],
         Status.TIMED_OUT, ErrorCode.DEADLINE_EXCEEDED, 1, 1, "yes",
         request={"deadline_s": SHORT_DEADLINE_S}),
    Case("job that never ends", [{"job": "never_finish"}], Status.TIMED_OUT,
         ErrorCode.DEADLINE_EXCEEDED, 1, 1, "yes", request={"deadline_s": SHORT_DEADLINE_S}),
]  # fmt: skip


def _check_paid(result: Result, paid: Paid) -> None:
    """The result's ``cost_usd`` says what was paid: 0 for nothing, the job's cost, or
    ``None`` when the submit's outcome is unknown (the job may exist and be charged)."""
    if paid == "no":
        assert result.cost_usd == 0
    elif paid == "yes":
        assert result.cost_usd is not None
        assert result.cost_usd > 0
    else:
        assert result.cost_usd is None


def test_every_submit_and_job_fault_has_its_documented_outcome(
    chaos_stack: StackFactory, amqp_url: str, redis_url: str, sim: RunningSimulator
) -> None:
    stack = chaos_stack(amqp_url, redis_url)
    # Segmind's x-cost header: a paid job's result carries its cost (raw ids have no price).
    prepare_simulator(sim, cost_headers=True)
    workflows = {case.name: f"{secrets.token_hex(12)}-v1" for case in CASES}
    for case in CASES:
        sim.add_faults(*({**fault, "workflow_id": workflows[case.name]} for fault in case.faults))
    stack.start_worker(threads=8)

    def requests(reply_to: str) -> list[dict[str, Any]]:
        return [
            {
                "request_id": f"fault-{index:02d}-{secrets.token_hex(4)}",
                "workflow": workflows[case.name],
                "reply_to": reply_to,
                "metadata": {"case": case.name},
                **case.request,
            }
            for index, case in enumerate(CASES)
        ]

    figures, received, stats = run_chaos(
        "Segmind faults (submit and job)",
        stack,
        sim,
        jobs=len(CASES),
        harm=None,
        timeout_s=120,
        request_factory=requests,
    )
    check_guarantees(figures, stats)
    wrong = []
    for request_id in figures.request_ids:
        result = received[request_id]
        case = next(c for c in CASES if c.name == (result.metadata or {}).get("case"))
        posts = stats["submits_by_client_request_id"].get(request_id, 0)
        jobs = stats["jobs_by_client_request_id"].get(request_id, 0)
        code = result.error.code if result.error else None
        seen = (result.status, code, posts, jobs)
        if seen != (case.status, case.code, case.posts, case.jobs):
            wrong.append(
                f"{case.name}: {seen} != {(case.status, case.code, case.posts, case.jobs)}"
            )
            continue
        _check_paid(result, case.paid)
        if case.message is not None:
            assert result.error is not None
            assert case.message in result.error.message
    assert not wrong, "\n".join(wrong)


def test_transient_poll_faults_are_retried_to_completion(
    chaos_stack: StackFactory, amqp_url: str, redis_url: str, sim: RunningSimulator
) -> None:
    stack = chaos_stack(amqp_url, redis_url)
    """500/502/504, an HTML error page, a dropped connection, a read timeout, malformed
    JSON, a 429 and an unknown body on polls: each poll is retried, every job completes,
    and nothing is POSTed or paid twice."""
    poll_faults: list[dict[str, Any]] = [
        {"status": 500, "count": 2},
        {"status": 502, "body": "html", "count": 2},
        {"status": 504, "count": 2},
        {"status": 429, "count": 2},
        {"drop": True, "count": 2},
        {"delay_s": 3.0, "count": 1},
        {"malformed": True, "count": 2},
    ]
    sim.add_faults(*({"endpoint": "poll", **fault} for fault in poll_faults))
    stack.start_worker(threads=8)
    figures, received, stats = run_chaos(
        "Segmind faults (polls)", stack, sim, jobs=10, harm=None, timeout_s=120
    )
    check_guarantees(figures, stats)
    check_hostile(received)
    assert {result.status for result in received.values()} == {
        Status.COMPLETED,
        Status.REJECTED,
    }
    served = stats["faults_served"]
    assert served == {"500": 2, "502": 2, "504": 2, "429": 2, "drop": 2, "delay": 1,
                      "malformed": 2}  # fmt: skip
    assert figures.max_posts_per_request == 1


def test_an_expired_poll_ends_failed_and_paid(
    chaos_stack: StackFactory, amqp_url: str, redis_url: str, sim: RunningSimulator
) -> None:
    """A poll answered 404 after the job was accepted: the record expired at Segmind. The
    job ends FAILED ``expired``, charged (the job ran)."""
    stack = chaos_stack(amqp_url, redis_url)
    sim.add_faults({"endpoint": "poll", "status": 404, "count": 1})
    stack.start_worker()
    figures, received, stats = run_chaos(
        "Segmind faults (expired poll)",
        stack,
        sim,
        jobs=1,
        harm=None,
        timeout_s=60,
    )
    check_guarantees(figures, stats)
    (result,) = received.values()
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.EXPIRED
    assert result.cost_usd is not None
    assert result.cost_usd > 0
    assert figures.max_jobs_per_request == 1
