"""Scenario 2, rate limit: how much of the true limit becomes completed work, and how many
calls are answered 429, when the fleet is configured for twice the true limit.

The simulator allows ``rpm`` calls per window of ``60 * scale`` s (a simulated minute);
three worker processes (``--processes 3``) are configured with
``SEGMIND_RATE_LIMIT_PER_MINUTE = 2 * rpm / scale`` (the setting is per real minute), twice
the truth. Enough short jobs (``sketch-maker``, 60 s) are published at once to keep the
limit saturated through the measurement: after one simulated minute of warm-up, ``windows``
whole simulator windows are measured (the counters are read just before each boundary, so
the measured span holds exactly ``windows`` windows' worth of calls).

- completed work: the calls answered 200 in the span (submits and polls) that belong to
  jobs which completed, per simulated minute, over ``rpm``. After the span the requests
  queue is purged and the jobs already submitted are given time to finish; the calls of a
  job that still did not complete are taken out (counted high: its polls answered 429 too).
  Credits calls (one per simulated minute) use the limit but are not job work.
- 429 share: calls answered 429 over all calls made in the span (submits, polls, credits).
- completed jobs per simulated minute: COMPLETED results that arrived in the span.

baseline: ``SEGMIND_RATE_LIMITER_ENABLED=false`` (call at once, retry after a 429 at the
reset time it names); variant: ``true`` (the fleet's token bucket and AIMD). Both poll at
the fixed 7 s interval (``SEGMIND_ADAPTIVE_POLLING=false``), so that the limiter is the only
difference and the demand (about 10 calls a job) stays above the limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Stack, log, publish_all, scaled_env, simulator
from bench.report import Row, ScenarioResult
from producers.catalog import default_catalog
from simulator.testing import RunningSimulator, wait_until

NAME = "ratelimit"
WORKFLOW = "sketch-maker"
TARGET_WORK = 0.95
TARGET_429 = 0.02
#: Counters are read this share of a window before each boundary.
_EARLY = 0.05


@dataclass(frozen=True)
class Size:
    scale: float
    rpm: int
    jobs: int
    warmup_windows: int
    windows: int
    processes: int = 3
    threads: int = 8


# A completed job takes at least 2 calls (a submit and the poll that finds it done); without
# the limiter, many requests end FAILED once 429s have used up their submit retries, and
# leave the backlog as fast. 3 x rpm requests per window of the run keep a backlog to the
# end of the span (the requests left then are reported: none left means it ran out).
FULL = Size(scale=0.1, rpm=50, jobs=50 * 13 * 3, warmup_windows=1, windows=10)
QUICK = Size(scale=0.05, rpm=50, jobs=50 * 7 * 3, warmup_windows=1, windows=4)


def _delta(after: dict[str, Any], before: dict[str, Any], *path: str) -> int:
    def get(stats: dict[str, Any]) -> int:
        value: Any = stats
        for key in path:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        return int(value) if isinstance(value, int | float) else 0

    return get(after) - get(before)


def _wait_for_time(moment: float) -> None:
    wait_until(
        lambda: time.time() >= moment,
        timeout_s=max(0.0, moment - time.time()) + 5,
        interval_s=0.002,
        message="the window boundary",
    )


def _measure(sim: RunningSimulator, size: Size, limiter: bool, log_dir: Path) -> dict[str, Any]:
    mode = "variant" if limiter else "baseline"
    window_s = 60 * size.scale
    inputs = default_catalog().resolve(WORKFLOW).default_inputs()
    sim.reset()
    with Stack(NAME, sim, log_dir) as stack:
        env = scaled_env(size.scale) | {
            "SEGMIND_RATE_LIMIT_PER_MINUTE": f"{2 * size.rpm / size.scale:g}",
            "SEGMIND_RATE_LIMITER_ENABLED": str(limiter).lower(),
            # Polls every 7 s in both runs: the limiter is the only difference, and the
            # demand (about 10 calls a job) stays well above the limit.
            "SEGMIND_ADAPTIVE_POLLING": "false",
        }
        stack.start_worker(env, processes=size.processes, threads=size.threads)
        with stack.collector() as results:
            requests = [
                {"workflow": WORKFLOW, "inputs": inputs, "reply_to": results.queue}
                for _ in range(size.jobs)
            ]
            ids = publish_all(stack, requests, threads=4)
            published = time.time()
            first = math.ceil((published + size.warmup_windows * window_s) / window_s)
            start_at = first * window_s - _EARLY * window_s
            end_at = start_at + size.windows * window_s
            log(
                f"ratelimit {mode}: {size.jobs} jobs published; measuring "
                f"{size.windows} windows of {window_s:g} s from {start_at - published:.1f} s"
            )
            _wait_for_time(start_at)
            before = sim.stats()
            t0 = time.time()
            _wait_for_time(end_at)
            after = sim.stats()
            t1 = time.time()
            purged = stack.purge(stack.requests_queue)
            submitted = [job for job in sim.jobs() if job["submitted_at"] < t1]
            pending = {job["client_request_id"] for job in submitted}
            drain_s = 4 * window_s + 20
            try:
                results.wait(pending, timeout_s=drain_s, what="jobs submitted in the span")
            except TimeoutError as exc:
                log(f"ratelimit {mode}: {exc}")
            arrivals = results.snapshot()
            ok_calls = _delta(after, before, "responses", "submit", "200") + _delta(
                after, before, "responses", "poll", "200"
            )
            credits_ok = _delta(after, before, "responses", "credits", "200")
            calls = (
                _delta(after, before, "submits")
                + _delta(after, before, "polls")
                + _delta(after, before, "credits_calls")
            )
            limited = _delta(after, before, "rate_limited")
            polls_before = before.get("polls_by_job", {})
            polls_after = after.get("polls_by_job", {})
            wasted = 0
            for job in submitted:
                arrival = arrivals.get(job["client_request_id"])
                if arrival is not None and arrival.status == "COMPLETED":
                    continue
                request_id = job["request_id"]
                wasted += int(t0 <= job["submitted_at"] < t1)
                wasted += polls_after.get(request_id, 0) - polls_before.get(request_id, 0)
            completed_in_span = sum(
                1
                for request_id in ids
                if (arrival := arrivals.get(request_id)) is not None
                and arrival.status == "COMPLETED"
                and t0 <= arrival.at < t1
            )
            statuses: dict[str, int] = {}
            for arrival in arrivals.values():
                statuses[arrival.status] = statuses.get(arrival.status, 0) + 1
            # Requests neither accepted by the simulator nor ended by the span's end: the
            # backlog left (queued, or waiting in the workers for a token or a retry).
            accepted = {job["client_request_id"] for job in submitted}
            ended_unaccepted = sum(
                1
                for request_id, arrival in arrivals.items()
                if request_id not in accepted and arrival.at < t1
            )
            waiting = size.jobs - len(accepted) - ended_unaccepted
    minutes = (t1 - t0) / window_s
    budget = size.rpm * minutes
    return {
        "requests": size.jobs,
        "span_windows": round(minutes, 3),
        "calls": calls,
        "calls_200_jobs": ok_calls,
        "calls_200_credits": credits_ok,
        "calls_429": limited,
        "calls_of_unfinished_jobs": wasted,
        "limit_used": (ok_calls + credits_ok) / budget,
        "completed_work": (ok_calls - wasted) / budget,
        "rate_limited_share": limited / calls if calls else 0.0,
        "completed_per_min": completed_in_span / minutes,
        "purged_requests": purged,
        "waiting_at_end": waiting,
        "results": statuses,
    }


def run(quick: bool, log_dir: Path) -> ScenarioResult:
    size = QUICK if quick else FULL
    result = ScenarioResult(
        name=NAME,
        title=(
            f"{WORKFLOW}, true limit {size.rpm} calls per simulated minute, workers "
            f"(--processes {size.processes}) configured for {2 * size.rpm}; {size.jobs} jobs, "
            f"{size.windows} simulated minutes measured, time scale {size.scale:g}"
        ),
        baseline="SEGMIND_RATE_LIMITER_ENABLED=false (retry after each 429)",
        variant="SEGMIND_RATE_LIMITER_ENABLED=true",
    )
    with simulator(time_scale=size.scale, rpm=size.rpm, rate_window_s=60 * size.scale) as sim:
        baseline = _measure(sim, size, False, log_dir)
        variant = _measure(sim, size, True, log_dir)
    result.figures = {"baseline": baseline, "variant": variant}
    result.rows = [
        Row(
            "completed work / true limit",
            baseline["completed_work"],
            variant["completed_work"],
            unit="%",
            target=f"≥ {TARGET_WORK:.0%}",
            passed=variant["completed_work"] >= TARGET_WORK,
        ),
        Row(
            "calls answered 429",
            baseline["rate_limited_share"],
            variant["rate_limited_share"],
            unit="%",
            target=f"≤ {TARGET_429:.0%}",
            passed=variant["rate_limited_share"] <= TARGET_429,
        ),
        Row(
            "completed jobs per simulated minute",
            baseline["completed_per_min"],
            variant["completed_per_min"],
            unit="/min",
        ),
        Row(
            "limit used (all calls answered 200)",
            baseline["limit_used"],
            variant["limit_used"],
            unit="%",
        ),
        Row(
            "requests FAILED (429s used up their retries)",
            baseline["results"].get("FAILED", 0),
            variant["results"].get("FAILED", 0),
        ),
    ]
    for mode, figures in (("baseline", baseline), ("variant", variant)):
        result.notes.append(
            f"{mode}: {figures['calls']} calls in the span, {figures['calls_429']} answered "
            f"429, {figures['calls_of_unfinished_jobs']} of jobs that did not complete; "
            f"{figures['waiting_at_end']} requests still waiting at its end; results "
            f"{figures['results']}"
        )
        if figures["waiting_at_end"] <= 0:
            result.notes.append(
                f"{mode}: the backlog ran out before the span ended: the limit may not have "
                "been saturated throughout"
            )
    result.notes.append(
        "completed jobs per minute favours the baseline: waiting out each 429 until the "
        "window resets polls a job about once a window, not every 7 s"
    )
    return result
