"""The pipeline's steps in the local mode (Dramatiq's in-memory broker, the in-memory
ledger), against the simulator over its socket: the ledger's recovery paths, seeded
directly, and the messages that are not requests. The same steps on RabbitMQ and Redis,
through ``segmind-queue worker``, are in ``tests/e2e``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from pydantic import SecretStr

from producers import wire
from producers.amqp import PublishError
from producers.contract import ErrorCode, ErrorInfo, Progress, ProgressEvent, Result, Status
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import SIM_API_KEY
from worker.app import App, create_app
from worker.cancel import CancelOutcome, cancel_request
from worker.ledger import Job, Record, State
from worker.replicas import ReplicaCheck
from worker.results.publish import MemoryAmqp
from worker.segmind.client import SegmindClient
from worker.settings import Settings
from worker.store import IndexChange, MemoryStore

REPLIES = "replies"
SKETCH_ID = "66cec9a38aeef98f887211f1-v1"


@contextmanager
def running_app(sim: RunningSimulator, **overrides: Any) -> Iterator[App]:
    """The local-mode app on the simulator, with a worker running its actors."""
    settings = Settings(
        **{
            "segmind_min_poll_interval_s": 0.02,
            "segmind_retry_base_s": 0.02,
            "segmind_retry_cap_s": 0.2,
            "segmind_total_timeout_s": 2,
            "segmind_read_timeout_s": 2,
            "segmind_time_scale": 0.002,
            "segmind_rate_limit_per_minute": 25_000,
            "segmind_rate_limit_window_s": 0.12,
            **overrides,
        }
    )
    client = SegmindClient(api_url=sim.url, api_key=SecretStr(SIM_API_KEY))
    built = create_app(settings, local=True, client=client)
    worker = dramatiq.Worker(built.broker, worker_timeout=20, worker_threads=4)
    worker.start()
    try:
        yield built
    finally:
        worker.stop()
        built.close()


@pytest.fixture
def app(sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    for name in ("SEGMIND_API_KEY", "SEGMIND_API_KEY_FILE", "REQUESTS_QUEUE", "POLLS_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    with running_app(sim) as built:
        yield built


def amqp(app: App) -> MemoryAmqp:
    assert isinstance(app.amqp, MemoryAmqp)
    return app.amqp


def send(app: App, *args: Any, message_id: str | None = None, **kwargs: Any) -> str:
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=app.settings.requests_queue,
        actor_name=wire.SUBMIT_ACTOR,
        args=args,
        kwargs=kwargs,
        options={},
        message_id=message_id or str(uuid.uuid4()),
    )
    app.broker.enqueue(message)
    return message.message_id


def results(app: App, count: int = 1) -> list[Result]:
    delivered = amqp(app).wait_for(REPLIES, count, timeout_s=20)
    return [Result.model_validate_json(d.body) for d in delivered]


def request(request_id: str = "r1", **fields: Any) -> dict[str, Any]:
    return {"request_id": request_id, "workflow": "sketch-maker", "reply_to": REPLIES} | fields


def job(request_id: str = "r1") -> Job:
    return Job(
        request_id=request_id,
        workflow="sketch-maker",
        workflow_id=SKETCH_ID,
        reply_to=REPLIES,
        queued_at=0.0,
        deadline_s=60,
        price_usd=0.1006,
    )


def test_a_request_runs_to_its_result(app: App, sim: RunningSimulator) -> None:
    send(app, request(metadata={"a": 1}))
    (result,) = results(app)
    assert result.status is Status.COMPLETED
    assert result.metadata == {"a": 1}
    # The publication is recorded just after the result reached its queue.
    wait_until(
        lambda: (found := app.ledger.get("r1")) is not None and found.published,
        timeout_s=10,
        message="the publication to be recorded",
    )
    record = app.ledger.get("r1")
    assert record is not None
    assert record.state is State.DONE
    assert Result.model_validate_json(record.result) == result


def test_a_redelivered_request_already_submitted_resumes_polling_without_a_post(
    app: App, sim: RunningSimulator
) -> None:
    """The submitter died after recording SUBMITTED, before sending the first poll."""
    with sim.client() as api:
        poll_url = api.post(f"/workflows/{SKETCH_ID}", json={}).json()["poll_url"]
    assert app.ledger.store.create(
        app.ledger.key("r1"),
        Record(
            job=job(),
            state=State.SUBMITTED,
            owner="m1",
            poll_url=poll_url,
            segmind_request_id="s1",
            submitted_at=1e9,
        ).to_fields(),
        ttl_s=3600,
    )
    submits = sim.stats()["submits"]
    send(app, request(), message_id="m1")
    (result,) = results(app)
    assert result.status is Status.TIMED_OUT  # submitted "in 2001": long past its deadline
    assert result.polls == 1
    assert sim.stats()["submits"] == submits


def test_a_result_decided_but_not_published_is_published_by_its_finisher(
    app: App, sim: RunningSimulator
) -> None:
    decided = Result(
        request_id="r1",
        workflow="sketch-maker",
        status=Status.FAILED,
        error=ErrorInfo(code=ErrorCode.GENERATION_FAILED, message="decided before the crash"),
    )
    stored = Record(
        job=job(), state=State.DONE, result=decided.model_dump_json(), finisher="m1"
    ).to_fields()
    assert app.ledger.store.create(app.ledger.key("r1"), stored, ttl_s=3600)
    send(app, request(), message_id="m2")  # a duplicate: not the finisher, ignored
    send(app, request(), message_id="m1")  # the finisher, redelivered: publishes
    (result,) = results(app)
    assert result == decided
    wait_until(
        lambda: (record := app.ledger.get("r1")) is not None and record.published,
        timeout_s=10,
        message="the publication to be recorded",
    )
    assert sim.stats()["submits"] == 0


def test_a_post_abandoned_mid_way_is_not_posted_again(app: App, sim: RunningSimulator) -> None:
    stored = Record(
        job=job(), state=State.SUBMITTING, owner="m1", submit_token="t", lease_until=1.0
    ).to_fields()
    assert app.ledger.store.create(app.ledger.key("r1"), stored, ttl_s=3600)
    send(app, request(), message_id="m1")
    (result,) = results(app)
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
    assert "worker stopped during the POST" in result.error.message
    assert sim.stats()["submits"] == 0


def test_resubmitting_an_unknown_outcome_when_configured(app: App, sim: RunningSimulator) -> None:
    app.settings.segmind_resubmit_unknown_outcome = True
    stored = Record(
        job=job(), state=State.SUBMITTING, owner="m1", submit_token="t", lease_until=1.0
    ).to_fields()
    assert app.ledger.store.create(app.ledger.key("r1"), stored, ttl_s=3600)
    send(app, request(), message_id="m9")
    (result,) = results(app)
    assert result.status is Status.COMPLETED
    assert sim.stats()["submits"] == 1


def test_a_lapsed_new_is_taken_over_by_a_duplicate(app: App, sim: RunningSimulator) -> None:
    stored = Record(job=job(), state=State.NEW, owner="lost", lease_until=1.0).to_fields()
    assert app.ledger.store.create(app.ledger.key("r1"), stored, ttl_s=3600)
    send(app, request(), message_id="m2")
    (result,) = results(app)
    assert result.status is Status.COMPLETED
    assert sim.stats()["submits"] == 1


def test_submit_retries_are_bounded(app: App, sim: RunningSimulator) -> None:
    app.settings.segmind_submit_max_retries = 2
    sim.add_faults({"endpoint": "submit", "status": 502})
    send(app, request())
    (result,) = results(app)
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.SERVER_ERROR
    assert "after 3 attempts" in result.error.message
    assert sim.stats()["submits"] == 3
    assert sim.stats()["jobs"] == 0


def test_a_message_with_two_arguments_is_rejected(app: App, sim: RunningSimulator) -> None:
    send(app, request(), {"extra": True})
    (result,) = results(app)
    assert result.status is Status.REJECTED
    assert result.error is not None
    assert "exactly one argument" in result.error.message


def test_an_invalid_duplicate_of_a_known_request_is_ignored(
    app: App, sim: RunningSimulator
) -> None:
    send(app, request())
    results(app)
    send(app, request(workflow="no-such-workflow"))
    send(app, request("r2"))  # processed after the invalid one: the marker that it was seen
    delivered = results(app, 2)
    assert [r.request_id for r in delivered] == ["r1", "r2"]


def test_malformed_and_orphaned_poll_messages_are_dead_lettered(
    app: App, sim: RunningSimulator
) -> None:
    app.actors.poll.send("no-step")
    app.actors.poll.send("no-such-request", 1)
    broker = app.broker
    assert isinstance(broker, dramatiq.brokers.stub.StubBroker)
    wait_until(
        lambda: len(broker.dead_letters_by_queue[app.settings.polls_queue]) == 2,
        timeout_s=10,
        message="two dead letters",
    )
    assert sim.stats()["polls"] == 0


def test_a_request_with_no_usable_reply_to_is_dead_lettered_with_its_reason(
    app: App, sim: RunningSimulator
) -> None:
    message_id = send(app, {"workflow": "sketch-maker", "reply_to": "amq.reserved"})
    dead = amqp(app).wait_for(wire.dead_letter_queue(app.settings.requests_queue), 1, 10)
    assert json.loads(dead[0].body)["message_id"] == message_id
    reason = dead[0].properties.headers[wire.DEAD_LETTER_REASON_HEADER]
    assert reason.startswith("invalid_request")
    assert sim.stats()["submits"] == 0


def test_a_post_answered_after_its_record_was_lost_is_dead_lettered_with_the_job(
    app: App, sim: RunningSimulator
) -> None:
    """Redis lost the record while the POST was in flight: the paid job cannot be
    followed, so the request goes to the dead-letter queue naming Segmind's job, not
    silently nowhere, and it is not POSTed again."""
    sim.add_faults({"endpoint": "submit", "hold_s": 0.5, "count": 1})
    send(app, request("lost"))
    wait_until(
        lambda: any(job["client_request_id"] == "lost" for job in sim.jobs()),
        timeout_s=10,
        message="Segmind to create the job",
    )
    app.ledger.delete("lost")
    dead = amqp(app).wait_for(wire.dead_letter_queue(app.settings.requests_queue), 1, 10)
    reason = dead[0].properties.headers[wire.DEAD_LETTER_REASON_HEADER]
    (created,) = [job for job in sim.jobs() if job["client_request_id"] == "lost"]
    assert reason.startswith("submit_recorded_too_late")
    assert created["request_id"] in reason
    assert sim.stats()["submits_by_client_request_id"] == {"lost": 1}
    assert REPLIES not in amqp(app).queues


@pytest.mark.parametrize("state", [State.NEW, State.SUBMITTING])
def test_a_poll_whose_record_lost_its_submission_ends_the_request_outcome_unknown(
    app: App, sim: RunningSimulator, state: State
) -> None:
    """A poll message exists only once SUBMITTED was written: finding the record back at
    NEW or SUBMITTING, Redis lost that write and Segmind's job id with it (a failover with
    LEDGER_MIN_REPLICAS=0). The request ends FAILED submit_outcome_unknown, unpaid by the
    result's account, instead of never; nothing is POSTed or polled."""
    record = app.ledger.open(job("behind"), "m1", time.time() + 60)
    assert record is not None
    if state is State.SUBMITTING:
        assert app.ledger.begin_submit(record, "tok", time.time() + 60) is not None
    app.actors.poll.send("behind", 1)
    (result,) = results(app)
    assert (result.request_id, result.status) == ("behind", Status.FAILED)
    assert result.error is not None
    assert result.error.code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
    assert "the ledger lost the record" in result.error.message
    assert result.cost_usd is None
    stored = app.ledger.get("behind")
    assert stored is not None
    assert stored.state is State.DONE
    assert sim.stats()["submits"] == sim.stats()["polls"] == 0


# ---------------------------------------------------------------- the budget guard


def test_a_request_over_the_credit_floor_waits_then_is_rejected_unpaid(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)
    with running_app(sim, segmind_credit_floor_usd=5000.0, segmind_budget_wait_s=0.3) as built:
        # The worker's monitor reads the figures at boot: $1000 of credits, under the floor.
        guard = built.pipeline.budget
        assert guard is not None
        wait_until(lambda: guard.check(0.1), timeout_s=10, message="the budget's figures")
        send(built, request())
        delivered = amqp(built).wait_for(REPLIES, 1, timeout_s=20)
        (result,) = [Result.model_validate_json(d.body) for d in delivered]
        blocked = built.metrics.registry.get_sample_value("segmind_budget_blocked")
    assert result.status is Status.REJECTED
    assert result.error is not None
    assert result.error.code is ErrorCode.BUDGET_EXHAUSTED
    assert "credit floor" in result.error.message
    assert result.cost_usd == 0
    assert blocked == 1
    assert sim.stats()["submits"] == 0


def test_spend_is_added_to_the_days_total(app: App, sim: RunningSimulator) -> None:
    send(app, request())
    (result,) = results(app)
    app.monitor.refresh()
    spent = app.metrics.registry.get_sample_value("segmind_credits_spent_today_usd")
    assert result.cost_usd is not None
    assert spent == pytest.approx(result.cost_usd)


def test_a_poll_says_how_late_it_ran(app: App, sim: RunningSimulator) -> None:
    send(app, request())
    (result,) = results(app)
    observed = app.metrics.registry.get_sample_value("segmind_poll_lateness_seconds_count")
    assert observed == result.polls


# ---------------------------------------------------------------- the shared rate


def test_calls_keep_to_the_rate_without_being_answered_429(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator allows 10 calls a second; the worker is told 10 a second too. Six
    jobs need more than a second's calls: they wait for tokens (re-enqueued, no thread
    sleeps) instead of being answered 429, and all complete."""
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)
    sim.reset(rpm=10, rate_window_s=1.0)
    with running_app(
        sim, segmind_rate_limit_per_minute=600, segmind_rate_limit_window_s=1.0
    ) as built:
        for n in range(6):
            send(built, request(f"r{n}"))
        delivered = amqp(built).wait_for(REPLIES, 6, timeout_s=60)
    statuses = {Result.model_validate_json(d.body).status for d in delivered}
    stats = sim.stats()
    assert statuses == {Status.COMPLETED}
    assert stats["submits"] + stats["polls"] > 10  # more than one window's worth
    assert stats["rate_limited"] <= 1


class _ReplyQueueTrouble:
    """A ``MemoryAmqp`` in front of which ``REPLIES`` fails: refused by RabbitMQ (a nack,
    a refused access) or, the first ``unreachable`` times, with the broker unreachable."""

    def __init__(self, inner: MemoryAmqp, *, refused: bool, unreachable: int = 0) -> None:
        self.inner = inner
        self.refused = refused
        self.unreachable = unreachable

    def publish(self, queue: str, body: bytes, properties: Any, **kwargs: Any) -> None:
        if queue == REPLIES and self.refused:
            raise PublishError(queue, "NackError (after 6 attempts)", refused=True)
        if queue == REPLIES and self.unreachable > 0:
            self.unreachable -= 1
            raise PublishError(queue, "ConnectionRefusedError (after 6 attempts)")
        self.inner.publish(queue, body, properties, **kwargs)


def test_a_result_its_reply_queue_refuses_goes_to_the_results_dead_letter_queue(
    app: App, sim: RunningSimulator
) -> None:
    app.pipeline.results.amqp = _ReplyQueueTrouble(amqp(app), refused=True)
    send(app, request())
    queue = app.settings.results_dead_letter_queue
    (letter,) = amqp(app).wait_for(queue, 1, timeout_s=20)
    result = Result.model_validate_json(letter.body)
    assert (result.request_id, result.status) == ("r1", Status.COMPLETED)
    assert letter.properties.correlation_id == "r1"
    headers = letter.properties.headers or {}
    assert headers[wire.REPLY_TO_HEADER] == REPLIES
    assert "refused the result: NackError" in headers[wire.DEAD_LETTER_REASON_HEADER]
    wait_until(
        lambda: (record := app.ledger.get("r1")) is not None and record.published,
        timeout_s=10,
        message="the ledger to record the result as handed over",
    )
    counted = app.metrics.registry.get_sample_value(
        "segmind_results_dead_lettered_total",
        {"workflow": "sketch-maker", "status": "COMPLETED"},
    )
    assert counted == 1
    assert sim.stats()["submits"] == 1


def test_a_result_is_held_back_while_rabbitmq_is_unreachable(
    app: App, sim: RunningSimulator
) -> None:
    # Not a refusal: nothing is dead-lettered, the message is retried, the result arrives.
    app.pipeline.results.amqp = _ReplyQueueTrouble(amqp(app), refused=False, unreachable=1)
    send(app, request())
    (result,) = results(app)
    assert result.status is Status.COMPLETED
    assert app.settings.results_dead_letter_queue not in amqp(app).queues
    assert sim.stats()["submits"] == 1


def test_a_request_without_an_id_is_named_by_its_message_and_paid_once(
    app: App, sim: RunningSimulator
) -> None:
    # A redelivery keeps the message's id: it must not become a second request.
    body = {"workflow": "sketch-maker", "reply_to": REPLIES}
    send(app, body, message_id="m-no-id")
    send(app, body, message_id="m-no-id")
    (result,) = results(app)
    assert (result.request_id, result.status) == ("m-no-id", Status.COMPLETED)
    wait_until(
        lambda: (record := app.ledger.get("m-no-id")) is not None and record.published,
        timeout_s=10,
        message="the request to be answered",
    )
    assert sim.stats()["submits"] == 1


def test_a_request_not_started_by_its_start_deadline_is_cancelled_unpaid(
    app: App, sim: RunningSimulator
) -> None:
    # Published 10 s ago with 5 s to start: it waited too long (in the queue, for rate or
    # budget) and must not be POSTed now.
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=app.settings.requests_queue,
        actor_name=wire.SUBMIT_ACTOR,
        args=(request(start_by_s=5.0),),
        kwargs={},
        options={},
        message_timestamp=int((time.time() - 10) * 1000),
    )
    app.broker.enqueue(message)
    (result,) = results(app)
    assert result.status is Status.CANCELLED
    assert result.error is not None
    assert result.error.code is ErrorCode.START_DEADLINE
    assert result.cost_usd == 0
    assert sim.stats()["submits"] == 0
    # With time left, the same request runs.
    send(app, request("r2", start_by_s=60.0))
    assert results(app, 2)[1].status is Status.COMPLETED


def test_a_cancel_during_the_post_ends_the_job_cancelled_and_charged(
    app: App, sim: RunningSimulator
) -> None:
    sim.add_faults({"endpoint": "submit", "delay_s": 1.0, "count": 1})
    send(app, request())
    # While the POST is held, the cancel finds it SUBMITTING and asks it to end the job.
    wait_until(
        lambda: (record := app.ledger.get("r1")) is not None and record.state is State.SUBMITTING,
        timeout_s=10,
        message="the POST to begin",
    )
    asked = cancel_request(app.ledger, app.pipeline.results, "r1", canceller="c", now=time.time())
    assert asked.outcome is CancelOutcome.REQUESTED
    (result,) = results(app)
    assert result.status is Status.CANCELLED
    assert result.error is not None
    assert "charged" in result.error.message
    assert result.segmind_request_id is not None
    assert sim.stats()["submits"] == 1
    assert sim.stats()["polls"] == 0


def test_a_cancel_before_any_worker_saw_the_request_ends_it_unpaid(
    app: App, sim: RunningSimulator
) -> None:
    marked = cancel_request(app.ledger, app.pipeline.results, "r1", canceller="c", now=time.time())
    assert marked.outcome is CancelOutcome.MARKED
    send(app, request())
    (result,) = results(app)
    assert (result.status, result.cost_usd) == (Status.CANCELLED, 0.0)
    assert sim.stats()["submits"] == 0


def test_a_cancel_message_cancels_and_a_malformed_one_is_dead_lettered(
    app: App, sim: RunningSimulator
) -> None:
    sim.add_faults({"endpoint": "submit", "status": 429, "count": 1000})  # r1 keeps waiting
    send(app, request())
    wait_until(
        lambda: app.ledger.get("r1") is not None,
        timeout_s=10,
        message="the request to be received",
    )
    app.actors.cancel.send({"request_ids": ["r1"]})
    (result,) = results(app)
    assert result.status is Status.CANCELLED
    # Counted just after the result reached its queue.
    wait_until(
        lambda: (
            app.metrics.registry.get_sample_value(
                "segmind_cancellations_total", {"workflow": "sketch-maker", "stage": "unpaid"}
            )
            == 1
        ),
        timeout_s=10,
        message="the cancellation to be counted",
    )
    app.actors.cancel.send({"request_ids": []})
    broker = app.broker
    assert isinstance(broker, StubBroker)
    wait_until(
        lambda: broker.dead_letters_by_queue.get(app.settings.cancels_queue),
        timeout_s=10,
        message="the malformed cancel to be dead-lettered",
    )


def _replies_until_result(app: App) -> list[Any]:
    """The messages on REPLIES once the result is among them."""
    wait_until(
        lambda: any(
            d.properties.type == wire.RESULT_TYPE for d in amqp(app).queues.get(REPLIES, ())
        ),
        timeout_s=20,
        message="the result",
    )
    return list(amqp(app).queues[REPLIES])


def test_a_request_asking_for_progress_hears_each_stage_before_its_one_result(
    sim: RunningSimulator,
) -> None:
    with running_app(sim, progress_interval_s=0) as built:
        send(built, request(progress=True))
        delivered = _replies_until_result(built)
        *updates, last = delivered
        assert last.properties.type == wire.RESULT_TYPE
        assert Result.model_validate_json(last.body).status is Status.COMPLETED
        assert all(d.properties.type == wire.PROGRESS_TYPE for d in updates)
        assert all(d.properties.correlation_id == "r1" for d in delivered)
        assert all(d.properties.delivery_mode == wire.TRANSIENT for d in updates)
        events = [Progress.model_validate_json(d.body) for d in updates]
        kinds = [p.event for p in events]
        assert kinds[:2] == [ProgressEvent.ACCEPTED, ProgressEvent.SUBMITTED]
        assert set(kinds[2:]) <= {ProgressEvent.PROCESSING, ProgressEvent.POLLED}
        # Every poll that found the job running told of it (the interval is 0).
        record = built.ledger.get("r1")
        assert record is not None
        assert len(kinds) - 2 == record.polls - 1
        assert events[1].segmind_request_id == record.segmind_request_id
        assert [p.polls for p in events] == sorted(p.polls for p in events)
        published = built.metrics.registry.get_sample_value(
            "segmind_progress_published_total", {"event": "accepted"}
        )
        assert published == 1


def test_polled_progress_is_published_at_most_once_an_interval(app: App) -> None:
    send(app, request(progress=True))  # the interval is 10 s; the job takes less
    kinds = [
        Progress.model_validate_json(d.body).event
        for d in _replies_until_result(app)
        if d.properties.type == wire.PROGRESS_TYPE
    ]
    assert kinds.count(ProgressEvent.POLLED) <= 1
    assert kinds.count(ProgressEvent.PROCESSING) <= 1


def test_a_request_not_asking_for_progress_gets_only_its_result(app: App) -> None:
    send(app, request())
    (only,) = _replies_until_result(app)
    assert only.properties.type == wire.RESULT_TYPE


class _ProgressRefused:
    """Publishes everything but progress messages, which RabbitMQ 'refuses'."""

    def __init__(self, inner: MemoryAmqp) -> None:
        self.inner = inner

    def publish(self, queue: str, body: bytes, properties: Any, **kwargs: Any) -> None:
        if properties.type == wire.PROGRESS_TYPE:
            raise PublishError(queue, "ConnectionRefusedError (after 6 attempts)")
        self.inner.publish(queue, body, properties, **kwargs)


def test_progress_that_cannot_be_published_never_holds_up_the_job(
    app: App, sim: RunningSimulator
) -> None:
    app.pipeline.results.amqp = _ProgressRefused(amqp(app))
    send(app, request(progress=True))
    (only,) = _replies_until_result(app)
    assert Result.model_validate_json(only.body).status is Status.COMPLETED
    assert sim.stats()["submits"] == 1
    assert app.settings.results_dead_letter_queue not in amqp(app).queues


# ---------------------------------------------------------------- tenants


def test_a_tenant_is_echoed_and_a_bad_one_is_rejected_unpaid(
    app: App, sim: RunningSimulator
) -> None:
    send(app, request("good", tenant="acme.eu-1"))
    send(app, request("bad", tenant="acme corp!"))
    by_id = {result.request_id: result for result in results(app, 2)}
    assert (by_id["good"].status, by_id["good"].tenant) == (Status.COMPLETED, "acme.eu-1")
    bad = by_id["bad"]
    assert bad.status is Status.REJECTED
    assert bad.error is not None
    assert bad.error.code is ErrorCode.INVALID_REQUEST
    assert "tenant" in bad.error.message
    assert sim.stats()["submits_by_client_request_id"].get("bad", 0) == 0
    assert app.pipeline.spend.today_by_tenant() == {
        "acme.eu-1": pytest.approx(by_id["good"].cost_usd)
    }


def test_a_tenant_over_its_daily_cap_is_rejected_while_another_completes(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("[tenants.capped]\ndaily_cap_usd = 0.05\n")
    with running_app(sim, tenants_file=tenants, segmind_budget_wait_s=0.3) as built:
        guard = built.pipeline.budget
        assert guard is not None
        wait_until(lambda: guard.check(0.1, "capped"), timeout_s=10, message="the budget's figures")
        send(built, request("over", tenant="capped"))
        send(built, request("fine", tenant="other-tenant"))
        by_id = {result.request_id: result for result in results(built, 2)}
    over = by_id["over"]
    assert (over.status, over.cost_usd, over.tenant) == (Status.REJECTED, 0.0, "capped")
    assert over.error is not None
    assert over.error.code is ErrorCode.BUDGET_EXHAUSTED
    assert "tenant 'capped'" in over.error.message
    assert by_id["fine"].status is Status.COMPLETED
    assert sim.stats()["submits_by_client_request_id"] == {"fine": 1}


# ---------------------------------------------------------------- the ledger's replicas


@dataclass
class Replicas:
    """What a ``ReplicatedMemory`` pretends its replicas do: how many are online, and how
    many acknowledge a write that sets ``state`` to a value (2 when not named)."""

    online: int = 0
    acks: dict[str, int] = field(default_factory=dict)

    def acknowledging(self, changes: Mapping[str, str]) -> int:
        return self.acks.get(changes.get("state", ""), 2)


class ReplicatedMemory(MemoryStore):
    """The in-memory store with pretend replicas (the real ones are in tests/chaos)."""

    def __init__(self, replicas: Replicas) -> None:
        super().__init__()
        self.replicas = replicas

    def update_replicated(
        self,
        key: str,
        expected: Mapping[str, str],
        changes: Mapping[str, str],
        ttl_s: int | None,
        index: IndexChange | None = None,
        *,
        replicas: int,
        timeout_s: float,
    ) -> tuple[bool, int]:
        applied = self.update(key, expected, changes, ttl_s, index)
        return applied, min(replicas, self.replicas.acknowledging(changes))

    def replicas_online(self) -> int:
        return self.replicas.online


@contextmanager
def replicated_app(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch, replicas: Replicas
) -> Iterator[App]:
    """The local-mode app with ``LEDGER_MIN_REPLICAS=1`` on pretend replicas, and a held
    request looking again after 50 ms instead of seconds."""
    monkeypatch.setattr("worker.pipeline.hold_delay_s", lambda rand: 0.05)
    with running_app(sim) as built:
        store = ReplicatedMemory(replicas)
        ledger = built.pipeline.ledger
        ledger.store, ledger.min_replicas = store, 1
        built.pipeline.replicas = ReplicaCheck(ledger.replicas_online, 1)
        yield built


def _short(app: App, step: str) -> float:
    found = app.metrics.registry.get_sample_value(
        "segmind_ledger_replicas_short_total", {"step": step}
    )
    return found or 0.0


def test_with_no_replica_online_a_request_is_held_unpaid_until_one_returns(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    replicas = Replicas(online=0)
    with replicated_app(sim, monkeypatch, replicas) as app:
        send(app, request("held"))
        wait_until(lambda: _short(app, "before_post") >= 3, timeout_s=10, message="holds")
        record = app.ledger.get("held")
        assert record is not None
        assert (record.state, record.attempts) == (State.NEW, 0)
        assert sim.stats()["submits_by_client_request_id"] == {}
        replicas.online = 1
        (result,) = results(app)
    assert result.status is Status.COMPLETED
    assert sim.stats()["submits_by_client_request_id"] == {"held": 1}


def test_a_submitting_record_no_replica_acknowledged_is_withdrawn_before_any_post(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica looked online, but the WAIT after SUBMITTING came back short: the
    record goes back to NEW, uncounted, and nothing is POSTed until a WAIT succeeds."""
    replicas = Replicas(online=1, acks={State.SUBMITTING.value: 0})
    with replicated_app(sim, monkeypatch, replicas) as app:
        send(app, request("withdrawn"))
        wait_until(lambda: _short(app, "before_post") >= 3, timeout_s=10, message="holds")
        record = app.ledger.get("withdrawn")
        assert record is not None
        assert (record.state, record.attempts, record.submit_token) == (State.NEW, 0, "")
        assert app.ledger.in_flight() == []
        assert sim.stats()["submits_by_client_request_id"] == {}
        replicas.acks.clear()
        (result,) = results(app)
    assert result.status is Status.COMPLETED
    assert sim.stats()["submits_by_client_request_id"] == {"withdrawn": 1}


def test_the_record_of_an_answer_is_written_again_until_a_replica_has_it(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the POST, the SUBMITTED record is written again (a WAIT alone counts
    nothing) until a replica acknowledges it; the job is then followed, POSTed once."""
    replicas = Replicas(online=1, acks={State.SUBMITTED.value: 0})
    with replicated_app(sim, monkeypatch, replicas) as app:
        send(app, request("answer"))
        wait_until(lambda: _short(app, "after_post") >= 3, timeout_s=10, message="rewrites")
        assert sim.stats()["submits_by_client_request_id"] == {"answer": 1}
        replicas.acks.clear()
        (result,) = results(app)
    assert result.status is Status.COMPLETED
    assert sim.stats()["submits_by_client_request_id"] == {"answer": 1}
    assert _short(app, "before_post") == 0
