"""Cancelling a request on the ledger (both stores; Redis is real): each stage's outcome,
and a cancel racing a POST under concurrency never both wins and lets the POST go."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest

from producers.contract import ErrorCode, Result, Status
from worker.cancel import CancelOutcome, cancel_request
from worker.ledger import (
    CANCEL_FINISHER,
    Job,
    Ledger,
    Record,
    State,
    SubmitAction,
    submit_decision,
)
from worker.results.publish import MemoryAmqp, ResultPublisher
from worker.store import MemoryStore, RedisStore, Store

NOW = 1_800_000_000.0


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def ledger(request: pytest.FixtureRequest, namespace: str) -> Iterator[Ledger]:
    store: Store
    if request.param == "memory":
        store = MemoryStore()
    else:
        store = RedisStore.from_url(request.getfixturevalue("redis_url"))
    ledger = Ledger(store, prefix=f"{namespace}-cancel-{secrets.token_hex(3)}", ttl_s=600)
    yield ledger
    for key in store.keys(f"{ledger.prefix}:"):
        store.delete(key)


@pytest.fixture
def amqp() -> MemoryAmqp:
    return MemoryAmqp()


def results(amqp: MemoryAmqp) -> ResultPublisher:
    return ResultPublisher(amqp, dead_letter_queue="requests.XQ")


def job(request_id: str = "r1") -> Job:
    return Job(
        request_id=request_id,
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        reply_to="replies",
        queued_at=NOW - 5,
        deadline_s=600,
        price_usd=0.1006,
    )


def published(amqp: MemoryAmqp) -> list[Result]:
    return [Result.model_validate_json(d.body) for d in amqp.queues.get("replies", [])]


def submitted(ledger: Ledger, request_id: str = "r1") -> Record:
    record = ledger.open(job(request_id), "m1", NOW + 60)
    sending = ledger.begin_submit(record, "t1", NOW + 60)
    assert sending is not None
    done = ledger.submitted(
        sending, poll_url="https://x/p", segmind_request_id="s-9", submitted_at=NOW, cost_usd=None
    )
    assert done is not None
    return done


def test_a_request_never_posted_ends_cancelled_unpaid(ledger: Ledger, amqp: MemoryAmqp) -> None:
    ledger.open(job(), "m1", NOW + 60)
    done = cancel_request(ledger, results(amqp), "r1", canceller="c1", now=NOW)
    assert done.outcome is CancelOutcome.CANCELLED_UNPAID
    (result,) = published(amqp)
    assert (result.status, result.cost_usd) == (Status.CANCELLED, 0.0)
    assert result.error is not None
    assert result.error.code is ErrorCode.CANCELLED
    record = ledger.get("r1")
    assert record is not None
    assert (record.state, record.published, record.finisher) == (
        State.DONE,
        True,
        CANCEL_FINISHER + "c1",
    )
    # The message that held it, delivered again, finds it done: no POST.
    assert submit_decision(record, "m1", NOW)[0] is SubmitAction.DROP


def test_a_posted_request_ends_cancelled_charged_with_segminds_id(
    ledger: Ledger, amqp: MemoryAmqp
) -> None:
    submitted(ledger)
    done = cancel_request(ledger, results(amqp), "r1", canceller="c1", now=NOW + 10)
    assert done.outcome is CancelOutcome.CANCELLED_CHARGED
    (result,) = published(amqp)
    assert result.status is Status.CANCELLED
    assert result.cost_usd == pytest.approx(0.1006)
    assert result.error is not None
    assert "charged" in result.error.message
    assert "s-9" in result.error.message


def test_a_cancel_during_the_post_asks_the_post_to_end_it(ledger: Ledger, amqp: MemoryAmqp) -> None:
    record = ledger.open(job(), "m1", NOW + 60)
    assert ledger.begin_submit(record, "t1", NOW + 60) is not None
    first = cancel_request(ledger, results(amqp), "r1", canceller="c1", now=NOW)
    again = cancel_request(ledger, results(amqp), "r1", canceller="c2", now=NOW)
    assert (first.outcome, again.outcome) == (CancelOutcome.REQUESTED, CancelOutcome.REQUESTED)
    stored = ledger.get("r1")
    assert stored is not None
    assert (stored.state, stored.cancel_requested) == (State.SUBMITTING, True)
    assert published(amqp) == []


def test_a_finished_request_is_left_as_it_is(ledger: Ledger, amqp: MemoryAmqp) -> None:
    record = ledger.open(job(), "m1", NOW + 60)
    result = Result(request_id="r1", workflow="sketch-maker", status=Status.COMPLETED, outputs=[])
    assert ledger.finish(record, result.model_dump_json(exclude_none=True), "m1") is not None
    done = cancel_request(ledger, results(amqp), "r1", canceller="c1", now=NOW)
    assert done.outcome is CancelOutcome.FINISHED
    assert "COMPLETED" in done.detail
    assert published(amqp) == []


def test_a_request_no_worker_has_seen_is_marked(ledger: Ledger, amqp: MemoryAmqp) -> None:
    dry = cancel_request(ledger, None, "r1", canceller="c1", now=NOW, dry_run=True)
    assert dry.outcome is CancelOutcome.MARKED
    assert not ledger.cancel_marked("r1")  # a dry run changes nothing
    done = cancel_request(ledger, results(amqp), "r1", canceller="c1", now=NOW)
    assert done.outcome is CancelOutcome.MARKED
    assert ledger.cancel_marked("r1")


def test_a_dry_run_changes_nothing(ledger: Ledger, amqp: MemoryAmqp) -> None:
    ledger.open(job(), "m1", NOW + 60)
    done = cancel_request(ledger, None, "r1", canceller="c1", now=NOW, dry_run=True)
    assert done.outcome is CancelOutcome.CANCELLED_UNPAID
    record = ledger.get("r1")
    assert record is not None
    assert record.state is State.NEW


def test_a_result_a_cancel_decided_is_published_by_any_delivery_after_a_crash() -> None:
    stored = Record(job=job(), state=State.DONE, result="{}", finisher=CANCEL_FINISHER + "c1")
    assert submit_decision(stored, "any-message", NOW)[0] is SubmitAction.REPUBLISH


@pytest.mark.integration
def test_a_cancel_racing_a_post_never_both_wins_and_lets_it_post(
    redis_url: str, namespace: str
) -> None:
    store = RedisStore.from_url(redis_url)
    ledger = Ledger(store, prefix=f"{namespace}-race-{secrets.token_hex(3)}", ttl_s=600)
    amqp = MemoryAmqp()
    outcomes: dict[CancelOutcome, int] = {}
    try:
        for n in range(150):
            request_id = f"race-{n}"
            record = ledger.open(job(request_id), "m1", NOW + 60)
            barrier = threading.Barrier(2)
            posted: list[bool] = []

            def post(
                record: Record = record,
                barrier: threading.Barrier = barrier,
                posted: list[bool] = posted,
            ) -> None:
                barrier.wait()  # the worker's begin_submit: the POST goes only if it wins
                posted.append(ledger.begin_submit(record, "t", NOW + 60) is not None)

            thread = threading.Thread(target=post)
            thread.start()
            barrier.wait()
            done = cancel_request(ledger, results(amqp), request_id, canceller="c", now=NOW)
            thread.join()
            outcomes[done.outcome] = outcomes.get(done.outcome, 0) + 1
            if posted[0]:
                # The POST went: the cancel must not have ended it unpaid.
                assert done.outcome is CancelOutcome.REQUESTED
            else:
                assert done.outcome is CancelOutcome.CANCELLED_UNPAID
        # Both orders happened, so the test saw the race from both sides.
        assert set(outcomes) == {CancelOutcome.REQUESTED, CancelOutcome.CANCELLED_UNPAID}, outcomes
    finally:
        for key in store.keys(f"{ledger.prefix}:"):
            store.delete(key)
        store.close()
