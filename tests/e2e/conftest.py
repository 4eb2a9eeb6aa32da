"""The service as a user runs it: ``segmind-queue worker`` processes on the real RabbitMQ
and Redis, against the session simulator over its socket.

- ``stack`` (session): a namespace of queues and Redis keys, the environment a worker
  needs, and one running worker for the tests that only publish and wait.
- ``Stack.start_worker()`` starts more (the kill tests use their own namespace, so that the
  worker they kill is the only one consuming).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest

from producers import wire
from producers.consumer import ResultConsumer
from producers.contract import Result
from producers.publisher import Publisher
from producers.topology import Topology
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import SIM_API_KEY, amqp_connection, free_port
from worker.store import redis_client

#: Settings of test workers: the simulator's time scale is 0.002, so intervals shrink
#: too, and timeouts are short so that a lost answer is noticed in seconds.
WORKER_ENV = {
    "SEGMIND_MIN_POLL_INTERVAL_S": "0.05",
    "SEGMIND_RETRY_BASE_S": "0.05",
    "SEGMIND_RETRY_CAP_S": "0.5",
    "SEGMIND_MAX_RATE_LIMIT_WAIT_S": "0.5",
    "SEGMIND_CONNECT_TIMEOUT_S": "1",
    "SEGMIND_POOL_TIMEOUT_S": "1",
    "SEGMIND_WRITE_TIMEOUT_S": "1",
    "SEGMIND_READ_TIMEOUT_S": "2",
    "SEGMIND_TOTAL_TIMEOUT_S": "2",
    "SEGMIND_JOB_DEADLINE_S": "60",
    # The session simulator runs 500 times faster than Segmind.
    "SEGMIND_TIME_SCALE": "0.002",
    # Segmind's 50 calls a minute, in the simulator's time.
    "SEGMIND_RATE_LIMIT_PER_MINUTE": "25000",
    "SEGMIND_RATE_LIMIT_WINDOW_S": "0.12",
    # Dramatiq wakes its consumers this often (ms): the precision of delayed messages.
    "dramatiq_worker_timeout": "50",
}


@dataclass
class Worker:
    """A ``segmind-queue worker`` process, its log file and its metrics endpoint.

    ``consumers`` counts the consumers on the stack's requests queue: ``kill`` waits until
    RabbitMQ has dropped this worker's, so that the next worker's can be told apart.
    """

    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    consumers: Callable[[], int]

    @property
    def metrics_url(self) -> str:
        """The worker's metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        """Everything the worker has logged so far."""
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The worker's log lines so far, parsed (it logs JSON: its stderr is a file)."""
        parsed = []
        for line in self.log().splitlines():
            with suppress(ValueError):
                parsed.append(json.loads(line))
        return parsed

    def kill(self) -> None:
        """SIGKILL the worker and every process it started."""
        before = self.consumers()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        if before:
            wait_until(
                lambda: self.consumers() < before,
                timeout_s=30,
                interval_s=0.05,
                message="RabbitMQ to drop the killed worker's consumer",
            )

    @property
    def endpoint(self) -> str:
        """The worker's endpoint (``/metrics``, ``/healthz``, ``/readyz``)."""
        return f"http://127.0.0.1:{self.metrics_port}"

    def terminate(self, timeout_s: float) -> int:
        """SIGTERM the main process only, as Docker and Kubernetes do, and wait for the
        worker to exit; its exit code.

        Raises:
            subprocess.TimeoutExpired: it had not exited within ``timeout_s``.
        """
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 20 s."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Stack:
    """A namespace on the real RabbitMQ and Redis, with workers on it."""

    amqp_url: str
    redis_url: str
    sim: RunningSimulator
    name: str
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)
    #: Settings of every worker and command on this stack (``AMQP_QUEUE_TYPE``, ...).
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def requests_queue(self) -> str:
        return f"{self.name}.requests"

    @property
    def polls_queue(self) -> str:
        return f"{self.name}.polls"

    @property
    def cancels_queue(self) -> str:
        return f"{self.name}.cancels"

    @property
    def results_dead_letter_queue(self) -> str:
        return f"{self.name}.results.XQ"

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a worker on this stack."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SEGMIND_", "AMQP_", "REDIS_", "dramatiq_"))
        }
        env |= WORKER_ENV | {
            "SEGMIND_API_URL": self.sim.url,
            "SEGMIND_API_KEY": SIM_API_KEY,
            "AMQP_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": self.name,
            "REQUESTS_QUEUE": self.requests_queue,
            "POLLS_QUEUE": self.polls_queue,
            "RESULTS_DEAD_LETTER_QUEUE": self.results_dead_letter_queue,
            "CANCELS_QUEUE": self.cancels_queue,
        }
        return env | self.settings | overrides

    def start_worker(self, *, processes: int = 1, threads: int = 4, **env: str) -> Worker:
        """Start ``segmind-queue worker`` and wait until it consumes both queues."""
        log_path = self.log_dir / f"worker-{len(self.workers)}.log"
        metrics_port = free_port()
        env = {"METRICS_PORT": str(metrics_port), "METRICS_HOST": "127.0.0.1", **env}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("segmind-queue")),
                    "worker",
                    "--processes",
                    str(processes),
                    "--threads",
                    str(threads),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(**env),
                start_new_session=True,  # its own process group: kill() reaches its children
            )
        worker = Worker(process, log_path, metrics_port, self.consumers)
        self.workers.append(worker)
        before = self.consumers()

        def consuming() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the worker exited:\n{worker.log()[-3000:]}")
            return self.consumers() >= before + processes

        wait_until(consuming, timeout_s=60, interval_s=0.1, message="the worker to consume")
        return worker

    def consumers(self) -> int:
        """Consumers on the requests queue (0 when it does not exist yet)."""
        return self.queue_counts(self.requests_queue)[1]

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """``(ready messages, consumers)`` of ``queue``; (0, 0) when it does not exist."""
        connection = amqp_connection(self.amqp_url)
        try:
            declared = connection.channel().queue_declare(queue, passive=True)
            return declared.method.message_count, declared.method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0, 0
        finally:
            if connection.is_open:
                connection.close()

    def publisher(self) -> Publisher:
        return Publisher(self.amqp_url, queue=self.requests_queue, topology=self.topology)

    @property
    def topology(self) -> Topology:
        """How this stack's queues are declared."""
        return Topology.from_env(self.settings)

    def publish_one(self, request_id: str, reply_to: str) -> None:
        """Publish one ``sketch-maker`` request (its default inputs) answered on ``reply_to``."""
        with self.publisher() as publisher:
            publisher.publish(
                {"request_id": request_id, "workflow": "sketch-maker", "reply_to": reply_to}
            )

    def run(self, *requests: dict[str, Any], timeout_s: float = 60) -> dict[str, Result]:
        """Publish ``requests`` with a private reply queue and wait for their results."""
        with ResultConsumer.private(
            self.amqp_url, prefix=f"{self.name}.results", queue_type=self.topology.queue_type
        ) as consumer:
            try:
                with self.publisher() as publisher:
                    ids = [
                        publisher.publish({**request, "reply_to": consumer.queue})
                        for request in requests
                    ]
                return consumer.wait(ids, timeout_s=timeout_s)
            finally:
                consumer.delete_queue(if_empty=False)

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.stop()
        connection = amqp_connection(self.amqp_url)
        try:
            for queue in (self.requests_queue, self.polls_queue, self.cancels_queue):
                for name in (queue, wire.delay_queue(queue), wire.dead_letter_queue(queue)):
                    channel = connection.channel()
                    channel.queue_delete(name)
                    channel.close()
            channel = connection.channel()
            channel.queue_delete(self.results_dead_letter_queue)
            channel.close()
        finally:
            connection.close()
        with redis_client(self.redis_url) as client:
            keys = list(client.scan_iter(f"{self.name}:*"))
            if keys:
                client.delete(*keys)


def wait_for_job(sim: RunningSimulator, request_id: str, timeout_s: float = 60) -> None:
    """Wait until Segmind (the simulator) has created the job of ``request_id``."""
    wait_until(
        lambda: bool(sim.stats()["jobs_by_client_request_id"].get(request_id)),
        timeout_s=timeout_s,
        interval_s=0.01,
        message="Segmind to create the job",
    )


def next_result(channel: Any, queue: str, timeout_s: float = 30) -> tuple[Any, dict[str, Any]]:
    """The next message of ``queue`` read on ``channel`` (the reply queue's own connection,
    which an exclusive queue needs): its properties and JSON body."""
    got: list[tuple[Any, dict[str, Any]]] = []

    def arrived() -> bool:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            got.append((properties, json.loads(body)))
        return bool(got)

    wait_until(arrived, timeout_s=timeout_s, interval_s=0.05, message=f"a result on {queue}")
    return got[0]


def publish_raw(amqp_url: str, queue: str, envelope: dict[str, Any]) -> None:
    """Publish a Dramatiq envelope as it is, with plain pika (no project code)."""
    connection = amqp_connection(amqp_url)
    try:
        connection.channel().basic_publish(
            "", queue, json.dumps(envelope).encode(), pika.BasicProperties(delivery_mode=2)
        )
    finally:
        connection.close()


def new_stack(
    amqp_url: str, redis_url: str, sim: RunningSimulator, namespace: str, log_dir: Path
) -> Stack:
    name = f"{namespace}-{secrets.token_hex(3)}"
    return Stack(amqp_url, redis_url, sim, name, log_dir)


@pytest.fixture(scope="session")
def stack(
    amqp_url: str,
    redis_url: str,
    simulator: RunningSimulator,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """A namespace with one running worker (see the module docstring)."""
    running = new_stack(amqp_url, redis_url, simulator, namespace, tmp_path_factory.mktemp("stack"))
    try:
        running.start_worker()
        yield running
    finally:
        running.cleanup()


@pytest.fixture
def fresh_stack(
    amqp_url: str,
    redis_url: str,
    sim: RunningSimulator,
    namespace: str,
    tmp_path: Path,
) -> Iterator[Stack]:
    """A namespace of its own with no worker yet."""
    running = new_stack(amqp_url, redis_url, sim, namespace, tmp_path)
    try:
        yield running
    finally:
        running.cleanup()
