"""``segmind-queue outputs``: a finished request's outputs from the real Redis ledger, and
their copies fetched from a file store and checked against their sha256."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from console.cli import app
from producers.contract import Output, Result, Status
from worker.ledger import Job, Ledger
from worker.outputs.store import FileStore
from worker.store import RedisStore

runner = CliRunner()
BODY = b"\x89PNG" + bytes(range(256)) * 100


@pytest.fixture
def ledger(redis_url: str, namespace: str) -> Iterator[Ledger]:
    store = RedisStore.from_url(redis_url)
    ledger = Ledger(store, prefix=f"{namespace}-outputs-{secrets.token_hex(3)}", ttl_s=600)
    yield ledger
    for key in store.keys(f"{ledger.prefix}:"):
        store.delete(key)
    store.close()


def _finish(ledger: Ledger, request_id: str, outputs: list[Output]) -> None:
    job = Job(
        request_id=request_id,
        workflow="sketch-maker",
        workflow_id="66cec9a38aeef98f887211f1-v1",
        reply_to="replies",
        queued_at=time.time(),
        deadline_s=600,
    )
    record = ledger.open(job, "m1", time.time() + 60)
    result = Result(request_id=request_id, workflow="sketch-maker", status=Status.COMPLETED,
                    outputs=outputs)  # fmt: skip
    assert ledger.finish(record, result.model_dump_json(exclude_none=True), "m1") is not None


def _outputs(ledger: Ledger, redis_url: str, root: Path, *args: str) -> Any:
    env = {
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": ledger.prefix,
        "OUTPUT_STORE": root.as_uri(),
        "SEGMIND_API_KEY": None,
    }
    return runner.invoke(app, ["outputs", *args], env=env)


def test_stored_copies_are_listed_and_downloaded_checked(
    ledger: Ledger, redis_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    copy = FileStore(root).put("r1/image.png", iter([BODY]), "image/png")
    stored = Output(keyname="image", type="image", data=copy.location, stored=True,
                    sha256=copy.sha256, bytes=copy.size, source_url="https://x/a.png")  # fmt: skip
    missed = Output(keyname="video", type="video", data="https://x/v.mp4", stored=False,
                    store_error="the output host answered 404")  # fmt: skip
    text = Output(keyname="caption", type="text", data="a cat")
    _finish(ledger, "r1", [stored, missed, text])

    listed = _outputs(ledger, redis_url, root, "r1")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(f"image\t{copy.location}\t{len(BODY)} bytes\tsha256 {copy.sha256}")
    assert lines[1].startswith("video\tnot stored: the output host answered 404")
    assert lines[2] == "caption\ttext\ta cat"

    target = tmp_path / "down"
    fetched = _outputs(ledger, redis_url, root, "r1", "--download", str(target))
    assert fetched.exit_code == 0, fetched.output
    assert hashlib.sha256((target / "image.png").read_bytes()).hexdigest() == copy.sha256
    assert not (target / "v.mp4").exists()


def test_a_copy_that_does_not_match_its_hash_fails(
    ledger: Ledger, redis_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    copy = FileStore(root).put("r2/image.png", iter([BODY]), "image/png")
    tampered = Output(keyname="image", type="image", data=copy.location, stored=True,
                      sha256="0" * 64, bytes=copy.size)  # fmt: skip
    _finish(ledger, "r2", [tampered])
    fetched = _outputs(ledger, redis_url, root, "r2", "--download", str(tmp_path / "d"))
    assert fetched.exit_code == 1
    assert "does not match its sha256" in fetched.output


def test_an_unknown_request_exits_1(ledger: Ledger, redis_url: str, tmp_path: Path) -> None:
    missing = _outputs(ledger, redis_url, tmp_path, "nope")
    assert missing.exit_code == 1
    assert "no record" in missing.output
