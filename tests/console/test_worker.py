"""``segmind-queue worker``'s preparation of what its processes inherit."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import dramatiq.cli
import pytest
from typer.testing import CliRunner

from console.cli import app
from console.worker import prepare_metrics_dir, process_environment
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
