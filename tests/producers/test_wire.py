"""The wire format's names: one spelling of the queues beside a queue, and their inverses."""

from __future__ import annotations

import pytest

from producers import wire


def test_a_queues_companions_are_dramatiqs() -> None:
    assert wire.dead_letter_queue("app.requests") == "app.requests.XQ"
    assert wire.delay_queue("app.polls") == "app.polls.DQ"


@pytest.mark.parametrize(
    ("queue", "source"),
    [("app.requests.XQ", "app.requests"), ("app.requests", None), ("app.polls.DQ", None)],
)
def test_a_dead_letter_queue_names_its_source(queue: str, source: str | None) -> None:
    assert wire.dead_letter_source(queue) == source


@pytest.mark.parametrize(
    ("queue", "source"), [("app.polls.DQ", "app.polls"), ("app.polls", "app.polls")]
)
def test_a_delay_queue_feeds_its_queue(queue: str, source: str) -> None:
    assert wire.delayed_source(queue) == source


def test_the_defaults_are_the_local_services_and_the_documented_queues() -> None:
    assert wire.DEFAULT_AMQP_URL.startswith("amqp://guest:guest@127.0.0.1:5672/")
    assert (wire.DEFAULT_REQUESTS_QUEUE, wire.DEFAULT_POLLS_QUEUE) == (
        "segmind.requests",
        "segmind.polls",
    )
