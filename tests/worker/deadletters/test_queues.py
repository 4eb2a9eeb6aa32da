"""Dead letters on the real RabbitMQ: the reader leaves the queue as it was, the replay moves
confirmed messages only; recorded reasons come from the store."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pika

from producers import wire
from tests.deadletter_messages import body, death, declare_with_xq, envelope
from worker.deadletters.queues import read_dead_letters, replay_dead_letters, with_recorded_reasons
from worker.deadletters.rules import (
    body_digest,
    dead_letter_from,
    dead_letter_key,
)
from worker.store import MemoryStore


def test_recorded_reasons_are_added_from_the_store() -> None:
    store = MemoryStore()
    store.put(dead_letter_key("pfx", "m-1"), {"reason": "StoreError: down", "at": "1.0"}, 60)
    letters = [
        dead_letter_from("q.XQ", body(envelope()), headers=death()),
        dead_letter_from("q.XQ", body(envelope(message_id="m-2")), headers=death()),
    ]
    updated, problem = with_recorded_reasons(letters, store, "pfx")
    assert problem is None
    assert updated[0].reason == "StoreError: down"
    assert updated[1].reason == letters[1].reason


# ------------------------------------------------------------------------ on RabbitMQ


def _drain(channel: Any, queue: str) -> list[bytes]:
    """Consume (ack) every message of ``queue``."""
    bodies: list[bytes] = []
    while True:
        method, _properties, raw = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(raw)


def test_reading_leaves_every_message_in_place(
    amqp_url: str, channel: Any, queues: Callable[[str], str]
) -> None:
    xq = declare_with_xq(channel, queues("requests"))
    sent = [body(envelope(message_id=f"m-{n}")) for n in range(5)] + [b"\x00raw"]
    for raw in sent:
        channel.basic_publish("", xq, raw, pika.BasicProperties(delivery_mode=2))

    letters = read_dead_letters(amqp_url, xq)
    assert [letter.body for letter in letters] == sent
    assert [letter.id for letter in letters[:5]] == [f"m-{n}" for n in range(5)]
    assert [letter.body for letter in read_dead_letters(amqp_url, xq, limit=2)] == sent[:2]
    assert read_dead_letters(amqp_url, xq, limit=0) == []
    # Still all there, in the order they were published.
    assert _drain(channel, xq) == sent


def test_reading_a_missing_queue_finds_nothing(amqp_url: str, queues: Callable[[str], str]) -> None:
    assert read_dead_letters(amqp_url, wire.dead_letter_queue(queues("none"))) == []


def test_a_rejected_message_carries_its_source_and_time(
    amqp_url: str, channel: Any, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    xq = declare_with_xq(channel, queue)
    channel.basic_publish("", queue, body(envelope(queue=queue)), pika.BasicProperties())
    method, _properties, _raw = channel.basic_get(queue)
    channel.basic_nack(method.delivery_tag, requeue=False)

    [letter] = read_dead_letters(amqp_url, xq)
    assert letter.source_queue == queue
    assert letter.reason.startswith(f"rejected from {queue} with no reason recorded")
    assert letter.dead_lettered_at is not None
    assert abs((datetime.now(UTC) - letter.dead_lettered_at).total_seconds()) < 120


def test_replay_moves_only_confirmed_messages_and_reports_the_rest(
    amqp_url: str, channel: Any, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    xq = declare_with_xq(channel, queue)
    options = {"retries": 20, "traceback": "x", "broker_priority": 3}
    good = body(envelope(queue=queue, message_id="good", options=options))
    kept = body(envelope(queue=queue, message_id="other"))
    orphan = body(envelope(queue=queues("gone"), message_id="orphan"))
    for raw in (b"{bad", good, kept, orphan):
        channel.basic_publish("", xq, raw, pika.BasicProperties(delivery_mode=2))

    dry = replay_dead_letters(amqp_url, xq, ids=["good"], dry_run=True, plan=lambda _l: "plan")
    assert [(o.letter.id, o.outcome, o.detail) for o in dry.outcomes] == [
        ("good", "planned", "plan")
    ]
    assert len(_peek(amqp_url, xq)) == 4

    report = replay_dead_letters(
        amqp_url, xq, ids=["good", "orphan", body_digest(b"{bad"), "missing"]
    )
    outcomes = {o.letter.id: (o.outcome, o.detail) for o in report.outcomes}
    assert outcomes["good"] == ("replayed", "replayed")
    assert outcomes["orphan"][0] == "kept"
    assert "does not exist" in outcomes["orphan"][1]
    assert outcomes[body_digest(b"{bad")] == ("kept", "cannot be replayed: not JSON")
    assert report.not_found == ["missing"]

    # The replayed message is on its source queue, reset, with its priority; the rest
    # stayed in the XQ in their order.
    method, properties, raw = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    assert json.loads(raw)["options"] == {"broker_priority": 3}
    assert json.loads(raw)["message_id"] == "good"
    assert properties.message_id == "good"
    assert properties.delivery_mode == wire.PERSISTENT
    assert _peek(amqp_url, xq) == [body_digest(b"{bad"), "other", "orphan"]


def _peek(amqp_url: str, xq: str) -> list[str]:
    return [letter.id for letter in read_dead_letters(amqp_url, xq)]
