"""Size limits as an attacker meets them: endless bodies from a hostile API over a real
socket, and oversized requests and metadata from the queue.

- A success body that never ends is cut at ``max_response_bytes`` (``response_too_large``),
  an error body at ``ERROR_BODY_BYTES``, and neither holds the worker: the call returns in
  about the time the limit takes to arrive.
- An oversized request is REJECTED ``request_too_large`` without a Segmind call, and its
  rejection stays small: metadata is echoed only while it is small.
- Everything a result can carry is bounded: outputs by the response limit, reasons by
  ``MAX_REASON_CHARS``, metadata by the request limit.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from pydantic import SecretStr

from producers.catalog import default_catalog
from producers.contract import (
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_ECHOED_METADATA_BYTES,
    MAX_REASON_CHARS,
    ErrorCode,
    RequestRejected,
    Status,
    validate_request,
)
from tests.sockets import TcpServer
from worker.segmind.client import SegmindClient
from worker.segmind.errors import FinalError, SegmindError

KEY = "sk-limits-test-0f1e2d3c4b5a"
WORKFLOW_ID = "66cec9a38aeef98f887211f1-v1"
LIMIT = 64 * 1024


class EndlessServer(TcpServer):
    """Answers every HTTP request with ``status`` and a chunked body that never ends,
    until the client hangs up; counts the body bytes it managed to send."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.sent = 0

    def handle(self, connection: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(65536)
            if not chunk:
                return
            request += chunk
        head = (
            f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\n"
            "transfer-encoding: chunked\r\n\r\n"
        )
        piece = b'{"output": "' + b"A" * 16378 + b'", '  # 16 KiB of JSON-ish text
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        try:
            connection.sendall(head.encode())
            while not self.stopping.is_set():
                connection.sendall(frame)
                self.sent += len(piece)
        except OSError:
            return  # the client hung up: what the test expects


def _call(server: EndlessServer, call: str) -> tuple[SegmindError, float]:
    with SegmindClient(
        api_key=SecretStr(KEY),
        api_url=server.url,
        max_response_bytes=LIMIT,
        total_timeout_s=30,
        read_timeout_s=10,
    ) as segmind:
        calls: dict[str, Callable[[], object]] = {
            "submit": lambda: segmind.submit(WORKFLOW_ID, {}),
            "poll": lambda: segmind.poll(f"{server.url}/workflows/request/abc"),
            "credits": segmind.credits,
        }
        started = time.monotonic()
        with pytest.raises(SegmindError) as raised:
            calls[call]()
        return raised.value, time.monotonic() - started


@pytest.mark.parametrize("call", ["submit", "poll", "credits"])
def test_an_endless_success_body_is_refused_at_the_limit(call: str) -> None:
    with EndlessServer(200) as server:
        error, took_s = _call(server, call)
    assert isinstance(error, FinalError)
    assert error.code is ErrorCode.RESPONSE_TOO_LARGE
    assert str(LIMIT) in error.message
    assert took_s < 10  # cut at the limit, not at the total timeout (30 s)


@pytest.mark.parametrize("call", ["submit", "poll"])
def test_an_endless_error_body_is_read_partly_and_still_classified(call: str) -> None:
    with EndlessServer(500) as server:
        error, took_s = _call(server, call)
    assert error.http_status == 500
    assert error.code is not ErrorCode.RESPONSE_TOO_LARGE  # a 500, whatever its size
    assert len(error.message) <= MAX_REASON_CHARS
    assert took_s < 10


def test_an_oversized_request_is_rejected_and_its_answer_stays_small() -> None:
    metadata = {"order": 17}
    payload = {
        "request_id": "big-1",
        "workflow": "scene-script",
        "inputs": {"quote": "x" * (DEFAULT_MAX_REQUEST_BYTES + 1)},
        "metadata": metadata,
    }
    with pytest.raises(RequestRejected) as rejected:
        validate_request(payload, default_catalog())
    assert rejected.value.code is ErrorCode.REQUEST_TOO_LARGE
    result = rejected.value.to_result("fallback")
    assert result.status is Status.REJECTED
    assert result.request_id == "big-1"
    assert result.metadata == metadata  # small metadata is echoed, so it can be matched
    assert len(result.model_dump_json()) < 4096


def test_large_metadata_is_not_echoed_in_a_rejection() -> None:
    payload = {
        "request_id": "big-2",
        "workflow": "no-such-workflow",
        "metadata": {"blob": "m" * (MAX_ECHOED_METADATA_BYTES + 1)},
    }
    with pytest.raises(RequestRejected) as rejected:
        validate_request(payload, default_catalog())
    result = rejected.value.to_result("fallback")
    assert result.metadata is None
    assert len(result.model_dump_json()) < 4096


def test_metadata_counts_toward_the_request_limit() -> None:
    payload = {
        "workflow": "sketch-maker",
        "metadata": {"blob": "m" * DEFAULT_MAX_REQUEST_BYTES},
    }
    with pytest.raises(RequestRejected) as rejected:
        validate_request(payload, default_catalog())
    assert rejected.value.code is ErrorCode.REQUEST_TOO_LARGE
    assert rejected.value.metadata is None
