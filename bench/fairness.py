"""Scenario fairness (issue 15): a small tenant's queue wait behind another tenant's flood.

One ``segmind-queue worker`` works at an account's ``RPM`` calls per simulated minute
(``SEGMIND_RATE_LIMIT_PER_MINUTE = RPM / scale``; the simulator itself is unlimited), so
every submit waits for the fleet's rate. Tenant A publishes ``flood`` requests; once the
worker has read every one of them (each has its ledger record), tenant B publishes
``NEWCOMERS``. The run stops when B's results are in; the rest of A's flood is dropped
(purged, the worker stopped, its queues deleted).

- baseline: ``FAIR_ADMISSION=false``: whoever asks the bucket first when a token is there
  gets it (every waiting request asks again at about the next token, spread at random);
- variant: ``FAIR_ADMISSION=true``: the waiting tenants take the tokens in turn.

Figures, in simulated seconds (real seconds / scale):

- B's queue wait, median and worst: each B result's ``timings.queue_wait_s`` (publication
  to Segmind's acceptance, as the worker reports it) / scale;
- B's median wait in submits: that median over the time between two submits while B
  waited (every job accepted from B's publication to B's last acceptance);
- A's POSTs before B's last: the simulator's jobs (``/_sim/jobs``) of A's requests
  (``client_request_id``) accepted before B's last one; also those accepted after B
  published, the ones that really went ahead of B.

The simulator's jobs are done at their first poll (its own time scale is ``SIM_SCALE``),
so every job costs a submit and one poll in both runs.

B publishes only once the worker holds A's flood: time-scaled, the seconds the worker
takes to read 1,000 messages would count 1 / scale times over, and B would wait for
RabbitMQ's order, which admission cannot change, not for the line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.harness import (
    REDIS_URL,
    Stack,
    log,
    median,
    publish_all,
    scaled_env,
    simulator,
)
from bench.report import Row, ScenarioResult
from producers.catalog import default_catalog
from simulator.testing import RunningSimulator, wait_until
from worker.ratelimit.fairness import go_window

NAME = "fairness"
WORKFLOW = "sketch-maker"
FLOODER = "tenant-a"
NEWCOMER = "tenant-b"
#: B's requests.
NEWCOMERS = 10
#: The account's calls per simulated minute (a Segmind account's 50).
RPM = 50
#: B's median queue wait with fair admission, as a share of the baseline's.
TARGET_SHARE = 0.10
#: The simulator's own time scale: a job is done at its first poll, so that every job
#: costs two calls (a submit and a poll) in both runs, whatever the workers' poll
#: schedules have learned (their duration history is read once per 30 real seconds).
SIM_SCALE = 0.0001
#: How long the worker may take to read a batch of requests (real seconds).
_READ_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Size:
    flood: int
    scale: float
    processes: int = 1
    threads: int = 8


FULL = Size(flood=1000, scale=0.1)
# B's median with strict turns is about 10 submits (its k-th goes at about the (2k-1)-th),
# whatever the flood; behind the flood taken in no particular order, about half the
# backlog. A flood of 200 would put even perfect turns at the 10 % target: 400 keeps it
# under half of it.
QUICK = Size(flood=400, scale=0.1)


def _ledger_keys(stack: Stack, ids: Sequence[str]) -> list[str]:
    return [f"{stack.name}:ledger:{request_id}" for request_id in ids]


def _wait_read(client: redis.Redis, keys: list[str], what: str) -> float:
    """Wait until every key exists (the worker has read those requests); the real
    seconds it took."""
    began = time.time()

    def present() -> bool:
        found = 0
        for start in range(0, len(keys), 500):
            found += int(client.exists(*keys[start : start + 500]))
        return found >= len(keys)

    wait_until(present, timeout_s=_READ_TIMEOUT_S, interval_s=0.01, message=what)
    return time.time() - began


def _measure(sim: RunningSimulator, size: Size, fair: bool, log_dir: Path) -> dict[str, Any]:
    mode = "variant" if fair else "baseline"
    inputs = default_catalog().resolve(WORKFLOW).default_inputs()
    sim.reset()
    with redis.Redis.from_url(REDIS_URL) as client, Stack(NAME, sim, log_dir) as stack:
        env = scaled_env(size.scale) | {
            "SEGMIND_RATE_LIMIT_PER_MINUTE": f"{RPM / size.scale:g}",
            "FAIR_ADMISSION": str(fair).lower(),
        }
        stack.start_worker(env, processes=size.processes, threads=size.threads)
        with stack.collector() as results:

            def request(tenant: str) -> dict[str, Any]:
                return {
                    "workflow": WORKFLOW,
                    "inputs": inputs,
                    "reply_to": results.queue,
                    "tenant": tenant,
                }

            flood_at = time.time()
            flood = publish_all(stack, [request(FLOODER) for _ in range(size.flood)], threads=4)
            flood_read_s = _wait_read(
                client, _ledger_keys(stack, flood), f"the worker to read {FLOODER}'s flood"
            )
            # Messages ready in the requests queue: what B's requests are behind.
            ready = stack.queue_counts(stack.requests_queue)[0]
            newcomer_at = time.time()
            newcomers = publish_all(stack, [request(NEWCOMER) for _ in range(NEWCOMERS)])
            newcomer_read_s = _wait_read(
                client, _ledger_keys(stack, newcomers), f"the worker to read {NEWCOMER}'s"
            )
            log(
                f"fairness {mode}: {size.flood} of {FLOODER} read in {flood_read_s:.1f} s; "
                f"{NEWCOMERS} of {NEWCOMER} published and read in {newcomer_read_s:.2f} s"
            )
            # Behind the whole flood (the baseline's worst case), B waits for the flood's
            # submits and their polls (2 calls a job; 3 for a margin) at the rate.
            timeout_s = size.flood * 3 * 60 / RPM * size.scale * 2 + 120
            try:
                results.wait(set(newcomers), timeout_s=timeout_s, what=f"{NEWCOMER}'s results")
            except TimeoutError as exc:
                log(f"fairness {mode}: {exc}")
            ended_at = time.time()
            purged = stack.purge(stack.requests_queue)
            jobs = sim.jobs()
            stats = sim.stats()
            arrivals = results.snapshot()
    accepted = {job["client_request_id"]: float(job["submitted_at"]) for job in jobs}
    waits = []
    for request_id in newcomers:
        arrival = arrivals.get(request_id)
        if arrival is None or arrival.result is None:
            continue
        wait = arrival.result.timings.queue_wait_s
        if wait is not None:
            waits.append(wait / size.scale)
    newcomer_posts = [accepted[i] for i in newcomers if i in accepted]
    last_b = max(newcomer_posts) if len(newcomer_posts) == NEWCOMERS else None
    flood_posts = sorted(accepted[i] for i in flood if i in accepted)
    before_last = None if last_b is None else sum(1 for at in flood_posts if at < last_b)
    before_newcomer = sum(1 for at in flood_posts if at < newcomer_at)
    between = None if before_last is None else before_last - before_newcomer
    # The submits' pace while B waited: all accepted jobs between B's publication and
    # B's last acceptance (simulated seconds per submit).
    pace = None
    if last_b is not None:
        span = [at for at in accepted.values() if newcomer_at <= at <= last_b]
        if len(span) > 1:
            pace = (last_b - newcomer_at) / len(span) / size.scale
    statuses: dict[str, int] = {}
    for arrival in arrivals.values():
        statuses[arrival.status] = statuses.get(arrival.status, 0) + 1
    polls = [
        arrival.result.polls
        for arrival in arrivals.values()
        if arrival.result is not None and arrival.status == "COMPLETED"
    ]
    middle = median(waits)
    turns = None if pace is None or middle is None else middle / pace
    return {
        "flood": size.flood,
        "newcomer_results": len(waits),
        "newcomer_wait_s": sorted(round(w, 1) for w in waits),
        "newcomer_wait_median_s": middle,
        "newcomer_wait_max_s": max(waits) if waits else None,
        "flood_posted_before_newcomer_last": before_last,
        "flood_posted_before_newcomer_published": before_newcomer,
        "flood_posted_after_newcomer_published": between,
        "submit_pace_s": pace,
        "newcomer_wait_median_turns": turns,
        "flood_left_at_newcomer_last": (None if before_last is None else size.flood - before_last),
        "flood_read_s": round(flood_read_s, 2),
        "newcomer_read_s": round(newcomer_read_s, 3),
        "ready_at_newcomer": ready,
        "run_s": round(ended_at - flood_at, 1),
        "purged_requests": purged,
        "calls": int(stats.get("submits", 0)) + int(stats.get("polls", 0)),
        "polls_per_job_median": median(polls),
        "results": statuses,
    }


def run(quick: bool, log_dir: Path) -> ScenarioResult:
    size = QUICK if quick else FULL
    result = ScenarioResult(
        name=NAME,
        title=(
            f"{WORKFLOW}: tenant A floods {size.flood} requests, then tenant B publishes "
            f"{NEWCOMERS}; the fleet's rate {RPM} calls per simulated minute (simulator "
            f"unlimited), one worker (--processes {size.processes} --threads "
            f"{size.threads}), time scale {size.scale:g} (a go window of "
            f"{go_window(RPM / size.scale)} requests); figures in simulated seconds"
        ),
        baseline="FAIR_ADMISSION=false (whoever asks first when a token is there)",
        variant="FAIR_ADMISSION=true (tenants take turns)",
    )
    with simulator(time_scale=SIM_SCALE, rpm=0, retention_s=3600 / SIM_SCALE) as sim:
        baseline = _measure(sim, size, False, log_dir)
        variant = _measure(sim, size, True, log_dir)
    result.figures = {"baseline": baseline, "variant": variant}
    median_b, median_v = baseline["newcomer_wait_median_s"], variant["newcomer_wait_median_s"]
    complete = all(f["newcomer_results"] == NEWCOMERS for f in (baseline, variant))
    passed = None
    if complete and median_b is not None and median_v is not None:
        passed = median_v <= TARGET_SHARE * median_b
    result.rows = [
        Row(
            "B's queue wait, median",
            median_b,
            median_v,
            unit="s",
            target=f"≤ {TARGET_SHARE:.0%} of baseline",
            passed=passed,
        ),
        Row(
            "B's queue wait, worst",
            baseline["newcomer_wait_max_s"],
            variant["newcomer_wait_max_s"],
            unit="s",
        ),
        Row(
            "B's median wait in submits (strict turns: ~10)",
            baseline["newcomer_wait_median_turns"],
            variant["newcomer_wait_median_turns"],
        ),
        Row(
            "A's POSTs before B's last",
            baseline["flood_posted_before_newcomer_last"],
            variant["flood_posted_before_newcomer_last"],
        ),
        Row(
            "  of them after B published",
            baseline["flood_posted_after_newcomer_published"],
            variant["flood_posted_after_newcomer_published"],
        ),
    ]
    for mode, figures in (("baseline", baseline), ("variant", variant)):
        pace = figures["submit_pace_s"]
        result.notes.append(
            f"{mode}: B's waits {figures['newcomer_wait_s']} s; A's flood read in "
            f"{figures['flood_read_s']} s (real), B's 10 in {figures['newcomer_read_s']} s (behind "
            f"{figures['ready_at_newcomer']} ready messages); "
            f"{figures['flood_posted_before_newcomer_published']} of A's POSTed before B "
            f"published; a submit every "
            f"{'n/a' if pace is None else f'{pace:.2f}'} s while B waited; "
            f"{figures['calls']} calls, median polls per job {figures['polls_per_job_median']}; "
            f"{figures['flood_left_at_newcomer_last']} of A's not yet POSTed then "
            f"(stopped after {figures['run_s']} s); "
            f"results {figures['results']}"
        )
        if figures["newcomer_results"] < NEWCOMERS:
            result.notes.append(
                f"{mode}: only {figures['newcomer_results']} of B's {NEWCOMERS} results "
                "arrived in time: no verdict"
            )
    result.notes.append(
        "queue wait = the result's timings.queue_wait_s (publication to Segmind's "
        "acceptance) / time scale"
    )
    return result
