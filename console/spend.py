"""``segmind-queue spend``: what the fleet spent, by tenant or by day, from the same figures
the workers keep for the budget guard (``worker.spend``, in Redis); no Segmind call."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

import typer

from console.terminal import fail, load_settings, open_store
from worker.spend import TENANT_SPEND_KEPT_S, DailySpend
from worker.store import StoreError


def parse_since(text: str, today: date) -> date:
    """``YYYY-MM-DD``, or ``Nd`` (N days before ``today``; ``0d`` is today).

    Raises:
        ValueError: neither, or further back than the spend is kept.
    """
    if match := re.fullmatch(r"(\d{1,4})d", text):
        since = today - timedelta(days=int(match.group(1)))
    else:
        try:
            since = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"--since {text!r}: expected YYYY-MM-DD or Nd (days)") from None
    kept_days = TENANT_SPEND_KEPT_S // 86400
    if since < today - timedelta(days=kept_days):
        raise ValueError(f"--since {text!r}: spend is kept {kept_days} days")
    if since > today:
        raise ValueError(f"--since {text!r} is after today (UTC)")
    return since


def spend_command(
    by: Annotated[
        Literal["tenant", "day"],
        typer.Option("--by", help="One line per tenant, or per UTC day."),
    ] = "tenant",
    since: Annotated[
        str,
        typer.Option(
            "--since",
            metavar="DATE",
            help="From this UTC day (YYYY-MM-DD, or Nd: N days ago) to today.",
        ),
    ] = "0d",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what the jobs that ended cost (USD), by tenant or by UTC day, from --since
    (default: today) to today. Read from Redis (REDIS_URL), as the budget guard reads it.

    Exit code 0, or 2 on bad usage or when Redis cannot be read.
    """
    today = datetime.now(UTC).date()
    try:
        start = parse_since(since, today)
    except ValueError as exc:
        fail(str(exc))
    settings = load_settings()
    store = open_store(settings)
    try:
        days = DailySpend(store, settings.redis_key_prefix, clock=time.time).by_day(start)
    except StoreError as exc:
        fail(f"Redis (REDIS_URL): {exc}")
    finally:
        store.close()
    totals: dict[str, float] = {}
    for day, spent in days.items():
        for tenant, usd in spent.items():
            key = tenant if by == "tenant" else day.isoformat()
            totals[key] = totals.get(key, 0.0) + usd
    rows = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    if by == "day":
        rows = sorted(totals.items())
    if as_json:
        payload = {"since": start.isoformat(), "by": by, "usd": dict(rows)}
        typer.echo(json.dumps(payload, separators=(",", ":")))
        return
    typer.echo(f"{by}\tusd (since {start.isoformat()}, UTC)")
    for key, usd in rows:
        typer.echo(f"{key}\t${usd:.4f}")
    typer.echo(f"total\t${sum(totals.values()):.4f}")
