"""Fault rules: the ``FaultBook`` that matches and consumes them (``simulator.faults``,
no HTTP), then fault injection over a real socket: statuses, bodies, drops, delays,
malformed JSON, random errors, and job faults (FAILED, unknown status, never finishing,
list output).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from simulator.config import HttpFault, JobFault, parse_faults
from simulator.faults import FaultBook
from simulator.testing import RunningSimulator, wait_until

SKETCH = "66cec9a38aeef98f887211f1-v1"
SCENE = "670d2cb6f552c2dfdc9172e3-v2"
RAW_ID = "0123456789abcdef01234567-v3"
CONTENT_TYPES = {"json": "application/json", "text": "text/plain", "html": "text/html"}


@pytest.fixture
def api(sim: RunningSimulator) -> Iterator[httpx.Client]:
    """A client of the Segmind endpoints with the right key."""
    with sim.client() as client:
        yield client


def submit(api: httpx.Client, workflow_id: str = SKETCH) -> dict[str, Any]:
    response = api.post(f"/workflows/{workflow_id}", json={})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def final_body(api: httpx.Client, poll_url: str) -> dict[str, Any]:
    def terminal() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(poll_url).json()
        return body if body["status"] in ("COMPLETED", "FAILED") else None

    return wait_until(terminal, timeout_s=5.0, interval_s=0.005, message="job end")


# ------------------------------------------------------------- the fault book, no HTTP


def test_fault_count_is_consumed_in_order() -> None:
    book = FaultBook()
    book.add(parse_faults([{"endpoint": "submit", "status": 500, "count": 1}]))
    book.add(parse_faults([{"endpoint": "any", "status": 502, "count": 2}]))
    rng = random.Random(0)
    got = [book.match_http("submit", None, rng) for _ in range(4)]
    assert [rule.status if rule else None for rule in got] == [500, 502, 502, None]
    assert book.snapshot() == []


def test_fault_matches_endpoint_and_workflow() -> None:
    book = FaultBook()
    book.add(parse_faults([{"endpoint": "submit", "workflow_id": RAW_ID, "drop": True}]))
    rng = random.Random(0)
    assert book.match_http("poll", None, rng) is None
    assert book.match_http("submit", "ffffffffffffffffffffffff-v1", rng) is None
    rule = book.match_http("submit", RAW_ID, rng)
    assert rule is not None
    assert rule.drop
    # Unlimited: still there.
    assert book.snapshot()[0]["remaining"] is None


def test_fault_probability_draws_from_the_seeded_rng() -> None:
    book = FaultBook()
    book.add([HttpFault(endpoint="poll", status=500, probability=0.3)])
    rng = random.Random(11)
    hits = sum(book.match_http("poll", None, rng) is not None for _ in range(2000))
    assert 500 < hits < 700
    never = FaultBook()
    never.add([HttpFault(endpoint="poll", status=500, probability=0.0)])
    assert all(never.match_http("poll", None, rng) is None for _ in range(200))


def test_job_faults_and_http_faults_do_not_mix() -> None:
    book = FaultBook()
    book.add([JobFault(job="never_finish", count=1), HttpFault(status=504, count=1)])
    rng = random.Random(0)
    http = book.match_http("submit", RAW_ID, rng)
    assert http is not None
    assert http.status == 504
    job = book.match_job(RAW_ID, rng)
    assert job is not None
    assert job.job == "never_finish"
    assert book.match_job(RAW_ID, rng) is None


# ------------------------------------------------------------------- injected statuses


@pytest.mark.parametrize("status", [400, 401, 403, 404, 406, 429, 500, 502, 504])
def test_an_injected_submit_status_creates_no_job(
    sim: RunningSimulator, api: httpx.Client, status: int
) -> None:
    sim.add_faults({"endpoint": "submit", "status": status, "count": 1})
    response = api.post(f"/workflows/{SKETCH}", json={})
    assert response.status_code == status
    assert "error" in response.json()
    if status == 429:
        assert "x-rate-limit-reset-at-utc" in response.headers
    assert sim.jobs() == []
    assert sim.stats()["credits_charged_usd"] == 0
    submit(api)  # the rule was used up
    stats = sim.stats()
    assert stats["faults_served"] == {str(status): 1}
    assert stats["jobs"] == 1
    assert stats["responses"]["submit"] == {str(status): 1, "200": 1}


@pytest.mark.parametrize("kind", ["json", "text", "html"])
@pytest.mark.parametrize("endpoint", ["poll", "credits"])
def test_injected_body_kinds(
    sim: RunningSimulator, api: httpx.Client, kind: str, endpoint: str
) -> None:
    poll_url = submit(api)["poll_url"]
    sim.add_faults({"endpoint": endpoint, "status": 502, "body": kind, "count": 1})
    url = poll_url if endpoint == "poll" else "/v1/get-user-credits"
    response = api.get(url)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith(CONTENT_TYPES[kind])
    if kind == "json":
        assert response.json() == {"error": "Bad Gateway"}
    elif kind == "html":
        assert "<html>" in response.text
    else:
        assert response.text == "Bad Gateway"
    assert api.get(url).status_code == 200


def test_200_with_html_and_custom_headers(sim: RunningSimulator, api: httpx.Client) -> None:
    poll_url = submit(api)["poll_url"]
    sim.add_faults(
        {
            "endpoint": "poll",
            "status": 200,
            "body": "html",
            "headers": {"Retry-After": "3"},
            "count": 1,
        }
    )
    response = api.get(poll_url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["retry-after"] == "3"
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_an_unlimited_rule_holds_until_cleared(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.add_faults({"endpoint": "any", "status": 500})
    assert [api.get("/v1/get-user-credits").status_code for _ in range(3)] == [500] * 3
    sim.clear_faults()
    assert api.get("/v1/get-user-credits").status_code == 200


def test_a_rule_can_target_one_workflow(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.add_faults({"endpoint": "submit", "workflow_id": SCENE, "status": 503})
    submit(api, SKETCH)
    assert api.post(f"/workflows/{SCENE}", json={}).status_code == 503


def test_after_effect_creates_and_charges_the_job_but_still_fails(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    sim.add_faults({"endpoint": "submit", "status": 504, "after_effect": True, "count": 1})
    response = api.post(
        f"/workflows/{SKETCH}", json={}, headers={"x-client-request-id": "unknown-outcome"}
    )
    assert response.status_code == 504
    (job,) = sim.jobs()
    assert job["client_request_id"] == "unknown-outcome"
    assert sim.stats()["credits_charged_usd"] == pytest.approx(0.1006)


# ---------------------------------------------------------------- transport-level faults


@pytest.mark.parametrize("endpoint", ["submit", "poll", "credits"])
def test_a_dropped_connection_is_a_transport_error(
    sim: RunningSimulator, api: httpx.Client, endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    poll_url = submit(api)["poll_url"]
    sim.add_faults({"endpoint": endpoint, "drop": True, "count": 1})

    def call() -> httpx.Response:
        if endpoint == "submit":
            return api.post(f"/workflows/{SKETCH}", json={})
        return api.get(poll_url if endpoint == "poll" else "/v1/get-user-credits")

    with pytest.raises(httpx.TransportError):
        call()
    assert call().status_code == 200
    stats = sim.stats()
    assert stats["faults_served"] == {"drop": 1}
    assert stats["jobs"] == (2 if endpoint == "submit" else 1)
    # The transport was aborted cleanly: uvicorn did not try to answer for the app.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("uvicorn")] == []


def test_a_delay_longer_than_the_read_timeout_is_a_read_timeout(
    sim: RunningSimulator,
) -> None:
    sim.add_faults({"endpoint": "submit", "delay_s": 0.25, "count": 1})
    with sim.client(timeout_s=0.05) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(f"/workflows/{SKETCH}", json={})
    # The server went on: the job exists although the client never saw it (unknown outcome).
    wait_until(lambda: sim.stats()["jobs"] == 1, timeout_s=3.0, message="the delayed job")


def test_hold_creates_the_job_at_once_and_withholds_the_answer(sim: RunningSimulator) -> None:
    sim.add_faults({"endpoint": "submit", "hold_s": 5, "count": 1})
    with sim.client(timeout_s=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(f"/workflows/{SKETCH}", json={}, headers={"x-client-request-id": "held"})
    # The job existed before the client gave up: created, charged, never answered.
    (job,) = sim.jobs()
    assert job["client_request_id"] == "held"
    assert sim.stats()["faults_served"] == {}


def test_a_short_delay_is_latency(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.add_faults({"endpoint": "credits", "delay_s": 0.2, "count": 1})
    started = time.monotonic()
    assert api.get("/v1/get-user-credits").status_code == 200
    assert time.monotonic() - started >= 0.2
    assert sim.stats()["faults_served"] == {"delay": 1}


def test_configured_latency_applies_to_every_call(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(latency_s=0.15)
    started = time.monotonic()
    assert api.get("/v1/get-user-credits").status_code == 200
    assert time.monotonic() - started >= 0.15


def test_a_reset_during_a_delay_undoes_the_delayed_request(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    sim.add_faults({"endpoint": "submit", "delay_s": 0.3, "count": 1})
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(api.post, f"/workflows/{SKETCH}", json={})
        wait_until(lambda: sim.stats()["faults_served"].get("delay") == 1, message="delay")
        sim.reset()
        assert pending.result(timeout=5).status_code == 503
    assert sim.jobs() == []
    assert sim.stats()["credits_charged_usd"] == 0


@pytest.mark.parametrize("after_effect", [False, True])
def test_malformed_json(sim: RunningSimulator, api: httpx.Client, after_effect: bool) -> None:
    poll_url = submit(api)["poll_url"]
    sim.add_faults(
        {"endpoint": "submit", "malformed": True, "after_effect": after_effect, "count": 1},
        {"endpoint": "poll", "malformed": True, "count": 1},
    )
    for response in (api.post(f"/workflows/{SKETCH}", json={}), api.get(poll_url)):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.text)
    assert sim.stats()["jobs"] == (2 if after_effect else 1)


def test_error_rate_serves_random_5xx(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(error_rate=1.0)
    codes = [api.post(f"/workflows/{SKETCH}", json={}).status_code for _ in range(12)]
    assert set(codes) <= {500, 502, 504}
    assert len(set(codes)) > 1
    stats = sim.stats()
    assert sum(stats["faults_served"].values()) == 12
    assert stats["jobs"] == 0


def test_drop_rate_drops_connections(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(drop_rate=1.0)
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            api.get("/v1/get-user-credits")
    assert sim.stats()["faults_served"] == {"drop": 3}


# --------------------------------------------------------------------------- job faults


def test_failed_jobs_carry_error_or_error_message(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(time_scale=0.0005)
    sim.add_faults(
        {"job": "fail", "error_field": "error", "count": 1},
        {"job": "fail", "error_field": "error_message", "message": "no GPU", "count": 1},
    )
    poll_urls = [submit(api)["poll_url"] for _ in range(3)]
    first, second, third = (final_body(api, poll_url) for poll_url in poll_urls)
    assert first["status"] == "FAILED"
    assert set(first) == {"status", "error"}
    assert first["error"]
    assert second == {"status": "FAILED", "error_message": "no GPU"}
    assert third["status"] == "COMPLETED"
    assert [job["outcome"] for job in sim.jobs()] == ["FAILED", "FAILED", "COMPLETED"]


def test_fail_rate_uses_both_fields(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(fail_rate=1.0, time_scale=0.0005)
    poll_urls = [submit(api)["poll_url"] for _ in range(12)]
    fields: set[str] = set()
    for poll_url in poll_urls:
        body = final_body(api, poll_url)
        assert body["status"] == "FAILED"
        fields |= set(body) - {"status"}
    assert fields == {"error", "error_message"}


def after_a_normal_job(sim: RunningSimulator, api: httpx.Client, fault: dict[str, Any]) -> str:
    """Submit a faulted job, then a normal one and wait for it: with no spread, the
    faulted job's planned end has passed too. Returns the faulted job's poll_url.
    """
    sim.reset(time_scale=0.0005, duration_spread=0.0)
    sim.add_faults({**fault, "count": 1})
    poll_url = str(submit(api)["poll_url"])
    assert final_body(api, submit(api)["poll_url"])["status"] == "COMPLETED"
    return poll_url


def test_an_unknown_status_forever(sim: RunningSimulator, api: httpx.Client) -> None:
    poll_url = after_a_normal_job(sim, api, {"job": "status", "status": "CANCELLED"})
    body = api.get(poll_url).json()
    assert body["status"] == "CANCELLED"
    (job, _) = sim.jobs()
    assert job["done_at"] < time.time()
    assert (job["status"], job["outcome"]) == ("CANCELLED", "CANCELLED")


def test_an_unknown_status_while_running_then_done(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    sim.add_faults({"job": "status", "status": "CANCELLED", "forever": False, "count": 1})
    poll_url = submit(api)["poll_url"]
    assert api.get(poll_url).json()["status"] == "CANCELLED"
    assert final_body(api, poll_url)["status"] == "COMPLETED"


def test_never_finish_stays_processing(sim: RunningSimulator, api: httpx.Client) -> None:
    poll_url = after_a_normal_job(sim, api, {"job": "never_finish"})
    assert api.get(poll_url).json() == {"status": "PROCESSING", "output": ""}
    (job, _) = sim.jobs()
    assert (job["status"], job["outcome"], job["done_at"]) == ("PROCESSING", None, None)


def test_output_as_list(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(time_scale=0.0005)
    sim.add_faults({"job": "output_as_list", "count": 1})
    body = final_body(api, submit(api)["poll_url"])
    assert isinstance(body["output"], list)
    assert body["output"][0]["value"]["type"] == "image"
    assert sim.stats()["faults_served"] == {"job:output_as_list": 1}
