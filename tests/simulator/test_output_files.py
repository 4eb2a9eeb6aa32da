"""Output files served by the simulator (``serve_outputs``) over real sockets: every file
output of a COMPLETED job is a URL on the simulator itself that downloads, without a key,
with its content type, length and known bytes; unknown paths are 404; and each output
fault (a status for good or for the first N downloads, a redirect, a huge file, a slow
one, a cut connection) does what it says, counted in ``/_sim/stats``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from producers.catalog import Catalog, OutputSpec, Workflow
from simulator.config import DEFAULT_OUTPUTS_URL, SimulatorConfig
from simulator.outputs import CONTENT_TYPES, expected_output, output_sha256
from simulator.testing import RunningSimulator, SimulatorError, run_simulator, wait_until

SKETCH = "66cec9a38aeef98f887211f1-v1"
ALL_FILES = "abcdefabcdefabcdefabcdef-v1"
#: A workflow with an output of every type (no such workflow is in the catalog).
ALL_FILES_WORKFLOW = Workflow(
    name="all-files",
    workflow_id=ALL_FILES,
    outputs=(
        OutputSpec(keyname="image", type="image"),
        OutputSpec(keyname="video", type="video"),
        OutputSpec(keyname="audio", type="audio"),
        OutputSpec(keyname="file", type="file"),
        OutputSpec(keyname="caption", type="text"),
        OutputSpec(keyname="meta", type="json"),
    ),
    expected_duration_s=30.0,
)
SIZES = {"image": 1000, "video": 300_000, "audio": 4097, "file": 0}
#: The first case of each fault test: a small image, served in one or a few chunks.
IMAGE_BYTES = 64 * 1024


def complete(client: httpx.Client, workflow_id: str = SKETCH) -> tuple[str, list[dict[str, Any]]]:
    """Submit a job, wait until it is COMPLETED: its request id and its output items."""
    submitted = client.post(f"/workflows/{workflow_id}", json={})
    assert submitted.status_code == 200, submitted.text
    # Not the poll_url: with public_url it names another host.
    poll_url = f"/workflows/request/{submitted.json()['request_id']}"

    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(poll_url).json()
        return body if body["status"] == "COMPLETED" else None

    body = wait_until(done, timeout_s=10, interval_s=0.005, message="the job to complete")
    return submitted.json()["request_id"], json.loads(body["output"])


@pytest.fixture
def api(sim: RunningSimulator) -> Iterator[httpx.Client]:
    """A client of the Segmind endpoints, with the key."""
    with sim.client() as client:
        yield client


@pytest.fixture(scope="module")
def cdn() -> Iterator[httpx.Client]:
    """A client of the output files: no key (a CDN needs none)."""
    with httpx.Client(timeout=10.0) as client:
        yield client


def serve(sim: RunningSimulator, api: httpx.Client, **overrides: Any) -> tuple[str, str]:
    """Serve outputs (with ``overrides``), complete one image job: its request id and the
    image's URL."""
    sim.reset(serve_outputs=True, **overrides)
    request_id, items = complete(api)
    return request_id, items[0]["value"]["data"]


# ------------------------------------------------------------------ every file type


@pytest.fixture(scope="module")
def all_files() -> Iterator[RunningSimulator]:
    """A simulator whose catalog has a workflow producing every output type."""
    config = SimulatorConfig(
        api_key=SecretStr("outputs-test-key-0123456789"),
        time_scale=0.002,
        rpm=0,
        seed=99,
        serve_outputs=True,
        output_bytes=SIZES,
    )
    with run_simulator(config, catalog=Catalog([ALL_FILES_WORKFLOW])) as running:
        yield running


def test_every_file_output_downloads_from_the_simulator(
    all_files: RunningSimulator, cdn: httpx.Client
) -> None:
    all_files.reset()
    with all_files.client() as client:
        request_id, items = complete(client, ALL_FILES)
    by_key = {item["keyname"]: item["value"] for item in items}
    assert not by_key["caption"]["data"].startswith("http")  # text stays text
    json.loads(by_key["meta"]["data"])
    files = {key: value["data"] for key, value in by_key.items() if key not in ("caption", "meta")}
    # No key: a CDN needs none.
    for keyname, url in files.items():
        assert url.startswith(f"{all_files.url}/outputs/{request_id}/{keyname}."), url
        expected = expected_output(url, SIZES)
        assert expected.size == SIZES[by_key[keyname]["type"]]
        served = cdn.get(url)
        assert served.status_code == 200, url
        assert served.headers["content-type"].split(";")[0] == expected.content_type
        assert expected.content_type == CONTENT_TYPES[url.rsplit(".", 1)[1]]
        assert served.headers["content-length"] == str(expected.size)
        assert served.content == expected.content()
        assert hashlib.sha256(served.content).hexdigest() == expected.sha256
        head = cdn.head(url)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == str(expected.size)
    stats = all_files.stats()
    paths = {f"{request_id}/{url.rsplit('/', 1)[1]}" for url in files.values()}
    assert stats["output_downloads"] == dict.fromkeys(paths, 2)  # a GET and a HEAD each
    assert stats["output_downloads_total"] == 8
    assert stats["output_responses"] == {"200": 8}
    assert "outputs" not in stats["responses"]  # Segmind calls only


def test_the_urls_follow_public_url(sim: RunningSimulator, api: httpx.Client) -> None:
    _, url = serve(sim, api, public_url="https://sim.example:8443")
    assert url.startswith("https://sim.example:8443/outputs/")


def test_an_explicit_outputs_url_wins(sim: RunningSimulator, api: httpx.Client) -> None:
    _, url = serve(sim, api, outputs_url="http://files.example/o/")
    assert url.startswith("http://files.example/o/")


def test_off_the_outputs_are_segmind_urls_that_nothing_serves(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    request_id, items = complete(api)
    url = items[0]["value"]["data"]
    assert url.startswith(f"{DEFAULT_OUTPUTS_URL}/{request_id}/image.")
    name = url.rsplit("/", 1)[1]
    assert cdn.get(f"{sim.url}/outputs/{request_id}/{name}").status_code == 404
    assert sim.stats()["output_downloads"] == {}


def test_unknown_paths_are_404(sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client) -> None:
    request_id, url = serve(sim, api)
    name = url.rsplit("/", 1)[1]
    sim.add_faults({"job": "never_finish", "count": 1})
    running = api.post(f"/workflows/{SKETCH}", json={}).json()["request_id"]
    for path in (
        f"{'f' * 32}/{name}",  # no such job
        f"{request_id}/video.mp4",  # not one of its files
        f"{request_id}/image.exe",
        f"{running}/{name}",  # not COMPLETED
        f"{request_id}/{name}/more",
        "nothing",
    ):
        assert cdn.get(f"{sim.url}/outputs/{path}").status_code == 404, path
    stats = sim.stats()
    assert stats["output_downloads"] == {}
    assert stats["output_responses"] == {"404": 4}  # the last two are not /outputs/ routes


# ---------------------------------------------------------------------------- faults


def test_a_status_fault_forever_is_a_missing_file(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    _, url = serve(sim, api, output_faults=[{"kind": "status", "status": 404}])
    assert [cdn.get(url).status_code for _ in range(3)] == [404, 404, 404]
    stats = sim.stats()
    assert stats["faults_served"] == {"output:status": 3}
    assert stats["output_downloads_total"] == 3
    assert sim.output_faults() == [
        {"kind": "status", "keyname": "*", "status": 404, "remaining": None}
    ]


@pytest.mark.parametrize("status", [500, 503])
def test_a_transient_status_fails_the_first_downloads_then_serves(
    sim: RunningSimulator, api: httpx.Client, status: int, cdn: httpx.Client
) -> None:
    fault = {"kind": "status", "status": status, "count": 2, "headers": {"Retry-After": "1"}}
    request_id, url = serve(sim, api, output_faults=[fault])
    first, second, third = (cdn.get(url) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (status, status, 200)
    assert first.headers["retry-after"] == "1"
    assert hashlib.sha256(third.content).hexdigest() == expected_output(url).sha256
    stats = sim.stats()
    assert stats["output_responses"] == {str(status): 2, "200": 1}
    assert stats["output_downloads"] == {f"{request_id}/{url.rsplit('/', 1)[1]}": 3}
    assert sim.output_faults() == []  # used up


def test_a_redirect_names_its_location(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    fault = {"kind": "redirect", "location": "http://10.0.0.1/x", "count": 1}
    _, url = serve(sim, api, output_faults=[fault])
    answer = cdn.get(url)  # httpx does not follow redirects unless asked
    assert (answer.status_code, answer.headers["location"]) == (302, "http://10.0.0.1/x")
    assert cdn.get(url).status_code == 200
    assert sim.stats()["faults_served"] == {"output:redirect": 1}


def test_a_redirect_to_the_same_file_elsewhere_is_followed(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    fault = {"kind": "redirect", "status": 307, "location": "{base}{path}?again=1", "count": 1}
    _, url = serve(sim, api, output_faults=[fault])
    answer = cdn.get(url, follow_redirects=True)
    assert [hop.status_code for hop in answer.history] == [307]
    assert answer.history[0].headers["location"] == f"{url}?again=1"
    assert answer.content == expected_output(url).content()


def test_a_huge_file_streams_its_announced_size(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    size = 3 * 1024 * 1024 + 5
    request_id, url = serve(
        sim, api, output_faults=[{"kind": "size", "keyname": "image", "size": size}]
    )
    digest = hashlib.sha256()
    with cdn.stream("GET", url) as answer:
        assert answer.headers["content-length"] == str(size)
        for chunk in answer.iter_bytes():
            digest.update(chunk)
    name = url.rsplit("/", 1)[1]
    assert digest.hexdigest() == output_sha256(request_id, name, size)
    assert digest.hexdigest() == expected_output(url, size=size).sha256
    # A client that stops reading at its limit closes the connection: the server goes on.
    with cdn.stream("GET", url) as answer:
        next(answer.iter_bytes())
    assert cdn.get(f"{sim.url}/_sim/stats").json()["output_downloads_total"] == 2


def test_a_file_larger_than_announced_has_no_content_length(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    fault = {"kind": "size", "size": 200_000, "announce_length": False}
    _, url = serve(sim, api, output_faults=[fault])
    answer = cdn.get(url)
    assert "content-length" not in answer.headers
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == expected_output(url, size=200_000).content()
    assert "content-length" not in cdn.head(url).headers


def test_a_slow_file_trickles_and_times_a_short_read_out(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    fault = {"kind": "slow", "delay_s": 0.05, "chunk_bytes": 16 * 1024}
    _, url = serve(sim, api, output_faults=[fault])
    started = time.monotonic()
    answer = cdn.get(url)
    assert time.monotonic() - started >= 4 * 0.05  # 4 chunks of a 64 KiB image
    assert answer.content == expected_output(url).content()
    with pytest.raises(httpx.ReadTimeout):
        cdn.get(url, timeout=httpx.Timeout(5.0, read=0.01))


def test_a_truncated_download_breaks_the_connection(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    _, url = serve(sim, api, output_faults=[{"kind": "truncate", "count": 1}])
    received = bytearray()

    def download() -> None:
        with cdn.stream("GET", url) as answer:
            assert answer.headers["content-length"] == str(IMAGE_BYTES)
            for chunk in answer.iter_bytes():
                received.extend(chunk)

    with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|closed"):
        download()
    assert bytes(received) == expected_output(url).content()[: len(received)]
    assert len(received) < IMAGE_BYTES
    assert len(cdn.get(url).content) == IMAGE_BYTES  # the rule was used up
    assert sim.stats()["faults_served"] == {"output:truncate": 1}


def test_a_fault_targets_one_keyname(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    _, url = serve(sim, api, output_faults=[{"kind": "status", "status": 404, "keyname": "video"}])
    assert cdn.get(url).status_code == 200
    assert sim.stats()["faults_served"] == {}


def test_output_faults_at_run_time_listed_and_cleared(
    sim: RunningSimulator, api: httpx.Client, cdn: httpx.Client
) -> None:
    _, url = serve(sim, api)
    active = sim.add_output_faults({"kind": "status", "status": 503, "count": 1})
    assert active == [{"kind": "status", "keyname": "*", "status": 503, "count": 1,
                       "remaining": 1}]  # fmt: skip
    assert sim.faults() == []
    assert cdn.get(url).status_code == 503
    sim.add_output_faults({"kind": "slow", "delay_s": 1})
    sim.clear_faults()
    assert sim.output_faults() == []
    with pytest.raises(SimulatorError, match="needs a location"):
        sim.add_output_faults({"kind": "redirect"})
    with pytest.raises(SimulatorError, match="output fault 0 is invalid"):
        sim.reset(output_faults=[{"kind": "melt"}])
