"""``segmind-queue outputs REQUEST_ID [--download DIR]``: a finished request's outputs, and
their stored copies fetched from ``OUTPUT_STORE``, each checked against its SHA-256.

The result is read from the ledger (Redis), as ``get`` reads it: no Segmind call.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer

from console.terminal import fail, load_settings, open_store, warn
from producers.contract import Output, Result
from worker.ledger import Ledger, State
from worker.outputs.store import StoreUnavailable, open_output_store
from worker.store import StoreError


def outputs_command(
    request_id: Annotated[str, typer.Argument(help="The request's request_id.")],
    download: Annotated[
        Path | None,
        typer.Option(
            "--download",
            metavar="DIR",
            help="Copy the stored files into DIR (checked against their sha256).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outputs as JSON.")] = False,
) -> None:
    """List a finished request's outputs: where each is stored, its size and SHA-256, or
    why it was not stored; with --download, fetch the stored files from OUTPUT_STORE.

    Exit code 0; 1 when the request is unknown or unfinished, or an output could not be
    downloaded or did not match its sha256; 2 on bad usage or when Redis or the store
    cannot be read.
    """
    settings = load_settings()
    store = open_store(settings)
    try:
        ledger = Ledger(store, prefix=settings.redis_key_prefix, ttl_s=settings.ledger_ttl_s)
        record = ledger.get(request_id)
    except StoreError as exc:
        fail(f"Redis (REDIS_URL): {exc}")
    finally:
        store.close()
    if record is None:
        fail(f"no record of {request_id!r}", code=1)
    if record.state is not State.DONE or not record.result:
        fail(f"{request_id!r} has not finished (state {record.state})", code=1)
    result = Result.model_validate_json(record.result)
    outputs = result.outputs or []
    if as_json:
        typer.echo(json.dumps([o.model_dump(mode="json", exclude_none=True) for o in outputs]))
    else:
        for output in outputs:
            typer.echo(_line(output))
    if download is None:
        return
    if settings.output_store is None:
        fail("--download needs OUTPUT_STORE, the store the copies are in")
    try:
        copies = open_output_store(settings.output_store)
    except ValueError as exc:
        fail(str(exc))
    download.mkdir(parents=True, exist_ok=True)
    bad = 0
    for output in outputs:
        if not output.stored:
            continue
        target = download / Path(str(output.data)).name
        digest = hashlib.sha256()
        try:
            with target.open("wb") as out:
                for chunk in copies.chunks(str(output.data)):
                    digest.update(chunk)
                    out.write(chunk)
        except (StoreUnavailable, ValueError) as exc:
            warn(f"{output.keyname}: {exc}")
            target.unlink(missing_ok=True)
            bad += 1
            continue
        if digest.hexdigest() != output.sha256:
            warn(f"{output.keyname}: {target} does not match its sha256")
            bad += 1
            continue
        typer.echo(f"downloaded {output.keyname} to {target}")
    if bad:
        raise typer.Exit(1)


def _line(output: Output) -> str:
    if output.stored:
        return f"{output.keyname}\t{output.data}\t{output.bytes} bytes\tsha256 {output.sha256}"
    if output.stored is False:
        return f"{output.keyname}\tnot stored: {output.store_error}\t{output.data}"
    return f"{output.keyname}\t{output.type}\t{output.data}"
