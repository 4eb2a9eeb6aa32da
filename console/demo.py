"""``segmind-queue demo``: the five seed workflows end to end, on local defaults.

What ARCHITECTURE.md calls the local mode:

- It uses RabbitMQ and Redis when they answer on their URLs (``AMQP_URL``, ``REDIS_URL``,
  local defaults) and otherwise says so and runs the same actors in this process on
  Dramatiq's in-memory broker with the in-memory ledger.
- It starts the simulator unless a Segmind key is set (time-scaled: the ~674 s workflow
  takes seconds). With a key it runs against the real API, which costs money, and so
  only with ``--yes``.
- It publishes the five seed workflows with their default inputs, shows each job's
  progress from the ledger, and prints each result.
- It serves its metrics while it runs (``METRICS_PORT``, or any free port when that one is
  taken) and ends with the numbers ``segmind-queue status`` shows.

The demo's queues and ledger keys are its own (``segmind-demo.*``), so a worker already
serving the default queues never takes a demo request, and the demo never takes theirs.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import dramatiq
from pydantic import SecretStr
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table

from producers.catalog import Catalog, default_catalog
from producers.contract import Request, Result, Status
from worker.health import rabbitmq_problem, redis_problem
from worker.ledger import Ledger
from worker.logs import configure_logging, resolve_format, secrets_of
from worker.segmind.client import SegmindClient
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.app import App

DEMO_NAMESPACE = "segmind-demo"
#: How long the demo waits for every result, in (scaled) seconds of the longest workflow.
_TIMEOUT_FACTOR = 4.0
_PROBE_TIMEOUT_S = 2.0


def estimated_cost(catalog: Catalog) -> tuple[float, list[str]]:
    """The catalog price of one run of every workflow, and the names of unpriced ones."""
    priced = sum(w.price_usd or 0.0 for w in catalog)
    unpriced = [w.name for w in catalog if w.price_usd is None]
    return priced, unpriced


def services_answer(settings: Settings) -> tuple[bool, str]:
    """Whether RabbitMQ and Redis both answer; otherwise which one does not, and why."""
    problem = rabbitmq_problem(settings.amqp_url, _PROBE_TIMEOUT_S)
    if problem is not None:
        return False, f"RabbitMQ does not answer ({problem})"
    problem = redis_problem(
        settings.redis_url, _PROBE_TIMEOUT_S, sentinel_password=settings.redis_sentinel_secret()
    )
    if problem is not None:
        return False, f"Redis does not answer ({problem})"
    return True, ""


def run_demo(*, time_scale: float, yes: bool, console: Console) -> int:
    """Run the demo; returns the process exit code (0 when every job completed).

    Args:
        time_scale: the time factor of the simulator the demo starts (with a key set,
            ``SEGMIND_TIME_SCALE`` applies: 1 against Segmind).
        yes: consent to spend real credits when a Segmind key is configured.
        console: where progress and results are printed.
    """
    settings = Settings()
    # The pipeline logs every step; the demo shows a table instead (warnings still show).
    configure_logging(
        fmt=resolve_format(settings.log_format, sys.stderr),
        level="WARNING",
        secrets=secrets_of(settings),
    )
    catalog = default_catalog()
    with ExitStack() as stack:
        if settings.api_key_configured:
            cost, unpriced = estimated_cost(catalog)
            note = f" plus {', '.join(unpriced)} (price unknown)" if unpriced else ""
            if not yes:
                console.print(
                    f"A Segmind key is set: the demo would run {len(catalog)} workflows on "
                    f"{settings.segmind_api_url} for about ${cost:.2f}{note}. "
                    "Pass --yes to spend it, or unset SEGMIND_API_KEY to use the simulator."
                )
                return 2
            client = stack.enter_context(SegmindClient.from_settings(settings))
            # 1 against Segmind; a time-scaled simulator of your own sets its factor.
            scale = settings.segmind_time_scale
            console.print(f"Running against {client.api_url} (about ${cost:.2f}{note}).")
            sim_stats: Callable[[], dict[str, object]] | None = None
        else:
            # Imported here: the simulator's server stack is not needed against the real API.
            from simulator import SimulatorExtraMissingError, require_server
            from simulator.config import SimulatorConfig

            try:
                require_server()
            except SimulatorExtraMissingError as exc:
                console.print(f"{exc}; or set SEGMIND_API_KEY to run against Segmind.")
                return 2
            from simulator.testing import run_simulator

            key = SecretStr("demo-" + secrets.token_hex(12))
            # The rate window is scaled with everything else: 50 requests per scaled minute.
            config = SimulatorConfig(
                api_key=key, time_scale=time_scale, rpm=50, rate_window_s=60.0 * time_scale
            )
            sim = stack.enter_context(run_simulator(config))
            # Real output files, served by the simulator, for the worker to keep.
            sim.reset(serve_outputs=True, outputs_url=f"{sim.url}/outputs")
            client = stack.enter_context(SegmindClient(api_url=sim.url, api_key=key))
            scale = time_scale
            sim_stats = sim.stats
            console.print(
                f"No SEGMIND_API_KEY set: using the local simulator at {sim.url} "
                f"(time scale {time_scale:g}, 50 requests per scaled minute)."
            )
        outputs = _outputs_settings(settings, None if sim_stats is None else client.api_url)
        demo_settings = settings.model_copy(
            update={
                **outputs,
                "requests_queue": f"{DEMO_NAMESPACE}.requests",
                "polls_queue": f"{DEMO_NAMESPACE}.polls",
                "redis_key_prefix": DEMO_NAMESPACE,
                "ledger_ttl_s": 3600,
                # Against the simulator every interval shrinks with its clock.
                "segmind_min_poll_interval_s": settings.segmind_min_poll_interval_s * scale,
                "segmind_retry_base_s": settings.segmind_retry_base_s * scale,
                "segmind_retry_cap_s": settings.segmind_retry_cap_s * scale,
                "segmind_time_scale": scale,
                # The account's rate, in the simulator's time.
                "segmind_rate_limit_per_minute": settings.segmind_rate_limit_per_minute / scale,
                "segmind_rate_limit_window_s": settings.segmind_rate_limit_window_s * scale,
                "metrics_refresh_s": 1.0,
                # The closing summary reads the balance after the jobs charged it.
                "segmind_credits_interval_s": 1.0,
            }
        )
        distributed, why = services_answer(settings)
        if distributed:
            console.print(
                "RabbitMQ and Redis answer: requests go through RabbitMQ "
                f"({demo_settings.requests_queue}), the ledger is in Redis."
            )
        else:
            console.print(
                f"{why}: running the same actors in this process on Dramatiq's in-memory "
                "broker with the in-memory ledger (start RabbitMQ and Redis, e.g. "
                "`make services`, to see the distributed pipeline)."
            )
        requests = [
            Request(workflow=w.name, inputs=w.default_inputs(), metadata={"demo": w.name})
            for w in catalog
        ]
        longest = max((w.expected_duration_s or 300.0) for w in catalog)
        timeout_s = max(60.0, longest * scale * _TIMEOUT_FACTOR)
        run = _run_distributed if distributed else _run_local
        results, app = run(stack, demo_settings, client, requests, timeout_s, console)
        console.print()
        for result in results:
            console.print_json(result.model_dump_json(exclude_none=True))
        _print_metrics(app, console)
        console.print(f"Output files are kept in {demo_settings.output_store}.")
        if sim_stats is not None:
            stats = sim_stats()
            console.print(
                f"Simulator: {stats['submits']} submits, {stats['polls']} polls, "
                f"{stats['rate_limited']} answered 429, ${stats['credits_charged_usd']:.4f} "
                "charged."
            )
    completed = sum(result.status is Status.COMPLETED for result in results)
    missing = len(requests) - len(results)
    tail = f" ({missing} without a result after {timeout_s:.0f} s)" if missing else ""
    console.print(f"{completed} of {len(requests)} workflows completed{tail}.")
    return 0 if completed == len(requests) else 1


def _outputs_settings(settings: Settings, simulator_url: str | None) -> dict[str, object]:
    """Where the demo keeps the output files: ``OUTPUT_STORE`` when set, else a directory
    under the system's temporary directory; from the simulator, its own (loopback) host
    is allowed too."""
    update: dict[str, object] = {}
    if settings.output_store is None:
        root = Path(tempfile.gettempdir()) / "segmind-queue-demo" / "outputs"
        update["output_store"] = root.as_uri()
    if simulator_url is not None:
        update["output_fetch_hosts"] = f"{settings.output_fetch_hosts},{simulator_url}"
        update["output_allow_private"] = True
    return update


def _run_local(
    stack: ExitStack,
    settings: Settings,
    client: SegmindClient,
    requests: list[Request],
    timeout_s: float,
    console: Console,
) -> tuple[list[Result], App]:
    from worker.results.publish import MemoryAmqp

    app = _start_app(stack, settings, client, console, local=True)
    reply_to = f"{DEMO_NAMESPACE}.results"
    board = _Board(requests, app.ledger)
    for request in requests:
        payload = request.model_copy(update={"reply_to": reply_to})
        app.actors.submit.send(payload.model_dump(mode="json", exclude_none=True))
    assert isinstance(app.amqp, MemoryAmqp)
    deadline = time.monotonic() + timeout_s
    with Live(board, console=console, refresh_per_second=8):
        while len(board.results) < len(requests) and time.monotonic() < deadline:
            try:
                delivered = app.amqp.wait_for(reply_to, len(board.results) + 1, 0.25)
            except TimeoutError:
                continue
            for message in delivered[len(board.results) :]:
                board.add(Result.model_validate_json(message.body))
    return board.ordered(), app


def _run_distributed(
    stack: ExitStack,
    settings: Settings,
    client: SegmindClient,
    requests: list[Request],
    timeout_s: float,
    console: Console,
) -> tuple[list[Result], App]:
    from producers.consumer import ResultConsumer, ResultTimeout
    from producers.publisher import Publisher

    app = _start_app(stack, settings, client, console, local=False)
    consumer = stack.enter_context(
        ResultConsumer.private(settings.amqp_url, prefix=f"{DEMO_NAMESPACE}.results")
    )
    stack.callback(consumer.delete_queue, if_empty=False)
    board = _Board(requests, app.ledger)
    with Publisher(settings.amqp_url, queue=settings.requests_queue) as publisher:
        for request in requests:
            publisher.publish(request.model_copy(update={"reply_to": consumer.queue}))
    # On a timeout the summary says how many are missing.
    with Live(board, console=console, refresh_per_second=8), suppress(ResultTimeout):
        consumer.wait([r.request_id for r in requests], timeout_s=timeout_s, on_result=board.add)
    return board.ordered(), app


def _start_app(
    stack: ExitStack, settings: Settings, client: SegmindClient, console: Console, *, local: bool
) -> App:
    """The worker's parts, their metrics served and their actors running, until ``stack``
    closes."""
    from worker.app import create_app

    app = create_app(settings, local=local, client=client)
    stack.callback(app.close)
    _serve_metrics(stack, app, settings, console)
    _start_worker(stack, app.broker)
    return app


def _serve_metrics(stack: ExitStack, app: App, settings: Settings, console: Console) -> None:
    """Serve the demo's metrics on 127.0.0.1 while it runs, and say where."""
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(
            settings.metrics_port, addr="127.0.0.1", registry=app.metrics.registry
        )
    except OSError:  # the port is taken (a worker runs here): any free one will do
        server, _ = start_http_server(0, addr="127.0.0.1", registry=app.metrics.registry)
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    console.print(
        f"Metrics: {url} while the demo runs (watch them with `segmind-queue status --url {url}`)."
    )


def _print_metrics(app: App, console: Console) -> None:
    """The demo's metrics as ``segmind-queue status`` shows a worker's."""
    from prometheus_client import generate_latest

    from console.status import parse_metrics, render, summarize

    app.monitor.refresh()  # the fleet gauges as they stand now, not at the last refresh
    text = generate_latest(app.metrics.registry).decode()
    console.print()
    console.print(render(summarize(parse_metrics(text), None, None)))


def _start_worker(stack: ExitStack, broker: dramatiq.Broker) -> None:
    # Dramatiq wakes its consumers every 100 ms: scaled poll intervals are short.
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    stack.callback(worker.stop)


@dataclass
class _Board:
    """The live table: each job's state as the ledger holds it, redrawn on each refresh."""

    requests: list[Request]
    ledger: Ledger
    results: dict[str, Result] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add(self, result: Result) -> None:
        self.results[result.request_id] = result

    def ordered(self) -> list[Result]:
        return [self.results[r.request_id] for r in self.requests if r.request_id in self.results]

    def __rich__(self) -> RenderableType:
        table = Table(title="segmind-queue demo")
        for column in ("workflow", "state", "segmind status", "polls", "elapsed"):
            table.add_column(column)
        elapsed = time.monotonic() - self.started
        for request in self.requests:
            result = self.results.get(request.request_id)
            if result is not None:
                total = result.timings.total_s
                table.add_row(
                    request.workflow,
                    str(result.status),
                    "",
                    str(result.polls),
                    f"{total:.1f} s" if total is not None else "",
                )
                continue
            try:
                record = self.ledger.get(request.request_id)
            except Exception:  # a display refresh must never break the demo
                record = None
            state = record.state if record is not None else "QUEUED"
            status = record.last_status if record is not None else ""
            polls = str(record.polls) if record is not None else "0"
            table.add_row(request.workflow, str(state), status, polls, f"{elapsed:.1f} s")
        return table
