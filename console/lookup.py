"""``segmind-queue get REQUEST_ID``: where a request stands, read from the ledger (Redis).

No Segmind call: the state, the last Segmind status a poll read, the polls, the times, the
cost, an ETA from the learned durations, and the result once decided
(``worker.lookup.describe``).
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from console.terminal import fail, load_settings, open_store
from worker.history import DurationHistory
from worker.ledger import Ledger
from worker.lookup import describe
from worker.store import StoreError


def get_command(
    request_id: Annotated[str, typer.Argument(help="The request's request_id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show where a request stands, from the ledger: state, Segmind status, polls, times,
    cost, ETA, and the result once decided. No Segmind call.

    Exit code 0 when the request is known, 1 when the ledger has no record of it (never
    received by a worker, or forgotten after LEDGER_TTL_S), 2 when Redis cannot be read.
    """
    settings = load_settings()
    store = open_store(settings)
    try:
        ledger = Ledger(store, prefix=settings.redis_key_prefix, ttl_s=settings.ledger_ttl_s)
        try:
            record = ledger.get(request_id)
            if record is None:
                fail(
                    f"no record of {request_id!r}: not received by a worker yet, or "
                    f"forgotten after LEDGER_TTL_S ({settings.ledger_ttl_s} s)",
                    code=1,
                )
            history = DurationHistory(store, settings.redis_key_prefix).get(record.job.workflow)
        except StoreError as exc:
            fail(f"Redis (REDIS_URL): {exc}")
    finally:
        store.close()
    fields = describe(
        record, history=history, now=time.time(), time_scale=settings.segmind_time_scale
    )
    if as_json:
        typer.echo(json.dumps(fields, ensure_ascii=False, separators=(",", ":")))
        return
    table = Table(show_header=False, box=None)
    for name, value in fields.items():
        if name == "result":
            value = json.dumps(value, ensure_ascii=False)
        table.add_row(name, "—" if value is None else str(value))
    Console().print(table)
