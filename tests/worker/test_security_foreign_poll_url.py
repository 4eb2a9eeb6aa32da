"""A poll_url on another host is refused before any I/O, and reported.

A simulator configured to hand out poll_urls on another host (``public_url``: a listening
socket of this test that records every connection and the bytes it receives) answers a
real submit over its socket. The job must end FAILED ``foreign_poll_url``, with a warning
log line and ``segmind_job_errors_total{code="foreign_poll_url"}``, and the other host must
never be connected to, so it never sees the API key.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import dramatiq
import httpx
import pytest
import structlog
from pydantic import SecretStr

from producers import wire
from producers.contract import ErrorCode, Result, Status
from simulator.config import SimulatorConfig
from simulator.testing import RunningSimulator, run_simulator, wait_until
from tests.conftest import SIM_API_KEY
from tests.sockets import TcpServer
from tests.worker.test_pipeline import running_app
from worker.app import App
from worker.results.publish import MemoryAmqp

REPLIES = "replies"


class ConnectionRecorder(TcpServer):
    """A TCP listener on 127.0.0.1 that records each connection and what it sent."""

    def __init__(self) -> None:
        super().__init__(connection_timeout_s=1)
        self.received: list[bytes] = []

    def handle(self, connection: socket.socket) -> None:
        try:
            data = connection.recv(65536)
        except OSError:
            data = b""
        self.received.append(data)


@pytest.fixture
def foreign_host() -> Iterator[ConnectionRecorder]:
    with ConnectionRecorder() as recorder:
        yield recorder


@pytest.fixture
def misdirecting_sim(foreign_host: ConnectionRecorder) -> Iterator[RunningSimulator]:
    """A simulator whose poll_urls point at ``foreign_host``."""
    config = SimulatorConfig(
        api_key=SecretStr(SIM_API_KEY),
        time_scale=0.002,
        rpm=0,
        credits=1000.0,
        seed=11,
        public_url=f"http://127.0.0.1:{foreign_host.port}",
    )
    with run_simulator(config) as running:
        yield running


@pytest.fixture
def app(misdirecting_sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The local-mode app on ``misdirecting_sim``, with a worker running its actors."""
    for name in ("SEGMIND_API_KEY", "SEGMIND_API_KEY_FILE", "REQUESTS_QUEUE", "POLLS_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    with running_app(misdirecting_sim) as built:
        yield built


def test_the_recorder_sees_a_client_that_connects(foreign_host: ConnectionRecorder) -> None:
    # The control: what the test below asserts never happens is seen when it does.
    with pytest.raises(httpx.TransportError):
        httpx.get(
            f"http://127.0.0.1:{foreign_host.port}/x",
            headers={"x-api-key": SIM_API_KEY},
            timeout=2,
        )
    wait_until(lambda: foreign_host.received, timeout_s=5, message="the connection recorded")
    assert SIM_API_KEY.encode() in foreign_host.received[0]


def test_a_foreign_poll_url_fails_the_job_is_reported_and_gets_nothing(
    app: App, misdirecting_sim: RunningSimulator, foreign_host: ConnectionRecorder
) -> None:
    request_id = f"foreign-{uuid.uuid4().hex[:8]}"
    with structlog.testing.capture_logs() as logs:
        app.broker.enqueue(
            dramatiq.Message(
                queue_name=app.settings.requests_queue,
                actor_name=wire.SUBMIT_ACTOR,
                args=({"request_id": request_id, "workflow": "sketch-maker", "reply_to": REPLIES},),
                kwargs={},
                options={},
            )
        )
        assert isinstance(app.amqp, MemoryAmqp)
        (delivered,) = app.amqp.wait_for(REPLIES, 1, timeout_s=30)

    result = Result.model_validate_json(delivered.body)
    assert result.request_id == request_id
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.FOREIGN_POLL_URL
    assert f"127.0.0.1:{foreign_host.port}" in result.error.message  # the host it refused
    assert SIM_API_KEY not in delivered.body.decode()

    warnings = [
        line
        for line in logs
        if line["event"] == "poll.failed" and line["code"] == ErrorCode.FOREIGN_POLL_URL
    ]
    assert warnings
    assert all(line["log_level"] == "warning" for line in warnings)

    errors = app.metrics.registry.get_sample_value(
        "segmind_job_errors_total", {"workflow": "sketch-maker", "code": "foreign_poll_url"}
    )
    assert errors == 1

    stats = misdirecting_sim.stats()
    assert stats["submits_by_client_request_id"] == {request_id: 1}  # paid for, once
    assert stats["polls"] == 0
    assert foreign_host.received == []  # nothing ever connected to the other host
