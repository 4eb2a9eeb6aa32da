"""Output files kept in OUTPUT_STORE, on the real RabbitMQ, Redis and simulator through a
real worker: copies in a directory and in an S3-compatible server (moto's, over a socket)
that hash to their sha256, and each failure (a host not allowed, a redirect off the list,
a file too large, the store down) ending COMPLETED with that output not stored."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3

from producers import ResultConsumer, Status
from producers.contract import Output, Result
from simulator.outputs import output_sha256
from simulator.testing import RunningSimulator
from tests.e2e.conftest import Stack
from tests.output_host import OutputHost, Route, host, output_host, s3_endpoint

__all__ = ["host", "output_host", "s3_endpoint"]  # fixtures

IMAGE = "https://example.com/cat.png"
SECRET = "testing-secret-key"


def _run(stack: Stack, count: int = 1) -> list[Result]:
    run = uuid.uuid4().hex[:6]
    ids = [f"out-{run}-{n}" for n in range(count)]
    with ResultConsumer.private(stack.amqp_url, prefix=f"{stack.name}.r") as replies:
        with stack.publisher() as publisher:
            for request_id in ids:
                publisher.publish(
                    {
                        "request_id": request_id,
                        "workflow": "sketch-maker",
                        "inputs": {"input_image": IMAGE},
                        "reply_to": replies.queue,
                    }
                )
        results = replies.wait(ids, timeout_s=60)
    return [results[i] for i in ids]


def _image(result: Result) -> Output:
    assert result.status is Status.COMPLETED, result
    assert result.outputs is not None
    (image,) = result.outputs
    return image


def _expected_sha256(result: Result, image: Output, size: int) -> str:
    name = str(image.source_url).rsplit("/", 1)[1]
    assert result.segmind_request_id is not None
    return output_sha256(result.segmind_request_id, name, size)


def _serve(sim: RunningSimulator, **overrides: Any) -> None:
    sim.reset(serve_outputs=True, outputs_url=f"{sim.url}/outputs", **overrides)


def test_copies_in_a_directory_hash_to_their_sha256(
    fresh_stack: Stack, sim: RunningSimulator, tmp_path: Path
) -> None:
    _serve(sim, output_bytes={"image": 300_000})
    fresh_stack.start_worker(
        OUTPUT_STORE=tmp_path.as_uri(),
        OUTPUT_FETCH_HOSTS=sim.url,
        OUTPUT_ALLOW_PRIVATE="true",
    )
    for result in _run(fresh_stack, 3):
        image = _image(result)
        assert image.stored is True
        assert str(image.source_url).startswith(f"{sim.url}/outputs/")
        path = Path(unquote(urlsplit(str(image.data)).path))
        assert path.parent == tmp_path / result.request_id
        body = path.read_bytes()
        assert (len(body), image.bytes) == (300_000, 300_000)
        assert hashlib.sha256(body).hexdigest() == image.sha256
        assert image.sha256 == _expected_sha256(result, image, 300_000)
    assert sim.stats()["submits"] == 3


def test_copies_in_an_s3_compatible_server(
    fresh_stack: Stack, sim: RunningSimulator, s3_endpoint: str
) -> None:
    _serve(sim)
    bucket = f"outputs-{secrets.token_hex(4)}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing",
                          aws_secret_access_key=SECRET)  # fmt: skip
    client.create_bucket(Bucket=bucket)
    worker = fresh_stack.start_worker(
        OUTPUT_STORE=f"s3://{bucket}/kept",
        OUTPUT_FETCH_HOSTS=sim.url,
        OUTPUT_ALLOW_PRIVATE="true",
        AWS_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
    )
    (result,) = _run(fresh_stack)
    image = _image(result)
    assert image.stored is True
    key = urlsplit(str(image.data)).path.lstrip("/")
    assert str(image.data).startswith(f"s3://{bucket}/kept/{result.request_id}/image.")
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert (
        hashlib.sha256(body).hexdigest()
        == image.sha256
        == _expected_sha256(result, image, 64 * 1024)
    )
    assert SECRET not in worker.log()


def test_each_failure_ends_completed_with_the_output_not_stored(
    fresh_stack: Stack, sim: RunningSimulator, host: OutputHost, tmp_path: Path
) -> None:
    fresh_stack.start_worker(
        OUTPUT_STORE=tmp_path.as_uri(),
        OUTPUT_FETCH_HOSTS=f"{sim.url},http://127.0.0.1:{host.port}",
        OUTPUT_ALLOW_PRIVATE="true",
        OUTPUT_MAX_BYTES="100000",
    )
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("a host not allowed", {}, "not in OUTPUT_FETCH_HOSTS"),  # Segmind's own CDN URL
        (
            "too large",
            {
                "serve_outputs": True,
                "outputs_url": f"{sim.url}/outputs",
                "output_bytes": {"image": 200_000},
            },
            "OUTPUT_MAX_BYTES",
        ),
        (
            "a redirect off the list",
            {"outputs_url": f"http://127.0.0.1:{host.port}/o"},
            "not in OUTPUT_FETCH_HOSTS",
        ),
    ]
    host.default = Route(status=302, headers={"Location": "http://10.0.0.1/inside"})
    for what, overrides, reason in cases:
        sim.reset(**overrides)
        (result,) = _run(fresh_stack)
        image = _image(result)
        assert image.stored is False, what
        assert reason in (image.store_error or ""), (what, image.store_error)
        assert str(image.data).startswith("http"), what  # Segmind's URL, kept
        assert result.cost_usd, what  # paid, and said so
        assert sim.stats()["submits"] == 1, what
    assert list(tmp_path.rglob("*.png")) == []


def test_a_store_that_stays_down_ends_completed_after_the_retries(
    fresh_stack: Stack, sim: RunningSimulator, s3_endpoint: str
) -> None:
    _serve(sim)
    fresh_stack.start_worker(
        OUTPUT_STORE="s3://no-such-bucket-anywhere/x",
        OUTPUT_FETCH_HOSTS=sim.url,
        OUTPUT_ALLOW_PRIVATE="true",
        OUTPUT_STORE_RETRIES="2",
        AWS_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
    )
    (result,) = _run(fresh_stack)
    image = _image(result)
    assert image.stored is False
    assert "after the last retry" in (image.store_error or "")
    assert "NoSuchBucket" in (image.store_error or "")
    # Three attempts, each downloading the file once; Segmind was polled to the end once.
    assert sum(sim.stats()["output_downloads"].values()) == 3
    assert sim.stats()["submits"] == 1
