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
- ``rabbit_cluster`` (session): a 3-node RabbitMQ cluster of this session's own, for the
  quorum-queue test that kills the node leading the queues.
- ``redis_sentinel`` (session): a Redis primary, one replica and three Sentinels of this
  session's own, for the failover tests of the replicated ledger.
- ``chaos_engines``: skips a test of an engine's own failover unless ``--chaos-engines``.
- ``chaos_stack``: makes a ``Stack`` (``tests.e2e.conftest``) on given RabbitMQ and Redis
  URLs, in a namespace of its own, cleaned up after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.testing import RunningSimulator
from tests import figures
from tests.chaos.harness import RECORDED
from tests.conftest import _missing
from tests.e2e.conftest import Stack, new_stack
from tests.services import (
    PrivateRabbitCluster,
    PrivateRabbitMQ,
    PrivateRedis,
    PrivateRedisSentinel,
    ServiceUnavailable,
)


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


@pytest.fixture
def chaos_engines(pytestconfig: pytest.Config) -> None:
    """Skip a test of an engine's own failover unless ``--chaos-engines`` asks for it.

    Those tests say which engine broke when one does; the chaos runs kill the same engines
    and check the same outcomes on their way, so ``make test`` spares their ~25 s."""
    if not pytestconfig.getoption("chaos_engines"):
        pytest.skip("the engines' own failovers run with --chaos-engines")


@pytest.fixture(autouse=True)
def chaos_figures() -> Iterator[None]:
    """Print the figures of the test's runs in the terminal summary, as they are at its end
    (tests add notes to a run's figures after it)."""
    yield
    for run in RECORDED:
        figures.record("chaos figures", run.lines())
    RECORDED.clear()


# The high-availability engines (tests.services), started by the first test that asks for
# one. A test that kills, stops or freezes a part starts (or thaws) it again before it ends:
# the next test finds the engine whole, though the Redis primary may be the other server
# and a quorum queue's leader another node.


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitCluster]:
    """A three-node RabbitMQ cluster of this session's own (about 8 s to start, 2 s to
    stop), stopped at the end; its logs stay in the session's temporary directory."""
    cluster = PrivateRabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"))
    try:
        cluster.start()
    except ServiceUnavailable as exc:
        _missing(f"{exc}; the cluster tests need a RabbitMQ cluster of their own")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisSentinel]:
    """A Redis primary, its replica and three Sentinels of this session's own (about 1 s
    to start), all stopped at the end."""
    group = PrivateRedisSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        group.start()
    except ServiceUnavailable as exc:
        _missing(f"{exc}; the Sentinel tests need Redis servers of their own")
    try:
        yield group
    finally:
        group.close()
