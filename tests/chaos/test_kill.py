"""Worker processes killed with SIGKILL at random moments through a run, and restarted.

Two ``segmind-queue worker`` processes share the run on the real RabbitMQ and Redis; at
``--chaos-kills`` points drawn at random through the run (a fraction of the results in),
one of them, chosen at random, is killed with SIGKILL with whatever it was doing (a POST,
a poll, a result publication, messages held for later) and a new one is started. A third
of the POSTs are slowed down so that kills land mid-POST too.

Nothing may be lost: every request gets exactly one result after deduplication by
request_id, no request is paid twice, and no request is POSTed twice (no submit answer
here ever says a job was not created, so a second POST would be a second charge).
"""

from __future__ import annotations

import random

from simulator.testing import RunningSimulator
from tests.chaos.conftest import ChaosSize, StackFactory
from tests.chaos.harness import (
    Progress,
    check_guarantees,
    check_hostile,
    prepare_simulator,
    run_chaos,
)

WORKERS = 2


def test_kill_workers_through_a_run(
    chaos_stack: StackFactory,
    amqp_url: str,
    redis_url: str,
    sim: RunningSimulator,
    chaos_size: ChaosSize,
) -> None:
    stack = chaos_stack(amqp_url, redis_url)
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    prepare_simulator(sim)
    # Slow POSTs widen the window in which a kill leaves a request SUBMITTING.
    sim.add_faults({"endpoint": "submit", "delay_s": 0.3, "probability": 0.3})
    for _ in range(WORKERS):
        stack.start_worker(threads=4)
    points = sorted(rng.uniform(0.05, 0.9) for _ in range(chaos_size.kills))
    kills: list[str] = []

    def harm(progress: Progress) -> None:
        for point in points:
            if not progress.wait_fraction(point, timeout_s=600):
                return
            alive = [worker for worker in stack.workers if worker.process.poll() is None]
            victim = rng.choice(alive)
            victim.kill()
            kills.append(f"{point:.2f}")
            stack.start_worker(threads=4)

    jobs = chaos_size.jobs
    figures, received, stats = run_chaos(
        "kill -9 workers",
        stack,
        sim,
        jobs=jobs,
        harm=harm,
        timeout_s=120 + jobs * 0.5,
    )
    figures.notes["kills"] = len(kills)
    figures.notes["seed"] = seed
    check_guarantees(figures, stats)
    check_hostile(received)
    assert len(kills) == chaos_size.kills, f"only {len(kills)} kills happened"
    assert figures.max_posts_per_request <= 1
