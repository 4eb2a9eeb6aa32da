"""``segmind-queue worker``: run the actors with Dramatiq's worker processes.

Before Dramatiq's command line starts (and forks) any process, this sets up what every
process must inherit:

- metrics: ``PROMETHEUS_MULTIPROC_DIR`` and Dramatiq's ``dramatiq_prom_db`` point at one
  emptied directory, so each process's values reach the one endpoint that Dramatiq's
  Prometheus middleware serves on ``METRICS_HOST:METRICS_PORT``;
- logs: the format is chosen here, where stderr may be a terminal (in a worker process it
  is a pipe to this one), and handed down as ``LOG_FORMAT``; Dramatiq's own logging set-up
  is skipped so that its lines go through the project's pipeline.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.console import Console

from worker.logs import LogFormat, configure_logging, resolve_format, secrets_of
from worker.settings import Settings, SettingsError

#: The module each worker process imports (see ``worker.main``).
WORKER_MODULE: Final = "worker.main"
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

errors = Console(stderr=True)


def worker_command(
    processes: Annotated[
        int, typer.Option("--processes", "-p", min=1, help="Worker processes to run.")
    ] = 1,
    threads: Annotated[
        int, typer.Option("--threads", "-t", min=1, help="Worker threads per process.")
    ] = 8,
    shutdown_timeout_s: Annotated[
        float,
        typer.Option(
            "--shutdown-timeout-s",
            min=1,
            help="On SIGTERM, how long to let running steps finish before exiting.",
        ),
    ] = 150.0,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Debug logs (LOG_LEVEL=DEBUG).")
    ] = 0,
) -> None:
    """Run the submit and poll actors (settings from the environment; see the README).

    Needs SEGMIND_API_KEY or SEGMIND_API_KEY_FILE, RabbitMQ (AMQP_URL) and Redis
    (REDIS_URL). Each step takes seconds, so a worker can stop at any time: its
    unfinished messages are redelivered and resumed by another one.
    """
    try:
        settings = Settings()
        settings.api_key()
    except (SettingsError, ValueError) as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if verbose:
        os.environ["LOG_LEVEL"] = "DEBUG"
        settings = Settings()
    metrics_dir = prepare_metrics_dir(os.environ.get(MULTIPROC_DIR_ENV))
    log_format = resolve_format(settings.log_format, sys.stderr)
    os.environ.update(process_environment(settings, metrics_dir, log_format))
    # Imported here, after the environment is set: the CLI's other commands do not need
    # Dramatiq's command line.
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    configure_logging(fmt=log_format, level=settings.log_level, secrets=secrets_of(settings))
    argv = [
        WORKER_MODULE,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(round(shutdown_timeout_s * 1000)),
        "--skip-logging",
    ]
    parsed = make_argument_parser().parse_args(argv)  # type: ignore[no-untyped-call]
    raise typer.Exit(dramatiq_main(parsed) or 0)  # type: ignore[no-untyped-call]


def prepare_metrics_dir(configured: str | None) -> Path:
    """The directory where worker processes keep their metric values, emptied.

    Args:
        configured: ``PROMETHEUS_MULTIPROC_DIR`` if set (created when missing), else a new
            temporary directory is made.

    Only ``*.db`` files (prometheus_client's) are removed: a directory set by mistake to
    somewhere else keeps its other contents. Values left by an earlier run would otherwise
    be added to this run's.
    """
    if not configured:
        return Path(tempfile.mkdtemp(prefix="segmind-queue-metrics-"))
    directory = Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return directory


def process_environment(
    settings: Settings, metrics_dir: Path, log_format: LogFormat
) -> dict[str, str]:
    """The variables every worker process inherits (see the module docstring)."""
    return {
        MULTIPROC_DIR_ENV: str(metrics_dir),
        "dramatiq_prom_db": str(metrics_dir),
        "dramatiq_prom_host": settings.metrics_host,
        "dramatiq_prom_port": str(settings.metrics_port),
        "LOG_FORMAT": log_format,
        "LOG_LEVEL": settings.log_level,
    }
