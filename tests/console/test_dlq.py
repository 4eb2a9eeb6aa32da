"""``segmind-queue dlq``: list and replay from the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pika
from typer.testing import CliRunner

from console.cli import app
from producers import wire
from tests.conftest import free_port
from tests.deadletter_messages import body, declare_with_xq, envelope

# ------------------------------------------------------------------------ the command line


def _cli(namespace_queue: str, redis_url: str, *args: str, **env: str | None) -> Any:
    """``segmind-queue dlq ...`` on the queues ``<namespace_queue>.requests/.polls``."""
    settings: dict[str, str | None] = {
        "REQUESTS_QUEUE": f"{namespace_queue}.requests",
        "POLLS_QUEUE": f"{namespace_queue}.polls",
        "REDIS_KEY_PREFIX": namespace_queue.replace(".", "-"),
        "REDIS_URL": redis_url,
        "SEGMIND_API_KEY": None,
        "SEGMIND_API_KEY_FILE": None,
        **env,
    }
    return CliRunner().invoke(app, ["dlq", *args], env=settings)


def test_list_works_without_redis_and_never_shows_a_secret(
    amqp_url: str, channel: Any, queues: Callable[[str], str]
) -> None:
    base = queues("app")
    xq = declare_with_xq(channel, f"{base}.requests")
    key = "sk-0123456789abcdef-secret"
    headers = {wire.DEAD_LETTER_REASON_HEADER: f"refused with key {key}"}
    raw = body(
        envelope(
            queue=f"{base}.requests", message_id="leaky", args=[{"request_id": "r-9", "note": key}]
        )
    )
    channel.basic_publish("", xq, raw, pika.BasicProperties(headers=headers, delivery_mode=2))
    try:
        unreachable = f"redis://127.0.0.1:{free_port()}/0"
        listed = _cli(base, unreachable, "list", "--json", SEGMIND_API_KEY=key, AMQP_URL=amqp_url)
        assert listed.exit_code == 0, listed.output
        [row] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["id"] == "leaky"
        assert row["reason"] == "refused with key [redacted]"
        assert row["ledger_state"] == "?"
        assert key not in listed.output
        assert "Redis (REDIS_URL) could not be read" in listed.stderr

        table = _cli(base, unreachable, "list", "--queue", "requests", AMQP_URL=amqp_url)
        assert table.exit_code == 0, table.output
        assert "1 dead letters" in table.stdout
        empty = _cli(base, unreachable, "list", "--queue", "polls", AMQP_URL=amqp_url)
        assert empty.stdout.strip() == f"no dead letters in {base}.polls.XQ"
    finally:
        channel.queue_delete(xq)
        channel.queue_delete(f"{base}.requests")


def test_replay_needs_ids_or_all_and_rabbitmq(redis_url: str) -> None:
    neither = _cli("t.none", redis_url, "replay")
    assert neither.exit_code == 2
    assert "exactly one" in neither.stderr
    both = _cli("t.none", redis_url, "replay", "x", "--all")
    assert both.exit_code == 2
    down = _cli(
        "t.none",
        redis_url,
        "replay",
        "x",
        AMQP_URL=f"amqp://guest:hunter22@127.0.0.1:{free_port()}/%2F",
    )
    assert down.exit_code == 2
    assert "RabbitMQ (AMQP_URL)" in down.stderr
    assert "hunter22" not in down.output
