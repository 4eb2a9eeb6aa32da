"""``segmind-queue get``: a request's state from the real Redis ledger, no Segmind call."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from console.cli import app
from producers.contract import Result, Status
from worker.history import DurationHistory
from worker.ledger import Job, Ledger
from worker.store import RedisStore

runner = CliRunner()


@pytest.fixture
def ledger(redis_url: str, namespace: str) -> Iterator[Ledger]:
    store = RedisStore.from_url(redis_url)
    ledger = Ledger(store, prefix=f"{namespace}-get-{secrets.token_hex(3)}", ttl_s=600)
    yield ledger
    for request_id in ("r-new", "r-running", "r-done"):
        ledger.delete(request_id)
    store.delete(ledger.in_flight_key)
    store.delete(DurationHistory(store, ledger.prefix).key("sketch-maker"))
    store.close()


def _get(ledger: Ledger, redis_url: str, *args: str) -> Any:
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": ledger.prefix, "SEGMIND_API_KEY": None}
    return runner.invoke(app, ["get", *args], env=env)


def _job(request_id: str, queued_at: float) -> Job:
    return Job(
        request_id=request_id,
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        reply_to="replies",
        queued_at=queued_at,
        deadline_s=600,
        price_usd=0.1006,
        expected_duration_s=40.0,
    )


def test_a_running_request_shows_its_status_polls_and_eta(ledger: Ledger, redis_url: str) -> None:
    now = time.time()
    record = ledger.open(_job("r-running", now - 30), "m1", now + 60)
    sending = ledger.begin_submit(record, "t1", now + 60)
    assert sending is not None
    submitted = ledger.submitted(
        sending,
        poll_url="https://x/p",
        segmind_request_id="s-1",
        submitted_at=now - 20,
        cost_usd=None,
    )
    assert submitted is not None
    claimed = ledger.claim_poll(submitted, 1, "p1")
    assert claimed is not None
    assert ledger.polled(claimed, status="PROCESSING", failed=False, at=now - 5) is not None
    for total in (30.0, 40.0, 50.0, 60.0, 70.0):  # learned: a median of 50 s
        DurationHistory(ledger.store, ledger.prefix).record("sketch-maker", total, None)

    shown = _get(ledger, redis_url, "r-running", "--json")
    assert shown.exit_code == 0, shown.output
    fields = json.loads(shown.output)
    assert (fields["state"], fields["segmind_status"]) == ("SUBMITTED", "PROCESSING")
    assert (fields["polls"], fields["segmind_request_id"]) == (1, "s-1")
    assert fields["eta_s"] == pytest.approx(30.0, abs=2.0)  # submitted 20 s ago + 50 s
    assert "result" not in fields
    table = _get(ledger, redis_url, "r-running")
    assert table.exit_code == 0
    assert "PROCESSING" in table.output


def test_a_finished_request_shows_its_result(ledger: Ledger, redis_url: str) -> None:
    now = time.time()
    record = ledger.open(_job("r-done", now - 5), "m1", now + 60)
    result = Result(
        request_id="r-done",
        workflow="sketch-maker",
        status=Status.COMPLETED,
        outputs=[],
        cost_usd=0.1,
    )
    done = ledger.finish(record, result.model_dump_json(exclude_none=True), "m1")
    assert done is not None
    fields = json.loads(_get(ledger, redis_url, "r-done", "--json").output)
    assert fields["state"] == "DONE"
    assert fields["result"]["status"] == "COMPLETED"
    assert (fields["cost_usd"], fields["published"]) == (0.1, False)


def test_an_unknown_request_says_so(ledger: Ledger, redis_url: str) -> None:
    shown = _get(ledger, redis_url, "never-seen")
    assert shown.exit_code == 1
    assert "no record of 'never-seen'" in shown.output


def test_an_unreachable_redis_is_a_one_line_error(ledger: Ledger) -> None:
    shown = runner.invoke(
        app,
        ["get", "r-new"],
        env={"REDIS_URL": "redis://:pw-secret@127.0.0.1:1/0", "SEGMIND_API_KEY": None},
    )
    assert shown.exit_code == 2
    assert "Redis (REDIS_URL)" in shown.output
    assert "pw-secret" not in shown.output
