"""``segmind-queue worker``: run the actors with Dramatiq's worker processes.

Before Dramatiq's command line starts (and forks) any process, this sets up what every
process must inherit:

- metrics: ``PROMETHEUS_MULTIPROC_DIR`` and Dramatiq's ``dramatiq_prom_db`` point at one
  emptied directory, so each process's values reach the one endpoint that Dramatiq's
  Prometheus middleware serves on ``METRICS_HOST:METRICS_PORT``;
- logs: the format is chosen here, where stderr may be a terminal (in a worker process it
  is a pipe to this one), and handed down as ``LOG_FORMAT``; Dramatiq's own logging set-up
  is skipped so that its lines go through the project's pipeline;
- health: the heartbeats' directory (inside the metrics directory) is emptied, and
  ``WORKER_PROCESSES`` tells the endpoint how many processes must beat (``worker.health``).

``segmind-queue healthcheck`` asks that endpoint's ``/healthz`` or ``/readyz``, for
container healthchecks (it imports neither prometheus_client nor Dramatiq's Prometheus
middleware).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Final, NoReturn
from urllib.parse import urlsplit

import typer
from rich.console import Console

from worker.health import LIVENESS_PATH, OK, PROCESSES_ENV, READINESS_PATH, prepare_heartbeat_dir
from worker.logs import LogFormat, configure_logging, resolve_format, secrets_of
from worker.settings import Settings, SettingsError
from worker.tenants import TenantsFile

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
        float | None,
        typer.Option(
            "--shutdown-timeout-s",
            min=1,
            show_default=False,
            help="On SIGTERM, how long to let running steps finish before exiting "
            "[default: the longest a step can take, from the SEGMIND_*_TIMEOUT_S settings: "
            "145 s with their defaults].",
        ),
    ] = None,
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
        TenantsFile(settings.tenants_file)  # fail here, not in each process, on a bad file
    except (SettingsError, ValueError) as exc:  # TenantsFileError is a ValueError
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    problem = trust_store_problem()
    if problem is not None:
        errors.print(f"error: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    _check_queues(settings)
    if verbose:
        os.environ["LOG_LEVEL"] = "DEBUG"
        settings = Settings()
    metrics_dir = prepare_metrics_dir(os.environ.get(MULTIPROC_DIR_ENV))
    prepare_heartbeat_dir(metrics_dir)
    log_format = resolve_format(settings.log_format, sys.stderr)
    os.environ.update(process_environment(settings, metrics_dir, log_format, processes=processes))
    if shutdown_timeout_s is None:
        shutdown_timeout_s = settings.longest_step_s
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


def _check_queues(settings: Settings) -> None:
    """Refuse to start (exit 2) when a queue exists with another type or other arguments
    (``worker.declare``); when RabbitMQ does not answer yet, say so and start: the worker
    connects when it can, and declares the queues then."""
    from producers.amqp import BrokerError
    from worker.declare import check_queues

    try:
        mismatches = check_queues(settings)
    except BrokerError as exc:
        errors.print(
            f"warning: the queues were not checked, RabbitMQ did not answer ({exc}); "
            "starting anyway",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    for mismatch in mismatches:
        errors.print(
            f"error: {mismatch.describe(settings.topology)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if mismatches:
        raise typer.Exit(2)


def trust_store_problem() -> str | None:
    """Why the certificates TLS connections trust cannot be loaded (a wrong
    ``SSL_CERT_FILE`` or ``SSL_CERT_DIR``), or ``None``: said once here, rather than as a
    traceback from every worker process's first HTTPS client."""
    import httpx  # only the worker command needs it

    try:
        httpx.create_ssl_context()
    except (OSError, ssl.SSLError) as exc:
        variables = ", ".join(
            f"{name}={os.environ[name]}"
            for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")
            if name in os.environ
        )
        return f"cannot load the trusted certificates ({variables or 'system store'}): {exc}"
    return None


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
    settings: Settings, metrics_dir: Path, log_format: LogFormat, *, processes: int = 1
) -> dict[str, str]:
    """The variables every worker process (and the endpoint) inherits (see the module
    docstring); ``processes`` is ``--processes``."""
    return {
        PROCESSES_ENV: str(processes),
        MULTIPROC_DIR_ENV: str(metrics_dir),
        "dramatiq_prom_db": str(metrics_dir),
        "dramatiq_prom_host": settings.metrics_host,
        "dramatiq_prom_port": str(settings.metrics_port),
        "LOG_FORMAT": log_format,
        "LOG_LEVEL": settings.log_level,
    }


# -- segmind-queue healthcheck ---------------------------------------------------------------

#: Exit codes of ``segmind-queue healthcheck`` when not healthy, and on bad usage (the
#: command line's own code for it); 0 when healthy.
UNHEALTHY: Final = 1
USAGE: Final = 2


def healthcheck_command(
    ready: Annotated[
        bool,
        typer.Option("--ready", help=f"Check readiness ({READINESS_PATH}) instead of liveness."),
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL",
            show_default=False,
            help="The worker's endpoint, scheme, host and port only "
            "[default: http://127.0.0.1:METRICS_PORT].",
        ),
    ] = None,
    timeout_s: Annotated[
        float,
        typer.Option("--timeout-s", min=0.1, max=300, help="Seconds to wait for the answer."),
    ] = 5.0,
) -> None:
    """Check a running worker's health, for container healthchecks.

    Asks the worker's endpoint for /healthz (alive and working) or, with --ready, /readyz
    (RabbitMQ and Redis reachable). Exit code 0 when healthy, 1 when not (one line on
    stderr says why), 2 on bad usage.
    """
    if url is None:
        try:
            url = f"http://127.0.0.1:{Settings().metrics_port}"
        except ValueError as exc:  # SettingsError or pydantic's ValidationError
            _usage(f"error: {exc}")
    try:
        endpoint = endpoint_url(url, READINESS_PATH if ready else LIVENESS_PATH)
    except ValueError as exc:
        _usage(f"error: {exc}")
    healthy, reason = probe_endpoint(endpoint, timeout_s)
    if not healthy:
        what = "not ready" if ready else "not live"
        errors.print(f"{what}: {reason}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(UNHEALTHY)


def _usage(message: str) -> NoReturn:
    errors.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(USAGE)


def endpoint_url(base: str, path: str) -> str:
    """``path`` on the endpoint ``base`` (``http(s)://host[:port]``).

    Raises:
        ValueError: ``base`` is not an http(s) URL with a host, or has a path, a query or
            credentials. The message never repeats the URL.
    """
    try:
        parts = urlsplit(base.strip())
        parts.port  # noqa: B018 (parsing the port raises ValueError when it is invalid)
    except ValueError:
        raise ValueError("--url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("--url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("--url must not contain credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("--url is the endpoint only, like http://127.0.0.1:9191 (no path)")
    return f"{parts.scheme}://{parts.netloc}{path}"


def probe_endpoint(url: str, timeout_s: float) -> tuple[bool, str]:
    """GET ``url``: ``(True, "")`` on 200, else ``(False, one line saying why)``.

    Never raises: an unreachable endpoint, a timeout or an error answer is "not healthy".
    """
    import httpx  # here: the other commands do not need it

    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=False, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"{url}: no answer ({type(exc).__name__})"
    if response.status_code == 200:
        return True, ""
    return False, f"{url}: {describe_failure(response.status_code, response.content)}"


def describe_failure(status: int, body: bytes) -> str:
    """One line for a probe's failing answer: the status and each failing check.

    Args:
        status: the HTTP status.
        body: the answer's body; a JSON ``{"checks": {...}}`` lists the checks, anything
            else is not quoted (it could be anything).
    """
    try:
        checks = json.loads(body)["checks"]
        failing = [f"{name}: {value}" for name, value in checks.items() if value != OK]
    except (ValueError, TypeError, KeyError, AttributeError):
        failing = []
    return f"{status}" + (f" ({'; '.join(failing)})" if failing else "")
