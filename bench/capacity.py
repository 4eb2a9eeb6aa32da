"""Scenario 3, capacity: ``jobs`` jobs in flight in one worker process, its memory and how
late its polls run.

One ``segmind-queue worker --processes 1``; Dramatiq holds every delayed poll message in
the process until it is due (``dramatiq_delay_queue_prefetch`` is raised above ``jobs``).
The simulator's jobs never finish (job fault ``never_finish``), has no rate limit, and the
worker's limiter is off; polls run at a fixed ``SEGMIND_MIN_POLL_INTERVAL_S`` (adaptive
polling off), chosen so that the machine can sustain ``jobs / interval`` polls per second.

1. The worker starts; its idle RSS is sampled (the baseline).
2. ``jobs`` requests are published (one confirmed ``Publisher``, a few threads); the
   worker submits them all (the ledger's in-flight index reaches ``jobs``).
3. One interval later every job is being polled; the worker then runs ``hold_intervals``
   intervals more (the measured hold); its metrics endpoint is scraped before and after.

Figures: the peak RSS of the process holding the jobs (the tree's largest; the tree's sum
is reported too), sampled from ``/proc`` every 0.5 s through the run, against its idle RSS;
poll lateness p50/p99 from ``segmind_poll_lateness_seconds`` over the hold (PromQL's
``histogram_quantile`` of the difference of the two scrapes), ``n/a`` while the worker does
not export it; the polls the simulator served in the hold against those scheduled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    Process,
    RssSampler,
    Stack,
    histogram,
    histogram_delta,
    log,
    publish_all,
    quantile,
    scaled_env,
    simulator,
)
from bench.report import Row, ScenarioResult
from producers.catalog import default_catalog
from simulator.testing import wait_until

NAME = "capacity"
WORKFLOW = "sketch-maker"
LATENESS = "segmind_poll_lateness_seconds"
TARGET_RSS_MB = 300.0
TARGET_P99_S = 2.0
_IDLE_SAMPLES = 6


@dataclass(frozen=True)
class Size:
    jobs: int
    interval_s: float
    hold_intervals: float
    threads: int = 8
    publish_threads: int = 4


FULL = Size(jobs=10_000, interval_s=60.0, hold_intervals=1.0)
QUICK = Size(jobs=1_000, interval_s=10.0, hold_intervals=2.0)


def _hold(worker: Process, seconds: float) -> None:
    """Let ``seconds`` pass, checking that the worker stays alive."""
    end = time.monotonic() + seconds

    def over() -> bool:
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
        return time.monotonic() >= end

    wait_until(over, timeout_s=seconds + 5, interval_s=0.5, message="the hold")


def _mb(kb: float) -> float:
    return kb / 1024


def run(quick: bool, log_dir: Path) -> ScenarioResult:
    size = QUICK if quick else FULL
    rate = size.jobs / size.interval_s
    result = ScenarioResult(
        name=NAME,
        title=(
            f"{size.jobs:,} {WORKFLOW} jobs in flight in one worker process (--processes 1 "
            f"--threads {size.threads}), a poll of each every {size.interval_s:g} s "
            f"({rate:.0f} polls/s)"
        ),
        baseline="the same worker process, idle, before the jobs are published",
        variant=f"with {size.jobs:,} jobs in flight",
    )
    inputs = default_catalog().resolve(WORKFLOW).default_inputs()
    env = scaled_env(1.0) | {
        "SEGMIND_ADAPTIVE_POLLING": "false",
        "SEGMIND_MIN_POLL_INTERVAL_S": f"{size.interval_s:g}",
        "SEGMIND_RATE_LIMITER_ENABLED": "false",
        "SEGMIND_JOB_DEADLINE_S": "3600",
        "dramatiq_delay_queue_prefetch": str(min(size.jobs + 1000, 65535)),
    }
    figures: dict[str, Any] = {"jobs": size.jobs, "interval_s": size.interval_s}
    with simulator(time_scale=1.0, rpm=0) as sim, Stack(NAME, sim, log_dir) as stack:
        sim.add_faults({"job": "never_finish"})
        worker = stack.start_worker(env, processes=1, threads=size.threads)
        with RssSampler(worker.pid) as rss:
            wait_until(
                lambda: rss.samples >= _IDLE_SAMPLES,
                timeout_s=30,
                message="idle RSS samples",
            )
            idle = dict(rss.latest)
            idle_total = sum(idle.values())
            scrape0 = worker.metrics()
            began = time.monotonic()
            with stack.collector() as results:
                requests = [
                    {"workflow": WORKFLOW, "inputs": inputs, "reply_to": results.queue}
                    for _ in range(size.jobs)
                ]
                publish_all(stack, requests, threads=size.publish_threads)
                published_s = time.monotonic() - began
                log(f"capacity: {size.jobs} requests published in {published_s:.1f} s")

                def all_in_flight() -> bool:
                    if not worker.alive():
                        raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
                    return stack.in_flight() >= size.jobs

                wait_until(
                    all_in_flight,
                    timeout_s=size.jobs / 10 + 120,
                    interval_s=0.5,
                    message="every job in flight",
                )
                submitted_s = time.monotonic() - began
                log(f"capacity: {size.jobs} jobs in flight after {submitted_s:.1f} s")
                # One interval for every job's polls to start, then the measured hold.
                _hold(worker, size.interval_s)
                scrape1 = worker.metrics()
                polls1 = sim.stats()["polls"]
                hold_s = size.interval_s * size.hold_intervals
                _hold(worker, hold_s)
                scrape2 = worker.metrics()
                stats = sim.stats()
                in_flight_end = stack.in_flight()
                unexpected = results.count()
            peak = dict(rss.peak_kb)
            peak_total = rss.peak_total_kb
    holder = max(peak, key=lambda pid: peak[pid])
    hold_polls = stats["polls"] - polls1
    lateness_hold = histogram_delta(histogram(scrape1, LATENESS), histogram(scrape2, LATENESS))
    lateness_all = histogram_delta(histogram(scrape0, LATENESS), histogram(scrape2, LATENESS))
    p50 = quantile(0.5, lateness_hold)
    p99 = quantile(0.99, lateness_hold)
    figures |= {
        "publish_s": round(published_s, 1),
        "all_in_flight_after_s": round(submitted_s, 1),
        "in_flight_at_end": in_flight_end,
        "results_received": unexpected,
        "hold_s": hold_s,
        "polls_in_hold": hold_polls,
        "polls_per_s_in_hold": hold_polls / hold_s,
        "polls_per_s_scheduled": rate,
        "holder_pid": holder,
        "holder_idle_mb": _mb(idle.get(holder, 0)),
        "holder_peak_mb": _mb(peak[holder]),
        "tree_idle_mb": _mb(idle_total),
        "tree_peak_mb": _mb(peak_total),
        "peak_mb_by_pid": {pid: round(_mb(kb), 1) for pid, kb in peak.items()},
        "lateness_exported": lateness_all is not None,
        "lateness_hold_p50_s": p50,
        "lateness_hold_p99_s": p99,
        "lateness_run_p50_s": quantile(0.5, lateness_all),
        "lateness_run_p99_s": quantile(0.99, lateness_all),
    }
    result.figures = figures
    holder_peak = figures["holder_peak_mb"]
    result.rows = [
        Row(
            f"RSS of the process holding the jobs ({size.jobs:,} jobs)",
            figures["holder_idle_mb"],
            holder_peak,
            unit="MB",
            target=f"< {TARGET_RSS_MB:g} MB",
            passed=holder_peak < TARGET_RSS_MB and in_flight_end >= size.jobs,
        ),
        Row(
            "RSS of the worker's process tree (sum)",
            figures["tree_idle_mb"],
            figures["tree_peak_mb"],
            unit="MB",
        ),
        Row("poll lateness p50 (all jobs in flight)", None, p50, unit="s", no_baseline=True),
        Row(
            "poll lateness p99 (all jobs in flight)",
            None,
            p99,
            unit="s",
            target=f"< {TARGET_P99_S:g} s",
            passed=None if p99 is None else p99 < TARGET_P99_S,
            no_baseline=True,
        ),
        Row(
            "polls served per second",
            None,
            figures["polls_per_s_in_hold"],
            unit="/s",
            note=f"scheduled {rate:.0f}/s",
            no_baseline=True,
        ),
    ]
    if lateness_all is None:
        result.notes.append(f"{LATENESS} is not exported by the worker: lateness n/a")
    elif p99 is None:
        result.notes.append(f"{LATENESS} is exported but observed nothing: lateness n/a")
    result.notes.append(
        f"publishing took {published_s:.0f} s; all {size.jobs:,} jobs were in flight after "
        f"{submitted_s:.0f} s; then held {hold_s:.0f} s with {in_flight_end:,} in flight; "
        f"peak RSS by pid (MB): {figures['peak_mb_by_pid']}"
    )
    return result
