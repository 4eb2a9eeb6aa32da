"""The fleet gauges: the pure summary of the in-flight index, and ``Monitor`` reading the
ledger (both stores), the simulator's credits endpoint over its socket, and queue depths."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest
import structlog
from pydantic import SecretStr

from simulator.testing import RunningSimulator
from tests.conftest import SIM_API_KEY
from worker.ledger import InFlight, Job, Ledger
from worker.metrics import Metrics
from worker.monitor import Monitor, MonitorMiddleware, service_queues, summarize_in_flight
from worker.segmind.client import SegmindClient
from worker.settings import Settings
from worker.spend import DailySpend
from worker.store import MemoryStore, RedisStore, Store

NOW = 1_800_000_000.0
WORKFLOWS = ("sketch-maker", "product-ad")


def test_summary_counts_reserves_and_ages_per_workflow() -> None:
    summary = summarize_in_flight(
        [
            InFlight("a", "sketch-maker", 0.1, since=NOW - 30),
            InFlight("b", "sketch-maker", 0.1, since=NOW - 90),
            InFlight("c", "product-ad", None, since=NOW - 5),
            InFlight("d", "product-ad", 3.5, since=NOW + 2, tenant="acme"),  # a clock ahead
        ],
        NOW,
    )
    assert summary.counts == {
        ("sketch-maker", "default"): 2,
        ("product-ad", "default"): 1,
        ("product-ad", "acme"): 1,
    }
    assert summary.oldest_age_s == {"sketch-maker": 90.0, "product-ad": 5.0}
    assert summary.reserved_usd == pytest.approx(3.7)
    assert summary.tenant_reserved_usd == {"default": pytest.approx(0.2), "acme": 3.5}


def test_summary_of_nothing_in_flight() -> None:
    summary = summarize_in_flight([], NOW)
    assert (summary.counts, summary.oldest_age_s, summary.reserved_usd) == ({}, {}, 0.0)


def test_each_queue_with_its_delay_and_dead_letter_queue() -> None:
    assert service_queues("req", "polls", "results.XQ") == [
        "req",
        "req.DQ",
        "req.XQ",
        "polls",
        "polls.DQ",
        "polls.XQ",
        "results.XQ",
    ]


# ---------------------------------------------------------------- Monitor, real I/O


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    redis_store = RedisStore.from_url(request.getfixturevalue("redis_url"))
    yield redis_store
    redis_store.close()


@pytest.fixture
def ledger(store: Store, namespace: str) -> Iterator[Ledger]:
    ledger = Ledger(store, prefix=f"{namespace}-{secrets.token_hex(3)}", ttl_s=3600)
    yield ledger
    for key in (ledger.in_flight_key, f"{ledger.prefix}:credits", f"{ledger.prefix}:credits:lease"):
        store.delete(key)
    for request_id in ("r1", "r2"):
        ledger.delete(request_id)


def monitor(ledger: Ledger, client: SegmindClient, depths: dict[str, int] | None = None) -> Monitor:
    return Monitor(
        settings=Settings(segmind_rate_limit_per_minute=50, segmind_credits_interval_s=60),
        ledger=ledger,
        client=client,
        metrics=Metrics(WORKFLOWS),
        spend=DailySpend(ledger.store, ledger.prefix, clock=lambda: NOW),
        expected_durations={"product-ad": 673.9},
        queue_depth=None if depths is None else depths.get,
        clock=lambda: NOW,
    )


def gauge(monitor: Monitor, name: str, **labels: str) -> float | None:
    return monitor.metrics.registry.get_sample_value(name, labels)


def submit(ledger: Ledger, request_id: str, price: float, since: float) -> None:
    job = Job(
        request_id=request_id,
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        reply_to="replies",
        queued_at=since,
        deadline_s=2700,
        price_usd=price,
    )
    record = ledger.open(job, "m1", NOW + 60)
    ledger.clock = lambda: since
    assert ledger.begin_submit(record, "tok", NOW + 60) is not None


def test_refresh_reads_every_source(sim: RunningSimulator, ledger: Ledger) -> None:
    submit(ledger, "r1", 0.1006, since=NOW - 40)
    submit(ledger, "r2", 0.1006, since=NOW - 10)
    client = SegmindClient(api_url=sim.url, api_key=SecretStr(SIM_API_KEY))
    watcher = monitor(ledger, client, depths={"segmind.requests": 3, "segmind.polls.XQ": 1})
    watcher.refresh()
    mine = {"tenant": "default"}
    assert gauge(watcher, "segmind_jobs_in_flight", workflow="sketch-maker", **mine) == 2
    assert gauge(watcher, "segmind_jobs_in_flight", workflow="product-ad", **mine) == 0
    assert gauge(watcher, "segmind_oldest_job_age_seconds", workflow="sketch-maker") == 40
    assert gauge(watcher, "segmind_credits_reserved_usd") == pytest.approx(0.2012)
    assert gauge(watcher, "segmind_credits_remaining") == 1000.0
    assert gauge(watcher, "segmind_credits_updated_timestamp_seconds") == NOW
    assert gauge(watcher, "segmind_rate_limit_tokens_per_minute") == 50
    assert (
        gauge(watcher, "segmind_workflow_expected_duration_seconds", workflow="product-ad") == 673.9
    )
    assert gauge(watcher, "segmind_queue_messages", queue="segmind.requests") == 3
    assert gauge(watcher, "segmind_queue_messages", queue="segmind.polls.XQ") == 1
    # A queue that does not exist is not reported at all.
    assert gauge(watcher, "segmind_queue_messages", queue="segmind.polls") is None
    client.close()


def test_the_replicas_of_the_ledgers_primary_are_shown_whatever_the_minimum(
    sim: RunningSimulator, namespace: str
) -> None:
    class TwoReplicas(MemoryStore):
        def replicas_online(self) -> int:
            return 2

    ledger = Ledger(TwoReplicas(), prefix=namespace, ttl_s=3600)
    client = SegmindClient(api_url=sim.url, api_key=SecretStr(SIM_API_KEY))
    watcher = monitor(ledger, client)
    assert ledger.min_replicas == 0
    watcher.refresh()
    assert gauge(watcher, "segmind_ledger_replicas_online") == 2
    client.close()


def test_the_fleet_reads_the_credits_once_per_interval(
    sim: RunningSimulator, ledger: Ledger
) -> None:
    client = SegmindClient(api_url=sim.url, api_key=SecretStr(SIM_API_KEY))
    # Three processes sharing one Redis: one reads the balance, all report it.
    watchers = [monitor(ledger, client) for _ in range(3)]
    for watcher in watchers:
        watcher.refresh()
        watcher.refresh()
    assert sim.stats()["credits_calls"] == 1
    for watcher in watchers:
        assert gauge(watcher, "segmind_credits_remaining") == 1000.0
        assert gauge(watcher, "segmind_credits_free_remaining") is not None
    client.close()


def test_a_failing_source_is_logged_once_and_the_others_still_refresh(
    ledger: Ledger,
) -> None:
    # Nothing listens on port 9 of 127.0.0.1: every credits call fails to connect.
    client = SegmindClient(
        api_url="http://127.0.0.1:9", api_key=SecretStr(SIM_API_KEY), connect_timeout_s=1
    )
    submit(ledger, "r1", 1.0, since=NOW - 1)
    watcher = monitor(ledger, client)
    with structlog.testing.capture_logs() as logs:
        watcher.refresh()
        ledger.store.delete(f"{ledger.prefix}:credits:lease")
        watcher.refresh()
    failures = [line for line in logs if line["event"] == "metrics.source_failed"]
    assert [line["source"] for line in failures] == ["credits"]
    assert gauge(watcher, "segmind_jobs_in_flight", workflow="sketch-maker", tenant="default") == 1
    assert gauge(watcher, "segmind_credits_remaining") is None
    client.close()


def test_the_middleware_refreshes_on_its_thread_until_shutdown() -> None:
    refreshed = threading.Event()
    calls: list[int] = []

    class Counting:
        def refresh(self) -> None:
            calls.append(1)
            if len(calls) >= 3:
                refreshed.set()

    middleware = MonitorMiddleware(Counting(), interval_s=0.01)  # type: ignore[arg-type]
    middleware.after_worker_boot(None, None)  # type: ignore[arg-type]
    try:
        assert refreshed.wait(timeout=10), "the monitor did not refresh"
    finally:
        # Before shutdown only signals, so Dramatiq can stop its threads without waiting.
        middleware.before_worker_shutdown(None, None)  # type: ignore[arg-type]
        assert middleware._thread is not None
        middleware.after_worker_shutdown(None, None)  # type: ignore[arg-type]
    # After shutdown joined the thread: it is gone, not merely asked to stop.
    assert middleware._thread is None
    assert not any(t.name == "segmind-monitor" and t.is_alive() for t in threading.enumerate())
