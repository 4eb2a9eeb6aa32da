"""An output host over a real socket (``http.server`` in a thread), and an S3-compatible
server (moto's standalone server), each started once per session: fixtures for the output
store's tests (``tests/worker/outputs``, ``tests/e2e/test_outputs.py``)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import free_port


@dataclass
class Route:
    """What the host answers on a path."""

    status: int = 200
    body: bytes = b""
    content_type: str = "image/png"
    headers: dict[str, str] = field(default_factory=dict)
    #: Fail this many times (503) before answering.
    fail_first: int = 0
    #: Send Content-Length (without it, the body ends when the connection closes).
    announce_length: bool = True


@dataclass
class OutputHost:
    """The running host: ``routes`` by path, the ``seen`` requests' headers by path."""

    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    #: What a path without a route gets (``None``: 404).
    default: Route | None = None
    seen: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def file(self, path: str, size: int, content_type: str = "image/png") -> str:
        """Serve ``size`` deterministic bytes at ``path``; their sha256."""
        body = (hashlib.sha256(path.encode()).digest() * (size // 32 + 1))[:size]
        self.routes[path] = Route(body=body, content_type=content_type)
        return hashlib.sha256(body).hexdigest()


def _handler(host: OutputHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host.seen.setdefault(self.path, []).append(dict(self.headers.items()))
            route = host.routes.get(self.path, host.default)
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if route.fail_first > 0:
                route.fail_first -= 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            for name, value in route.headers.items():
                self.send_header(name, value)
            if route.announce_length:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, *args: Any) -> None:
            return None

    return Handler


@pytest.fixture(scope="session")
def output_host() -> Iterator[OutputHost]:
    host = OutputHost(port=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(host))
    host.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def host(output_host: OutputHost) -> OutputHost:
    output_host.routes.clear()
    output_host.seen.clear()
    output_host.default = None
    return output_host


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3-compatible server on a free port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
