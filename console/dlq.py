"""The ``segmind-queue dlq`` commands: ``list`` and ``replay`` dead letters.

The work is done by ``worker.deadletters``; this module reads the settings, connects to
Redis for the ledger and the recorded reasons (optional: without Redis, reasons come from the
messages alone), and prints.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC
from enum import StrEnum
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from console.terminal import errors, fail, load_settings, open_store, warn
from producers import wire
from producers.amqp import BrokerError
from producers.redaction import redact
from worker.deadletters.queues import read_dead_letters, replay_dead_letters, with_recorded_reasons
from worker.deadletters.rules import DeadLetter, replay_plan
from worker.ledger import Ledger, Record
from worker.logs import secrets_of
from worker.settings import Settings
from worker.store import RedisStore, StoreError

dlq_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help=(
        "List and replay dead letters (the requests and polls queues' .XQ, and the results "
        "their reply queue refused)."
    ),
)


class QueueChoice(StrEnum):
    """Which dead-letter queues a command reads."""

    requests = "requests"
    polls = "polls"
    results = "results"
    all = "all"


_QUEUE_OPTION = typer.Option(
    "--queue",
    help=(
        "The dead-letter queue: of REQUESTS_QUEUE, of POLLS_QUEUE, RESULTS_DEAD_LETTER_QUEUE "
        "(results their reply queue refused), or all three."
    ),
    case_sensitive=False,
)


def _dead_letter_queues(settings: Settings, choice: QueueChoice) -> list[str]:
    requests = wire.dead_letter_queue(settings.requests_queue)
    polls = wire.dead_letter_queue(settings.polls_queue)
    results = settings.results_dead_letter_queue
    return {
        QueueChoice.requests: [requests],
        QueueChoice.polls: [polls],
        QueueChoice.results: [results],
        QueueChoice.all: [requests, polls, results],
    }[choice]


@dataclass
class _Context:
    """What both commands need: settings, the Redis store and ledger, the secrets."""

    settings: Settings
    store: RedisStore
    ledger: Ledger
    secrets: list[str]
    redis_problem: str | None = None

    @classmethod
    def load(cls) -> _Context:
        settings = load_settings()
        store = open_store(settings)
        ledger = Ledger(store, prefix=settings.redis_key_prefix, ttl_s=settings.ledger_ttl_s)
        return cls(settings, store, ledger, secrets_of(settings))

    def scrub(self, text: str) -> str:
        return redact(text, self.secrets)

    def enrich(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        if self.redis_problem is not None:
            return letters
        updated, problem = with_recorded_reasons(
            letters, self.store, self.settings.redis_key_prefix
        )
        if problem is not None:
            self._redis_failed(problem)
        return updated

    def record(self, letter: DeadLetter) -> tuple[Record | None, str]:
        """The letter's ledger record and its state as shown (``?`` when unreadable)."""
        if letter.request_id is None:
            return None, ""
        if self.redis_problem is not None:
            return None, "?"
        try:
            record = self.ledger.get(letter.request_id)
        except StoreError as exc:
            self._redis_failed(str(exc))
            return None, "?"
        return record, (str(record.state) if record is not None else "none")

    def plan(self, letter: DeadLetter) -> str:
        record, state = self.record(letter)
        if state == "?":
            return "unknown: the ledger could not be read (the worker still consults it)"
        return replay_plan(
            letter,
            record,
            now=time.time(),
            resubmit_unknown_outcome=self.settings.segmind_resubmit_unknown_outcome,
        )

    def _redis_failed(self, problem: str) -> None:
        if self.redis_problem is None:
            self.redis_problem = problem
            warn(f"Redis (REDIS_URL) could not be read: {self.scrub(problem)}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.store.close()


def _when(letter: DeadLetter) -> str:
    when = letter.dead_lettered_at
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else ""


def _body_fields(body: bytes, context: _Context) -> dict[str, str]:
    try:
        return {"body": context.scrub(body.decode("utf-8"))}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode("ascii")}


@dlq_app.command("list")
def list_command(
    queue: Annotated[QueueChoice, _QUEUE_OPTION] = QueueChoice.all,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=0, metavar="N", help="Show at most N messages.", show_default=False
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per message and line.")
    ] = False,
) -> None:
    """Show the dead letters, oldest first, without removing them: why each is there, the
    ledger state of its request, and (with --json) what a replay would do.

    Settings from the environment: AMQP_URL, REDIS_URL, REDIS_KEY_PREFIX, REQUESTS_QUEUE,
    POLLS_QUEUE (no API key needed). Exit code 2 when RabbitMQ cannot be read; when Redis
    cannot be, the reasons recorded there and the ledger states are left out (a warning).
    """
    context = _Context.load()
    try:
        letters: list[DeadLetter] = []
        for xq in _dead_letter_queues(context.settings, queue):
            left = None if limit is None else limit - len(letters)
            if left == 0:
                break
            try:
                letters += read_dead_letters(
                    context.settings.amqp_url.get_secret_value(), xq, limit=left
                )
            except (BrokerError, ValueError) as exc:
                fail(f"RabbitMQ (AMQP_URL): {' '.join(str(exc).split())}")
        letters = context.enrich(letters)
        if as_json:
            for letter in letters:
                _record, state = context.record(letter)
                line = {
                    "id": letter.id,
                    "queue": letter.queue,
                    "source_queue": letter.source_queue,
                    "actor": _kind(letter),
                    "request_id": letter.request_id,
                    "workflow": letter.workflow,
                    "dead_lettered_at": _when(letter) or None,
                    "ledger_state": state or None,
                    "retries": letter.retries,
                    "reason": context.scrub(letter.reason),
                    "replay": context.scrub(context.plan(letter)),
                    **_body_fields(letter.body, context),
                }
                typer.echo(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
            return
        _print_table(letters, context, _dead_letter_queues(context.settings, queue))
    finally:
        context.close()


def _kind(letter: DeadLetter) -> str | None:
    """What a dead letter is: its actor, or ``result`` for a result its reply queue
    refused."""
    return "result" if letter.is_result else letter.actor


def _print_table(letters: list[DeadLetter], context: _Context, queues: list[str]) -> None:
    if not letters:
        Console().print(f"no dead letters in {', '.join(queues)}", markup=False, highlight=False)
        return
    table = Table(title=f"{len(letters)} dead letters", box=box.SIMPLE_HEAD)
    for name in ("id", "from queue", "actor"):
        table.add_column(name, no_wrap=True)
    table.add_column("request_id", overflow="fold")
    table.add_column("workflow", overflow="fold")
    table.add_column("dead-lettered at", no_wrap=True)
    table.add_column("ledger", no_wrap=True)
    table.add_column("reason", overflow="fold", min_width=20)
    for letter in letters:
        _record, state = context.record(letter)
        table.add_row(
            letter.id,
            letter.source_queue or "?",
            _kind(letter) or "",
            letter.request_id or "",
            letter.workflow or "",
            _when(letter),
            state,
            context.scrub(letter.reason),
        )
    Console().print(table)


@dlq_app.command("replay")
def replay_command(
    ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[IDS]...",
            help="Ids of dead letters (as `dlq list` shows).",
            show_default=False,
        ),
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter of --queue.")
    ] = False,
    queue: Annotated[QueueChoice, _QUEUE_OPTION] = QueueChoice.all,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be replayed; move nothing.")
    ] = False,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Send results to this queue instead of the reply queue that refused them.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Send dead letters back to their source queue as new deliveries (same message_id,
    retry count reset), each removed from the dead-letter queue only once RabbitMQ has
    confirmed its republication. Prints, per message, what the worker will do with it given
    its request's ledger record: a request answered already POSTs nothing.

    A result its reply queue refused is published to that queue again, or to --to.

    A message that cannot be replayed (not a message of this service, a request that
    cannot be answered, no source queue) stays and is reported. Exit code 1 when an id was
    not found or a chosen message stayed, 2 when RabbitMQ cannot be reached.
    """
    if bool(ids) == replay_all:
        fail("give the ids to replay, or --all (exactly one)")
    context = _Context.load()
    try:
        amqp_url = context.settings.amqp_url.get_secret_value()
        missing: set[str] | None = None if replay_all else set(ids or ())
        kept = 0
        for xq in _dead_letter_queues(context.settings, queue):
            try:
                report = replay_dead_letters(
                    amqp_url,
                    xq,
                    ids=None if replay_all else list(ids or ()),
                    dry_run=dry_run,
                    plan=context.plan,
                    enrich=context.enrich,
                    to=to,
                    topology=context.settings.topology,
                )
            except (BrokerError, ValueError) as exc:
                fail(f"RabbitMQ (AMQP_URL): {' '.join(str(exc).split())}")
            if missing is not None:
                missing &= set(report.not_found)
            for outcome in report.outcomes:
                kept += outcome.outcome == "kept"
                letter = outcome.letter
                label = {"replayed": "replayed", "planned": "would replay", "kept": "kept"}
                typer.echo(
                    f"{letter.id}\t{label[outcome.outcome]}\t{_kind(letter) or '?'}\t"
                    f"{letter.request_id or '-'}\t{letter.source_queue or '?'}\t"
                    f"{context.scrub(outcome.detail)}"
                )
        searched = ", ".join(_dead_letter_queues(context.settings, queue))
        for unknown in sorted(missing or ()):
            errors.print(
                f"not found: {unknown} (in {searched})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if missing or kept:
            raise typer.Exit(1)
    finally:
        context.close()
