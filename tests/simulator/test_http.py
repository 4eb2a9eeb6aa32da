"""The simulator over a real socket: Segmind's shapes, auth, errors, limits and counters."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from producers.catalog import Workflow, default_catalog
from simulator.app import create_app
from simulator.config import SimulatorConfig
from simulator.testing import RunningSimulator, SimulatorError, wait_until

SCENE = "670d2cb6f552c2dfdc9172e3-v2"
SKETCH = "66cec9a38aeef98f887211f1-v1"
RAW_ID = "0123456789abcdef01234567-v3"
TERMINAL = {"COMPLETED", "FAILED"}
ISO_RESET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EXTENSIONS = {"image": (".png", ".jpeg", ".webp"), "video": (".mp4",)}


@pytest.fixture
def api(sim: RunningSimulator) -> Iterator[httpx.Client]:
    """A client of the Segmind endpoints with the right key."""
    with sim.client() as client:
        yield client


def submit(api: httpx.Client, workflow_id: str = SKETCH, **kwargs: Any) -> dict[str, Any]:
    response = api.post(f"/workflows/{workflow_id}", json=kwargs.pop("json", {}), **kwargs)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def poll_to_end(
    api: httpx.Client, poll_url: str, timeout_s: float = 5.0
) -> tuple[list[str], dict[str, Any]]:
    """Poll until terminal: the statuses seen (repeats collapsed) and the final body."""
    seen: list[str] = []

    def terminal() -> dict[str, Any] | None:
        response = api.get(poll_url)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        return body if body["status"] in TERMINAL else None

    final = wait_until(terminal, timeout_s=timeout_s, interval_s=0.005, message="job end")
    return seen, final


def fresh_window(window_s: float, needed_s: float) -> None:
    """Wait until at least ``needed_s`` remain in the current rate window."""
    wait_until(
        lambda: window_s - time.time() % window_s > needed_s,
        timeout_s=needed_s + 1,
        message="start of a rate window",
    )


# ------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": "KEY"}, {"Authorization": "Bearer KEY"}],
    ids=["x-api-key", "bearer"],
)
def test_both_auth_headers_are_accepted(sim: RunningSimulator, headers: dict[str, str]) -> None:
    real = {name: value.replace("KEY", sim.api_key) for name, value in headers.items()}
    response = httpx.post(f"{sim.url}/workflows/{SKETCH}", json={}, headers=real)
    assert response.status_code == 200
    poll = httpx.get(response.json()["poll_url"], headers=real)
    assert poll.status_code == 200
    credits = httpx.get(f"{sim.url}/v1/get-user-credits", headers=real)
    assert credits.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-api-key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "KEY"}],
    ids=["none", "wrong-key", "wrong-bearer", "no-scheme"],
)
def test_anything_else_is_401_json(sim: RunningSimulator, headers: dict[str, str]) -> None:
    real = {name: value.replace("KEY", sim.api_key) for name, value in headers.items()}
    for response in (
        httpx.post(f"{sim.url}/workflows/{SKETCH}", json={}, headers=real),
        httpx.get(f"{sim.url}/workflows/request/{'a' * 32}", headers=real),
        httpx.get(f"{sim.url}/v1/get-user-credits", headers=real),
    ):
        assert response.status_code == 401
        assert "error" in response.json()
        assert sim.api_key not in response.text
    assert sim.jobs() == []


# ----------------------------------------------------------------------------- submit


def test_submit_answers_queued_with_a_poll_url_on_the_clients_host(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    body = submit(api)
    assert set(body) == {"message", "poll_url", "request_id", "status"}
    assert body["status"] == "QUEUED"
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert body["poll_url"] == f"{sim.url}/workflows/request/{body['request_id']}"
    other_host = submit(api, headers={"Host": "example.test:1234"})
    assert other_host["poll_url"].startswith("http://example.test:1234/workflows/request/")


def test_public_url_sets_the_poll_url_base(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(public_url="https://segmind.example/")
    body = submit(api)
    assert body["poll_url"] == f"https://segmind.example/workflows/request/{body['request_id']}"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"[1, 2]", "application/json"),
        (b"{not json", "application/json"),
        (b"", "application/json"),
    ],
    ids=["list", "not-json", "empty"],
)
def test_a_body_that_is_not_a_json_object_is_400(
    sim: RunningSimulator, api: httpx.Client, content: bytes, content_type: str
) -> None:
    response = api.post(
        f"/workflows/{SKETCH}", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 400
    assert "error" in response.json()
    assert sim.jobs() == []


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_a_body_that_is_not_json_typed_is_406_plain_text(
    sim: RunningSimulator, api: httpx.Client, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = api.post(f"/workflows/{SKETCH}", content=b"{}", headers=headers)
    assert response.status_code == 406
    assert response.headers["content-type"].startswith("text/plain")
    assert "content type" in response.text.lower()
    assert sim.stats()["credits_charged_usd"] == 0


def test_unknown_workflow_ids(sim: RunningSimulator, api: httpx.Client) -> None:
    malformed = api.post("/workflows/not-a-workflow", json={})
    assert malformed.status_code == 404
    assert "error" in malformed.json()
    raw = submit(api, RAW_ID)  # well formed: any id of the form works by default
    _, final = poll_to_end(api, raw["poll_url"])
    (item,) = json.loads(final["output"])
    assert item["value"]["type"] == "image"

    sim.reset(strict_workflows=True)
    assert api.post(f"/workflows/{RAW_ID}", json={}).status_code == 404
    submit(api, SKETCH)
    assert [job["workflow_id"] for job in sim.jobs()] == [SKETCH]


def test_insufficient_credits_is_406_plain_text_and_charges_nothing(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    sim.reset(credits=0.5)
    response = api.post(f"/workflows/{SCENE}", json={})  # $4.9731
    assert response.status_code == 406
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("Insufficient credits")
    assert sim.jobs() == []
    submit(api, SKETCH)  # $0.1006
    stats = sim.stats()
    assert stats["credits_charged_usd"] == pytest.approx(0.1006)
    assert stats["credits_remaining_usd"] == pytest.approx(0.3994)


def test_cost_headers_when_enabled(sim: RunningSimulator, api: httpx.Client) -> None:
    assert "x-cost" not in api.post(f"/workflows/{SKETCH}", json={}).headers
    sim.reset(cost_headers=True, credits=10.0)
    response = api.post(f"/workflows/{SKETCH}", json={})
    assert float(response.headers["x-cost"]) == pytest.approx(0.1006)
    assert float(response.headers["x-remaining-credits"]) == pytest.approx(9.8994)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/workflows/{SKETCH}"),
        ("PUT", f"/workflows/{SKETCH}"),
        ("POST", "/workflows/request/" + "a" * 32),
    ],
)
def test_a_wrong_method_is_405_html(api: httpx.Client, method: str, path: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("text/html")
    assert "<html>" in response.text


# ------------------------------------------------------------------------------- poll


def test_job_goes_queued_processing_completed(sim: RunningSimulator, api: httpx.Client) -> None:
    # 60 s x 0.005 = 0.3 s, of which 15-75 ms QUEUED: every phase is seen.
    sim.reset(time_scale=0.005, duration_spread=0.0)
    body = submit(api)
    seen, final = poll_to_end(api, body["poll_url"])
    assert seen == ["QUEUED", "PROCESSING", "COMPLETED"]
    assert set(final) == {"status", "output"}
    (job,) = sim.jobs()
    assert job["submitted_at"] < job["processing_at"] < job["done_at"] <= time.time()
    assert job["done_at"] - job["submitted_at"] == pytest.approx(0.3)


def test_running_shapes(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(time_scale=0.005, duration_spread=0.0)
    poll_url = submit(api)["poll_url"]
    queued = api.get(poll_url).json()
    assert queued["status"] == "QUEUED"
    assert isinstance(queued["message"], str)
    processing = wait_until(
        lambda: body if (body := api.get(poll_url).json())["status"] == "PROCESSING" else None,
        message="PROCESSING",
    )
    assert processing == {"status": "PROCESSING", "output": ""}


@pytest.mark.parametrize("wf", list(default_catalog()), ids=lambda wf: wf.name)
def test_each_catalog_workflow_completes_with_outputs_of_its_types(
    sim: RunningSimulator, api: httpx.Client, wf: Workflow
) -> None:
    sim.reset(time_scale=0.0003)  # the 674 s video takes ~0.2 s
    body = submit(api, wf.workflow_id, json=wf.default_inputs())
    _, final = poll_to_end(api, body["poll_url"])
    assert final["status"] == "COMPLETED"
    assert isinstance(final["output"], str)
    items = json.loads(final["output"])
    assert [(item["keyname"], item["value"]["type"]) for item in items] == [
        (spec.keyname, spec.type) for spec in wf.outputs
    ]
    for item in items:
        data = item["value"]["data"]
        if item["value"]["type"] in EXTENSIONS:
            assert data.startswith("https://")
            assert data.endswith(EXTENSIONS[item["value"]["type"]])
        else:
            assert item["value"]["type"] == "text"
            assert data
    if wf.name == "scene-script":
        scenes = json.loads(items[0]["value"]["data"])
        assert len(scenes) == 5
        assert all(set(scene) == {"image_description", "text"} for scene in scenes)


def test_unknown_request_ids_are_404(api: httpx.Client) -> None:
    for request_id in ("f" * 32, "not-hex"):
        response = api.get(f"/workflows/request/{request_id}")
        assert response.status_code == 404
        assert "error" in response.json()


def test_old_requests_expire_to_404(sim: RunningSimulator, api: httpx.Client) -> None:
    # Done after 60 x 0.002 = 0.12 s, kept 200 x 0.002 = 0.4 s.
    sim.reset(duration_spread=0.0, retention_s=200.0)
    poll_url = submit(api)["poll_url"]
    _, final = poll_to_end(api, poll_url)
    assert final["status"] == "COMPLETED"
    gone = wait_until(
        lambda: response if (response := api.get(poll_url)).status_code == 404 else None,
        timeout_s=3.0,
        message="expiry",
    )
    assert "error" in gone.json()
    (job,) = sim.jobs()
    assert job["expired"] is True
    assert job["expires_at"] - job["submitted_at"] == pytest.approx(0.4)


# ---------------------------------------------------------------------------- credits


def test_credits_endpoint(sim: RunningSimulator, api: httpx.Client) -> None:
    sim.reset(credits=10.0, free_credits=0.0184921035)
    assert api.get("/v1/get-user-credits").json() == {
        "credits": 10.0,
        "free-credits": 0.0184921035,
    }
    submit(api, SKETCH)
    bearer = httpx.get(
        f"{sim.url}/v1/get-user-credits", headers={"Authorization": f"Bearer {sim.api_key}"}
    )
    assert bearer.json()["credits"] == pytest.approx(9.8994)
    assert isinstance(bearer.json()["credits"], float)
    assert sim.stats()["credits_calls"] == 2


# ------------------------------------------------------------------------- rate limit


def test_429_past_rpm_with_the_reset_header_then_recovery(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    window = 0.5
    sim.reset(rpm=2, rate_window_s=window)
    fresh_window(window, needed_s=0.3)
    assert api.get("/v1/get-user-credits").status_code == 200
    assert api.post(f"/workflows/{SKETCH}", json={}).status_code == 200
    limited = api.get("/v1/get-user-credits")
    assert limited.status_code == 429
    assert "error" in limited.json()
    assert "retry-after" not in limited.headers
    reset_header = limited.headers["x-rate-limit-reset-at-utc"]
    assert ISO_RESET.match(reset_header)
    reset_at = datetime.fromisoformat(reset_header).timestamp()
    assert time.time() < reset_at <= time.time() + window
    # Refused calls do not count: after the reset the window has its full budget again.
    assert api.post(f"/workflows/{SKETCH}", json={}).status_code == 429
    wait_until(
        lambda: api.get("/v1/get-user-credits").status_code == 200,
        timeout_s=3.0,
        message="recovery after the window",
    )
    assert time.time() >= reset_at - 0.01
    assert api.get("/v1/get-user-credits").status_code == 200
    stats = sim.stats()
    assert stats["rate_limited"] >= 2
    assert stats["submits"] == 2
    assert len(sim.jobs()) == 1


def test_retry_after_and_epoch_reset_when_configured(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    sim.reset(rpm=1, retry_after=True, reset_header_format="epoch")
    fresh_window(60.0, needed_s=2.0)
    assert api.get("/v1/get-user-credits").status_code == 200
    limited = api.get("/v1/get-user-credits")
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    reset_at = float(limited.headers["x-rate-limit-reset-at-utc"])
    assert reset_at % 60 == 0
    assert time.time() < reset_at <= time.time() + 60


def test_polls_count_against_the_limit_unless_exempt(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    sim.reset(rpm=2)
    fresh_window(60.0, needed_s=2.0)
    poll_url = submit(api)["poll_url"]
    assert api.get(poll_url).status_code == 200
    assert api.get(poll_url).status_code == 429

    sim.reset(rpm=2, rate_limit_polls=False)
    fresh_window(60.0, needed_s=2.0)
    poll_url = submit(api)["poll_url"]
    assert all(api.get(poll_url).status_code == 200 for _ in range(5))
    submit(api)
    assert api.post(f"/workflows/{SKETCH}", json={}).status_code == 429


# --------------------------------------------------------------------------- counters


def test_counters(sim: RunningSimulator, api: httpx.Client) -> None:
    first = submit(api, headers={"x-client-request-id": "caller-1"})
    submit(api, headers={"x-client-request-id": "caller-1"})  # Segmind would charge twice
    submit(api, headers={"x-client-request-id": "caller-2"})
    api.post(f"/workflows/{SKETCH}", json={"a": 1})  # no header: a body fingerprint
    for _ in range(3):
        api.get(first["poll_url"])
    api.get("/v1/get-user-credits")
    stats = sim.stats()
    by_request = stats["submits_by_client_request_id"]
    assert by_request.pop("caller-1") == 2
    assert by_request.pop("caller-2") == 1
    (fingerprint,) = by_request
    assert fingerprint.startswith("body-sha256:")
    assert stats["max_submits_per_request"] == 2
    assert stats["max_jobs_per_request"] == 2
    assert stats["submits"] == 4
    assert stats["jobs"] == 4
    assert stats["polls"] == 3
    assert stats["polls_by_job"] == {first["request_id"]: 3}
    assert stats["credits_calls"] == 1
    assert stats["credits_charged_usd"] == pytest.approx(4 * 0.1006)
    assert stats["credits_remaining_usd"] == pytest.approx(1000 - 4 * 0.1006)
    assert stats["responses"]["submit"] == {"200": 4}
    jobs = {job["request_id"]: job for job in sim.jobs()}
    assert jobs[first["request_id"]]["polls"] == 3
    assert jobs[first["request_id"]]["client_request_id"] == "caller-1"
    assert jobs[first["request_id"]]["price_usd"] == 0.1006


def test_a_rejected_submit_is_counted_but_creates_no_job(
    sim: RunningSimulator, api: httpx.Client
) -> None:
    api.post(f"/workflows/{SKETCH}", content=b"[]", headers={"x-client-request-id": "r"})
    stats = sim.stats()
    assert stats["submits_by_client_request_id"] == {"r": 1}
    assert stats["jobs_by_client_request_id"] == {}
    assert stats["jobs"] == 0


# ------------------------------------------------------------------------------ admin


def test_admin_rejects_bad_faults_and_overrides(sim: RunningSimulator) -> None:
    with pytest.raises(SimulatorError, match="400"):
        sim.add_faults({"endpoint": "poll"})
    with pytest.raises(SimulatorError, match="rpm"):
        sim.reset(rpm=-3)
    with pytest.raises(SimulatorError, match="port"):
        sim.reset(port=1)
    assert sim.faults() == []


def test_admin_faults_list_and_clear(sim: RunningSimulator) -> None:
    active = sim.add_faults({"endpoint": "poll", "status": 502, "count": 2}, {"job": "fail"})
    assert [rule["remaining"] for rule in active] == [2, None]
    sim.clear_faults()
    assert sim.faults() == []


def test_reset_restores_credits_and_forgets_jobs(sim: RunningSimulator, api: httpx.Client) -> None:
    submit(api)
    assert sim.stats()["credits_remaining_usd"] < 1000
    sim.reset()
    assert sim.jobs() == []
    assert sim.stats()["credits_remaining_usd"] == 1000


def test_admin_config_masks_the_key(sim: RunningSimulator) -> None:
    config = httpx.get(f"{sim.url}/_sim/config").json()
    assert config["time_scale"] == 0.002
    assert sim.api_key not in json.dumps(config)


@pytest.mark.parametrize(
    ("client_host", "admin_remote", "status"),
    [("203.0.113.7", False, 403), ("203.0.113.7", True, 200), ("::1", False, 200)],
)
def test_admin_answers_loopback_clients_only(
    client_host: str, admin_remote: bool, status: int
) -> None:
    config = SimulatorConfig(
        api_key=SecretStr("admin-test-key-0123456789"), admin_remote=admin_remote
    )
    transport = httpx.ASGITransport(create_app(config), client=(client_host, 50000))

    async def stats_status() -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            return (await client.get("/_sim/stats")).status_code

    assert asyncio.run(stats_status()) == status


def test_the_key_is_never_logged(
    sim: RunningSimulator, api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.add_faults({"endpoint": "poll", "status": 500, "count": 1})
    body = submit(api)
    api.get(body["poll_url"])
    httpx.get(f"{sim.url}/v1/get-user-credits", headers={"x-api-key": sim.api_key + "x"})
    assert caplog.records  # something was logged (httpx at least), and none has the key
    assert sim.api_key not in caplog.text
