"""What a simulated job produces and how long it is expected to take (``simulator.outputs``)."""

from __future__ import annotations

import hashlib
import json
import random

import httpx
import pytest

from producers.catalog import Workflow, default_catalog
from simulator.outputs import (
    CONTENT_TYPES,
    DEFAULT_DURATION_S,
    expected_duration_s,
    expected_output,
    output_content,
    output_items,
    output_sha256,
)
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import SIM_API_KEY

SKETCH_ID = "66cec9a38aeef98f887211f1-v1"

URL_EXTENSIONS = {"image": (".png", ".jpeg", ".webp"), "video": (".mp4",)}


def workflow(name: str) -> Workflow:
    found = default_catalog().get(name)
    assert found is not None
    return found


# ----------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("character-video", 673.9),  # from the catalog
        ("scene-script", DEFAULT_DURATION_S["text"]),
        ("stock-video", DEFAULT_DURATION_S["video"]),
        ("product-shot", DEFAULT_DURATION_S["image"]),
        ("sketch-maker", DEFAULT_DURATION_S["image"]),
    ],
)
def test_expected_duration_from_catalog_else_by_output_type(name: str, expected: float) -> None:
    assert expected_duration_s(workflow(name)) == expected


def test_expected_duration_of_a_raw_id_is_that_of_an_image() -> None:
    assert expected_duration_s(None) == 60.0


# ------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("name", [w.name for w in default_catalog()])
def test_output_items_follow_the_catalog_outputs(name: str) -> None:
    wf = workflow(name)
    items = output_items(wf, "a" * 32, random.Random(3))
    assert [(i["keyname"], i["value"]["type"]) for i in items] == [
        (o.keyname, o.type) for o in wf.outputs
    ]
    for item in items:
        data = item["value"]["data"]
        assert isinstance(data, str)
        kind = item["value"]["type"]
        if kind in URL_EXTENSIONS:
            assert data.startswith("https://")
            assert data.endswith(URL_EXTENSIONS[kind])
            assert "a" * 32 in data
    json.dumps(items)  # serialisable as the poll output string


def test_scene_script_text_is_a_json_list_of_five_scenes() -> None:
    items = output_items(workflow("scene-script"), "b" * 32, random.Random(4))
    scenes = json.loads(items[0]["value"]["data"])
    assert len(scenes) == 5
    for scene in scenes:
        assert set(scene) == {"image_description", "text"}
        assert scene["image_description"]
        assert scene["text"]


def test_raw_workflow_produces_one_image() -> None:
    items = output_items(None, "c" * 32, random.Random(5))
    assert len(items) == 1
    assert items[0]["keyname"] == "image"
    assert items[0]["value"]["type"] == "image"


def test_served_outputs_stream_their_bytes_without_a_key(sim: RunningSimulator) -> None:
    sim.reset(serve_outputs=True, outputs_url=f"{sim.url}/outputs", output_bytes={"image": 100_000})
    with httpx.Client(base_url=sim.url, headers={"x-api-key": SIM_API_KEY}) as client:
        submitted = client.post(f"/workflows/{SKETCH_ID}", json={}).json()
        poll_url = submitted["poll_url"]
        wait_until(
            lambda: client.get(poll_url).json()["status"] == "COMPLETED",
            timeout_s=10,
            message="the job to complete",
        )
        outputs = json.loads(client.get(poll_url).json()["output"])
    url = outputs[0]["value"]["data"]
    assert url.startswith(f"{sim.url}/outputs/{submitted['request_id']}/image.")
    name = url.rsplit("/", 1)[1]
    served = httpx.get(url)  # no key: a CDN
    assert served.status_code == 200
    assert served.headers["content-type"].startswith(CONTENT_TYPES[name.rsplit(".", 1)[1]])
    assert len(served.content) == 100_000
    expected = output_sha256(submitted["request_id"], name, 100_000)
    assert hashlib.sha256(served.content).hexdigest() == expected
    assert httpx.head(url).headers["content-length"] == "100000"
    assert httpx.get(f"{sim.url}/outputs/{submitted['request_id']}/image.exe").status_code == 404
    assert sim.stats()["output_downloads"] == {f"{submitted['request_id']}/{name}": 2}


def test_outputs_are_not_served_unless_asked(sim: RunningSimulator) -> None:
    assert httpx.get(f"{sim.url}/outputs/{'a' * 32}/image.png").status_code == 404


# ------------------------------------------------------------------- served bytes


@pytest.mark.parametrize("chunk_bytes", [1, 31, 32, 1000, 65536])
def test_output_content_does_not_depend_on_the_chunk_size(chunk_bytes: int) -> None:
    whole = b"".join(output_content("r" * 32, "image.png", 5000))
    chunks = list(output_content("r" * 32, "image.png", 5000, chunk_bytes=chunk_bytes))
    assert b"".join(chunks) == whole
    assert max(len(chunk) for chunk in chunks) == min(chunk_bytes, 5000)
    assert hashlib.sha256(whole).hexdigest() == output_sha256("r" * 32, "image.png", 5000)
    shorter = b"".join(output_content("r" * 32, "image.png", 1234))
    assert whole.startswith(shorter)  # a cut download is a prefix of the file
    assert whole != b"".join(output_content("r" * 32, "image.jpeg", 5000))
    assert list(output_content("r" * 32, "image.png", 0)) == []


def test_expected_output_from_a_url() -> None:
    url = f"http://127.0.0.1:1/outputs/{'d' * 32}/video.mp4"
    expected = expected_output(url, {"video": 2000})
    assert (expected.request_id, expected.name, expected.keyname) == (
        "d" * 32,
        "video.mp4",
        "video",
    )
    assert (expected.size, expected.content_type) == (2000, "video/mp4")
    assert expected.sha256 == output_sha256("d" * 32, "video.mp4", 2000)
    assert len(expected.content()) == 2000
    assert expected_output(url).size == 1024 * 1024  # the default video size
    assert expected_output(url, size=7).size == 7
    for bad in ("http://x/outputs/abc/caption.txt", "image.png", ""):
        with pytest.raises(ValueError, match="not an output file URL"):
            expected_output(bad)
