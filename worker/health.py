"""Worker health: ``/healthz`` (liveness) and ``/readyz`` (readiness) beside ``/metrics``.

Dramatiq's Prometheus middleware serves ``/metrics`` from a process that Dramatiq's main
process forks (the middleware's ``forks``); ``worker.main`` replaces that fork with
``serve``: the same server on the same port (``METRICS_PORT``), which also answers the two
probes. Bodies are small JSON objects, ``{"status": "ok" | "fail", "checks": {...}}``;
other paths are 404.

Liveness (``/healthz``, 200 or 503) is decided by ``liveness()``, a pure function, from:

- the main process: the endpoint's parent. When it is gone nothing supervises the worker
  processes any more (nor stops them, nor restarts them).
- one heartbeat per worker process: ``HeartbeatMiddleware`` writes ``<pid>.json`` into
  ``heartbeat_dir()`` every ``HEARTBEAT_INTERVAL_S`` from a thread of its own. Dramatiq's
  threads never hold the interpreter for long (a step spends its time in network I/O), so
  a busy process beats on time; a process that is stopped (SIGSTOP, swapped out, a C call
  holding the GIL) does not, and a process that is gone leaves a file whose pid has
  exited. A heartbeat older than ``Settings.worker_heartbeat_timeout_s`` means wedged.
- the steps in progress: each heartbeat carries the start of the oldest step running in
  the process; one running past Dramatiq's time limit (``TimeLimit``, 10 min by default,
  far past ``Settings.longest_step_s``) is held by something no timeout bounds.

Readiness (``/readyz``, 200 or 503): RabbitMQ completes an AMQP handshake and Redis answers
PING, each within ``READINESS_TIMEOUT_S``. The answer is cached ``READINESS_CACHE_S`` so
that probes cannot hammer them; the body names what failed with the error's type only,
never a URL or a password.

Clocks: heartbeats are stamped with ``time.monotonic()``, which on Linux is one clock for
every process of the host, so the endpoint compares them with its own.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

import dramatiq
import structlog
from dramatiq.middleware import TimeLimit
from pydantic import SecretStr

from worker.settings import Settings

log = structlog.get_logger(__name__)

LIVENESS_PATH: Final = "/healthz"
READINESS_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"
#: The variable ``segmind-queue worker`` sets to its ``--processes``: how many heartbeats
#: the endpoint expects.
PROCESSES_ENV: Final = "WORKER_PROCESSES"
#: The heartbeats' directory, inside the metrics directory (``dramatiq_prom_db``).
HEARTBEAT_SUBDIR: Final = "health"
#: How often each worker process writes its heartbeat.
HEARTBEAT_INTERVAL_S: Final = 2.0
#: Dramatiq's default time limit of a message (``TimeLimit``), when the broker has none.
DEFAULT_STEP_LIMIT_S: Final = 600.0
#: Each readiness check's timeout (connect and answer).
READINESS_TIMEOUT_S: Final = 2.0
#: How long a readiness answer is reused.
READINESS_CACHE_S: Final = 2.0
#: The status of a passing check.
OK: Final = "ok"

T = TypeVar("T")


@dataclass(frozen=True)
class Beat:
    """One worker process's heartbeat.

    Attributes:
        pid: the worker process.
        at: when it was written (``time.monotonic()``).
        step_since: when the oldest step running in the process started (monotonic), or
            ``None`` when none runs.
        step_limit_s: the time limit of a step in that process (Dramatiq's ``TimeLimit``).
    """

    pid: int
    at: float
    step_since: float | None = None
    step_limit_s: float = DEFAULT_STEP_LIMIT_S

    def dumps(self) -> str:
        """The heartbeat as its file's JSON text."""
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> Beat | None:
        """A heartbeat from its file's text; ``None`` when the text is not one."""
        try:
            data = json.loads(text)
            since = data["step_since"]
            return cls(
                pid=int(data["pid"]),
                at=float(data["at"]),
                step_since=None if since is None else float(since),
                step_limit_s=float(data["step_limit_s"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: healthy or not, and each check's status (``OK`` or why not)."""

    ok: bool
    checks: dict[str, str]

    @property
    def status_code(self) -> int:
        """200 when healthy, else 503."""
        return HTTPStatus.OK if self.ok else HTTPStatus.SERVICE_UNAVAILABLE

    def body(self) -> bytes:
        """The JSON body: ``{"status": "ok" | "fail", "checks": {...}}``."""
        return json.dumps({"status": OK if self.ok else "fail", "checks": self.checks}).encode()


def liveness(
    beats: Iterable[Beat],
    *,
    now: float,
    processes: int,
    live_pids: Iterable[int],
    main_alive: bool,
    heartbeat_timeout_s: float,
) -> Verdict:
    """Whether the worker is alive and working (a pure function; see the module docstring).

    Args:
        beats: the heartbeats found, one per worker process that has booted.
        now: the current ``time.monotonic()``.
        processes: how many worker processes should beat.
        live_pids: the pids among the beats' that still run (not exited, not a zombie).
        main_alive: whether the main process is still the endpoint's parent.
        heartbeat_timeout_s: a heartbeat older than this is a wedged process.

    Returns:
        Healthy when the main process is there and ``processes`` worker processes beat on
        time with no step past its limit. ``checks`` has ``main_process`` and
        ``worker_processes`` (``"ok"``, or how many are live and what is wrong with the
        others). A busy process is live: only a silent one, an exited one or a step past
        Dramatiq's own time limit is not.
    """
    alive = set(live_pids)
    problems: list[str] = []
    live = 0
    for beat in sorted(beats, key=lambda b: b.pid):
        silent_s = now - beat.at
        if beat.pid not in alive:
            problems.append(f"pid {beat.pid} exited")
        elif silent_s > heartbeat_timeout_s:
            problems.append(f"pid {beat.pid} silent for {silent_s:.0f} s")
        elif beat.step_since is not None and now - beat.step_since > beat.step_limit_s:
            problems.append(
                f"pid {beat.pid} has run one step for {now - beat.step_since:.0f} s "
                f"(limit {beat.step_limit_s:.0f} s)"
            )
        else:
            live += 1
    workers_ok = live >= processes and not problems
    summary = OK if workers_ok else f"{live} of {processes} live"
    if problems:
        summary += ": " + "; ".join(problems)
    return Verdict(
        ok=workers_ok and main_alive,
        checks={"main_process": OK if main_alive else "gone", "worker_processes": summary},
    )


def readiness(problems: Mapping[str, str | None]) -> Verdict:
    """Whether the worker's services answer (a pure function).

    Args:
        problems: per service (``rabbitmq``, ``redis``), ``None`` when it answered, else
            why not (an error type: never a URL or a password).

    Returns:
        Healthy when every service answered; ``checks`` says ``"ok"`` or
        ``"unreachable: <why>"`` for each.
    """
    checks = {
        name: OK if problem is None else f"unreachable: {problem}"
        for name, problem in problems.items()
    }
    return Verdict(ok=all(p is None for p in problems.values()), checks=checks)


class Cached(Generic[T]):
    """A value computed at most once per ``ttl_s``; callers meanwhile get the last one.

    Concurrent callers of an expired value wait for one computation instead of each
    running their own (probes cannot multiply the checks).

    Args:
        compute: makes the value (it should not raise: an exception propagates and nothing
            is cached).
        ttl_s: how long a value is reused, from the end of its computation.
        clock: a monotonic clock.
    """

    def __init__(
        self, compute: Callable[[], T], ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._compute = compute
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._until = float("-inf")

    def get(self) -> T:
        """The cached value, computed again when it is older than ``ttl_s``."""
        with self._lock:
            if self._value is None or self._clock() >= self._until:
                self._value = self._compute()
                self._until = self._clock() + self._ttl_s
            return self._value


# -- the worker processes' side ------------------------------------------------------------


def heartbeat_dir(metrics_dir: str | Path) -> Path:
    """The heartbeats' directory for a metrics directory (``dramatiq_prom_db``)."""
    return Path(metrics_dir) / HEARTBEAT_SUBDIR


def prepare_heartbeat_dir(metrics_dir: Path) -> Path:
    """Create the heartbeats' directory and remove heartbeats left by an earlier run.

    Raises:
        OSError: the directory cannot be created.
    """
    directory = heartbeat_dir(metrics_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.json"):
        stale.unlink(missing_ok=True)
    return directory


def step_limit_s(broker: dramatiq.Broker) -> float:
    """The time limit of a message on ``broker`` (its ``TimeLimit`` middleware), seconds."""
    for middleware in broker.middleware:
        if isinstance(middleware, TimeLimit):
            return float(middleware.time_limit) / 1000
    return DEFAULT_STEP_LIMIT_S


class HeartbeatMiddleware(dramatiq.Middleware):
    """Writes this worker process's heartbeat (a ``Beat``) every ``interval_s``, from worker
    boot to worker shutdown, on a thread of its own.

    Args:
        directory: where heartbeats go (``heartbeat_dir()``); created when missing.
        interval_s: seconds between two heartbeats.
        clock: a monotonic clock, one for every process of the host.

    Failure modes: a heartbeat that cannot be written is logged (once until writing works
    again) and the thread goes on; the endpoint then sees it age and answers 503.
    """

    def __init__(
        self,
        directory: Path,
        interval_s: float = HEARTBEAT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self.clock = clock
        self.limit_s = DEFAULT_STEP_LIMIT_S
        # The start of the step each worker thread runs (a thread runs one at a time).
        self._steps: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def path(self) -> Path:
        """This process's heartbeat file."""
        return self.directory / f"{os.getpid()}.json"

    def beat(self) -> Beat:
        """This process's heartbeat now."""
        with self._lock:
            since = min(self._steps.values(), default=None)
        return Beat(pid=os.getpid(), at=self.clock(), step_since=since, step_limit_s=self.limit_s)

    def write(self) -> None:
        """Write the heartbeat (atomically: the endpoint never reads half a file)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = self.directory / f".{os.getpid()}.tmp"
            partial.write_text(self.beat().dumps())
            os.replace(partial, self.path)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("health.heartbeat_failed", error=type(exc).__name__)
            return
        if self._failing:
            self._failing = False
            log.info("health.heartbeat_recovered")

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.limit_s = step_limit_s(broker)
        # Written before the worker reports it booted: the endpoint, forked after that,
        # finds every process's first heartbeat.
        self.write()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="segmind-heartbeat", daemon=True)
        self._thread.start()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        with self._lock:
            self._steps[threading.get_ident()] = self.clock()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            self._steps.pop(threading.get_ident(), None)

    after_skip_message = after_process_message

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        # Beats go on while running steps finish: a draining worker is not a wedged one.
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 1)
            self._thread = None
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()


# -- the endpoint's side -------------------------------------------------------------------


def read_beats(directory: Path) -> list[Beat]:
    """The heartbeats in ``directory`` (unreadable or malformed files are skipped)."""
    beats = []
    for path in directory.glob("*.json"):
        try:
            beat = Beat.loads(path.read_text())
        except OSError:
            continue  # removed by a process that just shut down
        if beat is not None:
            beats.append(beat)
    return beats


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and is not a zombie (a killed worker process
    stays one until the main process reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): existing is all that can be told
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state not in (["Z"], ["X"])


def rabbitmq_problem(url: SecretStr, timeout_s: float) -> str | None:
    """``None`` when RabbitMQ at ``url`` completes an AMQP handshake within ``timeout_s``,
    else the error's type (no URL, no password)."""
    import pika

    from producers.amqp import parse_amqp_urls

    try:
        parameters, _, _ = parse_amqp_urls(url, connect_timeout_s=timeout_s)
        connection = pika.BlockingConnection(parameters)
    except Exception as exc:  # whatever fails, the answer is the same: not reachable
        return type(exc).__name__
    with suppress(Exception):
        connection.close()
    return None


def redis_problem(
    url: SecretStr, timeout_s: float, *, sentinel_password: str | None = None
) -> str | None:
    """``None`` when Redis at ``url`` (through its Sentinels, for a Sentinel URL) answers
    PING within ``timeout_s``, else the error's type (no URL, no password)."""
    from worker.store import redis_client

    try:
        with redis_client(
            url.get_secret_value(),
            sentinel_password=sentinel_password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        ) as client:
            client.ping()
    except Exception as exc:  # whatever fails, the answer is the same: not reachable
        return type(exc).__name__
    return None


@dataclass
class Probes:
    """What the endpoint answers with: each probe's verdict and the metrics' writer."""

    live: Callable[[], Verdict]
    ready: Callable[[], Verdict]
    metrics: Callable[[BaseHTTPRequestHandler], None]


class HealthServer(ThreadingHTTPServer):
    """The endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` (one thread per request, so
    a slow readiness check never holds a scrape)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], probes: Probes) -> None:
        self.probes = probes
        super().__init__(address, HealthHandler)


class HealthHandler(BaseHTTPRequestHandler):
    """Routes a GET to the metrics or a probe; anything else is 404."""

    server: HealthServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        probes = self.server.probes
        if path == METRICS_PATH:
            probes.metrics(self)
            return
        if path not in (LIVENESS_PATH, READINESS_PATH):
            self._send(HTTPStatus.NOT_FOUND, b'{"status": "not_found"}')
            return
        probe = probes.live if path == LIVENESS_PATH else probes.ready
        try:
            verdict = probe()
        except Exception as exc:  # a probe that cannot decide answers "not healthy"
            log.warning("health.probe_failed", path=path, error=type(exc).__name__)
            verdict = Verdict(ok=False, checks={"probe": f"error: {type(exc).__name__}"})
        self._send(verdict.status_code, verdict.body())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health.request", line=format % args)


def live_probe(
    directory: Path, settings: Settings, processes: int, main_pid: int
) -> Callable[[], Verdict]:
    """The liveness probe of an endpoint whose parent is ``main_pid`` (I/O around
    ``liveness``)."""

    def probe() -> Verdict:
        beats = read_beats(directory)
        return liveness(
            beats,
            now=time.monotonic(),
            processes=processes,
            live_pids=[beat.pid for beat in beats if process_alive(beat.pid)],
            main_alive=os.getppid() == main_pid,
            heartbeat_timeout_s=settings.worker_heartbeat_timeout_s,
        )

    return probe


def ready_probe(settings: Settings) -> Callable[[], Verdict]:
    """The readiness probe of the worker with ``settings`` (I/O around ``readiness``),
    cached ``READINESS_CACHE_S``. A change of verdict is logged (a failing first one too).
    """
    last: list[Verdict] = []

    def compute() -> Verdict:
        verdict = readiness(
            {
                "rabbitmq": rabbitmq_problem(settings.amqp_url, READINESS_TIMEOUT_S),
                "redis": redis_problem(
                    settings.redis_url,
                    READINESS_TIMEOUT_S,
                    sentinel_password=settings.redis_sentinel_secret(),
                ),
            }
        )
        if (last[0].checks if last else {}) != verdict.checks and (last or not verdict.ok):
            report = log.info if verdict.ok else log.warning
            report("health.readiness_changed", ready=verdict.ok, checks=verdict.checks)
        last[:] = [verdict]
        return verdict

    return Cached(compute, READINESS_CACHE_S).get


def serve() -> int:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz``: the process Dramatiq's main process
    forks in place of its Prometheus exposition server (see ``worker.main``).

    Listens where Dramatiq's server would (``dramatiq_prom_host``/``_port``) and serves
    the metrics of every worker process with prometheus_client's multiprocess collector.
    Returns when the process is told to stop (Dramatiq's fork process turns SIGTERM into
    ``SystemExit``).

    Raises:
        OSError: the port cannot be bound.
        worker.settings.SettingsError: the environment's settings are invalid.
    """
    # Imported here, as Dramatiq does: prometheus_client reads PROMETHEUS_MULTIPROC_DIR
    # when it is imported, and Dramatiq's module creates its directory.
    from dramatiq.middleware import prometheus
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    def metrics(handler: BaseHTTPRequestHandler) -> None:
        # Every process's values, summed: prometheus_client's multiprocess collector over
        # the directory Dramatiq's middleware and the service's metrics write to.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
        handler.send_response(HTTPStatus.OK)
        handler.send_header("content-type", CONTENT_TYPE_LATEST)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    settings = Settings()
    probes = Probes(
        live=live_probe(
            heartbeat_dir(prometheus.DB_PATH),
            settings,
            processes=int(os.environ.get(PROCESSES_ENV, "1")),
            main_pid=os.getppid(),
        ),
        ready=ready_probe(settings),
        metrics=metrics,
    )
    with HealthServer((prometheus.HTTP_HOST, prometheus.HTTP_PORT), probes) as server:
        log.debug("health.serving", port=prometheus.HTTP_PORT)
        server.serve_forever()
    return 0
