"""``segmind-queue cancel``: take back requests, by id, by metadata, or every waiting one.

The cancels go to the workers as cancel messages (``Publisher.cancel``, the same message
any language can publish), which decide each one on the ledger (``worker.cancel``); this
command then reads the ledger until each has settled, and says what happened. ``--dry-run``
reads the ledger only and says what a cancel would do.
"""

from __future__ import annotations

import re
import time
from typing import Annotated

import typer

from console.terminal import fail, load_settings, open_store
from producers.amqp import BrokerError
from producers.contract import REQUEST_ID_PATTERN, TENANT_PATTERN, Result, Status
from producers.publisher import Publisher
from worker.cancel import cancel_request
from worker.ledger import Ledger, Record, State
from worker.store import StoreError

#: How often the command reads the ledger while it waits for the cancels to settle.
_POLL_S = 0.2


def cancel_command(
    request_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[REQUEST_IDS]...", help="Requests to cancel.", show_default=False),
    ] = None,
    all_waiting: Annotated[
        bool,
        typer.Option("--all-waiting", help="Every request not POSTed yet (the ledger's NEW)."),
    ] = False,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            metavar="KEY=VALUE",
            help="Only requests whose metadata has KEY equal to VALUE (as text); repeatable.",
        ),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant", metavar="TENANT", help="Only requests of this tenant.", show_default=False
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what each cancel would do; change nothing.")
    ] = False,
    wait_s: Annotated[
        float,
        typer.Option("--wait-s", min=0, help="How long to wait for the workers to settle them."),
    ] = 30.0,
) -> None:
    """Cancel requests. One never POSTed ends CANCELLED with cost 0 and is never POSTed; one
    POSTed is no longer followed and ends CANCELLED, charged (Segmind has no cancel); a
    finished one is left as it is. Each CANCELLED result goes to the request's reply queue.

    Give request ids, or --all-waiting; --tenant and --metadata narrow either. Prints a line per
    request: its id, what happened, and why. Exit code 1 when some did not settle within
    --wait-s (the workers decide the cancels: start one), 2 on bad usage or when RabbitMQ
    or Redis cannot be reached.
    """
    if bool(request_ids) == all_waiting:
        fail("give the request ids to cancel, or --all-waiting (exactly one)")
    wanted = _parse_metadata(metadata or [])
    if tenant is not None and not re.fullmatch(TENANT_PATTERN, tenant):
        fail(f"not a tenant (1-64 of A-Z a-z 0-9 . _ -): {tenant!r}")
    invalid = [i for i in request_ids or [] if not re.fullmatch(REQUEST_ID_PATTERN, i)]
    if invalid:
        fail(f"not a request id (1-128 printable ASCII characters, no spaces): {invalid[0]!r}")
    settings = load_settings()
    store = open_store(settings)
    ledger = Ledger(store, prefix=settings.redis_key_prefix, ttl_s=settings.ledger_ttl_s)
    try:
        try:
            targets = _targets(
                ledger, request_ids or [], all_waiting=all_waiting, wanted=wanted, tenant=tenant
            )
            if dry_run:
                for request_id in targets:
                    done = cancel_request(
                        ledger, None, request_id, canceller="dry-run", now=time.time(), dry_run=True
                    )
                    typer.echo(f"{request_id}\twould be {done.outcome}\t{done.detail}")
                return
            if targets:
                with Publisher(
                    settings.amqp_url,
                    queue=settings.requests_queue,
                    cancels_queue=settings.cancels_queue,
                    retry_for_s=0,
                ) as publisher:
                    publisher.cancel(targets)
            settled = _await_settled(ledger, targets, deadline=time.monotonic() + wait_s)
        except StoreError as exc:
            fail(f"Redis (REDIS_URL): {exc}")
        except (BrokerError, ValueError) as exc:
            fail(f"RabbitMQ (AMQP_URL): {' '.join(str(exc).split())}")
    finally:
        store.close()
    pending = "sent\tno worker has decided it yet"
    for request_id in targets:
        typer.echo(f"{request_id}\t{settled.get(request_id, pending)}")
    if len(settled) < len(targets):
        raise typer.Exit(1)


def _parse_metadata(items: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--metadata {item!r}: expected KEY=VALUE")
        wanted[key] = value
    return wanted


def _matches(record: Record, wanted: dict[str, str], tenant: str | None) -> bool:
    if tenant is not None and record.job.tenant != tenant:
        return False
    metadata = record.job.metadata or {}
    return all(key in metadata and str(metadata[key]) == value for key, value in wanted.items())


def _targets(
    ledger: Ledger,
    request_ids: list[str],
    *,
    all_waiting: bool,
    wanted: dict[str, str],
    tenant: str | None,
) -> list[str]:
    """The requests to cancel, in order, each once."""
    if all_waiting:
        records = [record for record in ledger.records() if record.state is State.NEW]
        records.sort(key=lambda record: record.job.queued_at)
        return [record.request_id for record in records if _matches(record, wanted, tenant)]
    chosen = list(dict.fromkeys(request_ids))
    if not wanted and tenant is None:
        return chosen
    kept = []
    for request_id in chosen:
        record = ledger.get(request_id)
        if record is not None and _matches(record, wanted, tenant):
            kept.append(request_id)
    return kept


def _await_settled(ledger: Ledger, request_ids: list[str], *, deadline: float) -> dict[str, str]:
    """What the workers made of each cancel, read from the ledger until all have settled or
    ``deadline`` (monotonic) passes: request id -> ``outcome\\tdetail``."""
    settled: dict[str, str] = {}
    while True:
        for request_id in request_ids:
            if request_id not in settled:
                line = _settled(ledger, request_id)
                if line is not None:
                    settled[request_id] = line
        if len(settled) == len(request_ids) or time.monotonic() >= deadline:
            return settled
        time.sleep(_POLL_S)


def _settled(ledger: Ledger, request_id: str) -> str | None:
    record = ledger.get(request_id)
    if record is None:
        if ledger.cancel_marked(request_id):
            return "marked\tno worker has received it: it ends CANCELLED, unpaid, when one does"
        return None
    if record.state is State.DONE:
        status = Result.model_validate_json(record.result).status if record.result else None
        if status is Status.CANCELLED:
            stage = "charged" if record.submitted_at is not None else "unpaid"
            return f"cancelled_{stage}\tits CANCELLED result went to {record.job.reply_to}"
        return f"finished\talready finished ({status}): nothing changed"
    if record.cancel_requested:
        return "requested\tbeing POSTed: it ends CANCELLED once Segmind answered"
    return None
