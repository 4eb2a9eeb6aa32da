"""What every scenario shares: the simulator, a namespace of queues and Redis keys, worker
processes, result collection, process memory and the worker's metrics.

- ``simulator(...)``: the local Segmind simulator in this process (a thread), on an
  ephemeral port, with the benchmark's API key and unlimited credits.
- ``Stack``: a namespace (``bench-<scenario>-<hex>``) on the real RabbitMQ and Redis:
  queue names and ``REDIS_KEY_PREFIX`` unique to it, ``segmind-queue worker`` processes
  started on it (``start_worker``), a private reply queue (``collector``); ``close()``
  stops the workers (SIGTERM, then SIGKILL) and deletes the queues and Redis keys.
- ``scaled_env(scale)``: the worker's time settings multiplied by the simulator's time
  scale, so a time-scaled run behaves like an unscaled one.
- ``RssSampler``: the resident memory of a process tree, from ``/proc``, sampled on a thread.
- ``histogram(...)`` / ``quantile(...)``: a histogram of the worker's ``/metrics``, and a
  quantile of it as PromQL's ``histogram_quantile`` computes it.

Every wait is on a condition with a deadline (``simulator.testing.wait_until``).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pika
import pika.exceptions
import redis
from pika.adapters.blocking_connection import BlockingChannel
from pydantic import SecretStr

from console.status import Samples, StatusError, histogram_quantile, parse_metrics
from producers import wire
from producers.amqp import ConfirmedPublisher
from producers.consumer import ResultConsumer
from producers.contract import Result
from producers.publisher import Publisher
from producers.topology import Topology
from producers.wire import DEFAULT_AMQP_URL
from simulator.config import SimulatorConfig
from simulator.testing import RunningSimulator, run_simulator, wait_until
from worker.settings import DEFAULT_REDIS_URL

AMQP_URL: Final = os.environ.get("AMQP_URL", DEFAULT_AMQP_URL)
REDIS_URL: Final = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
SIM_API_KEY: Final = "bench-sim-key-0123456789abcdef"
#: Dramatiq wakes its consumers this often (ms): the precision of delayed messages.
WORKER_TIMEOUT_MS: Final = 20
#: How long a worker may take to start consuming.
WORKER_START_TIMEOUT_S: Final = 60.0
#: SIGTERM grace before SIGKILL.
WORKER_STOP_TIMEOUT_S: Final = 20.0
#: Where the workers' logs go (kept after the run, for a look when a figure is odd).
LOG_ROOT: Final = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/segmind-bench"))  # noqa: S108
#: How long closing a ``ResultCollector`` waits for its thread (results still arriving).
_COLLECTOR_JOIN_S: Final = 30.0
_PAGE_KB: Final = os.sysconf("SC_PAGE_SIZE") // 1024


def log(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def check_services() -> list[str]:
    """Why RabbitMQ or Redis cannot be used (empty: both answer)."""
    problems = []
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except Exception as exc:  # any failure means the same: no benchmark
        problems.append(f"RabbitMQ does not answer at {AMQP_URL.split('@')[-1]} ({exc!r})")
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        problems.append(f"Redis does not answer ({exc!r})")
    return problems


# -- the simulator ---------------------------------------------------------------------------


@contextmanager
def simulator(**config: Any) -> Iterator[RunningSimulator]:
    """The simulator in this process; ``config`` are ``SimulatorConfig`` fields.

    Defaults: the benchmark's key, unlimited credits, seed 1, no access log.
    """
    settings: dict[str, Any] = {
        "api_key": SecretStr(SIM_API_KEY),
        "credits": 1e9,
        "seed": 1,
    } | config
    with run_simulator(SimulatorConfig(**settings)) as running:
        yield running


def scaled_env(scale: float) -> dict[str, str]:
    """The worker's time settings multiplied by ``scale`` (the simulator's time scale).

    ``SEGMIND_TIME_SCALE`` scales the catalog's expected durations (adaptive polling's prior)
    and ``SEGMIND_RATE_LIMIT_WINDOW_S`` is the simulator's window (a simulated minute);
    ``SEGMIND_RATE_LIMIT_PER_MINUTE`` is per real minute. Network timeouts stay real: they
    bound a socket, not a job.
    """
    return {
        "SEGMIND_TIME_SCALE": f"{scale:g}",
        "SEGMIND_RATE_LIMIT_WINDOW_S": f"{60 * scale:g}",
        "SEGMIND_MIN_POLL_INTERVAL_S": f"{7 * scale:g}",
        "SEGMIND_RETRY_BASE_S": f"{2 * scale:g}",
        "SEGMIND_RETRY_CAP_S": f"{120 * scale:g}",
        "SEGMIND_MAX_RATE_LIMIT_WAIT_S": f"{600 * scale:g}",
        "SEGMIND_JOB_DEADLINE_S": f"{min(2700 * scale, 3600):g}",
        "SEGMIND_CREDITS_INTERVAL_S": f"{60 * scale:g}",
        "SEGMIND_RATE_LIMIT_PER_MINUTE": f"{50 / scale:g}",
        "METRICS_REFRESH_S": f"{max(15 * scale, 1):g}",
    }


# -- worker processes ------------------------------------------------------------------------


@dataclass
class Process:
    """A process started by the benchmark (a worker, or the no-op actor's workers)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def metrics(self, timeout_s: float = 10.0) -> Samples | None:
        """One scrape of the worker's metrics endpoint (``None``: no endpoint or no answer)."""
        if self.metrics_port is None:
            return None
        try:
            response = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout_s)
            response.raise_for_status()
            return parse_metrics(response.text)
        except (httpx.HTTPError, StatusError):
            return None

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL after ``WORKER_STOP_TIMEOUT_S``."""
        if self.popen.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop in {WORKER_STOP_TIMEOUT_S:g} s: SIGKILL")
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> Process:
    """Start ``argv`` in a process group of its own, its output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,  # its own group: stop() reaches its children
        )
    return Process(name, popen, log_path)


def base_env() -> dict[str, str]:
    """This process's environment without the service's own settings."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SEGMIND_", "AMQP_", "REDIS_", "dramatiq_", "METRICS_"))
        and key not in ("LOG_LEVEL", "LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR")
    }


class Stack:
    """A namespace of queues and Redis keys on the real RabbitMQ and Redis, with the worker
    processes started on it. Use it as a context manager: leaving it cleans everything up.
    """

    def __init__(self, scenario: str, sim: RunningSimulator, log_dir: Path) -> None:
        self.name = f"bench-{scenario}-{secrets.token_hex(3)}"
        self.sim = sim
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self.extra_queues: list[str] = []
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._redis = redis.Redis.from_url(REDIS_URL)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def requests_queue(self) -> str:
        return f"{self.name}.requests"

    @property
    def polls_queue(self) -> str:
        return f"{self.name}.polls"

    def env(self, overrides: Mapping[str, str]) -> dict[str, str]:
        """The environment of a worker on this stack (``overrides`` win)."""
        return (
            base_env()
            | {
                "SEGMIND_API_URL": self.sim.url,
                "SEGMIND_API_KEY": SIM_API_KEY,
                "AMQP_URL": AMQP_URL,
                "REDIS_URL": REDIS_URL,
                "REDIS_KEY_PREFIX": self.name,
                "REQUESTS_QUEUE": self.requests_queue,
                "POLLS_QUEUE": self.polls_queue,
                "RESULTS_DEAD_LETTER_QUEUE": f"{self.name}.results.XQ",
                "CANCELS_QUEUE": f"{self.name}.cancels",
                "LOG_FORMAT": "json",
                "METRICS_HOST": "127.0.0.1",
                "dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS),
            }
            | dict(overrides)
        )

    def start_worker(
        self,
        env: Mapping[str, str],
        *,
        processes: int = 1,
        threads: int = 8,
        wait: bool = True,
    ) -> Process:
        """Start ``segmind-queue worker`` on this stack.

        With ``wait``, returns once its processes consume the requests queue.
        """
        port = free_port()
        index = len(self.processes)
        process = spawn(
            f"worker-{index}",
            [
                str(Path(sys.executable).with_name("segmind-queue")),
                "worker",
                "--processes",
                str(processes),
                "--threads",
                str(threads),
                "--shutdown-timeout-s",
                "5",
            ],
            self.env({"METRICS_PORT": str(port), **env}),
            self.log_dir / f"{self.name}-worker-{index}.log",
        )
        process.metrics_port = port
        self.processes.append(process)
        if wait:
            self.wait_consuming(process, self.requests_queue, processes)
        return process

    def wait_consuming(self, process: Process, queue: str, consumers: int) -> None:
        """Wait until ``queue`` has ``consumers`` consumers (the process must stay alive)."""

        def consuming() -> bool:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
            return self.queue_counts(queue)[1] >= consumers

        wait_until(
            consuming,
            timeout_s=WORKER_START_TIMEOUT_S,
            interval_s=0.1,
            message=f"{process.name} to consume {queue}",
        )

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Process:
        """Start another process on this stack (stopped by ``close``)."""
        process = spawn(name, argv, env, self.log_dir / f"{self.name}-{name}.log")
        self.processes.append(process)
        return process

    # -- RabbitMQ

    def _admin(self) -> BlockingChannel:
        if self._connection is None or not self._connection.is_open:
            self._connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            self._channel = None
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
        return self._channel

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """``(ready messages, consumers)`` of ``queue``; ``(0, 0)`` when it does not exist."""
        try:
            declared = self._admin().queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return 0, 0
        return int(declared.method.message_count), int(declared.method.consumer_count)

    def purge(self, queue: str) -> int:
        """Drop the messages ready in ``queue``; returns how many."""
        try:
            return int(self._admin().queue_purge(queue).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0

    def publisher(self) -> Publisher:
        return Publisher(AMQP_URL, queue=self.requests_queue)

    def collector(self) -> ResultCollector:
        """A private reply queue and a thread that records each result's arrival."""
        consumer = ResultConsumer.private(AMQP_URL, prefix=f"{self.name}.results")
        self.extra_queues.append(consumer.queue)
        return ResultCollector(consumer)

    # -- Redis

    def in_flight(self) -> int:
        """Requests in the ledger's in-flight index."""
        return int(self._redis.hlen(f"{self.name}:inflight"))

    # -- cleanup

    def close(self) -> None:
        """Stop every process, delete the queues and the Redis keys."""
        for process in self.processes:
            try:
                process.stop()
            except Exception as exc:  # cleanup goes on
                log(f"stopping {process.name}: {exc!r}")
        queues = [self.requests_queue, self.polls_queue, *self.extra_queues]
        try:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            try:
                for queue in queues:
                    for name in (queue, wire.delay_queue(queue), wire.dead_letter_queue(queue)):
                        channel = connection.channel()
                        channel.queue_delete(name)
                        with suppress(Exception):
                            channel.close()
            finally:
                connection.close()
        except Exception as exc:
            log(f"deleting the queues of {self.name}: {exc!r}")
        if self._connection is not None and self._connection.is_open:
            with suppress(Exception):
                self._connection.close()
        try:
            keys = list(self._redis.scan_iter(f"{self.name}:*", count=1000))
            for start in range(0, len(keys), 1000):
                self._redis.delete(*keys[start : start + 1000])
        except redis.RedisError as exc:
            log(f"deleting the Redis keys of {self.name}: {exc!r}")
        self._redis.close()


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """A result as it arrived: its status, when (epoch seconds) and the result itself."""

    status: str
    at: float
    result: Result | None = field(default=None, compare=False, repr=False)


class ResultCollector:
    """Reads a private reply queue on a thread of its own, recording each result's arrival
    time (``time.time()`` when it was delivered). ``queue`` is the ``reply_to`` to use.
    """

    def __init__(self, consumer: ResultConsumer) -> None:
        self._consumer = consumer
        self.queue = consumer.queue
        self.arrivals: dict[str, Arrival] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="results", daemon=True)

    def __enter__(self) -> ResultCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(_COLLECTOR_JOIN_S)
        if not self._thread.is_alive():  # else results keep coming: leave it to the daemon
            with suppress(Exception):
                self._consumer.close()

    def _run(self) -> None:
        # An idle timeout, not a deadline: ResultConsumer.results(timeout_s=...) drops a
        # message that arrives at its deadline unacked, and the open channel never gets it
        # back; the idle timeout only ends a call between messages.
        try:
            while not self._stop.is_set():
                for result in self._consumer.results(timeout_s=None, idle_timeout_s=0.3):
                    with self._lock:
                        self.arrivals[result.request_id] = Arrival(
                            str(result.status), time.time(), result
                        )
        except BaseException as exc:
            self._error = exc

    def snapshot(self) -> dict[str, Arrival]:
        """The results received so far, by request id."""
        with self._lock:
            return dict(self.arrivals)

    def count(self, ids: set[str] | None = None) -> int:
        """Results received (of ``ids`` when given)."""
        with self._lock:
            if ids is None:
                return len(self.arrivals)
            return sum(1 for request_id in ids if request_id in self.arrivals)

    def wait(self, ids: set[str], *, timeout_s: float, what: str = "results") -> dict[str, Arrival]:
        """Wait until every id in ``ids`` has a result; returns their arrivals.

        Raises:
            TimeoutError: not all arrived in time (the message says how many did).
        """

        def done() -> bool:
            if self._error is not None:
                raise RuntimeError(f"the result consumer failed: {self._error!r}")
            return self.count(ids) >= len(ids)

        try:
            wait_until(done, timeout_s=timeout_s, interval_s=0.05, message=what)
        except TimeoutError:
            raise TimeoutError(
                f"{what}: {self.count(ids)} of {len(ids)} arrived in {timeout_s:g} s"
            ) from None
        with self._lock:
            return {request_id: self.arrivals[request_id] for request_id in ids}


def publish_all(stack: Stack, requests: Sequence[dict[str, Any]], *, threads: int = 1) -> list[str]:
    """Publish ``requests`` (confirmed) on ``threads`` connections; returns their ids in order."""
    with stack.publisher() as publisher:
        if threads <= 1 or len(requests) < 2 * threads:
            return publisher.publish_many(requests)
        ids: list[str] = [""] * len(requests)
        errors: list[BaseException] = []

        def part(offset: int) -> None:
            try:
                for index in range(offset, len(requests), threads):
                    ids[index] = publisher.publish(requests[index])
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=part, args=(i,)) for i in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if errors:
            raise errors[0]
        return ids


def publish_envelopes(queue: str, envelopes: Sequence[dict[str, Any]], *, threads: int = 1) -> None:
    """Publish Dramatiq envelopes as they are (persistent, confirmed) to ``queue``."""
    properties = pika.BasicProperties(
        content_type=wire.CONTENT_TYPE,
        content_encoding=wire.CONTENT_ENCODING,
        delivery_mode=wire.PERSISTENT,
    )
    arguments = Topology().work_queue_arguments(queue)
    errors: list[BaseException] = []
    with ConfirmedPublisher(AMQP_URL) as publisher:

        def part(offset: int) -> None:
            try:
                for index in range(offset, len(envelopes), threads):
                    publisher.publish(
                        queue, wire.encode(envelopes[index]), properties, arguments=arguments
                    )
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=part, args=(i,)) for i in range(max(threads, 1))]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    if errors:
        raise errors[0]


# -- process memory ----------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """Every process's children, from ``/proc/<pid>/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command may hold spaces and parentheses: the fields follow the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_kb(pid: int) -> int | None:
    """A process's resident set size in KiB (``None``: it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * _PAGE_KB


@dataclass
class RssSampler:
    """Samples the RSS of a process tree every ``interval_s`` on a thread.

    ``peak_kb`` is each process's peak, ``peak_total_kb`` the peak of the tree's sum;
    ``latest`` the last sample by pid.
    """

    root: int
    interval_s: float = 0.5
    peak_kb: dict[int, int] = field(default_factory=dict)
    peak_total_kb: int = 0
    latest: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> dict[int, int]:
        now: dict[int, int] = {}
        for pid in process_tree(self.root):
            value = rss_kb(pid)
            if value is not None:
                now[pid] = value
                self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), value)
        self.peak_total_kb = max(self.peak_total_kb, sum(now.values()))
        self.latest = now
        self.samples += 1
        return now

    def __enter__(self) -> RssSampler:
        self.sample()

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.sample()

        self._thread = threading.Thread(target=loop, name="rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


# -- metrics -----------------------------------------------------------------------------------


def histogram(samples: Samples | None, name: str) -> list[tuple[float, float]] | None:
    """The cumulative buckets of histogram ``name``, summed over every series, as
    ``(upper bound, count)``; ``None`` when the endpoint does not export it."""
    if samples is None:
        return None
    series = samples.series(f"{name}_bucket")
    if not series:
        return None
    buckets: dict[float, float] = {}
    for labels, value in series:
        bound = float(dict(labels)["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return sorted(buckets.items())


def histogram_delta(
    before: list[tuple[float, float]] | None, after: list[tuple[float, float]] | None
) -> list[tuple[float, float]] | None:
    """The observations made between two scrapes of one histogram."""
    if after is None:
        return None
    earlier = dict(before or [])
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


def quantile(q: float, buckets: list[tuple[float, float]] | None) -> float | None:
    """PromQL's ``histogram_quantile`` of ``buckets`` (``None``: no data)."""
    return None if buckets is None else histogram_quantile(q, buckets)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of ``values``, linear interpolation (``None``: empty)."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1])


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None
