"""The chaos suite: worker processes killed, RabbitMQ and Redis restarted, Segmind
misbehaving, on the real services and the time-scaled simulator.

Sizes: ``--chaos-jobs`` requests per run and ``--chaos-kills`` worker kills in the kill
run (registered in ``tests/conftest.py``; the defaults fit ``make test``, and
``pytest tests/chaos --chaos-jobs 1000 --chaos-kills 20`` is the large run). Each run's
figures are printed in pytest's terminal summary.

Fixtures:

- ``chaos_size`` (session): the sizes.
- ``private_rabbitmq`` (session): a RabbitMQ node of this session's own on free ports
  (``tests.services``), for the test that restarts it; the shared one is never touched.
- ``private_redis_aof`` / ``private_redis_volatile`` (session): Redis servers of this
  session's own, with an append-only file and with no persistence at all.
- ``chaos_stack``: makes a ``Stack`` (``tests.e2e.conftest``) on given RabbitMQ and Redis
  URLs, in a namespace of its own, cleaned up after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.testing import RunningSimulator
from tests.chaos.harness import RECORDED
from tests.conftest import _missing
from tests.e2e.conftest import Stack, new_stack
from tests.services import PrivateRabbitMQ, PrivateRedis, ServiceUnavailable


@dataclass(frozen=True)
class ChaosSize:
    """How big the runs are."""

    jobs: int
    kills: int


@pytest.fixture(scope="session")
def chaos_size(pytestconfig: pytest.Config) -> ChaosSize:
    """The sizes given on the command line, or the defaults."""
    jobs = int(pytestconfig.getoption("chaos_jobs"))
    kills = int(pytestconfig.getoption("chaos_kills"))
    if jobs < 2 or kills < 0:
        raise pytest.UsageError("--chaos-jobs must be >= 2 and --chaos-kills >= 0")
    return ChaosSize(jobs=jobs, kills=kills)


@pytest.fixture(scope="session")
def private_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of this session's own, stopped at the end."""
    node = PrivateRabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.start()
    except ServiceUnavailable as exc:
        _missing(f"{exc}; the RabbitMQ restart test needs a node of its own")
    try:
        yield node
    finally:
        node.close()


def _private_redis(directory: Path, *, appendonly: bool) -> Iterator[PrivateRedis]:
    server = PrivateRedis(directory, appendonly=appendonly)
    try:
        server.start()
    except ServiceUnavailable as exc:
        _missing(f"{exc}; the Redis restart tests need a server of their own")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def private_redis_aof(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A Redis of this session's own keeping an append-only file."""
    yield from _private_redis(tmp_path_factory.mktemp("redis-aof"), appendonly=True)


@pytest.fixture(scope="session")
def private_redis_volatile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A Redis of this session's own with no persistence: a restart loses every key."""
    yield from _private_redis(tmp_path_factory.mktemp("redis-volatile"), appendonly=False)


StackFactory = Callable[[str, str], Stack]


@pytest.fixture
def chaos_stack(sim: RunningSimulator, namespace: str, tmp_path: Path) -> Iterator[StackFactory]:
    """``chaos_stack(amqp_url, redis_url)``: a stack with no worker yet, on those services;
    every stack made is cleaned up (workers stopped, queues and keys deleted) after the
    test."""
    made: list[Stack] = []

    def make(amqp_url: str, redis_url: str) -> Stack:
        log_dir = tmp_path / f"stack-{len(made)}"
        log_dir.mkdir()
        stack = new_stack(amqp_url, redis_url, sim, namespace, log_dir)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print each chaos run's figures."""
    if not RECORDED:
        return
    terminalreporter.section("chaos figures")
    for figures in RECORDED:
        for line in figures.lines():
            terminalreporter.write_line(line)
