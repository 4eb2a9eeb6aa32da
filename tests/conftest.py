"""Session fixtures shared by every test: the simulator, RabbitMQ and Redis, all real.

- ``simulator`` (session): a ``RunningSimulator`` on 127.0.0.1 (ephemeral port), API key
  ``SIM_API_KEY``, time scale 0.002 (a 60 s job takes 0.12 s), no rate limit, $1000 of
  credits, seed 1234.
- ``sim`` (function): the same simulator, reset first (no jobs, counters, faults or
  overrides left by another test). Tests change it with ``sim.reset(rpm=..., ...)`` and
  ``sim.add_faults({...})``, and read ``sim.stats()`` / ``sim.jobs()``.
- ``amqp_url`` / ``redis_url`` (session): the local RabbitMQ and Redis (``AMQP_URL`` and
  ``REDIS_URL`` when set, else the defaults), checked once. When one does not answer the
  tests that need it are skipped with the reason, except under ``CI=true``, where they fail:
  CI must prove the pipeline, not skip it.
- ``namespace`` (session): a unique prefix (``t<hex>``) for the queue names and Redis keys of
  this session, so runs never see each other's messages; ``queues`` (function) names queues
  under it and deletes them after the test.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

import pika
import pytest
import redis
import structlog
from pydantic import SecretStr

from producers.wire import DEFAULT_AMQP_URL
from simulator.config import SimulatorConfig
from simulator.testing import RunningSimulator, run_simulator
from tests import figures
from worker.logs import LIBRARY_LEVELS
from worker.settings import DEFAULT_REDIS_URL

SIM_API_KEY = "sim-test-key-0123456789abcdef"

#: Sizes of the chaos suite (tests/chaos) and the end-to-end fuzz (tests/fuzz) in
#: ``make test``; the options give larger ones. They are registered here, in the conftest
#: pytest loads first, so that they work from the root as well as on those directories.
CHAOS_JOBS: Final = 30
CHAOS_KILLS: Final = 3
FUZZ_REQUESTS: Final = 2500
FUZZ_SEED: Final = 20261121


def pytest_addoption(parser: pytest.Parser) -> None:
    chaos = parser.getgroup("chaos", "the chaos suite (tests/chaos)")
    chaos.addoption(
        "--chaos-jobs",
        type=int,
        default=CHAOS_JOBS,
        help=f"requests per chaos run (default {CHAOS_JOBS})",
    )
    chaos.addoption(
        "--chaos-kills",
        type=int,
        default=CHAOS_KILLS,
        help=f"worker processes killed in the kill run (default {CHAOS_KILLS})",
    )
    chaos.addoption(
        "--chaos-unreplicated",
        action="store_true",
        help="also measure a Redis failover to a lagging replica, with and without "
        "LEDGER_MIN_REPLICAS (docs/reliability.md)",
    )
    chaos.addoption(
        "--chaos-engines",
        action="store_true",
        help="also check the cluster and Sentinel engines' own failovers "
        "(the chaos runs use them in any case)",
    )
    fuzz = parser.getgroup("fuzz", "hostile input end to end (tests/fuzz)")
    fuzz.addoption(
        "--fuzz-requests",
        type=int,
        default=FUZZ_REQUESTS,
        help=f"hostile messages the end-to-end fuzz publishes (default {FUZZ_REQUESTS})",
    )
    fuzz.addoption(
        "--fuzz-seed",
        type=int,
        default=FUZZ_SEED,
        help=f"the seed of the fuzz examples (default {FUZZ_SEED})",
    )


#: The figures gathered from the reports, for the terminal summary (``tests.figures``).
_SUMMARY: dict[str, list[str]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the figures recorded during a test to its teardown report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "teardown" and figures.PENDING:
        sections = [[title, lines] for title, lines in figures.PENDING]
        figures.PENDING.clear()
        report.user_properties = [*report.user_properties, (figures.KEY, sections)]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, sections in report.user_properties:
        if key == figures.KEY:
            # Lists, not tuples: what pytest-xdist carries back from its workers.
            for title, lines in cast(list[list[Any]], sections):
                _SUMMARY.setdefault(title, []).extend(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in _SUMMARY.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave the root logger, the library loggers and structlog as the test found them:
    code under test (the demo, ``configure_logging``) reconfigures logging process-wide."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LEVELS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def amqp_connection(amqp_url: str) -> pika.BlockingConnection:
    """A connection to the first of ``amqp_url``'s URLs (several separated by ``;``, as
    the service takes a cluster's nodes) that answers."""
    parameters = [pika.URLParameters(url) for url in amqp_url.split(";") if url]
    return pika.BlockingConnection(parameters if len(parameters) > 1 else parameters[0])


def take_all(amqp_url: str, queue: str) -> list[bytes]:
    """The bodies of every message on ``queue``, taken off it (``basic_get`` until empty)."""
    connection = amqp_connection(amqp_url)
    bodies: list[bytes] = []
    try:
        channel = connection.channel()
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


def queue_types() -> dict[str, str]:
    """Every queue of the local RabbitMQ node and its type, as ``rabbitmqctl list_queues
    name type`` shows them (skips, or fails under CI, without ``rabbitmqctl``)."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        _missing("rabbitmqctl is not installed")
    assert ctl is not None
    listed = subprocess.run(
        [ctl, "-q", "list_queues", "name", "type", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = (line.split("\t") for line in listed.splitlines() if "\t" in line)
    return {name: kind for name, kind in rows}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def simulator_test_config() -> SimulatorConfig:
    """The config of the session simulator."""
    return SimulatorConfig(
        api_key=SecretStr(SIM_API_KEY),
        time_scale=0.002,
        rpm=0,
        credits=1000.0,
        seed=1234,
    )


@pytest.fixture(scope="session")
def simulator() -> Iterator[RunningSimulator]:
    """One simulator for the whole session (see the module docstring)."""
    with run_simulator(simulator_test_config()) as running:
        yield running


@pytest.fixture
def sim(simulator: RunningSimulator) -> RunningSimulator:
    """The session simulator, reset to its base config for this test."""
    simulator.reset()
    return simulator


def _missing(message: str) -> None:
    """Skip with ``message``, except under ``CI=true``, where it fails: CI must prove every
    part, not skip it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _unavailable(what: str, reason: str) -> None:
    _missing(f"{what} is not reachable ({reason}); run `make services` to start it")


def prometheus_tool(name: str) -> str:
    """The path of Debian's ``prometheus`` or ``promtool``; skips (fails under CI) when it
    is not installed."""
    found = shutil.which(name)
    if found is None:
        _missing(f"{name} is not installed; `make prometheus` installs it")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The local RabbitMQ's URL, checked to answer (see the module docstring)."""
    url = os.environ.get("AMQP_URL", DEFAULT_AMQP_URL)
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except Exception as exc:  # any failure means the same: the tests cannot run
        _unavailable("RabbitMQ", type(exc).__name__)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis's URL, checked to answer (see the module docstring)."""
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    try:
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        _unavailable("Redis", type(exc).__name__)
    return url


@pytest.fixture(scope="session")
def namespace() -> str:
    """A prefix unique to this test session for queue names and Redis keys."""
    return "t" + secrets.token_hex(4)


@pytest.fixture
def channel(amqp_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield connection.channel()
    finally:
        connection.close()


@pytest.fixture
def queues(amqp_url: str, namespace: str) -> Iterator[Callable[[str], str]]:
    """``queues("results")`` names a queue unique to this test; all are deleted after it,
    with Dramatiq's ``.DQ`` and ``.XQ`` companions."""
    names: list[str] = []

    def name(suffix: str) -> str:
        queue = f"{namespace}.{secrets.token_hex(3)}.{suffix}"
        names.append(queue)
        return queue

    yield name
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for queue in names:
            for full in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel = connection.channel()
                try:
                    channel.queue_delete(full)
                    channel.close()
                except pika.exceptions.AMQPError:
                    pass  # never declared: deleting it closed the channel
    finally:
        connection.close()


# Fixtures that start or need real services; a test that uses one is an integration test.
_SERVICE_FIXTURES = frozenset(
    {"simulator", "sim", "amqp_url", "redis_url", "queues", "rabbit_cluster", "redis_sentinel"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real service ``integration`` (``make unit`` skips them)."""
    for item in items:
        if _SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
