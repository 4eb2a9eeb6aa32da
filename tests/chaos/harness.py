"""One chaos run: publish a batch of requests, do harm while they run, count what came back.

``run_chaos`` publishes ``jobs`` requests (a thread of their own, so publishing overlaps
the harm), waits for their results on a private reply queue with the project's
``ResultConsumer``, and calls ``harm(progress)`` from another thread so it can kill
workers or restart a service at chosen points of the run. Once every result is in (or
the deadline passes), the workers are stopped and whatever is left on the reply queue is
read: with no worker left, every message still there is a duplicate.

The figures of each run (``RunFigures``) are kept in ``RECORDED`` until the test ends; the
suite's ``chaos_figures`` fixture then has them printed in the terminal summary.
``check_guarantees`` asserts the delivery guarantees on them.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from producers.consumer import ResultConsumer, ResultTimeout
from producers.contract import ErrorCode, Result, Status
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import take_all
from tests.e2e.conftest import Stack

#: The seed workflows a run cycles through (their default inputs).
WORKFLOWS: Final = (
    "sketch-maker",
    "stock-video",
    "product-shot",
    "scene-script",
    "character-video",
)
#: Submit answers that provably created no job (Segmind's 429, and 5xx that mean the
#: request was not acted on; see ``worker.segmind.errors``): a POST after one is not a second
#: charge.
NOT_PROCESSED_SUBMIT_CODES: Final = frozenset({"429", "500", "501", "502", "503"})
#: Which requests of every ten ``make_requests`` makes hostile.
HOSTILE_INPUT: Final = 4
HOSTILE_WORKFLOW: Final = 9
#: How many connection attempts the run's consumer makes before giving up: enough to ride
#: out a broker restart.
CONSUMER_ATTEMPTS: Final = 30


#: Segmind keeps a job's record about an hour; a chaos run keeps it this many real seconds.
RETENTION_REAL_S: Final = 600.0


def prepare_simulator(sim: RunningSimulator, **overrides: Any) -> None:
    """Reset the simulator for a chaos run: credits enough for any run size (a 406 for
    every job past the balance is not what the run is about), and Segmind's record
    retention kept in real time. Jobs run 500 times faster than Segmind's, but a broker
    restart takes real seconds: scaled, the ~1 h retention would be 7 s, and a job would
    expire while the broker restarts, which no real restart can cause.

    Args:
        sim: the simulator.
        overrides: more config fields for this run (``cost_headers=True``, ...).
    """
    retention_s = RETENTION_REAL_S / sim.config.time_scale
    sim.reset(credits=1_000_000.0, retention_s=retention_s, **overrides)


@dataclass
class Progress:
    """How far a run has got; the harm thread waits on it."""

    total: int
    received: int = 0
    published: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    #: Set when the run is over (results in or deadline passed): harm must stop.
    over: threading.Event = field(default_factory=threading.Event)

    def add_result(self) -> None:
        with self.changed:
            self.received += 1
            self.changed.notify_all()

    def add_published(self) -> None:
        with self.changed:
            self.published += 1
            self.changed.notify_all()

    def wait_fraction(self, fraction: float, *, timeout_s: float) -> bool:
        """Wait until ``fraction`` of the results are in; False if the run ended first or
        ``timeout_s`` passed."""
        goal = max(1, round(self.total * fraction))
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while self.received < goal and not self.over.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.2))
            return self.received >= goal


@dataclass
class RunFigures:
    """What one chaos run sent, got back and paid for."""

    name: str
    jobs_sent: int
    results_received: int
    duplicates_delivered: int
    max_posts_per_request: int
    max_jobs_per_request: int
    lost: int
    wall_s: float
    statuses: dict[str, int]
    #: Requests POSTed more than once, and the submit answers that created no job.
    reposted_requests: int = 0
    not_processed_submit_answers: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    #: The run's request ids, in the order they were published.
    request_ids: list[str] = field(default_factory=list, repr=False)
    #: The ids of the requests answered REJECTED.
    rejected_ids: set[str] = field(default_factory=set, repr=False)

    def lines(self) -> list[str]:
        """The figures as lines for the terminal summary."""
        statuses = ", ".join(f"{name} {count}" for name, count in sorted(self.statuses.items()))
        lines = [
            f"{self.name}: {self.wall_s:.1f} s",
            f"  jobs sent {self.jobs_sent}, terminal results received {self.results_received}, "
            f"lost {self.lost}, duplicates delivered {self.duplicates_delivered}",
            f"  POSTs per request (max) {self.max_posts_per_request}, "
            f"jobs created (paid) per request (max) {self.max_jobs_per_request}, "
            f"requests POSTed more than once {self.reposted_requests} "
            f"(submit answers that created no job: {self.not_processed_submit_answers})",
            f"  results: {statuses}",
        ]
        if self.notes:
            lines.append("  " + ", ".join(f"{key} {value}" for key, value in self.notes.items()))
        return lines


#: The figures of the current test's runs, in order.
RECORDED: list[RunFigures] = []


def make_requests(
    prefix: str, jobs: int, reply_to: str, *, workflows: Iterable[str] = WORKFLOWS
) -> list[dict[str, Any]]:
    """``jobs`` requests cycling through ``workflows``, each with a unique request_id.

    One in ten names a workflow that does not exist and one in ten an input its workflow
    does not have: hostile input, which must be answered REJECTED without a Segmind call
    whatever else happens to the run.
    """
    names = list(workflows)
    run = secrets.token_hex(3)
    requests: list[dict[str, Any]] = []
    for index in range(jobs):
        request: dict[str, Any] = {
            "request_id": f"{prefix}-{run}-{index:05d}",
            "workflow": names[index % len(names)],
            "reply_to": reply_to,
            "metadata": {"index": index},
        }
        if index % 10 == HOSTILE_WORKFLOW:
            request["workflow"] = "no-such-workflow"
        elif index % 10 == HOSTILE_INPUT:
            request["inputs"] = {"no_such_input": "x"}
        requests.append(request)
    return requests


def drain(amqp_url: str, queue: str) -> list[Result]:
    """Every result left on ``queue``, taken off it."""
    return [Result.model_validate_json(body) for body in take_all(amqp_url, queue)]


Harm = Callable[[Progress], None]


def run_chaos(
    name: str,
    stack: Stack,
    sim: RunningSimulator,
    *,
    jobs: int,
    harm: Harm | None,
    timeout_s: float,
    second_half_after: threading.Event | None = None,
    request_factory: Callable[[str], list[dict[str, Any]]] | None = None,
) -> tuple[RunFigures, dict[str, Result], dict[str, Any]]:
    """Run ``jobs`` requests through ``stack``'s running workers while ``harm`` runs.

    Args:
        name: the run's name in the figures.
        stack: a stack whose workers are started.
        sim: the simulator the workers call (its counters are read at the end).
        jobs: how many requests.
        harm: called in a thread with the run's ``Progress``; exceptions it raises fail
            the run.
        timeout_s: the longest wait for every result.
        second_half_after: when given, the second half of the requests is published only
            once it is set (so that publishing overlaps what ``harm`` does then).
        request_factory: builds the requests for a reply queue (default ``make_requests``).

    Returns:
        The figures (also added to ``RECORDED``), the first result of each request, and
        the simulator's counters.
    """
    began = time.monotonic()
    with ResultConsumer.private(
        stack.amqp_url,
        prefix=f"{stack.name}.results",
        attempts=CONSUMER_ATTEMPTS,
        # On a cluster, a classic reply queue would die with its node.
        queue_type=stack.topology.queue_type,
    ) as consumer:
        requests = (
            request_factory(consumer.queue)
            if request_factory is not None
            else make_requests(re.sub(r"[^a-z0-9]+", "-", name.lower()), jobs, consumer.queue)
        )
        ids = [request["request_id"] for request in requests]
        progress = Progress(total=len(ids))
        failures: list[BaseException] = []

        def produce() -> None:
            try:
                with stack.publisher() as publisher:
                    half = len(requests) // 2 if second_half_after is not None else len(requests)
                    for index, request in enumerate(requests):
                        if index == half and second_half_after is not None:
                            second_half_after.wait(timeout_s)
                        publisher.publish(request)
                        progress.add_published()
            except BaseException as exc:
                failures.append(exc)

        def do_harm() -> None:
            try:
                if harm is not None:
                    harm(progress)
            except BaseException as exc:
                failures.append(exc)

        threads = [
            threading.Thread(target=produce, name="chaos-producer", daemon=True),
            threading.Thread(target=do_harm, name="chaos-harm", daemon=True),
        ]
        for thread in threads:
            thread.start()
        received: dict[str, Result] = {}
        try:
            received = consumer.wait(
                ids, timeout_s=timeout_s, on_result=lambda _result: progress.add_result()
            )
        except ResultTimeout as timeout:
            received = timeout.received
        finally:
            progress.over.set()
            for thread in threads:
                thread.join(timeout_s)
        for worker in stack.workers:
            worker.stop()
        leftover = drain(stack.amqp_url, consumer.queue)
        consumer.delete_queue(if_empty=False)
        duplicates = consumer.duplicates
        # Duplicates the consumer dropped are not kept; those left on the queue are compared.
        mismatched = [
            result.request_id
            for result in leftover
            if result.request_id in received and result.status != received[result.request_id].status
        ]
        for result in leftover:
            if result.request_id in received:
                duplicates += 1
            else:
                received[result.request_id] = result  # arrived after the deadline
    if failures:
        raise failures[0]
    stats = sim.stats()
    figures = figures_of(
        name,
        ids,
        received,
        duplicates,
        stats,
        wall_s=time.monotonic() - began,
    )
    unknown = [
        request_id
        for request_id, result in received.items()
        if result.error is not None and result.error.code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
    ]
    if unknown:
        # What the results could not say: how many of those POSTs created (paid) a job.
        paid = stats["jobs_by_client_request_id"]
        figures.notes["outcome unknown with a job created"] = sum(
            1 for request_id in unknown if paid.get(request_id, 0)
        )
    if mismatched:
        figures.notes["duplicates that differ"] = len(mismatched)
    RECORDED.append(figures)
    return figures, received, stats


def figures_of(
    name: str,
    ids: list[str],
    received: dict[str, Result],
    duplicates: int,
    stats: dict[str, Any],
    *,
    wall_s: float,
) -> RunFigures:
    """The figures of a run from its results and the simulator's counters."""
    posts: dict[str, int] = stats["submits_by_client_request_id"]
    paid: dict[str, int] = stats["jobs_by_client_request_id"]
    mine = set(ids)
    submit_answers: dict[str, int] = stats["responses"].get("submit", {})
    statuses = Counter(
        f"{result.status}" + (f"/{result.error.code}" if result.error else "")
        for request_id, result in received.items()
        if request_id in mine
    )
    return RunFigures(
        name=name,
        jobs_sent=len(ids),
        results_received=sum(1 for request_id in ids if request_id in received),
        duplicates_delivered=duplicates,
        max_posts_per_request=max((posts.get(i, 0) for i in ids), default=0),
        max_jobs_per_request=max((paid.get(i, 0) for i in ids), default=0),
        lost=sum(1 for request_id in ids if request_id not in received),
        wall_s=wall_s,
        statuses=dict(statuses),
        reposted_requests=sum(1 for i in ids if posts.get(i, 0) > 1),
        not_processed_submit_answers=sum(
            count for code, count in submit_answers.items() if code in NOT_PROCESSED_SUBMIT_CODES
        ),
        request_ids=list(ids),
        rejected_ids={i for i, result in received.items() if result.status is Status.REJECTED},
    )


def check_guarantees(figures: RunFigures, stats: dict[str, Any]) -> None:
    """Assert the delivery guarantees: nothing lost, nothing paid twice, and every extra
    POST explained by a submit answer that provably created no job."""
    ids = figures.request_ids
    posts: dict[str, int] = stats["submits_by_client_request_id"]
    paid: dict[str, int] = stats["jobs_by_client_request_id"]
    assert figures.lost == 0, f"{figures.name}: {figures.lost} requests got no result"
    assert figures.results_received == figures.jobs_sent
    twice = {i: paid[i] for i in ids if paid.get(i, 0) > 1}
    assert not twice, f"{figures.name}: paid more than once: {twice}"
    extra_posts = sum(max(0, posts.get(i, 0) - 1) for i in ids)
    assert extra_posts <= figures.not_processed_submit_answers, (
        f"{figures.name}: {extra_posts} POSTs beyond the first, but only "
        f"{figures.not_processed_submit_answers} submit answers that created no job"
    )
    assert "duplicates that differ" not in figures.notes, "a duplicate result differs"
    rejected_posted = [i for i in figures.rejected_ids if posts.get(i)]
    assert not rejected_posted, f"{figures.name}: REJECTED requests were POSTed"


def check_hostile(received: dict[str, Result]) -> None:
    """Assert that the hostile requests of ``make_requests`` were answered REJECTED with
    their reason, and only they."""
    expected = {
        HOSTILE_WORKFLOW: ErrorCode.UNKNOWN_WORKFLOW,
        HOSTILE_INPUT: ErrorCode.UNKNOWN_INPUT,
    }
    for result in received.values():
        index = (result.metadata or {}).get("index")
        assert isinstance(index, int)
        code = expected.get(index % 10)
        if code is None:
            assert result.status is not Status.REJECTED, result
        else:
            assert result.status is Status.REJECTED, result
            assert result.error is not None
            assert result.error.code is code


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    """``wait_until`` with a longer default deadline (CPU is shared)."""
    return wait_until(condition, timeout_s=timeout_s, interval_s=0.05, message=what)
