"""The ``segmind-queue`` command line."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from producers.catalog import CatalogError, Workflow, load_catalog
from simulator.cli import simulator_command

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Run paid, slow Segmind workflows from RabbitMQ.",
)
console = Console()
errors = Console(stderr=True)


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


app.command("simulator")(simulator_command)


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
    from producers.demo import run_demo

    raise typer.Exit(run_demo(time_scale=time_scale, yes=yes, console=console))


def main() -> None:
    """Entry point of the ``segmind-queue`` console script."""
    app()
