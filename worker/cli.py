"""``segmind-queue worker``: run the actors with Dramatiq's worker processes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from worker.settings import Settings, SettingsError

#: The module each worker process imports (see ``worker.main``).
WORKER_MODULE = "worker.main"

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
        int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
    ] = 0,
) -> None:
    """Run the submit and poll actors (settings from the environment; see the README).

    Needs SEGMIND_API_KEY or SEGMIND_API_KEY_FILE, RabbitMQ (AMQP_URL) and Redis
    (REDIS_URL). Each step takes seconds, so a worker can stop at any time: its
    unfinished messages are redelivered and resumed by another one.
    """
    try:
        Settings().api_key()
    except (SettingsError, ValueError) as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    # Imported here: the CLI's other commands do not need Dramatiq's command line.
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    argv = [
        WORKER_MODULE,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(round(shutdown_timeout_s * 1000)),
    ]
    if verbose:
        argv.append("-" + "v" * verbose)
    parsed = make_argument_parser().parse_args(argv)  # type: ignore[no-untyped-call]
    raise typer.Exit(dramatiq_main(parsed) or 0)  # type: ignore[no-untyped-call]
