"""The command line's catalog and schema commands."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pika.exceptions
import pytest
from typer.testing import CliRunner

from console.cli import app
from producers import wire
from producers.catalog import WORKFLOWS_FILE_ENV
from producers.contract import ErrorCode, ErrorInfo, Output, Result, Status
from producers.topology import Topology
from tests.conftest import take_all

runner = CliRunner()


def test_workflows_prints_the_catalog_as_a_table() -> None:
    result = runner.invoke(app, ["workflows"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for name, workflow_id, price in [
        ("scene-script", "670d2cb6f552c2dfdc9172e3-v2", "$4.9731"),
        ("stock-video", "67c6b3b9f6cf2bb5a9b16b3e-v8", "$0.6676"),
        ("character-video", "68628fe34727e611dfa219b4-v4", "$3.9674"),
        ("sketch-maker", "66cec9a38aeef98f887211f1-v1", "$0.1006"),
    ]:
        line = next(line for line in result.output.splitlines() if f" {name} " in line)
        assert workflow_id in line
        assert price in line
    assert "674 s" in result.output


def test_workflows_verbose_lists_types_and_defaults() -> None:
    result = runner.invoke(app, ["workflows", "-v"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "seed" in result.output
    assert "integer" in result.output
    assert "1323456" in result.output


def test_workflows_reports_a_broken_user_file(tmp_path: Path) -> None:
    bad = tmp_path / "w.json"
    bad.write_text("{")
    result = runner.invoke(app, ["workflows"], env={WORKFLOWS_FILE_ENV: str(bad)})
    assert result.exit_code == 2
    assert "is not JSON" in result.output


def test_workflows_includes_the_user_file(tmp_path: Path) -> None:
    extra = tmp_path / "w.json"
    extra.write_text(
        json.dumps(
            {"workflows": [{"name": "upscale", "workflow_id": "aaaaaaaaaaaaaaaaaaaaaaaa-v3"}]}
        )
    )
    result = runner.invoke(
        app, ["workflows"], env={WORKFLOWS_FILE_ENV: str(extra), "COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "aaaaaaaaaaaaaaaaaaaaaaaa-v3" in result.output
    assert "6 workflows" in result.output


@pytest.mark.parametrize("name", ["request.schema.json", "result.schema.json"])
def test_schemas_prints_both_schemas(name: str) -> None:
    result = runner.invoke(app, ["schemas"])
    assert result.exit_code == 0
    assert f"# {name}" in result.output


# -- submit and results ------------------------------------------------------------------

SKETCH_ARGS = ["sketch-maker", "-i", "input_image=https://example.com/a.png"]
RAW_WORKFLOW = "aaaaaaaaaaaaaaaaaaaaaaaa-v1"  # raw ids pass their inputs through unchecked


def _env(amqp_url: str, requests_queue: str) -> dict[str, str]:
    return {"AMQP_URL": amqp_url, "REQUESTS_QUEUE": requests_queue, "COLUMNS": "200"}


def _declare(amqp_url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_declare(
            queue, durable=True, arguments=Topology().work_queue_arguments(queue)
        )
    finally:
        connection.close()


def _requests_on(amqp_url: str, queue: str) -> list[dict[str, Any]]:
    """The requests published to ``queue`` (taken off it)."""
    return [dramatiq.Message.decode(body).args[0] for body in take_all(amqp_url, queue)]


def _queue_exists(amqp_url: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        connection.close()
    return True


def _completed(request_id: str) -> Result:
    outputs = [Output(keyname="image", type="image", data="https://cdn.example/x.png")]
    return Result(
        request_id=request_id, workflow="sketch-maker", status=Status.COMPLETED, outputs=outputs
    )


def _failed(request_id: str) -> Result:
    error = ErrorInfo(code=ErrorCode.SERVER_ERROR, message="boom")
    return Result(request_id=request_id, workflow="sketch-maker", status=Status.FAILED, error=error)


def _publish_results(amqp_url: str, queue: str, *bodies: Result | bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            properties = pika.BasicProperties(delivery_mode=2)
            if isinstance(body, Result):
                properties = pika.BasicProperties(**wire.result_properties(body.request_id))
                body = body.model_dump_json(exclude_none=True).encode()
            channel.basic_publish("", queue, body, properties, mandatory=True)
    finally:
        connection.close()


@contextmanager
def _fake_worker(
    amqp_url: str, requests_queue: str, answer: Callable[[str], Result] = _completed
) -> Iterator[list[dict[str, Any]]]:
    """Answers every request on ``requests_queue`` with ``answer(request_id)`` on its
    reply_to queue, as the worker would; yields the requests it answered."""
    _declare(amqp_url, requests_queue)
    answered: list[dict[str, Any]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            for method, _props, body in channel.consume(requests_queue, inactivity_timeout=0.05):
                if stop.is_set():
                    break
                if method is None:
                    continue
                request = dramatiq.Message.decode(body).args[0]
                result = answer(request["request_id"])
                channel.basic_publish(
                    "",
                    request["reply_to"],
                    result.model_dump_json(exclude_none=True).encode(),
                    pika.BasicProperties(**wire.result_properties(result.request_id)),
                    mandatory=True,
                )
                channel.basic_ack(method.delivery_tag)
                answered.append(request)
            channel.cancel()
        except BaseException as exc:  # reported by the test: a thread's exception is lost
            failures.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not failures


def test_submit_rejects_an_invalid_request_before_publishing(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    _declare(amqp_url, queue)
    env = _env(amqp_url, queue)
    bad_uri = runner.invoke(app, ["submit", "sketch-maker", "-i", "input_image=ftp://x"], env=env)
    assert bad_uri.exit_code == 2
    assert "invalid_input" in bad_uri.stderr
    unknown = runner.invoke(app, ["submit", "no-such-workflow"], env=env)
    assert unknown.exit_code == 2
    assert "unknown_workflow" in unknown.stderr
    bad_input = runner.invoke(app, ["submit", *SKETCH_ARGS, "-i", "Scene_1=x"], env=env)
    assert bad_input.exit_code == 2
    assert "unknown_input" in bad_input.stderr
    assert _requests_on(amqp_url, queue) == []


def test_submit_with_a_bad_line_in_the_file_publishes_nothing(
    amqp_url: str, queues: Callable[[str], str], tmp_path: Path
) -> None:
    queue = queues("requests")
    _declare(amqp_url, queue)
    requests = tmp_path / "requests.jsonl"
    good = {"workflow": "sketch-maker", "inputs": {"input_image": "https://example.com/a.png"}}
    requests.write_text(json.dumps(good) + "\n\n" + json.dumps({"workflow": ""}) + "\n")
    result = runner.invoke(app, ["submit", "--file", str(requests)], env=_env(amqp_url, queue))
    assert result.exit_code == 2
    assert f"{requests}:3: invalid_request" in result.stderr
    assert result.stdout == ""
    assert _requests_on(amqp_url, queue) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit"], "either a WORKFLOW or --file"),
        (["submit", "sketch-maker", "--file", "-"], "either a WORKFLOW or --file"),
        (["submit", "--file", "-", "-i", "a=1"], "--input and --request-id"),
        (["submit", RAW_WORKFLOW, "-i", "novalue"], "expected name=value"),
        (["submit", RAW_WORKFLOW, "-i", "=x"], "expected name=value"),
        (["submit", RAW_WORKFLOW, "-i", "a:=nope"], "not JSON"),
        (["submit", RAW_WORKFLOW, "-i", "a:=NaN"], "not JSON"),
        (["submit", RAW_WORKFLOW, "-i", "a=1", "-i", "a=2"], "given twice"),
        (["submit", RAW_WORKFLOW, "--priority", "10"], "--priority"),
    ],
)
def test_submit_usage_errors_exit_2(args: list[str], message: str) -> None:
    # A closed port: a usage error must be found before any connection.
    result = runner.invoke(app, args, env={"AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"})
    assert result.exit_code == 2
    assert message in result.output


def test_submit_publishes_and_prints_the_request_id(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    result = runner.invoke(
        app,
        [
            "submit",
            RAW_WORKFLOW,
            "-i",
            "a:=1",
            "-i",
            "b=1",
            "-i",
            'c:={"x": [1, null, true]}',
            "-i",
            "d=x:=y",
            "--request-id",
            "order-17",
            "--priority",
            "5",
            "--deadline-s",
            "600",
            "--reply-to",
            "my.results",
        ],
        env=_env(amqp_url, queue),
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "order-17\n"
    [request] = _requests_on(amqp_url, queue)
    assert request == {
        "request_id": "order-17",
        "workflow": RAW_WORKFLOW,
        "inputs": {"a": 1, "b": "1", "c": {"x": [1, None, True]}, "d": "x:=y"},
        "reply_to": "my.results",
        "priority": 5,
        "deadline_s": 600.0,
    }


def test_submit_a_file_prints_json_per_request(
    amqp_url: str, queues: Callable[[str], str], tmp_path: Path
) -> None:
    queue = queues("requests")
    requests = tmp_path / "requests.jsonl"
    lines = [
        {"request_id": "r1", "workflow": RAW_WORKFLOW},
        {"workflow": RAW_WORKFLOW, "priority": 1},
    ]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = runner.invoke(
        app,
        ["submit", "--file", str(requests), "--priority", "8", "--json"],
        env=_env(amqp_url, queue),
    )
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    published = _requests_on(amqp_url, queue)
    assert [p["request_id"] for p in printed] == [p["request_id"] for p in published]
    assert printed[0]["request_id"] == "r1"
    assert printed[0]["queue"] == queue
    # --priority fills in only where a line sets none.
    assert [p["priority"] for p in published] == [8, 1]


def test_submit_wait_prints_the_results(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("requests")
    with _fake_worker(amqp_url, queue) as answered:
        result = runner.invoke(
            app, ["submit", *SKETCH_ARGS, "--wait", "--timeout", "30"], env=_env(amqp_url, queue)
        )
    assert result.exit_code == 0, result.output
    request_id, line = result.stdout.splitlines()
    assert Result.model_validate_json(line) == _completed(request_id)
    [request] = answered
    assert request["request_id"] == request_id
    reply_to = request["reply_to"]
    assert reply_to.startswith("segmind.results.cli.")
    assert not _queue_exists(amqp_url, reply_to)  # the private queue was deleted


def test_submit_wait_exits_1_when_a_job_did_not_complete(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    replies = queues("replies")
    with _fake_worker(amqp_url, queue, answer=_failed):
        result = runner.invoke(
            app,
            ["submit", *SKETCH_ARGS, "--wait", "--timeout", "30", "--reply-to", replies],
            env=_env(amqp_url, queue),
        )
    assert result.exit_code == 1, result.output
    request_id, line = result.stdout.splitlines()
    assert Result.model_validate_json(line).status is Status.FAILED
    assert Result.model_validate_json(line).request_id == request_id
    assert "1 of 1 requests did not complete" in result.stderr


def test_submit_wait_exits_3_on_timeout_listing_the_missing_ids(
    amqp_url: str, queues: Callable[[str], str]
) -> None:
    queue = queues("requests")
    result = runner.invoke(
        app,
        ["submit", *SKETCH_ARGS, "--request-id", "never-answered", "--wait", "--timeout", "0.3"],
        env=_env(amqp_url, queue),
    )
    [request] = _requests_on(amqp_url, queue)
    reply_to = request["reply_to"]
    try:
        assert result.exit_code == 3, result.output
        assert result.stdout == "never-answered\n"
        assert "1 of 1 results missing" in result.stderr
        assert "  never-answered" in result.stderr.splitlines()
        assert reply_to in result.stderr  # where the late result will still go
        assert _queue_exists(amqp_url, reply_to)
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        connection.channel().queue_delete(reply_to)
        connection.close()


def test_results_prints_and_consumes_the_queue(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("results")
    _declare(amqp_url, queue)
    _publish_results(amqp_url, queue, _completed("a"), b"garbage", _failed("b"), _completed("a"))
    result = runner.invoke(app, ["results", "--queue", queue], env=_env(amqp_url, "unused"))
    assert result.exit_code == 0, result.output
    printed = [Result.model_validate_json(line) for line in result.stdout.splitlines()]
    assert printed == [_completed("a"), _failed("b")]
    assert "skipped 1 malformed and 1 duplicate messages" in result.stderr
    again = runner.invoke(app, ["results", "--queue", queue], env=_env(amqp_url, "unused"))
    assert again.exit_code == 0
    assert again.stdout == ""  # consumed by the first run


def test_results_follow_stops_at_its_timeout(amqp_url: str, queues: Callable[[str], str]) -> None:
    queue = queues("results")
    _declare(amqp_url, queue)
    _publish_results(amqp_url, queue, _completed("a"))
    started = time.monotonic()
    result = runner.invoke(
        app, ["results", "--queue", queue, "--follow", "--timeout", "1.5"], env=_env(amqp_url, "x")
    )
    assert result.exit_code == 0, result.output
    assert 1.5 <= time.monotonic() - started < 10  # past the 1 s idle stop of a plain run
    assert [Result.model_validate_json(line) for line in result.stdout.splitlines()] == [
        _completed("a")
    ]


@pytest.mark.parametrize(
    "args",
    [SKETCH_ARGS, [*SKETCH_ARGS, "--wait"], ["--queue", "q"]],
    ids=["submit", "wait", "results"],
)
def test_an_unreachable_rabbitmq_is_one_line_and_exit_2(args: list[str]) -> None:
    password = "pw-DISTINCTIVE-3"
    command = "results" if args[0] == "--queue" else "submit"
    result = runner.invoke(
        app, [command, *args], env={"AMQP_URL": f"amqp://guest:{password}@127.0.0.1:1/"}
    )
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: RabbitMQ (AMQP_URL): ")
    assert "Connection refused" in line
    assert password not in result.output
    assert "Traceback" not in result.output
