"""The plain form on the real worker: a bare request with ``reply_to`` / ``correlation_id``
properties, from pika and from the Node example in docs/examples (run as a user would)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pytest

from producers import wire
from simulator.testing import RunningSimulator
from tests.conftest import _missing
from tests.e2e.conftest import Stack, next_result

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
#: Where Debian's golang-github-rabbitmq-amqp091-go-dev puts the library (`make go-tools`).
DEBIAN_GOPATH = Path("/usr/share/gocode")
IMAGE = "https://example.com/cat.png"


def _publish_plain(stack: Stack, body: dict[str, Any] | bytes, **properties: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "",
            stack.requests_queue,
            raw,
            pika.BasicProperties(
                content_type="application/json", delivery_mode=wire.PERSISTENT, **properties
            ),
            mandatory=True,
        )
    finally:
        connection.close()


def _result(stack: Stack, queue: str, timeout_s: float = 30) -> tuple[Any, dict[str, Any]]:
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        return next_result(connection.channel(), queue, timeout_s)
    finally:
        connection.close()


@pytest.fixture
def reply_queue(stack: Stack) -> Any:
    queue = f"{stack.name}.plain-{uuid.uuid4().hex[:6]}"
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    connection.channel().queue_declare(queue, durable=True)
    connection.close()
    yield queue
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    connection.channel().queue_delete(queue)
    connection.close()


def test_a_bare_request_with_rpc_properties_completes_correlated(
    stack: Stack, sim: RunningSimulator, reply_queue: str
) -> None:
    request_id = f"plain-{uuid.uuid4().hex[:8]}"
    body = {"workflow": "sketch-maker", "inputs": {"input_image": IMAGE}, "metadata": {"a": 1}}
    _publish_plain(stack, body, reply_to=reply_queue, correlation_id=request_id)
    properties, result = _result(stack, reply_queue)
    assert properties.correlation_id == request_id
    assert (result["request_id"], result["status"]) == (request_id, "COMPLETED")
    assert result["metadata"] == {"a": 1}
    assert sim.stats()["submits_by_client_request_id"] == {request_id: 1}


def test_a_bad_bare_request_is_rejected_on_its_reply_queue_unpaid(
    stack: Stack, sim: RunningSimulator, reply_queue: str
) -> None:
    request_id = f"plain-bad-{uuid.uuid4().hex[:8]}"
    body = {"request_id": request_id, "workflow": "sketch-maker", "inputs": {"image": IMAGE}}
    _publish_plain(stack, body, reply_to=reply_queue)
    properties, result = _result(stack, reply_queue)
    assert properties.correlation_id == request_id
    assert result["status"] == "REJECTED"
    assert result["error"]["code"] == "unknown_input"
    assert sim.stats()["submits"] == 0


def test_the_same_bare_request_published_twice_is_paid_once(
    stack: Stack, sim: RunningSimulator, reply_queue: str
) -> None:
    # No id at all: the body and its properties are its identity, as on a redelivery.
    body = {"workflow": "sketch-maker", "inputs": {"input_image": IMAGE}}
    marker = {"metadata": {"run": uuid.uuid4().hex}}
    for _ in range(2):
        _publish_plain(stack, body | marker, reply_to=reply_queue)
    _properties, result = _result(stack, reply_queue)
    assert result["status"] == "COMPLETED"
    assert result["request_id"].startswith("plain-")
    assert sim.stats()["submits"] == 1


def _node_example(tmp_path: Path) -> tuple[str, Path]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("node and npm are not installed (apt-get install nodejs npm)")
    assert node is not None
    assert npm is not None
    workdir = tmp_path / "node-example"
    shutil.copytree(EXAMPLES / "node", workdir, ignore=shutil.ignore_patterns("node_modules"))
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if installed.returncode != 0:
        _missing(f"npm could not install amqplib: {installed.stderr.strip()[-400:]}")
    return node, workdir


def _go_example(tmp_path: Path) -> tuple[list[str], Path, dict[str, str]]:
    go = shutil.which("go")
    library = DEBIAN_GOPATH / "src" / "github.com" / "rabbitmq" / "amqp091-go"
    if go is None or not library.is_dir():
        _missing("Go and amqp091-go are not installed; `make go-tools` installs them")
    assert go is not None
    workdir = tmp_path / "go-example"
    shutil.copytree(EXAMPLES / "go", workdir)
    # Offline: the library from Debian's package, in GOPATH mode (no module download).
    env = {
        "GO111MODULE": "off",
        "GOPATH": f"{tmp_path / 'gopath'}{os.pathsep}{DEBIAN_GOPATH}",
        "GOCACHE": str(tmp_path / "gocache"),
    }
    return [go, "run", "."], workdir, env


@pytest.mark.parametrize("language", ["node", "go"])
@pytest.mark.parametrize(
    ("inputs", "status"),
    [({"input_image": IMAGE}, "COMPLETED"), ({"input_image": 42}, "REJECTED")],
)
def test_the_examples_from_the_docs_get_their_results(
    stack: Stack,
    sim: RunningSimulator,
    tmp_path: Path,
    language: str,
    inputs: dict[str, Any],
    status: str,
) -> None:
    extra_env: dict[str, str] = {}
    if language == "node":
        node, workdir = _node_example(tmp_path)
        command = [node, "request.mjs"]
    else:
        command, workdir, extra_env = _go_example(tmp_path)
    request_id = f"{language}-{uuid.uuid4().hex[:8]}"
    reply = f"{stack.name}.{language}-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        **extra_env,
        "AMQP_URL": stack.amqp_url,
        "REQUESTS_QUEUE": stack.requests_queue,
        "REPLY_QUEUE": reply,
        "TIMEOUT_S": "60",
    }
    try:
        ran = subprocess.run(
            [*command, "sketch-maker", json.dumps(inputs), request_id],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        result = json.loads(ran.stdout)
        assert (result["request_id"], result["status"]) == (request_id, status)
        assert sim.stats()["submits"] == (1 if status == "COMPLETED" else 0)
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
        connection.channel().queue_delete(reply)
        connection.close()


@pytest.mark.parametrize("example", ["node/request.mjs", "go/main.go"])
def test_the_docs_show_the_examples_as_shipped(example: str) -> None:
    wire_format = (EXAMPLES.parent / "wire-format.md").read_text(encoding="utf-8")
    assert (EXAMPLES / example).read_text(encoding="utf-8").rstrip() in wire_format


def test_a_request_past_its_start_deadline_is_cancelled_unpaid(
    stack: Stack, sim: RunningSimulator, reply_queue: str
) -> None:
    # Published (by its AMQP timestamp) 30 s ago, with 10 s to start: never POSTed.
    request_id = f"late-{uuid.uuid4().hex[:8]}"
    body = {"workflow": "sketch-maker", "inputs": {"input_image": IMAGE}, "start_by_s": 10}
    _publish_plain(
        stack,
        body,
        reply_to=reply_queue,
        correlation_id=request_id,
        timestamp=int(time.time()) - 30,
    )
    properties, result = _result(stack, reply_queue)
    assert properties.correlation_id == request_id
    assert (result["status"], result["error"]["code"]) == ("CANCELLED", "start_deadline")
    assert result["cost_usd"] == 0
    assert sim.stats()["submits"] == 0
