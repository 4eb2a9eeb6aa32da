"""``segmind-queue worker``'s preparation of what its processes inherit."""

from __future__ import annotations

from pathlib import Path

from worker.cli import prepare_metrics_dir, process_environment
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
