"""The output stores: a directory, and a real S3-compatible server (moto's) over a socket."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from worker.outputs.store import (
    FileStore,
    OutputStore,
    S3Store,
    StoreUnavailable,
    open_output_store,
)

BODY = bytes(range(256)) * 4096  # 1 MiB


def _chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"outputs-{secrets.token_hex(4)}"
    _s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str) -> OutputStore:
    if request.param == "file":
        return FileStore(tmp_path / "outputs")
    name = f"outputs-{secrets.token_hex(4)}"
    client = _s3_client(s3_endpoint)
    client.create_bucket(Bucket=name)
    return S3Store(name, "copies", client)


def test_a_copy_is_streamed_hashed_and_read_back(store: OutputStore) -> None:
    copy = store.put("r1/image.png", _chunks(BODY), "image/png")
    assert copy.sha256 == hashlib.sha256(BODY).hexdigest()
    assert copy.size == len(BODY)
    assert b"".join(store.chunks(copy.location)) == BODY


def test_a_repeated_copy_replaces_itself(store: OutputStore) -> None:
    first = store.put("r1/image.png", _chunks(BODY), "image/png")
    again = store.put("r1/image.png", _chunks(BODY), "image/png")
    assert first == again


def test_a_copy_whose_download_breaks_leaves_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionError("the host went away")

    with pytest.raises(ConnectionError):
        store.put("r1/video.mp4", broken(), "video/mp4")
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_key_cannot_leave_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        FileStore(tmp_path / "store").put("../escape.png", _chunks(b"x"), "image/png")


def test_an_unwritable_directory_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StoreUnavailable):
        FileStore(blocker).put("r1/a.png", _chunks(b"x"), "image/png")


def test_an_s3_object_has_its_key_and_type(s3_endpoint: str, bucket: str) -> None:
    client = _s3_client(s3_endpoint)
    copy = S3Store(bucket, "p/q", client).put("p/q/r1/clip.mp4", _chunks(BODY), "video/mp4")
    assert copy.location == f"s3://{bucket}/p/q/r1/clip.mp4"
    head = client.head_object(Bucket=bucket, Key="p/q/r1/clip.mp4")
    assert (head["ContentType"], head["ContentLength"]) == ("video/mp4", len(BODY))


def test_a_missing_bucket_is_unavailable_and_names_no_secret(s3_endpoint: str) -> None:
    store = S3Store("no-such-bucket", "", _s3_client(s3_endpoint))
    with pytest.raises(StoreUnavailable) as failed:
        store.put("r1/a.png", _chunks(b"x"), "image/png")
    assert "NoSuchBucket" in str(failed.value)
    assert "testing-secret" not in str(failed.value)


def test_an_unreachable_s3_endpoint_is_unavailable() -> None:
    store = S3Store("b", "", _s3_client("http://127.0.0.1:9"))
    with pytest.raises(StoreUnavailable):
        store.put("r1/a.png", _chunks(b"x"), "image/png")


@pytest.mark.parametrize(
    "url", ["file://relative/path", "s3://", "http://bucket/x", "s3://u:p@bucket/x"]
)
def test_a_bad_store_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="OUTPUT_STORE"):
        open_output_store(url)


def test_store_urls_open_their_store(tmp_path: Path) -> None:
    assert isinstance(open_output_store(tmp_path.as_uri()), FileStore)


def test_an_s3_copy_whose_download_breaks_raises_the_download_error(
    s3_endpoint: str, bucket: str
) -> None:
    from worker.outputs.fetch import FetchError

    client = _s3_client(s3_endpoint)

    def broken() -> Iterator[bytes]:
        yield BODY * 10  # past one part: a multipart upload was begun
        raise FetchError("the download broke off", kind="unreachable", transient=True)

    with pytest.raises(FetchError):
        S3Store(bucket, "", client).put("r1/video.mp4", broken(), "video/mp4")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
