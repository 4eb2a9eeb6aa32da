"""The figures of a run and how they are printed: one table, every figure next to its
baseline, the ratio, its target and PASS/FAIL (a target not reached is printed, never hidden).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Shown for a figure that could not be measured.
NA = "n/a"


@dataclass
class Row:
    """One figure of a scenario, measured for the baseline and the variant.

    ``unit``: ``""`` (a count), ``"s"``, ``"%"`` (values are shares 0-1), ``"MB"``,
    ``"/s"``, ``"/min"``. ``ratio`` is variant / baseline unless given. ``passed`` is
    ``None`` for a figure without a target.
    """

    figure: str
    baseline: float | None
    variant: float | None
    unit: str = ""
    target: str = ""
    passed: bool | None = None
    ratio: float | None = None
    note: str = ""
    #: The figure has no baseline (shown as a dash, not as a missing value).
    no_baseline: bool = False

    def __post_init__(self) -> None:
        if (
            self.ratio is None
            and self.baseline is not None
            and self.variant is not None
            and self.baseline != 0
        ):
            self.ratio = self.variant / self.baseline


@dataclass
class ScenarioResult:
    """A scenario's rows, its raw figures (for ``--json``), notes and run time."""

    name: str
    title: str
    baseline: str
    variant: str
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def fmt(value: float | None, unit: str) -> str:
    """A value with its unit, or ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if unit == "%":
        return f"{value * 100:.1f} %"
    if unit == "s":
        return f"{value:.2f} s" if abs(value) < 100 else f"{value:.0f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit in ("/s", "/min"):
        return f"{value:.1f}{unit}"
    if float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.1f}"


def verdict(row: Row) -> Text:
    """PASS/FAIL for a figure with a target; ``n/a`` when it could not be measured."""
    passed = row.passed
    if passed is None:
        return Text(NA, style="yellow") if row.target else Text("")
    return Text("PASS", style="bold green") if passed else Text("FAIL", style="bold red")


def render(results: list[ScenarioResult], command: str, total_s: float) -> None:
    """Print the table (rich) and the notes to stdout."""
    console = Console(width=max(Console().width, 150))
    table = Table(
        title="segmind-queue benchmarks (issue 5)", box=box.SIMPLE_HEAVY, title_justify="left"
    )
    for column, justify in (
        ("scenario", "left"),
        ("figure", "left"),
        ("baseline", "right"),
        ("variant", "right"),
        ("ratio", "right"),
        ("target", "left"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for result in results:
        first = True
        label = f"{result.name}\n[dim]{result.seconds:.0f} s[/dim]"
        if result.error is not None:
            table.add_row(label, Text(f"error: {result.error}", style="red"), "", "", "", "", "")
            table.add_section()
            continue
        for row in result.rows:
            table.add_row(
                label if first else "",
                row.figure + (f" [dim]({row.note})[/dim]" if row.note else ""),
                "—" if row.no_baseline else fmt(row.baseline, row.unit),
                fmt(row.variant, row.unit),
                NA if row.ratio is None else f"{row.ratio:.2f}x",
                row.target,
                verdict(row),
            )
            first = False
        table.add_section()
    console.print(table)
    for result in results:
        console.print(
            f"[bold]{result.name}[/bold]: {result.title}. baseline = {result.baseline}; "
            f"variant = {result.variant}.",
            soft_wrap=False,
        )
        for note in result.notes:
            console.print(f"  - {note}", highlight=False)
    console.print(f"command: [bold]{command}[/bold]   total: {total_s:.0f} s", highlight=False)


def write_json(path: Path, results: list[ScenarioResult], command: str, total_s: float) -> None:
    data = {
        "command": command,
        "total_s": round(total_s, 1),
        "scenarios": [asdict(result) for result in results],
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
