"""The actors' retry accounting, on Dramatiq's own worker and ``Retries`` middleware (the
in-memory broker: what is tested is how Dramatiq counts, not any I/O)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.middleware import CurrentMessage

from producers import wire
from worker.actors import (
    MAX_FAILURE_RETRIES,
    _current,
    _retry_when,
    _waits_spend_no_retries,
    poll_scheduler,
)
from worker.pipeline import DUE_OPTION, WAITED_OPTION

#: More waits than a message has failure retries.
WAITS = MAX_FAILURE_RETRIES + 5


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    stub = StubBroker()
    stub.add_middleware(CurrentMessage())
    stub.emit_after("process_boot")
    worker = dramatiq.Worker(stub, worker_timeout=10, worker_threads=1)
    worker.start()
    try:
        yield stub
    finally:
        worker.stop()
        stub.close()


def waits_then_fails_once(
    broker: StubBroker, *, counted: bool
) -> tuple[dramatiq.Actor[[], None], list[dict[str, Any]]]:
    """An actor that waits ``WAITS`` times (``dramatiq.Retry``), then fails once with an
    exception, then succeeds; with ``counted`` its waits are left to Dramatiq's count."""
    seen: list[dict[str, Any]] = []

    def step() -> None:
        message = _current()
        seen.append(dict(message.options))
        if len(seen) <= WAITS:
            raise dramatiq.Retry(delay=1)
        if len(seen) == WAITS + 1:
            raise RuntimeError("Redis restarting")

    def run() -> None:
        if counted:
            step()
        else:
            with _waits_spend_no_retries(_current()):
                step()

    actor = dramatiq.actor(
        actor_name=f"waits_{counted}",
        broker=broker,
        retry_when=_retry_when,
        min_backoff=1,
        max_backoff=1,
    )(run)
    return actor, seen


def test_waits_leave_every_failure_retry_to_the_message(broker: StubBroker) -> None:
    actor, seen = waits_then_fails_once(broker, counted=False)
    actor.send()
    broker.join(actor.queue_name, fail_fast=False)
    assert not broker.dead_letters, "the message was dead-lettered after its waits"
    assert len(seen) == WAITS + 2
    # Only the failure was counted; every retry after a wait says it waited.
    assert seen[-1]["retries"] == 1
    assert all(options[WAITED_OPTION] for options in seen[1 : WAITS + 1])


def test_without_it_waits_use_up_the_retries_and_one_failure_dead_letters(
    broker: StubBroker,
) -> None:
    """The control: Dramatiq alone counts every wait, so a single failure after more waits
    than ``MAX_FAILURE_RETRIES`` dead-letters the message."""
    actor, seen = waits_then_fails_once(broker, counted=True)
    actor.send()
    broker.join(actor.queue_name, fail_fast=False)
    assert len(broker.dead_letters) == 1
    assert len(seen) == WAITS + 1


def test_the_poll_scheduler_sends_a_delayed_poll_that_keeps_its_due_time() -> None:
    stub = StubBroker()
    stub.declare_queue("app.polls")  # declare_actors does it in the service
    scheduled = poll_scheduler(stub, "app.polls")
    before = current_millis()
    scheduled("r-1", 3, 2.5)
    # The scheduler needs no actor object: the message names its actor and queue.
    (message,) = [dramatiq.Message.decode(raw) for raw in _queued(stub, "app.polls.DQ")]
    assert (message.queue_name, message.actor_name) == ("app.polls.DQ", wire.POLL_ACTOR)
    assert (message.args, message.kwargs) == (("r-1", 3), {})
    assert before + 2500 <= message.options[DUE_OPTION] <= current_millis() + 2500
    assert message.options["eta"] >= message.options[DUE_OPTION] - 10


def _queued(stub: StubBroker, queue: str) -> list[bytes]:
    held = stub.queues[queue]
    return [held.get_nowait() for _ in range(held.qsize())]
