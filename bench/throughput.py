"""Scenario 4, throughput: instant jobs per second end to end, against a no-op Dramatiq
actor's message rate on the same broker with the same processes and threads.

- variant (the pipeline): ``jobs`` requests for ``sketch-maker`` are published to the
  requests queue, then ``segmind-queue worker`` starts. The simulator's time scale is tiny
  (a job is done at its first poll), ``SEGMIND_MIN_POLL_INTERVAL_S`` 0.01, the rate limiter
  on with ``SEGMIND_RATE_LIMIT_PER_MINUTE`` 1e5, no simulator limit. Each job is a submit
  message, a POST, a delayed poll message, a GET and a confirmed result. Rate = jobs / (last
  result's arrival - the moment the requests queue first shrank).
- baseline: ``messages`` messages for ``bench.noop``'s actor (more than ``jobs``: the no-op
  is fast, and a longer run is timed more precisely), published first, then
  ``dramatiq bench.noop`` with the same ``--processes``/``--threads``. Rate = the messages
  left when every process consumes / the time from then until the queue reads empty; at
  that moment at most the prefetched messages (2 x threads per process) are still in the
  workers.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import noop
from bench.harness import (
    AMQP_URL,
    WORKER_TIMEOUT_MS,
    Stack,
    base_env,
    log,
    publish_all,
    publish_envelopes,
    scaled_env,
    simulator,
)
from bench.report import Row, ScenarioResult
from producers.catalog import default_catalog
from simulator.testing import wait_until

NAME = "throughput"
WORKFLOW = "sketch-maker"
TARGET_SHARE = 0.15
SCALE = 0.0001
#: How often the queue's depth is read while timing.
_PROBE_S = 0.005


@dataclass(frozen=True)
class Size:
    jobs: int
    #: No-op messages: more than jobs, so that its short run is timed precisely.
    messages: int
    processes: int = 2
    threads: int = 8


FULL = Size(jobs=3000, messages=20000)
QUICK = Size(jobs=600, messages=8000)


def _first_shrink(stack: Stack, queue: str, total: int, timeout_s: float) -> float:
    """When ``queue`` first holds fewer than ``total`` ready messages (epoch seconds)."""
    wait_until(
        lambda: stack.queue_counts(queue)[0] < total,
        timeout_s=timeout_s,
        interval_s=_PROBE_S,
        message=f"consumption of {queue} to start",
    )
    return time.time()


def _pipeline(stack: Stack, size: Size) -> dict[str, Any]:
    inputs = default_catalog().resolve(WORKFLOW).default_inputs()
    env = scaled_env(SCALE) | {
        "SEGMIND_MIN_POLL_INTERVAL_S": "0.01",
        "SEGMIND_RETRY_BASE_S": "0.05",
        "SEGMIND_RETRY_CAP_S": "1",
        "SEGMIND_MAX_RATE_LIMIT_WAIT_S": "1",
        "SEGMIND_JOB_DEADLINE_S": "600",
        "SEGMIND_CREDITS_INTERVAL_S": "60",
        "SEGMIND_RATE_LIMITER_ENABLED": "true",
        "SEGMIND_RATE_LIMIT_PER_MINUTE": "100000",
        "METRICS_REFRESH_S": "15",
    }
    with stack.collector() as results:
        requests = [
            {"workflow": WORKFLOW, "inputs": inputs, "reply_to": results.queue}
            for _ in range(size.jobs)
        ]
        began = time.monotonic()
        ids = publish_all(stack, requests, threads=4)
        took = time.monotonic() - began
        log(f"throughput pipeline: {size.jobs} requests published in {took:.1f} s")
        worker = stack.start_worker(env, processes=size.processes, threads=size.threads, wait=False)
        start = _first_shrink(stack, stack.requests_queue, size.jobs, 90)
        arrivals = results.wait(set(ids), timeout_s=size.jobs / 5 + 60, what="results")
        end = max(arrival.at for arrival in arrivals.values())
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
    statuses: dict[str, int] = {}
    for arrival in arrivals.values():
        statuses[arrival.status] = statuses.get(arrival.status, 0) + 1
    return {"seconds": end - start, "rate": size.jobs / (end - start), "results": statuses}


def _noop(stack: Stack, size: Size) -> dict[str, Any]:
    queue = f"{stack.name}.noop"
    stack.extra_queues.append(queue)
    began = time.monotonic()
    total = size.messages
    publish_envelopes(queue, [noop.envelope(queue) for _ in range(total)], threads=4)
    log(f"throughput no-op: {total} messages published in {time.monotonic() - began:.1f} s")
    env = base_env() | {
        noop.QUEUE_ENV: queue,
        "AMQP_URL": AMQP_URL,
        "dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS),
    }
    process = stack.spawn(
        "noop",
        [
            str(Path(sys.executable).with_name("dramatiq")),
            "bench.noop",
            "--processes",
            str(size.processes),
            "--threads",
            str(size.threads),
        ],
        env,
    )
    # Timed from the moment every process consumes: the first one starts alone, and the
    # no-op's run is short enough for that to matter.
    counts: list[int] = []

    def all_consuming() -> bool:
        if not process.alive():
            raise RuntimeError(f"the no-op workers exited:\n{process.log_tail()}")
        ready, consumers = stack.queue_counts(queue)
        counts[:] = [ready]
        return consumers >= size.processes

    wait_until(all_consuming, timeout_s=90, interval_s=_PROBE_S, message="the no-op workers")
    start, remaining = time.time(), counts[0]

    def drained() -> bool:
        if not process.alive():
            raise RuntimeError(f"the no-op workers exited:\n{process.log_tail()}")
        return stack.queue_counts(queue)[0] == 0

    wait_until(drained, timeout_s=total / 20 + 60, interval_s=_PROBE_S, message="drain")
    end = time.time()
    process.stop()
    return {
        "messages": total,
        "timed_messages": remaining,
        "seconds": end - start,
        "rate": remaining / (end - start),
    }


def run(quick: bool, log_dir: Path) -> ScenarioResult:
    size = QUICK if quick else FULL
    result = ScenarioResult(
        name=NAME,
        title=(
            f"{size.jobs} instant {WORKFLOW} jobs end to end, --processes {size.processes} "
            f"--threads {size.threads}"
        ),
        baseline=(f"a no-op Dramatiq actor, {size.messages} messages, same processes and threads"),
        variant="the pipeline (submit, delayed poll, result), rate limiter on",
    )
    # Retention is time-scaled too: keep results an hour of real time, not 0.36 s, so that a
    # poll that waited behind the queue still finds its job.
    with (
        simulator(time_scale=SCALE, rpm=0, retention_s=3600 / SCALE) as sim,
        Stack(NAME, sim, log_dir) as stack,
    ):
        baseline = _noop(stack, size)
        log(f"throughput no-op: {baseline['rate']:.0f} messages/s")
        variant = _pipeline(stack, size)
        log(f"throughput pipeline: {variant['rate']:.1f} jobs/s")
    share = variant["rate"] / baseline["rate"]
    result.figures = {"baseline": baseline, "variant": variant, "share": share}
    result.rows = [
        Row(
            "jobs (variant) or messages (baseline) per second",
            baseline["rate"],
            variant["rate"],
            unit="/s",
            target=f"ratio ≥ {TARGET_SHARE:.0%}",
            passed=share >= TARGET_SHARE,
        )
    ]
    if set(variant["results"]) != {"COMPLETED"}:
        result.notes.append(f"pipeline results: {variant['results']}")
    result.notes.append(
        "the simulator runs in the benchmark's process and shares the 2 cores with the workers"
    )
    return result
