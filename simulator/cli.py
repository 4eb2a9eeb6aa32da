"""``segmind-queue simulator``: run the local Segmind simulator in the foreground.

Registered by ``console/cli.py`` as ``app.command("simulator")(simulator_command)``.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

import typer
from pydantic import SecretStr, ValidationError

from simulator import SimulatorExtraMissingError, require_server
from simulator.config import (
    DEFAULT_OUTPUT_BYTES,
    Fault,
    OutputFault,
    SimulatorConfig,
    mask_secret,
    parse_fault_json,
    parse_output_fault_json,
    validation_message,
)

API_KEY_ENV = "SEGMIND_SIMULATOR_API_KEY"


def _default(field: str) -> Any:
    """An option's default: the config model's, so the two cannot drift apart."""
    return SimulatorConfig.model_fields[field].default


def simulator_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = _default("host"),
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = _default(
        "port"
    ),
    api_key: Annotated[
        str,
        typer.Option(
            envvar=API_KEY_ENV,
            show_default=False,
            help="The API key clients must send (x-api-key or Bearer). [default: sim-key]",
        ),
    ] = _default("api_key").get_secret_value(),
    time_scale: Annotated[
        float, typer.Option(help="Multiplies job durations and retention (0.01: 100x faster).")
    ] = _default("time_scale"),
    rpm: Annotated[
        int, typer.Option(help="Requests per minute per key before 429; 0: no limit.")
    ] = _default("rpm"),
    credits: Annotated[float, typer.Option(help="Starting credits (USD).")] = _default("credits"),
    seed: Annotated[
        int | None, typer.Option(help="Seed of durations, outcomes, faults.")
    ] = _default("seed"),
    fail_rate: Annotated[float, typer.Option(help="Share of jobs that end FAILED.")] = _default(
        "fail_rate"
    ),
    error_rate: Annotated[
        float, typer.Option(help="Share of calls answered a random 500/502/504.")
    ] = _default("error_rate"),
    drop_rate: Annotated[
        float, typer.Option(help="Share of calls whose connection is dropped unanswered.")
    ] = _default("drop_rate"),
    latency_s: Annotated[float, typer.Option(help="Latency added to every call (s).")] = _default(
        "latency_s"
    ),
    strict_workflows: Annotated[
        bool, typer.Option(help="Answer 404 for workflow ids not in the catalog.")
    ] = _default("strict_workflows"),
    retention_s: Annotated[
        float, typer.Option(help="Seconds (x time scale) a request can be polled.")
    ] = _default("retention_s"),
    public_url: Annotated[
        str | None, typer.Option(help="Base of poll_url (default: the URL the client used).")
    ] = _default("public_url"),
    rate_limit_polls: Annotated[
        bool, typer.Option(help="Whether polls count against the rate limit.")
    ] = _default("rate_limit_polls"),
    retry_after: Annotated[bool, typer.Option(help="Send Retry-After on 429 too.")] = _default(
        "retry_after"
    ),
    rate_window_s: Annotated[
        float, typer.Option(help="Length of a rate-limit window (real seconds).")
    ] = _default("rate_window_s"),
    reset_header_format: Annotated[
        Literal["iso", "epoch"], typer.Option(help="Format of x-rate-limit-reset-at-utc.")
    ] = _default("reset_header_format"),
    default_price: Annotated[
        float, typer.Option(help="Price (USD) of a workflow the catalog gives none.")
    ] = _default("default_price_usd"),
    free_credits: Annotated[float, typer.Option(help="Free credits reported (USD).")] = _default(
        "free_credits"
    ),
    cost_headers: Annotated[
        bool, typer.Option(help="Send x-cost and x-remaining-credits on submits.")
    ] = _default("cost_headers"),
    duration_spread: Annotated[
        float, typer.Option(help="Sigma of the lognormal spread of job durations.")
    ] = _default("duration_spread"),
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help='A fault rule as JSON, repeatable, e.g. \'{"endpoint": "poll", "status": 502, '
            '"count": 3}\' or \'{"job": "fail", "count": 1}\'.'
        ),
    ] = None,
    serve_outputs: Annotated[
        bool, typer.Option(help="Serve output files at <this URL>/outputs/<request_id>/<name>.")
    ] = _default("serve_outputs"),
    outputs_url: Annotated[
        str | None,
        typer.Option(
            help="Base of file outputs' URLs (default: this server's /outputs with "
            "--serve-outputs, else Segmind's CDN)."
        ),
    ] = _default("outputs_url"),
    output_bytes: Annotated[
        list[str] | None,
        typer.Option(
            help="Size of served files of a type, repeatable, e.g. video=5000000 "
            "(defaults: image 65536, video 1048576, audio 262144, file 131072)."
        ),
    ] = None,
    output_fault: Annotated[
        list[str] | None,
        typer.Option(
            help='An output download fault as JSON, repeatable, e.g. \'{"kind": "status", '
            '"status": 503, "count": 2}\' or \'{"kind": "slow", "delay_s": 0.5}\'.'
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (paths only).")] = _default(
        "access_log"
    ),
    admin_remote: Annotated[
        bool, typer.Option(help="Serve /_sim/ to non-loopback clients too.")
    ] = _default("admin_remote"),
) -> None:
    """Run the local Segmind simulator (submit, poll, credits; faults on demand).

    Admin and counters: GET /_sim/stats, /_sim/jobs; POST /_sim/faults, /_sim/reset.
    With --serve-outputs, completed jobs' files download from /outputs/ without a key.
    """
    try:
        rules: list[Fault] = [parse_fault_json(text) for text in fault or []]
        output_rules: list[OutputFault] = [
            parse_output_fault_json(text) for text in output_fault or []
        ]
        sizes = dict(DEFAULT_OUTPUT_BYTES)
        sizes.update(_sizes(output_bytes or []))
        config = SimulatorConfig(
            host=host,
            port=port,
            api_key=SecretStr(api_key),
            time_scale=time_scale,
            rpm=rpm,
            credits=credits,
            seed=seed,
            fail_rate=fail_rate,
            error_rate=error_rate,
            drop_rate=drop_rate,
            latency_s=latency_s,
            strict_workflows=strict_workflows,
            retention_s=retention_s,
            public_url=public_url,
            rate_limit_polls=rate_limit_polls,
            retry_after=retry_after,
            rate_window_s=rate_window_s,
            reset_header_format=reset_header_format,
            default_price_usd=default_price,
            free_credits=free_credits,
            cost_headers=cost_headers,
            duration_spread=duration_spread,
            faults=rules,
            serve_outputs=serve_outputs,
            outputs_url=outputs_url,
            output_bytes=sizes,
            output_faults=output_rules,
            access_log=access_log,
            admin_remote=admin_remote,
        )
    except ValidationError as exc:
        raise typer.BadParameter(validation_message(exc)) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    def announce(url: str) -> None:
        limit = f"{config.rpm} requests/min" if config.rpm else "no rate limit"
        typer.echo(
            f"Segmind simulator listening on {url} "
            f"(API key {mask_secret(api_key)}, time scale {config.time_scale:g}, {limit}, "
            f"credits ${config.credits:.2f})"
        )
        typer.echo(f"  SDK base_url: {url}/v1   counters: {url}/_sim/stats   stop: Ctrl+C")

    try:
        require_server()
    except SimulatorExtraMissingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # Imported here: uvicorn and starlette stay out of the other commands' start-up.
    from simulator.server import serve

    # Ctrl+C is the normal way to stop it: no traceback.
    with contextlib.suppress(KeyboardInterrupt):
        serve(config, on_started=announce)


def _sizes(items: list[str]) -> dict[str, int]:
    """``--output-bytes`` values (``video=5000000``) as a dict.

    Raises:
        ValueError: not ``TYPE=BYTES`` with an integer.
    """
    sizes: dict[str, int] = {}
    for item in items:
        kind, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise ValueError(f"--output-bytes {item!r}: expected TYPE=BYTES, e.g. image=65536")
        sizes[kind.strip()] = int(value)
    return sizes
