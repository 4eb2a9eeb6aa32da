"""The health endpoints of a real ``segmind-queue worker --processes 2``, and
``segmind-queue healthcheck`` against them.

Each test starts its own worker on its own queues (``fresh_stack``), with a heartbeat
timeout of 5 s so that a wedged process shows within seconds (3 s where a process is
stopped on purpose: see ``test_a_stopped_worker_process_is_not_live_until_it_runs_again``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator.testing import RunningSimulator, wait_until
from tests.conftest import free_port
from tests.e2e.conftest import Stack, Worker
from worker.health import Beat, heartbeat_dir, read_beats

HEARTBEAT_TIMEOUT_S = "5"
CLI = str(Path(sys.executable).with_name("segmind-queue"))


def get(url: str) -> tuple[int, Any]:
    answer = httpx.get(url, timeout=10)
    return answer.status_code, answer.json()


def healthcheck(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "healthcheck", "--url", worker.endpoint, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def healthchecks(worker: Worker, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """``healthcheck`` with each of ``calls``' arguments, all run at the same time."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda args: healthcheck(worker, *args), calls))


def start(stack: Stack, metrics_dir: Path, **env: str) -> Worker:
    """A two-process worker whose endpoint answers (its own fork process binds the port
    after the consumers can be up: on a busy machine, a moment later)."""
    worker = stack.start_worker(
        processes=2,
        threads=2,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        **{"WORKER_HEARTBEAT_TIMEOUT_S": HEARTBEAT_TIMEOUT_S, **env},
    )
    wait_until(
        lambda: status_of(f"{worker.endpoint}/healthz") is not None,
        timeout_s=30,
        interval_s=0.05,
        message="the health endpoint to answer",
    )
    return worker


def worker_pids(metrics_dir: Path) -> list[int]:
    """The worker processes' pids, from their heartbeats."""
    beats: list[Beat] = []

    def both() -> bool:
        beats[:] = read_beats(heartbeat_dir(metrics_dir))
        return len(beats) == 2

    wait_until(both, timeout_s=30, interval_s=0.1, message="both heartbeats")
    return sorted(b.pid for b in beats)


def status_of(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return None  # the endpoint is gone


@pytest.mark.usefixtures("sim")
def test_a_working_worker_is_live_and_ready(fresh_stack: Stack, tmp_path: Path) -> None:
    worker = start(fresh_stack, tmp_path / "metrics")
    assert get(f"{worker.endpoint}/healthz") == (
        200,
        {"status": "ok", "checks": {"main_process": "ok", "worker_processes": "ok"}},
    )
    assert get(f"{worker.endpoint}/readyz") == (
        200,
        {"status": "ok", "checks": {"rabbitmq": "ok", "redis": "ok"}},
    )
    assert httpx.get(f"{worker.endpoint}/elsewhere", timeout=10).status_code == 404
    metrics = httpx.get(worker.metrics_url, timeout=10)
    assert metrics.status_code == 200
    assert "segmind_jobs_total" in metrics.text
    for done in healthchecks(worker, (), ("--ready",)):
        assert (done.returncode, done.stderr) == (0, "")


def test_a_stopped_worker_process_is_not_live_until_it_runs_again(
    fresh_stack: Stack, sim: RunningSimulator, tmp_path: Path
) -> None:
    """SIGSTOP one of the two processes (wedged: it holds its messages and does nothing):
    /healthz turns 503 naming it, readiness is unaffected; SIGCONT brings it back.

    The heartbeat timeout is 3 s here: a process beats every 2 s, so the stopped one is
    called silent 1-3 s after SIGSTOP. Nothing below needs the other one to be seen live
    while the first is stopped (a late beat of it on a loaded machine would only add its
    pid to the same line), and the last wait, for both, allows 30 s."""
    metrics_dir = tmp_path / "metrics"
    worker = start(fresh_stack, metrics_dir, WORKER_HEARTBEAT_TIMEOUT_S="3")
    wedged = worker_pids(metrics_dir)[0]
    os.kill(wedged, signal.SIGSTOP)
    try:
        wait_until(
            lambda: status_of(f"{worker.endpoint}/healthz") == 503,
            timeout_s=30,
            interval_s=0.05,
            message="/healthz to see the stopped process",
        )
        status, body = get(f"{worker.endpoint}/healthz")
        assert status == 503
        assert body["checks"]["main_process"] == "ok"
        assert f"pid {wedged} silent for" in body["checks"]["worker_processes"]
        done, ready = healthchecks(worker, (), ("--ready",))
        assert done.returncode == 1
        assert f"pid {wedged} silent for" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert ready.returncode == 0
    finally:
        os.kill(wedged, signal.SIGCONT)
    wait_until(
        lambda: status_of(f"{worker.endpoint}/healthz") == 200,
        timeout_s=30,
        interval_s=0.05,
        message="/healthz to see the process beat again",
    )
    # It was never restarted: it still works.
    results = fresh_stack.run({"workflow": "sketch-maker"}, {"workflow": "sketch-maker"})
    assert len(results) == 2


@pytest.mark.usefixtures("sim")
def test_without_its_main_process_the_worker_is_not_live(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    """The main process killed: the worker processes and the endpoint run on, orphaned,
    and nothing would ever stop or restart them: /healthz says so."""
    worker = start(fresh_stack, tmp_path / "metrics")
    try:
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=10)
        wait_until(
            lambda: status_of(f"{worker.endpoint}/healthz") == 503,
            timeout_s=30,
            interval_s=0.1,
            message="/healthz to see the main process gone",
        )
        assert get(f"{worker.endpoint}/healthz")[1]["checks"]["main_process"] == "gone"
        assert healthcheck(worker).returncode == 1
    finally:
        worker.kill()  # the orphans are still in the worker's process group


@pytest.mark.usefixtures("sim")
def test_a_killed_worker_process_is_not_live(fresh_stack: Stack, tmp_path: Path) -> None:
    """kill -9 one process: /healthz fails (503, or no answer once Dramatiq has stopped
    the whole worker, which it does when a process dies) and the worker exits."""
    metrics_dir = tmp_path / "metrics"
    worker = start(fresh_stack, metrics_dir)
    os.kill(worker_pids(metrics_dir)[1], signal.SIGKILL)
    wait_until(
        lambda: status_of(f"{worker.endpoint}/healthz") != 200,
        timeout_s=30,
        interval_s=0.05,
        message="/healthz to fail",
    )
    assert healthcheck(worker).returncode == 1
    assert worker.process.wait(timeout=60) != 0


@pytest.mark.usefixtures("sim")
def test_readiness_names_redis_when_it_cannot_be_reached(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    """A worker whose Redis does not answer runs (its steps fail and are retried) but is
    not ready; the answer names Redis, not its URL or password; it is still live."""
    port = free_port()
    worker = start(
        fresh_stack, tmp_path / "metrics", REDIS_URL=f"redis://:redis-pw-42@127.0.0.1:{port}/0"
    )
    answer = httpx.get(f"{worker.endpoint}/readyz", timeout=30)
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "fail",
        "checks": {"rabbitmq": "ok", "redis": "unreachable: ConnectionError"},
    }
    done, live = healthchecks(worker, ("--ready",), ())
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"not ready: {worker.endpoint}/readyz: 503 (redis: unreachable: ConnectionError)"
    )
    assert live.returncode == 0
    for text in (answer.text, done.stdout + done.stderr.replace(worker.endpoint, "")):
        assert str(port) not in text
    assert "redis-pw-42" not in answer.text + done.stderr + worker.log()
