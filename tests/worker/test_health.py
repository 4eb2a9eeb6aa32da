"""Worker health: the liveness and readiness decisions, the heartbeat, the endpoint's routing
and ``segmind-queue healthcheck``.

The decisions are pure functions, tested directly. The endpoint is tested over a real socket
with probes given to it; the readiness checks against the real RabbitMQ and Redis, and a
port nothing listens on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from dramatiq.brokers.stub import StubBroker
from pydantic import SecretStr
from typer.testing import CliRunner

from console.cli import app
from console.worker import describe_failure, endpoint_url
from simulator.testing import wait_until
from tests.conftest import free_port
from worker.health import (
    Beat,
    Cached,
    HealthServer,
    HeartbeatMiddleware,
    Probes,
    Verdict,
    liveness,
    prepare_heartbeat_dir,
    process_alive,
    rabbitmq_problem,
    read_beats,
    readiness,
    redis_problem,
)

NOW = 1000.0
TIMEOUT_S = 30.0


def beat(pid: int, age_s: float = 1.0, step_s: float | None = None) -> Beat:
    return Beat(pid=pid, at=NOW - age_s, step_since=None if step_s is None else NOW - step_s)


def live(
    beats: list[Beat],
    *,
    processes: int = 2,
    exited: frozenset[int] = frozenset(),
    main_alive: bool = True,
) -> Verdict:
    return liveness(
        beats,
        now=NOW,
        processes=processes,
        live_pids=[b.pid for b in beats if b.pid not in exited],
        main_alive=main_alive,
        heartbeat_timeout_s=TIMEOUT_S,
    )


# -- liveness --------------------------------------------------------------------------------


def test_every_process_beating_is_live() -> None:
    verdict = live([beat(11), beat(12)])
    assert verdict.ok
    assert verdict.status_code == 200
    assert json.loads(verdict.body()) == {
        "status": "ok",
        "checks": {"main_process": "ok", "worker_processes": "ok"},
    }


def test_a_busy_process_is_live() -> None:
    """Every thread on a long step: the heartbeat thread still beats, and a step under
    Dramatiq's time limit is work, not a wedge."""
    assert live([beat(11, step_s=590.0), beat(12, step_s=120.0)]).ok


def test_a_silent_process_is_wedged() -> None:
    verdict = live([beat(11), beat(12, age_s=TIMEOUT_S + 1)])
    assert not verdict.ok
    assert verdict.status_code == 503
    assert verdict.checks["worker_processes"] == "1 of 2 live: pid 12 silent for 31 s"
    assert verdict.checks["main_process"] == "ok"


def test_a_heartbeat_just_within_the_timeout_is_live() -> None:
    assert live([beat(11), beat(12, age_s=TIMEOUT_S)]).ok


def test_a_step_past_the_time_limit_is_wedged() -> None:
    verdict = live([beat(11), beat(12, step_s=601.0)])
    assert not verdict.ok
    assert "pid 12 has run one step for 601 s (limit 600 s)" in verdict.checks["worker_processes"]


def test_an_exited_process_is_gone_even_with_a_fresh_heartbeat() -> None:
    verdict = live([beat(11), beat(12)], exited=frozenset({12}))
    assert not verdict.ok
    assert verdict.checks["worker_processes"] == "1 of 2 live: pid 12 exited"


def test_a_missing_heartbeat_is_a_missing_process() -> None:
    verdict = live([beat(11)])
    assert not verdict.ok
    assert verdict.checks["worker_processes"] == "1 of 2 live"


def test_without_the_main_process_the_worker_is_not_live() -> None:
    verdict = live([beat(11), beat(12)], main_alive=False)
    assert not verdict.ok
    assert verdict.checks == {"main_process": "gone", "worker_processes": "ok"}


def test_heartbeats_survive_their_file_format() -> None:
    one = Beat(pid=7, at=12.5, step_since=3.25, step_limit_s=90.0)
    assert Beat.loads(one.dumps()) == one
    assert Beat.loads(Beat(pid=7, at=1.0).dumps()) == Beat(pid=7, at=1.0)
    for garbage in ("", "{", "[]", '{"pid": "x", "at": 1}', '{"pid": 1}'):
        assert Beat.loads(garbage) is None


# -- readiness -------------------------------------------------------------------------------


def test_ready_when_both_services_answer() -> None:
    verdict = readiness({"rabbitmq": None, "redis": None})
    assert verdict.ok
    assert json.loads(verdict.body())["checks"] == {"rabbitmq": "ok", "redis": "ok"}


def test_not_ready_names_the_service_that_failed() -> None:
    verdict = readiness({"rabbitmq": None, "redis": "ConnectionError"})
    assert not verdict.ok
    assert verdict.status_code == 503
    assert json.loads(verdict.body()) == {
        "status": "fail",
        "checks": {"rabbitmq": "ok", "redis": "unreachable: ConnectionError"},
    }


def test_a_cached_value_is_computed_once_per_period() -> None:
    now = [0.0]
    calls: list[float] = []

    def compute() -> int:
        calls.append(now[0])
        return len(calls)

    cached = Cached(compute, ttl_s=2.0, clock=lambda: now[0])
    assert cached.get() == 1
    now[0] = 1.9
    assert cached.get() == 1
    now[0] = 2.0
    assert cached.get() == 2
    assert calls == [0.0, 2.0]


def test_concurrent_probes_share_one_check() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_check() -> int:
        calls.append(1)
        started.set()
        release.wait(10)
        return len(calls)

    cached = Cached(slow_check, ttl_s=60.0)
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(cached.get())) for _ in range(5)]
    for thread in threads:
        thread.start()
    assert started.wait(10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert answers == [1] * 5
    assert calls == [1]


@pytest.mark.integration
def test_the_checks_pass_against_the_real_services(amqp_url: str, redis_url: str) -> None:
    assert rabbitmq_problem(SecretStr(amqp_url), 5.0) is None
    assert redis_problem(SecretStr(redis_url), 5.0) is None


def test_the_checks_fail_on_a_closed_port_without_quoting_the_url() -> None:
    port = free_port()
    rabbit = rabbitmq_problem(SecretStr(f"amqp://u:pw-secret@127.0.0.1:{port}/%2F"), 1.0)
    redis_ = redis_problem(SecretStr(f"redis://:pw-secret@127.0.0.1:{port}/0"), 1.0)
    assert rabbit == "AMQPConnectionError"
    assert redis_ == "ConnectionError"


# -- the heartbeat ---------------------------------------------------------------------------


def test_the_heartbeat_carries_the_oldest_running_step(tmp_path: Path) -> None:
    clock = [100.0]
    heart = HeartbeatMiddleware(tmp_path, clock=lambda: clock[0])
    broker = StubBroker()
    assert heart.beat() == Beat(pid=os.getpid(), at=100.0, step_since=None, step_limit_s=600.0)
    heart.before_process_message(broker, None)
    clock[0] = 105.0
    other = threading.Thread(target=heart.before_process_message, args=(broker, None))
    other.start()
    other.join()
    assert heart.beat().step_since == 100.0
    heart.after_process_message(broker, None)
    assert heart.beat().step_since == 105.0  # the other thread's step still runs
    heart.after_skip_message(broker, None)  # a message whose step never started: no error
    heart.write()
    assert read_beats(tmp_path) == [heart.beat()]


def test_the_heartbeat_is_written_from_boot_to_shutdown(tmp_path: Path) -> None:
    broker = StubBroker()
    heart = HeartbeatMiddleware(tmp_path / "health", interval_s=0.05)
    heart.after_worker_boot(broker, None)
    try:
        first = read_beats(tmp_path / "health")
        assert [b.pid for b in first] == [os.getpid()]
        wait_until(
            lambda: read_beats(tmp_path / "health")[0].at > first[0].at,
            timeout_s=10,
            interval_s=0.02,
            message="the next heartbeat",
        )
    finally:
        heart.after_worker_shutdown(broker, None)
    assert read_beats(tmp_path / "health") == []


def test_old_heartbeats_are_removed_and_malformed_ones_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "health"
    directory.mkdir()
    (directory / "1.json").write_text(Beat(pid=1, at=1.0).dumps())
    assert prepare_heartbeat_dir(tmp_path) == directory
    assert not any(directory.iterdir())
    (directory / "2.json").write_text("{half")
    (directory / "3.json").write_text(Beat(pid=3, at=1.0).dumps())
    assert read_beats(directory) == [Beat(pid=3, at=1.0)]


def test_a_zombie_or_reaped_process_is_not_alive() -> None:
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not reaped yet: a zombie, as a killed worker process is until Dramatiq reaps it.
    wait_until(lambda: not process_alive(child.pid), timeout_s=10, interval_s=0.01, message="exit")
    assert child.wait(timeout=10) == 0
    assert not process_alive(child.pid)


# -- the endpoint ----------------------------------------------------------------------------


@contextmanager
def endpoint(probes: Probes) -> Iterator[str]:
    server = HealthServer(("127.0.0.1", 0), probes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def write_metrics(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("content-type", "text/plain")
    handler.end_headers()
    handler.wfile.write(b"dramatiq_messages_total 1.0\n")


def probes(live_ok: bool = True, ready: Callable[[], Verdict] | None = None) -> Probes:
    down = readiness({"rabbitmq": None, "redis": "TimeoutError"})
    return Probes(
        live=lambda: live([beat(1)], processes=1, main_alive=live_ok),
        ready=ready or (lambda: down),
        metrics=write_metrics,
    )


def test_the_endpoint_routes_each_path() -> None:
    with endpoint(probes()) as url:
        healthz = httpx.get(f"{url}/healthz")
        assert (healthz.status_code, healthz.json()["status"]) == (200, "ok")
        assert healthz.headers["content-type"] == "application/json"
        readyz = httpx.get(f"{url}/readyz?verbose=1")
        assert readyz.status_code == 503
        assert readyz.json()["checks"]["redis"] == "unreachable: TimeoutError"
        metrics = httpx.get(f"{url}/metrics")
        assert (metrics.status_code, metrics.text) == (200, "dramatiq_messages_total 1.0\n")
        for other in ("/", "/health", "/metrics/x", "/healthz/"):
            assert httpx.get(f"{url}{other}").status_code == 404


def test_a_probe_that_raises_answers_503() -> None:
    def broken() -> Verdict:
        raise OSError("disk gone")

    with endpoint(probes(ready=broken)) as url:
        answer = httpx.get(f"{url}/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "fail", "checks": {"probe": "error: OSError"}}


# -- segmind-queue healthcheck ---------------------------------------------------------------


def test_the_healthcheck_exit_codes() -> None:
    runner = CliRunner()
    with endpoint(probes()) as url:
        assert runner.invoke(app, ["healthcheck", "--url", url]).exit_code == 0
        ready = runner.invoke(app, ["healthcheck", "--ready", "--url", url])
        assert ready.exit_code == 1
        assert ready.stderr.strip() == (
            f"not ready: {url}/readyz: 503 (redis: unreachable: TimeoutError)"
        )
    with endpoint(probes(live_ok=False)) as url:
        dead = runner.invoke(app, ["healthcheck", "--url", url, "--timeout-s", "5"])
        assert dead.exit_code == 1
        assert dead.stderr.strip() == f"not live: {url}/healthz: 503 (main_process: gone)"
    closed = f"http://127.0.0.1:{free_port()}"
    nobody = runner.invoke(app, ["healthcheck", "--url", closed])
    assert nobody.exit_code == 1
    assert nobody.stderr.strip() == f"not live: {closed}/healthz: no answer (ConnectError)"


def test_the_healthcheck_defaults_to_the_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    with endpoint(probes()) as url:
        monkeypatch.setenv("METRICS_PORT", url.rsplit(":", 1)[1])
        assert CliRunner().invoke(app, ["healthcheck"]).exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "http://127.0.0.1:9191/healthz"],
        ["--url", "ftp://127.0.0.1:9191"],
        ["--url", "http://user:pw@127.0.0.1:9191"],
        ["--url", "http://127.0.0.1:notaport"],
        ["--timeout-s", "0"],
        ["--unknown"],
    ],
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["healthcheck", *args])
    assert result.exit_code == 2
    assert "user:pw" not in result.stderr


def test_a_bad_metrics_port_setting_is_bad_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_PORT", "0")
    result = CliRunner().invoke(app, ["healthcheck"])
    assert result.exit_code == 2
    assert "metrics_port" in result.stderr.lower()


def test_endpoint_urls() -> None:
    assert endpoint_url("http://10.0.0.5:9191", "/readyz") == "http://10.0.0.5:9191/readyz"
    assert endpoint_url(" https://worker:9191/ ", "/healthz") == "https://worker:9191/healthz"


def test_a_failure_is_described_by_its_failing_checks_only() -> None:
    body = json.dumps({"status": "fail", "checks": {"rabbitmq": "ok", "redis": "down"}})
    assert describe_failure(503, body.encode()) == "503 (redis: down)"
    assert describe_failure(502, b"<html>proxy error</html>") == "502"
    assert describe_failure(404, b'{"status": "not_found"}') == "404"


def test_the_command_line_imports_neither_prometheus_client_nor_the_endpoint() -> None:
    code = (
        "import sys, console.cli\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "assert 'dramatiq.middleware.prometheus' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
