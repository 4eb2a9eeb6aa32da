"""``segmind-queue worker``'s preparation of what its processes inherit."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import dramatiq.cli
import pika
import pytest
from typer.testing import CliRunner

from console.cli import app
from console.worker import prepare_metrics_dir, process_environment
from producers.topology import Topology
from tests.conftest import free_port
from worker.settings import Settings


def test_the_metrics_directory_is_emptied_of_old_values_only(tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"old values")
    (tmp_path / "notes.txt").write_text("not ours")
    assert prepare_metrics_dir(str(tmp_path)) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_missing_metrics_directory_is_created(tmp_path: Path) -> None:
    wanted = tmp_path / "a" / "b"
    assert prepare_metrics_dir(str(wanted)).is_dir()


def test_without_a_setting_each_run_gets_a_new_directory() -> None:
    first, second = prepare_metrics_dir(None), prepare_metrics_dir(None)
    try:
        assert first != second
        assert first.is_dir()
        assert not any(first.iterdir())
    finally:
        first.rmdir()
        second.rmdir()


def test_every_process_inherits_one_directory_port_and_log_format(tmp_path: Path) -> None:
    settings = Settings(metrics_port=9999, metrics_host="127.0.0.1", log_level="DEBUG")
    env = process_environment(settings, tmp_path, "console")
    assert env["PROMETHEUS_MULTIPROC_DIR"] == env["dramatiq_prom_db"] == str(tmp_path)
    assert (env["dramatiq_prom_host"], env["dramatiq_prom_port"]) == ("127.0.0.1", "9999")
    # Resolved here: in a worker process stderr is a pipe, never a terminal.
    assert (env["LOG_FORMAT"], env["LOG_LEVEL"]) == ("console", "DEBUG")


def test_the_shutdown_timeout_defaults_to_the_longest_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``segmind-queue worker`` hands Dramatiq's command line (not run here)."""
    started: list[argparse.Namespace] = []

    def dramatiq_main(args: argparse.Namespace) -> int:
        started.append(args)
        return 0

    monkeypatch.setattr(dramatiq.cli, "main", dramatiq_main)
    # The queue check (tests below) would declare the default queues on the shared broker.
    monkeypatch.setattr("worker.declare.check_queues", lambda settings: [])
    # Every variable the command sets is restored after the test.
    for name in ("dramatiq_prom_db", "dramatiq_prom_host", "dramatiq_prom_port"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    monkeypatch.setenv("WORKER_PROCESSES", "")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("SEGMIND_API_KEY", "k-123")
    monkeypatch.setenv("SEGMIND_READ_TIMEOUT_S", "12")
    (tmp_path / "health").mkdir()
    (tmp_path / "health" / "4242.json").write_text("{}")  # a heartbeat of an earlier run
    runner = CliRunner()
    assert runner.invoke(app, ["worker", "--processes", "3"]).exit_code == 0
    assert runner.invoke(app, ["worker", "--shutdown-timeout-s", "7.5"]).exit_code == 0
    longest_ms = round(Settings().longest_step_s * 1000)
    assert longest_ms == 127_000
    assert [args.worker_shutdown_timeout for args in started] == [longest_ms, 7_500]
    assert started[0].processes == 3
    assert os.environ["WORKER_PROCESSES"] == "1"  # the last run's --processes
    assert not any((tmp_path / "health").iterdir())


def test_an_unreadable_trust_store_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    result = CliRunner().invoke(
        app, ["worker"], env={"SEGMIND_API_KEY": "sk-cli-test", "SSL_CERT_FILE": str(missing)}
    )
    assert result.exit_code == 2
    assert f"cannot load the trusted certificates (SSL_CERT_FILE={missing}" in result.output
    assert "Traceback" not in result.output


def _queue_env(queues: Callable[[str], str]) -> dict[str, str]:
    return {
        "SEGMIND_API_KEY": "sk-cli-test",
        "REQUESTS_QUEUE": queues("requests"),
        "POLLS_QUEUE": queues("polls"),
        "CANCELS_QUEUE": queues("cancels"),
        "RESULTS_DEAD_LETTER_QUEUE": queues("results") + ".XQ",
    }


def test_a_queue_of_another_type_stops_the_worker_before_it_starts(
    amqp_url: str, queues: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classic requests queue an earlier version declared, and a worker set to
    quorum: one line names the queue, its type and the way out; Dramatiq never starts."""
    env = _queue_env(queues) | {"AMQP_URL": amqp_url, "AMQP_QUEUE_TYPE": "quorum"}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        requests = env["REQUESTS_QUEUE"]
        connection.channel().queue_declare(
            requests, durable=True, arguments=Topology().work_queue_arguments(requests)
        )
    finally:
        connection.close()
    started: list[object] = []
    monkeypatch.setattr(dramatiq.cli, "main", started.append)
    try:
        result = CliRunner().invoke(app, ["worker"], env=env)
    finally:
        _delete(amqp_url, [env["RESULTS_DEAD_LETTER_QUEUE"]])
    assert result.exit_code == 2
    assert (
        f"error: queue {requests!r} exists as a classic queue, but AMQP_QUEUE_TYPE=quorum"
        in " ".join(result.output.split())
    )
    assert "Traceback" not in result.output
    assert started == []


def test_an_unreachable_rabbitmq_is_said_and_the_worker_starts(
    queues: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[argparse.Namespace] = []

    def dramatiq_main(args: argparse.Namespace) -> int:
        started.append(args)
        return 0

    monkeypatch.setattr(dramatiq.cli, "main", dramatiq_main)
    env = _queue_env(queues) | {"AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"}
    # Every variable the command sets is restored after the test.
    for name in ("dramatiq_prom_db", "dramatiq_prom_host", "dramatiq_prom_port"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    monkeypatch.setenv("WORKER_PROCESSES", "")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["worker"], env=env)
    assert result.exit_code == 0, result.output
    assert "warning: the queues were not checked, RabbitMQ did not answer" in result.output
    assert "guest:guest" not in result.output
    assert len(started) == 1


def _delete(amqp_url: str, names: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for name in names:
            channel = connection.channel()
            channel.queue_delete(name)
            channel.close()
    finally:
        connection.close()
