"""The ``segmind-queue`` command line."""

from __future__ import annotations

import json
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import JsonValue
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from console.cancel import cancel_command
from console.dlq import dlq_app
from console.lookup import get_command
from console.outputs import outputs_command
from console.spend import spend_command
from console.terminal import errors, fail, load_settings
from console.worker import healthcheck_command, worker_command
from producers.amqp import BrokerError, ConfirmedPublisher
from producers.catalog import CatalogError, Workflow, load_catalog
from producers.consumer import ConsumeError, ResultConsumer, ResultTimeout
from producers.contract import (
    DEFAULT_REPLY_TO,
    Request,
    RequestRejected,
    Result,
    Status,
    validate_request,
)
from producers.contract import Progress as ProgressMessage
from producers.publisher import Publisher
from simulator.cli import simulator_command

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Run paid, slow Segmind workflows from RabbitMQ.",
)
console = Console()


def _price(workflow: Workflow) -> str:
    return "?" if workflow.price_usd is None else f"${workflow.price_usd:.4f}"


def _duration(workflow: Workflow) -> str:
    seconds = workflow.expected_duration_s
    return "?" if seconds is None else f"{seconds:.0f} s"


@app.command()
def workflows(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also list each input's type and default.")
    ] = False,
) -> None:
    """Print the workflow catalog (the seeds plus SEGMIND_WORKFLOWS_FILE)."""
    try:
        catalog = load_catalog()
    except CatalogError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    table = Table(
        title=f"{len(catalog)} workflows (any <24 hex>-v<N> id is accepted too)",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("workflow id", no_wrap=True)
    table.add_column("price", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("inputs", overflow="fold")
    for workflow in catalog:
        names = ", ".join(spec.name for spec in workflow.inputs or ())
        table.add_row(
            workflow.name, workflow.workflow_id, _price(workflow), _duration(workflow), names
        )
    console.print(table)
    if verbose:
        for workflow in catalog:
            _print_inputs(workflow)


def _print_inputs(workflow: Workflow) -> None:
    table = Table(title=f"{workflow.name}: {workflow.title or ''}", box=box.SIMPLE_HEAD)
    table.add_column("input", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("default")
    for spec in workflow.inputs or ():
        table.add_row(spec.name, spec.type, "" if spec.default is None else str(spec.default))
    console.print(table)


@app.command()
def schemas(
    write: Annotated[
        bool, typer.Option("--write", help="Rewrite the schema files in producers/schemas/.")
    ] = False,
) -> None:
    """Print (or write) the JSON Schemas of the request and the result."""
    from producers import schemas as schema_files

    if write:
        for path in schema_files.write():
            console.print(f"wrote {path}", markup=False, highlight=False)
        return
    for name, text in schema_files.render().items():
        console.print(f"# {name}", markup=False, highlight=False)
        console.print(text, markup=False, highlight=False, soft_wrap=True)


# -- submit and results ------------------------------------------------------------------

#: Connection attempts of the command line: a user waiting at a terminal wants a prompt
#: answer when RabbitMQ is down, not a minute of retries (so the publisher does not ride
#: out a broker restart either: ``retry_for_s=0``).
_CLI_ATTEMPTS = 3
#: ``results`` without ``--follow`` stops after this long without a message.
_RESULTS_IDLE_S = 1.0


def _broker_failed(exc: BrokerError | ValueError, *, note: str = "") -> NoReturn:
    """RabbitMQ unreachable or refusing (or AMQP_URL invalid): one line on stderr, no
    traceback, exit 2.

    Their messages never hold the URL or its password.
    """
    line = " ".join(f"{exc}{note}".split())  # one line, whatever pika's text held
    fail(f"RabbitMQ (AMQP_URL): {line}")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _parse_inputs(items: list[str]) -> dict[str, JsonValue]:
    """``name=value`` gives a string, ``name:=json`` a JSON value (as httpie does)."""
    inputs: dict[str, JsonValue] = {}
    for item in items:
        name, sep, text = item.partition("=")
        is_json = name.endswith(":")
        name = name.removesuffix(":")
        if not sep or not name:
            fail(f"--input {item!r}: expected name=value, or name:=json for a JSON value")
        value: JsonValue = text
        if is_json:
            try:
                value = json.loads(text, parse_constant=_reject_constant)
            except ValueError as exc:
                fail(f"--input {name}: the value after ':=' is not JSON ({exc})")
        if name in inputs:
            fail(f"--input {name} is given twice")
        inputs[name] = value
    return inputs


def _read_requests(path: Path) -> list[tuple[str, object]]:
    """``(where, request)`` for each non-empty line of a JSON-lines file (``-``: stdin)."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    found: list[tuple[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            found.append((where, json.loads(line, parse_constant=_reject_constant)))
        except ValueError as exc:
            fail(f"{where}: not a JSON request ({exc})")
    if not found:
        fail(f"{path} holds no request")
    return found


def _emit(line: str, progress: Progress | None = None) -> None:
    """Print a line of machine output (a request id or a result) on stdout."""
    if progress is not None and console.is_terminal and errors.is_terminal:
        # Both on one screen: print above the progress bar rather than through it.
        progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        typer.echo(line)


def _result_line(result: Result) -> str:
    return result.model_dump_json(exclude_none=True)


@app.command()
def submit(
    workflow: Annotated[
        str | None,
        typer.Argument(
            metavar="WORKFLOW",
            help="A catalog name or a raw workflow id; not with --file.",
            show_default=False,
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="NAME=VALUE",
            help="An input as name=value (a string) or name:=json (any JSON value); repeatable.",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            metavar="FILE",
            help="A JSON-lines file (- for stdin): one request object per non-empty line.",
            dir_okay=False,
            allow_dash=True,
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the results and print them as JSON lines.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0, metavar="SECONDS", help="With --wait: the longest wait, in seconds."
        ),
    ] = 3600.0,
    reply_to: Annotated[
        str | None,
        typer.Option(
            "--reply-to",
            metavar="QUEUE",
            help="The queue for the results of the requests that name none. With --wait, the "
            "queue waited on (results of other requests found there are put back); without "
            "it, --wait uses a private queue.",
            show_default=False,
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            min=0, max=9, metavar="N", help="0-9, for requests that set none.", show_default=False
        ),
    ] = None,
    deadline_s: Annotated[
        float | None,
        typer.Option(
            "--deadline-s",
            metavar="SECONDS",
            help="Seconds after which a job ends TIMED_OUT, for requests that set none.",
            show_default=False,
        ),
    ] = None,
    request_id: Annotated[
        str | None,
        typer.Option(
            "--request-id",
            metavar="ID",
            help="The idempotency key (generated when absent); not with --file.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print each published request as a JSON object rather than its bare id.",
        ),
    ] = False,
    progress: Annotated[
        bool,
        typer.Option(
            "--progress",
            help="Ask for progress messages (progress: true) for requests that set none; "
            "with --wait, print them on stderr as they arrive.",
        ),
    ] = False,
) -> None:
    """Publish workflow requests to the requests queue; print each request_id.

    Every request is checked against the contract and the catalog before anything is
    published: an invalid one stops the command (exit 2). RabbitMQ comes from AMQP_URL,
    the queue from REQUESTS_QUEUE. With --wait the exit code is 0 when every result is
    COMPLETED, 1 when one is not, 3 when the timeout passes first.
    """
    if (workflow is None) == (file is None):
        fail("give either a WORKFLOW or --file (exactly one)")
    if file is not None and (inputs or request_id is not None):
        fail("--input and --request-id apply to a WORKFLOW; with --file, put them in each line")
    payloads: list[tuple[str, object]]
    if file is not None:
        payloads = _read_requests(file)
    else:
        given: dict[str, object] = {"workflow": workflow, "inputs": _parse_inputs(inputs or [])}
        if request_id is not None:
            given["request_id"] = request_id
        payloads = [("request", given)]
    defaults = {
        "reply_to": reply_to,
        "priority": priority,
        "deadline_s": deadline_s,
        "progress": True if progress else None,
    }
    for where, payload in payloads:
        if not isinstance(payload, dict):
            continue  # validation rejects it below, with its reason
        if wait and "reply_to" in payload and payload["reply_to"] != reply_to:
            waited = repr(reply_to) if reply_to else "a private queue (or pass --reply-to)"
            fail(f"{where}: sets reply_to {payload['reply_to']!r}, but --wait reads {waited}")
        for key, value in defaults.items():
            if value is not None:
                payload.setdefault(key, value)
    try:
        catalog = load_catalog()
    except CatalogError as exc:
        fail(str(exc))
    requests: list[Request] = []
    for where, payload in payloads:
        try:
            requests.append(validate_request(payload, catalog).request)
        except RequestRejected as exc:
            fail(f"{where}: {exc}")

    settings = load_settings()
    with ExitStack() as stack:
        consumer: ResultConsumer | None = None
        if wait:
            try:
                if reply_to is None:
                    consumer = ResultConsumer.private(settings.amqp_url, attempts=_CLI_ATTEMPTS)
                else:
                    consumer = ResultConsumer(
                        settings.amqp_url, queue=reply_to, attempts=_CLI_ATTEMPTS
                    )
            except (ConsumeError, ValueError) as exc:
                _broker_failed(exc)
            stack.enter_context(consumer)
            # The queue exists now, before any request that answers to it is published.
            requests = [r.model_copy(update={"reply_to": consumer.queue}) for r in requests]
        try:
            confirmed = ConfirmedPublisher(settings.amqp_url, attempts=_CLI_ATTEMPTS)
        except ValueError as exc:
            _broker_failed(exc)
        stack.enter_context(confirmed)
        producer = Publisher(queue=settings.requests_queue, publisher=confirmed, retry_for_s=0)
        for count, request in enumerate(requests):
            message_id = str(uuid.uuid4())
            try:
                producer.publish(request, message_id=message_id)
            except BrokerError as exc:
                _broker_failed(exc, note=f" ({count} of {len(requests)} requests published)")
            if as_json:
                published = {
                    "request_id": request.request_id,
                    "workflow": request.workflow,
                    "reply_to": request.reply_to,
                    "queue": settings.requests_queue,
                    "message_id": message_id,
                }
                _emit(json.dumps(published, separators=(",", ":")))
            else:
                _emit(request.request_id)
        if consumer is not None:
            raise typer.Exit(
                _wait_for_results(
                    consumer, [r.request_id for r in requests], timeout, private=reply_to is None
                )
            )


def _progress_line(update: ProgressMessage) -> str:
    """A progress message as one line for a person (stderr)."""
    parts = [f"{update.request_id} {update.event.value}", f"state {update.state}"]
    if update.segmind_status:
        parts.append(f"segmind {update.segmind_status}")
    if update.polls:
        parts.append(f"{update.polls} polls")
    if update.queue_position is not None:
        parts.append(f"{update.queue_position} ahead")
    if update.eta_s is not None:
        parts.append(f"ETA {update.eta_s:g} s" if update.eta_s >= 0 else "overdue")
    return ", ".join(parts)


def _wait_for_results(
    consumer: ResultConsumer, request_ids: list[str], timeout_s: float, *, private: bool
) -> int:
    """Print each result as it arrives (progress messages on stderr); the exit code of
    ``submit --wait``."""
    total = len(set(request_ids))
    progress = Progress(
        TextColumn("results"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        # Results go to stdout as they are: never through the progress display.
        redirect_stdout=False,
        redirect_stderr=False,
    )
    task = progress.add_task("results", total=total)

    def on_result(result: Result) -> None:
        _emit(_result_line(result), progress)
        progress.advance(task)

    def on_progress(update: ProgressMessage) -> None:
        progress.console.print(
            _progress_line(update), markup=False, highlight=False, soft_wrap=True
        )

    later = (
        f"they still go to queue {consumer.queue}: segmind-queue results --queue {consumer.queue}"
    )
    try:
        with progress:
            received = consumer.wait(
                request_ids,
                timeout_s=timeout_s,
                on_result=on_result,
                on_progress=on_progress,
                requeue_others=not private,
            )
    except ResultTimeout as exc:
        errors.print(
            f"timed out after {timeout_s:g} s: {len(exc.missing)} of {total} results missing "
            f"({later}):",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        for request_id in sorted(exc.missing):
            errors.print(f"  {request_id}", markup=False, highlight=False, soft_wrap=True)
        return 3
    except ConsumeError as exc:
        _broker_failed(exc)
    except KeyboardInterrupt:
        errors.print(f"interrupted ({later})", markup=False, highlight=False, soft_wrap=True)
        return 130
    if private:
        consumer.delete_queue(if_empty=True)
    if consumer.others:
        errors.print(
            f"note: took {len(consumer.others)} results of other requests off {consumer.queue}",
            markup=False,
            highlight=False,
        )
    failed = sum(result.status is not Status.COMPLETED for result in received.values())
    if failed:
        errors.print(
            f"{failed} of {total} requests did not complete", markup=False, highlight=False
        )
        return 1
    return 0


@app.command()
def results(
    queue: Annotated[
        str, typer.Option("--queue", metavar="QUEUE", help="The reply queue to read.")
    ] = DEFAULT_REPLY_TO,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Keep waiting for results until Ctrl-C (or --timeout)."),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0,
            metavar="SECONDS",
            help="Stop after this many seconds.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print the results on a reply queue as JSON lines, CONSUMING them (each is acked and
    leaves the queue).

    Without --follow it stops after about a second without a message. A result delivered
    twice is printed once. The queue is declared (durable) when it does not exist.
    """
    settings = load_settings()
    try:
        consumer = ResultConsumer(settings.amqp_url, queue=queue, attempts=_CLI_ATTEMPTS)
    except (ConsumeError, ValueError) as exc:
        _broker_failed(exc)
    with consumer:
        try:
            for result in consumer.results(
                timeout_s=timeout, idle_timeout_s=None if follow else _RESULTS_IDLE_S
            ):
                _emit(_result_line(result))
        except ConsumeError as exc:
            _broker_failed(exc)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how --follow ends
    if consumer.malformed or consumer.duplicates:
        errors.print(
            f"skipped {consumer.malformed} malformed and {consumer.duplicates} duplicate messages",
            markup=False,
            highlight=False,
        )


@app.command()
def status(
    url: Annotated[
        str,
        typer.Option(
            "--url", envvar="METRICS_URL", metavar="URL", help="A worker's metrics endpoint."
        ),
    ] = "http://127.0.0.1:9191/metrics",
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.1, metavar="SECONDS", help="Seconds between scrapes."),
    ] = 2.0,
    once: Annotated[
        bool, typer.Option("--once", help="Scrape once, print the view and exit.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --once: print the figures as JSON.")
    ] = False,
) -> None:
    """Show credits, spend, jobs, latency, Segmind calls and queues from a worker's metrics,
    refreshed every --interval until Ctrl-C.

    Rates (spend/h, jobs/min, calls/min) are over the last interval, so they appear from the
    second scrape. With --once the exit code is 1 when the endpoint cannot be read or does
    not serve Prometheus text; the live view shows such an error and keeps retrying.
    """
    if as_json and not once:
        fail("--json needs --once")
    # Imported here: prometheus_client must not be imported before the worker command sets
    # PROMETHEUS_MULTIPROC_DIR (see worker.metrics).
    from console.status import run_status

    raise typer.Exit(
        run_status(
            url, interval_s=interval, once=once, as_json=as_json, console=console, errors=errors
        )
    )


app.command("get")(get_command)
app.command("cancel")(cancel_command)
app.command("spend")(spend_command)
app.command("outputs")(outputs_command)
app.command("simulator")(simulator_command)
app.command("worker")(worker_command)
app.command("healthcheck")(healthcheck_command)
app.add_typer(dlq_app, name="dlq")


@app.command()
def demo(
    time_scale: Annotated[
        float,
        typer.Option(help="The simulator's time factor: 0.02 runs a 674 s workflow in 13 s."),
    ] = 0.02,
    yes: Annotated[
        bool, typer.Option("--yes", help="Spend real credits when a Segmind key is set.")
    ] = False,
) -> None:
    """Run the five seed workflows end to end (on the local simulator unless a key is set)."""
    from console.demo import run_demo

    raise typer.Exit(run_demo(time_scale=time_scale, yes=yes, console=console))


def main() -> None:
    """Entry point of the ``segmind-queue`` console script."""
    app()
