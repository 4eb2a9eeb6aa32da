"""``segmind-queue cancel``'s choices, read from the real Redis ledger: ids, every waiting
request, a metadata filter, and what a dry run says (the cancels themselves:
tests/e2e/test_cancel.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from console.cli import app
from worker.ledger import Job, Ledger
from worker.store import RedisStore

runner = CliRunner()
NOW = 1_800_000_000.0


@pytest.fixture
def ledger(redis_url: str, namespace: str) -> Iterator[Ledger]:
    store = RedisStore.from_url(redis_url)
    ledger = Ledger(store, prefix=f"{namespace}-cli-cancel-{secrets.token_hex(3)}", ttl_s=600)
    for n, order in enumerate([1, 2, 1]):
        job = Job(
            request_id=f"w{n}",
            workflow="sketch-maker",
            workflow_id="66cec9a38aeef98f887211f1-v1",
            reply_to="replies",
            queued_at=NOW + n,
            deadline_s=600,
            metadata={"order": order},
            tenant="acme" if n == 1 else "default",
        )
        ledger.open(job, f"m{n}", NOW + 60)
    yield ledger
    for key in store.keys(f"{ledger.prefix}:"):
        store.delete(key)
    store.close()


def _cancel(ledger: Ledger, redis_url: str, *args: str) -> Any:
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": ledger.prefix, "SEGMIND_API_KEY": None}
    return runner.invoke(app, ["cancel", *args], env=env)


def test_a_dry_run_of_every_waiting_request_says_what_each_would_do(
    ledger: Ledger, redis_url: str
) -> None:
    shown = _cancel(ledger, redis_url, "--all-waiting", "--dry-run")
    assert shown.exit_code == 0, shown.output
    assert [line.split("\t")[:2] for line in shown.output.splitlines()] == [
        ["w0", "would be cancelled_unpaid"],
        ["w1", "would be cancelled_unpaid"],
        ["w2", "would be cancelled_unpaid"],
    ]


def test_a_tenant_narrows_the_choice(ledger: Ledger, redis_url: str) -> None:
    shown = _cancel(ledger, redis_url, "--all-waiting", "--tenant", "acme", "--dry-run")
    assert shown.exit_code == 0, shown.output
    assert [line.split("\t")[0] for line in shown.output.splitlines()] == ["w1"]
    by_id = _cancel(ledger, redis_url, "w0", "w1", "--tenant", "default", "--dry-run")
    assert [line.split("\t")[0] for line in by_id.output.splitlines()] == ["w0"]
    bad = _cancel(ledger, redis_url, "--all-waiting", "--tenant", "no spaces")
    assert bad.exit_code == 2
    assert "not a tenant" in bad.output


def test_metadata_narrows_the_choice(ledger: Ledger, redis_url: str) -> None:
    shown = _cancel(ledger, redis_url, "--all-waiting", "--metadata", "order=1", "--dry-run")
    assert [line.split("\t")[0] for line in shown.output.splitlines()] == ["w0", "w2"]
    by_id = _cancel(ledger, redis_url, "w0", "w1", "--metadata", "order=2", "--dry-run")
    assert [line.split("\t")[0] for line in by_id.output.splitlines()] == ["w1"]


def test_an_unknown_id_would_be_marked(ledger: Ledger, redis_url: str) -> None:
    shown = _cancel(ledger, redis_url, "nobody", "--dry-run")
    assert shown.output.startswith("nobody\twould be marked\tno worker has received it yet")
    assert not ledger.cancel_marked("nobody")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the request ids to cancel, or --all-waiting"),
        (["w0", "--all-waiting"], "exactly one"),
        (["w0", "--metadata", "order"], "expected KEY=VALUE"),
        (["has space"], "not a request id"),
    ],
)
def test_bad_usage_is_refused(
    ledger: Ledger, redis_url: str, args: list[str], message: str
) -> None:
    shown = _cancel(ledger, redis_url, *args)
    assert shown.exit_code == 2
    assert message in shown.output
