"""The submit ledger: the pure decisions, and the transitions on both stores (Redis is real)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from worker.ledger import (
    LEASE_GRACE_S,
    InFlight,
    Job,
    Ledger,
    LedgerError,
    PollAction,
    Record,
    ReplicasShortError,
    State,
    SubmitAction,
    poll_decision,
    submit_decision,
)
from worker.store import MemoryStore, RedisStore, Store

NOW = 1_800_000_000.0


def job(request_id: str = "req-1") -> Job:
    return Job(
        request_id=request_id,
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        reply_to="segmind.results",
        queued_at=NOW - 5,
        deadline_s=2700.0,
        price_usd=0.1006,
        expected_duration_s=40.0,
        priority=3,
        metadata={"order": 17, "tags": ["a", "ü"]},
    )


# ---------------------------------------------------------------- submit_decision


def test_new_held_by_this_delivery_posts() -> None:
    record = Record(job=job(), owner="m1", lease_until=NOW + 60)
    assert submit_decision(record, "m1", NOW) == (SubmitAction.POST, 0.0)


def test_new_held_by_another_delivery_waits_for_its_lease() -> None:
    record = Record(job=job(), owner="m1", lease_until=NOW + 60)
    action, wait = submit_decision(record, "m2", NOW)
    assert action is SubmitAction.WAIT
    assert wait == pytest.approx(60 + LEASE_GRACE_S)


def test_new_whose_lease_lapsed_is_taken_over() -> None:
    record = Record(job=job(), owner="m1", lease_until=NOW - 1)
    assert submit_decision(record, "m2", NOW)[0] is SubmitAction.TAKE_OVER


@pytest.mark.parametrize("message_id", ["m1", "m2"])
def test_submitting_within_its_lease_waits_whoever_asks(message_id: str) -> None:
    # The same message id may be a twin (Dramatiq re-enqueued it and a crash kept both):
    # only the lease tells a POST in flight from an abandoned one.
    record = Record(job=job(), state=State.SUBMITTING, owner="m1", lease_until=NOW + 30)
    action, wait = submit_decision(record, message_id, NOW)
    assert action is SubmitAction.WAIT
    assert wait == pytest.approx(30 + LEASE_GRACE_S)


def test_submitting_past_its_lease_is_an_unknown_outcome() -> None:
    record = Record(job=job(), state=State.SUBMITTING, owner="m1", lease_until=NOW - 0.001)
    assert submit_decision(record, "m1", NOW)[0] is SubmitAction.OUTCOME_UNKNOWN


def test_submitted_without_a_poll_starts_polling_and_with_one_drops() -> None:
    record = Record(job=job(), state=State.SUBMITTED, submitted_at=NOW, poll_url="http://x/1")
    assert submit_decision(record, "m9", NOW)[0] is SubmitAction.START_POLLING
    polling = Record(job=job(), state=State.SUBMITTED, poll_step=1, poll_owner="p1")
    assert submit_decision(polling, "m1", NOW)[0] is SubmitAction.DROP


def test_done_republishes_only_for_its_finisher_until_published() -> None:
    done = Record(job=job(), state=State.DONE, result="{}", finisher="m1", published=False)
    assert submit_decision(done, "m1", NOW)[0] is SubmitAction.REPUBLISH
    assert submit_decision(done, "m2", NOW)[0] is SubmitAction.DROP
    published = Record(job=job(), state=State.DONE, result="{}", finisher="m1", published=True)
    assert submit_decision(published, "m1", NOW)[0] is SubmitAction.DROP


# ---------------------------------------------------------------- poll_decision


def polling_record(step: int, owner: str) -> Record:
    return Record(job=job(), state=State.SUBMITTED, poll_step=step, poll_owner=owner)


def test_poll_claims_a_later_step_and_redelivery_of_the_current_one_polls() -> None:
    assert poll_decision(polling_record(0, ""), 1, "p1") is PollAction.CLAIM
    assert poll_decision(polling_record(3, "p3"), 4, "p4") is PollAction.CLAIM
    assert poll_decision(polling_record(3, "p3"), 3, "p3") is PollAction.POLL


def test_stale_and_duplicate_poll_messages_drop() -> None:
    assert poll_decision(polling_record(3, "p3"), 3, "twin") is PollAction.DROP
    assert poll_decision(polling_record(3, "p3"), 2, "p2") is PollAction.DROP


def test_a_poll_finding_its_record_before_submitted_says_writes_were_lost() -> None:
    for state in (State.NEW, State.SUBMITTING):
        assert poll_decision(Record(job=job(), state=state), 1, "p1") is PollAction.BEHIND


def test_poll_of_a_done_or_missing_record() -> None:
    done = Record(job=job(), state=State.DONE, finisher="p5", published=False)
    assert poll_decision(done, 5, "p5") is PollAction.REPUBLISH
    assert poll_decision(done, 6, "p6") is PollAction.DROP
    assert poll_decision(None, 1, "p1") is PollAction.MISSING


# ---------------------------------------------------------------- records


def test_record_round_trips_through_its_stored_fields() -> None:
    record = Record(
        job=job(),
        state=State.SUBMITTED,
        owner="m1",
        lease_until=NOW + 0.123456789,
        attempts=2,
        poll_url="https://api.segmind.com/v1/x",
        segmind_request_id="abc",
        submitted_at=NOW,
        cost_usd=None,
        poll_step=4,
        poll_owner="p4",
        polls=4,
        last_status="PROCESSING",
        published=True,
    )
    stored = record.to_fields()
    assert all(isinstance(value, str) for value in stored.values())
    assert Record.from_fields(stored) == record


def test_unreadable_record_is_a_ledger_error() -> None:
    with pytest.raises(LedgerError):
        Record.from_fields({"state": "NEW"})
    with pytest.raises(LedgerError):
        Record.from_fields({"job": job().to_json(), "state": "LOST"})


# ---------------------------------------------------------------- transitions, both stores


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest, namespace: str) -> Iterator[Ledger]:
    store: Store
    if request.param == "memory":
        store = MemoryStore()
    else:
        redis_url = request.getfixturevalue("redis_url")
        store = RedisStore.from_url(redis_url)
    ledger = Ledger(
        store, prefix=f"{namespace}-{secrets.token_hex(3)}", ttl_s=3600, clock=lambda: NOW
    )
    yield ledger
    for request_id in ("req-1", "req-2", *(f"race-{i}" for i in range(20))):
        ledger.delete(request_id)
    store.delete(ledger.in_flight_key)
    store.delete(f"{ledger.prefix}:snapshot")


def test_the_full_path_new_to_done(ledger: Ledger) -> None:
    opened = ledger.open(job(), "m1", NOW + 60)
    assert opened.state is State.NEW
    assert opened.owner == "m1"
    assert ledger.get("req-1") == opened

    sending = ledger.begin_submit(opened, "tok", NOW + 120)
    assert sending is not None
    assert sending.attempts == 1
    submitted = ledger.submitted(
        sending, poll_url="https://p/1", segmind_request_id="s1", submitted_at=NOW, cost_usd=0.1
    )
    assert submitted is not None
    claimed = ledger.claim_poll(submitted, 1, "p1")
    assert claimed is not None
    counted = ledger.polled(claimed, status="PROCESSING", failed=False)
    assert counted is not None
    assert counted.polls == 1
    assert counted.last_status == "PROCESSING"
    done = ledger.finish(counted, '{"status":"COMPLETED"}', "p1")
    assert done is not None
    assert done.state is State.DONE
    assert not done.published
    published = ledger.mark_published(done)
    assert published is not None
    assert ledger.get("req-1") == published


def test_open_returns_the_existing_record_to_a_duplicate(ledger: Ledger) -> None:
    first = ledger.open(job(), "m1", NOW + 60)
    again = ledger.open(job(), "m2", NOW + 90)
    assert again == first
    assert again.owner == "m1"


def test_stale_transitions_are_refused(ledger: Ledger) -> None:
    opened = ledger.open(job(), "m1", NOW + 60)
    sending = ledger.begin_submit(opened, "tok", NOW + 120)
    assert sending is not None
    # A second delivery still holding the NEW view cannot start another POST.
    assert ledger.begin_submit(opened, "tok2", NOW + 120) is None
    # A POST that is not the one in flight cannot record its outcome.
    impostor = Record(job=sending.job, state=State.SUBMITTING, submit_token="other")
    assert (
        ledger.submitted(
            impostor, poll_url="u", segmind_request_id="s", submitted_at=NOW, cost_usd=None
        )
        is None
    )
    assert ledger.finish(impostor, "{}", "m9") is None
    assert ledger.get("req-1") == sending


def test_release_returns_a_post_that_never_reached_segmind_to_new(ledger: Ledger) -> None:
    sending = ledger.begin_submit(ledger.open(job(), "m1", NOW + 60), "tok", NOW + 120)
    assert sending is not None
    released = ledger.release(sending, "m1", NOW + 300)
    assert released is not None
    assert released.state is State.NEW
    assert released.lease_until == NOW + 300
    again = ledger.begin_submit(released, "tok2", NOW + 400)
    assert again is not None
    assert again.attempts == 2


def test_one_poll_step_is_claimed_once(ledger: Ledger) -> None:
    sending = ledger.begin_submit(ledger.open(job(), "m1", NOW + 60), "tok", NOW + 120)
    assert sending is not None
    submitted = ledger.submitted(
        sending, poll_url="u", segmind_request_id="s", submitted_at=NOW, cost_usd=None
    )
    assert submitted is not None
    assert ledger.claim_poll(submitted, 1, "p1") is not None
    assert ledger.claim_poll(submitted, 1, "twin") is None


def test_only_one_of_many_concurrent_deliveries_starts_the_post(ledger: Ledger) -> None:
    """Twenty requests, each delivered by eight threads at once: one POST each."""
    winners: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def deliver(message_id: str) -> None:
        barrier.wait()
        for index in range(20):
            record = ledger.open(job(f"race-{index}"), "m0", NOW + 60)
            # Every thread tries to take the request over and start the POST.
            taken = ledger.take_over(record, message_id, NOW + 60)
            if taken is None:
                continue
            if ledger.begin_submit(taken, message_id, NOW + 120) is not None:
                with lock:
                    winners.append((f"race-{index}", message_id))

    threads = [threading.Thread(target=deliver, args=(f"m{i}",)) for i in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    per_request = sorted(request_id for request_id, _ in winners)
    assert len(per_request) == len(set(per_request)), "a request had two POSTs"
    for index in range(20):
        record = ledger.get(f"race-{index}")
        assert record is not None
        # Whoever holds it last may or may not have started the POST, but never two did.
        assert record.attempts <= 1


def test_records_expire_after_their_ttl(namespace: str) -> None:
    store = MemoryStore()
    ledger = Ledger(store, prefix=namespace, ttl_s=3600)
    ledger.open(job(), "m1", NOW)
    assert store.create("k", {"a": "1"}, ttl_s=0) is True
    assert store.get("k") is None  # a zero TTL has already lapsed
    assert ledger.get("req-1") is not None


# ---------------------------------------------------------------- the in-flight index


def in_flight_ids(ledger: Ledger) -> list[str]:
    return sorted(entry.request_id for entry in ledger.in_flight())


def test_the_in_flight_index_follows_the_record(ledger: Ledger) -> None:
    opened = ledger.open(job(), "m1", NOW + 60)
    assert ledger.in_flight() == []
    sending = ledger.begin_submit(opened, "tok", NOW + 120)
    assert sending is not None
    assert ledger.in_flight() == [InFlight("req-1", "sketch-maker", 0.1006, since=NOW)]
    # A 429: the request waits as NEW, out of the index, until its next POST.
    released = ledger.release(sending, "m1", NOW + 300)
    assert released is not None
    assert ledger.in_flight() == []
    again = ledger.begin_submit(released, "tok2", NOW + 400)
    assert again is not None
    submitted = ledger.submitted(
        again, poll_url="u", segmind_request_id="s", submitted_at=NOW, cost_usd=None
    )
    assert submitted is not None
    assert in_flight_ids(ledger) == ["req-1"]
    assert ledger.finish(submitted, "{}", "p1") is not None
    assert ledger.in_flight() == []


def test_a_refused_transition_leaves_the_index_alone(ledger: Ledger) -> None:
    opened = ledger.open(job(), "m1", NOW + 60)
    sending = ledger.begin_submit(opened, "tok", NOW + 120)
    assert sending is not None
    impostor = Record(job=sending.job, state=State.SUBMITTING, submit_token="other")
    assert ledger.finish(impostor, "{}", "m9") is None
    assert ledger.release(impostor, "m9", NOW) is None
    assert in_flight_ids(ledger) == ["req-1"]
    # Nor does a second begin_submit on the stale NEW view add anything.
    assert ledger.begin_submit(opened, "tok2", NOW + 120) is None
    assert in_flight_ids(ledger) == ["req-1"]


def test_the_index_holds_every_request_submitting(ledger: Ledger) -> None:
    for index in range(5):
        record = ledger.open(job(f"race-{index}"), "m1", NOW + 60)
        assert ledger.begin_submit(record, "tok", NOW + 120) is not None
    assert in_flight_ids(ledger) == [f"race-{index}" for index in range(5)]


def test_unreadable_index_entries_are_skipped() -> None:
    assert InFlight.from_json("r", "not json") is None
    assert InFlight.from_json("r", '{"workflow": "w"}') is None
    entry = InFlight("r", "w", None, since=NOW)
    assert InFlight.from_json("r", entry.to_json()) == entry


class ReplyLost(MemoryStore):
    """A store whose next updates are applied but answered "not applied": what a client
    that sent the update again after the connection broke under the first one sees."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = 0

    def update(self, *args: Any, **kwargs: Any) -> bool:
        applied = super().update(*args, **kwargs)
        if applied and self.lose:
            self.lose -= 1
            return False
        return applied


def test_a_transition_applied_under_a_lost_reply_is_taken_as_applied() -> None:
    store = ReplyLost()
    ledger = Ledger(store, prefix="lost", ttl_s=3600, clock=lambda: NOW)
    opened = ledger.open(job(), "m1", NOW + 60)
    steps: list[Callable[[Record], Record | None]] = [
        lambda r: ledger.begin_submit(r, "tok", NOW + 120),
        lambda r: ledger.submitted(
            r, poll_url="https://p/1", segmind_request_id="s1", submitted_at=NOW, cost_usd=None
        ),
        lambda r: ledger.claim_poll(r, 1, "p1"),
        lambda r: ledger.polled(r, status="PROCESSING", failed=False, at=NOW + 1),
        lambda r: ledger.finish(r, '{"status":"COMPLETED"}', "p1"),
    ]
    record: Record | None = opened
    for step in steps:
        assert record is not None
        store.lose = 1
        record = step(record)
        assert record is not None
        assert ledger.get("req-1") == record
    # A transition refused for real (another delivery's view) stays refused.
    store.lose = 0
    assert ledger.begin_submit(opened, "tok2", NOW + 120) is None


def test_a_guarded_write_applied_under_a_lost_reply_asks_for_its_replicas_again() -> None:
    class LostReplicated(ReplyLost):
        def update_replicated(self, *args: Any, **kwargs: Any) -> tuple[bool, int]:
            kwargs.pop("replicas"), kwargs.pop("timeout_s")
            return self.update(*args, **kwargs), 1

    store = LostReplicated()
    ledger = Ledger(store, prefix="lost", ttl_s=3600, clock=lambda: NOW, min_replicas=1)
    opened = ledger.open(job(), "m1", NOW + 60)
    store.lose = 1
    with pytest.raises(ReplicasShortError) as short:
        ledger.begin_submit(opened, "tok", NOW + 120)
    assert short.value.record.state is State.SUBMITTING
    assert short.value.acknowledged == 0
    assert ledger.get("req-1") == short.value.record
