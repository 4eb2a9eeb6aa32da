"""Copying a job's outputs: files copied, text kept, failures told apart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from producers.contract import Output
from tests.output_host import OutputHost, Route
from worker.outputs.fetch import OutputFetcher
from worker.outputs.keep import OutputKeeper
from worker.outputs.policy import parse_fetch_hosts
from worker.outputs.store import FileStore


def _keeper(host: OutputHost, root: Path, *, max_bytes: int = 1 << 20) -> OutputKeeper:
    fetcher = OutputFetcher(
        parse_fetch_hosts(f"http://127.0.0.1:{host.port}"),
        allow_private=True,
        max_bytes=max_bytes,
        timeout=httpx.Timeout(2.0),
    )
    return OutputKeeper(fetcher, FileStore(root))


def test_files_are_copied_and_text_is_kept(host: OutputHost, tmp_path: Path) -> None:
    digest = host.file("/o/r1/image.png", 70_000)
    outputs = [
        Output(keyname="image", type="image", data=host.url("/o/r1/image.png")),
        Output(keyname="caption", type="text", data="a cat"),
    ]
    kept = _keeper(host, tmp_path).keep("r1", outputs, last_attempt=False)
    assert not kept.retry
    image, caption = kept.outputs
    assert caption == outputs[1]
    assert image.stored is True
    assert image.source_url == host.url("/o/r1/image.png")
    assert (image.sha256, image.bytes, image.content_type) == (digest, 70_000, "image/png")
    stored = tmp_path / "r1" / "image.png"
    assert image.data == stored.as_uri()
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest


def test_what_can_never_work_is_left_at_its_url_with_the_reason(
    host: OutputHost, tmp_path: Path
) -> None:
    host.file("/o/big.mp4", 5000, "video/mp4")
    outputs = [
        Output(keyname="gone", type="image", data=host.url("/o/missing.png")),
        Output(keyname="big", type="video", data=host.url("/o/big.mp4")),
        Output(keyname="far", type="image", data="https://elsewhere.example/a.png"),
    ]
    kept = _keeper(host, tmp_path, max_bytes=4096).keep("r2", outputs, last_attempt=False)
    assert not kept.retry
    assert [o.stored for o in kept.outputs] == [False, False, False]
    assert [o.data for o in kept.outputs] == [o.data for o in outputs]
    reasons = [o.store_error or "" for o in kept.outputs]
    assert "404" in reasons[0]
    assert "OUTPUT_MAX_BYTES" in reasons[1]
    assert "not in OUTPUT_FETCH_HOSTS" in reasons[2]
    assert [f.kind for f in kept.failures] == ["http_error", "too_large", "not_allowed"]


def test_a_passing_failure_asks_for_a_retry_then_gives_up_on_the_last(
    host: OutputHost, tmp_path: Path
) -> None:
    host.file("/o/flaky.png", 100)
    host.routes["/o/flaky.png"].fail_first = 1
    output = Output(keyname="image", type="image", data=host.url("/o/flaky.png"))
    keeper = _keeper(host, tmp_path)
    first = keeper.keep("r3", [output], last_attempt=False)
    assert first.retry
    assert first.failures[0].transient
    second = keeper.keep("r3", [output], last_attempt=False)
    assert not second.retry
    assert second.outputs[0].stored is True
    host.routes["/o/flaky.png"] = Route(status=503)
    last = keeper.keep("r3", [output], last_attempt=True)
    assert last.outputs[0].stored is False
    assert "after the last retry" in (last.outputs[0].store_error or "")
