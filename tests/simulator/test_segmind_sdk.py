"""The official ``segmind`` SDK (1.3.0) speaks to the simulator as to api.segmind.com."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from segmind import SegmindClient
from segmind.exceptions import SegmindError

from producers.catalog import default_catalog
from simulator.testing import RunningSimulator


@pytest.fixture
def client(sim: RunningSimulator) -> Iterator[Any]:
    """An SDK client whose v1 base URL is the simulator's."""
    sdk = SegmindClient(api_key=sim.api_key, base_url=sim.v1_url, timeout=5.0)
    try:
        yield sdk
    finally:
        sdk._client.close()


@pytest.mark.parametrize("name", ["sketch-maker", "scene-script"])
def test_pixelflows_run_end_to_end(sim: RunningSimulator, client: Any, name: str) -> None:
    workflow = default_catalog().resolve(name)
    result = client.pixelflows.run(
        workflow_url=f"{sim.url}/workflows/{workflow.workflow_id}",
        data=workflow.default_inputs(),
        poll_interval=0,  # the SDK sleeps between polls; the simulated job is short
        max_wait_time=10,
    )
    assert result["status"] == "COMPLETED"
    # The SDK parses the output string into the list of items.
    assert [(item["keyname"], item["value"]["type"]) for item in result["output"]] == [
        (spec.keyname, spec.type) for spec in workflow.outputs
    ]
    stats = sim.stats()
    assert stats["submits"] == 1
    assert stats["jobs"] == 1
    (job,) = sim.jobs()
    assert job["workflow_id"] == workflow.workflow_id
    assert stats["polls_by_job"][job["request_id"]] == stats["polls"] >= 1


def test_pixelflows_sees_failed_jobs(sim: RunningSimulator, client: Any) -> None:
    sim.add_faults({"job": "fail", "error_field": "error_message", "message": "boom"})
    workflow = default_catalog().resolve("sketch-maker")
    result = client.pixelflows.run(
        workflow_url=f"{sim.url}/workflows/{workflow.workflow_id}", poll_interval=0
    )
    assert result == {"status": "FAILED", "error_message": "boom"}


def test_credits_through_the_sdk(sim: RunningSimulator, client: Any) -> None:
    sim.reset(credits=12.5, free_credits=0.25)
    response = client._request("GET", "/get-user-credits")
    assert response.json() == {"credits": 12.5, "free-credits": 0.25}
    assert sim.stats()["credits_calls"] == 1


def test_sdk_errors(sim: RunningSimulator, client: Any) -> None:
    sim.reset(credits=0.01)
    workflow_url = f"{sim.url}/workflows/{default_catalog().resolve('scene-script').workflow_id}"
    with pytest.raises(SegmindError) as refused:
        client.pixelflows.run(workflow_url=workflow_url)
    assert refused.value.status == 406
    bad = SegmindClient(api_key="not-the-key", base_url=sim.v1_url)
    try:
        with pytest.raises(SegmindError) as unauthorized:
            bad._request("GET", "/get-user-credits")
    finally:
        bad._client.close()
    assert unauthorized.value.status == 401
    assert sim.jobs() == []
