"""Scenario outputs: the memory a worker process needs to copy a large output file to the
output store (issue 17).

A host in the benchmark's process serves a ``size`` output file (deterministic bytes,
streamed from a pattern, never held whole) over a real socket. A separate Python process
imports the worker's modules, reports ready, and is sampled idle; then it copies the file
once, and its RSS is sampled from ``/proc`` every 20 ms until it is done:

- baseline: the file read whole (``httpx.get(url).content``) and written to the directory,
  what a copy without streaming costs;
- variant: ``worker.outputs.keep.OutputKeeper`` with ``FileStore``, the service's path
  (checked download, streamed in 64 KiB chunks into the store, hashed on the way).

Figures: the peak RSS above the process's idle RSS, the copy's throughput, and that the
copy's SHA-256 matches the served bytes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import RssSampler, log
from bench.report import Row, ScenarioResult
from simulator.testing import wait_until

NAME = "outputs"
TARGET_ABOVE_IDLE_MB = 100.0
_PATTERN = hashlib.sha256(b"segmind-queue output").digest() * (1024 * 1024 // 32)  # 1 MiB


@dataclass(frozen=True)
class Size:
    size: int


FULL = Size(size=200 * 1024 * 1024)
QUICK = Size(size=50 * 1024 * 1024)


def _body(size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        chunk = _PATTERN[: min(left, len(_PATTERN))]
        left -= len(chunk)
        yield chunk


def _expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in _body(size):
        digest.update(chunk)
    return digest.hexdigest()


def _serve(size: int) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for chunk in _body(size):
                self.wfile.write(chunk)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/outputs/r1/video.mp4"


# The measured process: everything imported first, then "ready"; a line on stdin starts
# the copy; it prints the copy's sha256 and size.
_COPY = """
import sys, hashlib, pathlib
import httpx
from producers.contract import Output
from worker.outputs.fetch import OutputFetcher
from worker.outputs.keep import OutputKeeper
from worker.outputs.policy import parse_fetch_hosts
from worker.outputs.store import FileStore

mode, url, root, port = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4]
print("ready", flush=True)
sys.stdin.readline()
if mode == "naive":
    body = httpx.get(url, timeout=60).content
    (root / "video.mp4").write_bytes(body)
    print(hashlib.sha256(body).hexdigest(), len(body), flush=True)
else:
    fetcher = OutputFetcher(
        parse_fetch_hosts(f"http://127.0.0.1:{port}"),
        allow_private=True,
        max_bytes=1 << 40,
        timeout=httpx.Timeout(60.0),
    )
    kept = OutputKeeper(fetcher, FileStore(root)).keep(
        "r1", [Output(keyname="video", type="video", data=url)], last_attempt=True
    )
    (output,) = kept.outputs
    print(output.sha256, output.bytes, flush=True)
"""


def _measure(mode: str, url: str, port: int, root: Path) -> dict[str, Any]:
    process = subprocess.Popen(
        [sys.executable, "-c", _COPY, mode, url, str(root), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {mode} copy did not start")
        with RssSampler(process.pid, interval_s=0.02) as idle:
            # A steady idle figure: a number of samples of the quiet process.
            wait_until(lambda: idle.samples >= 20, timeout_s=10, interval_s=0.02)
        idle_kb = max(idle.latest.values())
        with RssSampler(process.pid, interval_s=0.02) as busy:
            started = time.monotonic()
            process.stdin.write("go\n")
            process.stdin.flush()
            answer = process.stdout.readline().split()
            seconds = time.monotonic() - started
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    peak_kb = max(busy.peak_kb.values())
    return {
        "idle_mb": idle_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "above_idle_mb": (peak_kb - idle_kb) / 1024,
        "seconds": seconds,
        "sha256": answer[0] if answer else None,
        "bytes": int(answer[1]) if len(answer) > 1 else None,
    }


def run(quick: bool, log_dir: Path) -> ScenarioResult:
    size = QUICK if quick else FULL
    result = ScenarioResult(
        name=NAME,
        title=f"Copying a {size.size // (1024 * 1024)} MB output to the file store",
        baseline="read whole, then written",
        variant="OutputKeeper (streamed)",
    )
    expected = _expected_sha256(size.size)
    server, url = _serve(size.size)
    try:
        figures: dict[str, dict[str, Any]] = {}
        for mode in ("naive", "stream"):
            with tempfile.TemporaryDirectory() as root:
                log(f"copying {size.size} bytes, {mode}")
                figures[mode] = _measure(mode, url, server.server_address[1], Path(root))
    finally:
        server.shutdown()
        server.server_close()
    naive, stream = figures["naive"], figures["stream"]
    mb = size.size / (1024 * 1024)
    result.rows = [
        Row(
            "peak RSS above idle",
            naive["above_idle_mb"],
            stream["above_idle_mb"],
            "MB",
            target=f"< {TARGET_ABOVE_IDLE_MB:g} MB",
            passed=stream["above_idle_mb"] < TARGET_ABOVE_IDLE_MB,
        ),
        Row("idle RSS", naive["idle_mb"], stream["idle_mb"], "MB"),
        Row("copy throughput (MB/s)", mb / naive["seconds"], mb / stream["seconds"]),
        Row(
            "copy matches its sha256",
            float(naive["sha256"] == expected),
            float(stream["sha256"] == expected and stream["bytes"] == size.size),
            target="1",
            passed=stream["sha256"] == expected,
        ),
    ]
    result.figures = figures
    result.notes.append(f"RSS sampled from /proc every 20 ms; file of {size.size} bytes")
    return result
