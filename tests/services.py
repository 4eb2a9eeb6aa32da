"""Private RabbitMQ and Redis servers that a test may stop, kill and restart.

The shared services (RabbitMQ on 5672, Redis on 6379) are used by every test running on
this machine: a test that restarts a broker or loses Redis's data starts its own, here, on
free ports, with its data and logs in a directory of its own::

    with PrivateRedis(tmp_path / "redis", appendonly=True) as redis_server:
        ...                           # redis_server.url
        redis_server.restart()        # SIGTERM (Redis writes its AOF), start on the same dir
    with PrivateRabbitMQ(tmp_path / "rabbit") as rabbit:
        rabbit.restart()              # `rabbitmqctl stop`, start the node again

Every start waits until the server answers, and every stop until the process is gone, each
on a condition with a deadline (``ServiceError`` past it); leaving the ``with`` block always
stops the server, killing it if it does not stop in time.

``ServiceUnavailable`` (a ``ServiceError``) means the server's programs are not installed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import pika
import pika.exceptions
import redis

from simulator.testing import wait_until

#: How long a server may take to start or to stop.
START_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 60.0
#: Where Debian keeps RabbitMQ's own scripts: ``/usr/sbin/rabbitmq-server`` switches to the
#: ``rabbitmq`` user when run as root, and that user cannot write a test's directory.
_RABBITMQ_LIBEXEC: Final = Path("/usr/lib/rabbitmq/bin")


class ServiceError(RuntimeError):
    """A private server did not start or stop within its deadline (the message says which
    and ends with its log's last lines)."""


class ServiceUnavailable(ServiceError):
    """The server's programs are not installed."""


#: The ports servers are given are drawn below the kernel's ephemeral range (where
#: outgoing connections take their local ports): while a server restarts, a client retrying
#: its port from the ephemeral range may be given that very port and connect to itself,
#: and the server then cannot listen on it again.
_PORTS_FROM: Final = 10_000
_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")


def service_port() -> int:
    """A free TCP port of 127.0.0.1 below the ephemeral range, for a server that will be
    restarted on it.

    Raises:
        ServiceError: no free port was found.
    """
    try:
        below = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        below = 32_768
    for _ in range(200):
        port = random.randrange(_PORTS_FROM, max(_PORTS_FROM + 1, below))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ServiceError("no free port below the ephemeral range")


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether ``process`` exited within ``timeout_s``."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process``'s process group (it was started in a session of its own)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        process.wait(timeout=STOP_TIMEOUT_S)


class _PrivateServer:
    """What both private servers share: ``with`` starts one and always stops it."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def close(self) -> None:
        """Stop the server if it runs; killed if it does not stop in time."""
        try:
            self.stop()
        finally:
            self.kill()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PrivateRedis(_PrivateServer):
    """A ``redis-server`` on a free port of 127.0.0.1, its data in ``directory``.

    Args:
        directory: where the append-only file and the log go (created if missing).
        appendonly: keep an append-only file (``appendfsync everysec``), so a restart
            keeps the data; ``False``: no persistence at all (no RDB snapshots either), so
            a restart starts empty.

    Raises:
        ServiceUnavailable: ``redis-server`` is not installed (at ``start``).
        ServiceError: it did not answer, or did not stop, in time.
    """

    def __init__(self, directory: Path, *, appendonly: bool) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = service_port()
        self.log_path = directory / "redis.log"
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PrivateRedis(port={self.port}, appendonly={self.appendonly})"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def _arguments(self) -> list[str]:
        """``redis-server``'s arguments (the same at every start)."""
        return [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
        ]

    def start(self) -> None:
        """Start the server (on the same port and directory as before) and wait until it
        answers PING."""
        program = shutil.which("redis-server")
        if program is None:
            raise ServiceUnavailable("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [program, *self._arguments()],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        process = self._process

        def answers() -> bool:
            if process.poll() is not None:
                raise ServiceError(f"redis-server exited:\n{_tail(self.log_path)}")
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    # Loading the AOF answers LOADING errors: not ready yet.
                    return bool(client.ping())
            except (redis.RedisError, OSError):
                return False

        try:
            wait_until(answers, timeout_s=START_TIMEOUT_S, interval_s=0.05, message="Redis")
        except TimeoutError:
            self.kill()
            raise ServiceError(f"Redis did not answer:\n{_tail(self.log_path)}") from None

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM: with ``appendonly`` the AOF is flushed)
        and wait until it has exited; killed if it has not within ``STOP_TIMEOUT_S``."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        if not _wait_exit(process, STOP_TIMEOUT_S):
            _kill_group(process)
            raise ServiceError(f"Redis did not stop:\n{_tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL the server: with ``appendonly`` up to a second of writes may be lost
        (``appendfsync everysec``)."""
        if self._process is not None:
            _kill_group(self._process)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or, with ``kill``, SIGKILL) the server and start it again on the same
        port and directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()


class PrivateRabbitMQ(_PrivateServer):
    """A RabbitMQ node of its own (``chaos-<hex>@localhost``) on free ports of 127.0.0.1,
    with its database, logs and Erlang cookie in ``directory``.

    No plugins are enabled (no management or Prometheus listener to clash with the shared
    node's). The node registers with the machine's ``epmd`` under its own name. Durable
    queues and persistent messages survive ``restart``.

    Args:
        directory: the node's home (created if missing).

    Raises:
        ServiceUnavailable: RabbitMQ is not installed (at ``start``).
        ServiceError: the node did not start, or did not stop, in time.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.node = f"chaos-{secrets.token_hex(4)}@localhost"
        self.port = service_port()
        self.dist_port = service_port()
        self.log_path = directory / "rabbitmq.out"
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PrivateRabbitMQ(node={self.node!r}, port={self.port})"

    @property
    def url(self) -> str:
        """The node's AMQP URL (the default ``guest`` user, allowed from localhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def running(self) -> bool:
        """Whether the node's process is alive."""
        return self._process is not None and self._process.poll() is None

    def _program(self, name: str) -> str:
        local = _RABBITMQ_LIBEXEC / name
        if local.exists():
            return str(local)
        found = shutil.which(name)
        if found is None:
            raise ServiceUnavailable(f"{name} is not installed")
        return found

    def _env(self) -> dict[str, str]:
        home = self.directory
        plugins = home / "enabled_plugins"
        if not plugins.exists():
            plugins.write_text("[].\n")
        env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
        return env | {
            # Erlang reads (or creates) its cookie in $HOME: this node's and rabbitmqctl's.
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
        }

    def ctl(
        self, *args: str, timeout_s: float = STOP_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <node> <args>``; its output is returned, not checked."""
        return subprocess.run(
            [self._program("rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self) -> None:
        """Start the node and wait until it accepts an AMQP connection."""
        self._launch()
        self._wait_answers()

    def _launch(self) -> None:
        """Start the node's process without waiting: a cluster boots its nodes side by
        side, then waits for each."""
        program = self._program("rabbitmq-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [program],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.directory,
                start_new_session=True,
            )
        self.starts += 1

    def _wait_answers(self) -> None:
        """Wait until the node just launched accepts an AMQP connection.

        Raises:
            ServiceError: it exited, or did not answer within ``START_TIMEOUT_S`` (then it
                is killed).
        """
        process = self._process
        assert process is not None, "_launch first"
        parameters = pika.URLParameters(self.url)
        parameters.socket_timeout = 2
        parameters.connection_attempts = 1

        def answers() -> bool:
            if process.poll() is not None:
                raise ServiceError(f"RabbitMQ exited:\n{_tail(self.log_path)}")
            try:
                pika.BlockingConnection(parameters).close()
            except (pika.exceptions.AMQPError, OSError):
                return False
            return True

        try:
            wait_until(answers, timeout_s=START_TIMEOUT_S, interval_s=0.2, message="RabbitMQ")
        except TimeoutError:
            self.kill()
            raise ServiceError(f"RabbitMQ did not start:\n{_tail(self.log_path)}") from None

    def stop(self) -> None:
        """Stop the node (``rabbitmqctl stop``) and wait until its process has exited;
        killed if it has not within ``STOP_TIMEOUT_S``."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):  # then killed below
            self.ctl("stop")
        if not _wait_exit(process, STOP_TIMEOUT_S):
            _kill_group(process)
            raise ServiceError(f"RabbitMQ did not stop:\n{_tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL the node (messages not yet written to disk may be lost)."""
        if self._process is not None:
            _kill_group(self._process)

    def restart(self) -> float:
        """Stop the node and start it again; returns the seconds it was unreachable."""
        began = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - began


def _distinct_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` free ports (``service_port``), none in ``taken`` nor equal to another:
    ``service_port`` only checks a port is free now, so two draws may give the same one."""
    ports: list[int] = []
    while len(ports) < count:
        port = service_port()
        if port not in taken:
            taken.add(port)
            ports.append(port)
    return ports


def _parallel(calls: list[Callable[[], object]]) -> None:
    """Run ``calls`` side by side in threads and wait for all of them.

    Raises:
        BaseException: the first call's error, once every call has returned.
    """
    if len(calls) <= 1:
        for call in calls:
            call()
        return
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        future.result()


#: The columns RabbitMQ 3.10's ``list_queues`` has for quorum queues: ``leader`` and
#: ``members`` (node names; empty strings for classic queues), ``online`` (the members
#: that run).
_LIST_QUEUES: Final = (
    "list_queues",
    "--quiet",
    "--formatter",
    "json",
    "name",
    "type",
    "leader",
    "members",
    "online",
)


class RabbitClusterNode(PrivateRabbitMQ):
    """One node of a ``PrivateRabbitCluster``: a ``PrivateRabbitMQ`` whose ``start`` (again,
    after ``kill`` or ``stop``) also waits until the node is back in the cluster as a
    running member.

    Attributes:
        index: 1, 2, 3 in the cluster's order (node 1 is the one the others joined).
    """

    def __init__(self, directory: Path, *, cluster: PrivateRabbitCluster, index: int) -> None:
        super().__init__(directory)
        self.index = index
        self.node = f"chaos-{cluster.token}-{index}@localhost"
        self._cluster = cluster

    def __repr__(self) -> str:
        return f"RabbitClusterNode(node={self.node!r}, port={self.port})"

    def start(self) -> None:
        """Start the node on its data directory and wait until it accepts AMQP and, once
        the cluster was formed, until every running node lists it as a running member.

        Raises:
            ServiceError: it did not start, or did not rejoin, within ``START_TIMEOUT_S``.
        """
        super().start()
        if self._cluster.formed:
            self._cluster.wait_running(timeout_s=START_TIMEOUT_S)


class PrivateRabbitCluster(_PrivateServer):
    """A RabbitMQ cluster of its own: ``nodes`` nodes (``RabbitClusterNode``) on free ports
    of 127.0.0.1 sharing one Erlang cookie, nodes 2.. joined to node 1
    (``stop_app``, ``join_cluster``, ``start_app``)::

        with PrivateRabbitCluster(tmp_path / "cluster") as cluster:
            cluster.url                       # "amqp://…:p1/%2F;amqp://…:p2/%2F;…"
            leader = cluster.leader_of("q")   # the node leading quorum queue "q"
            leader.kill()                     # SIGKILL
            leader.start()                    # boots on its data, rejoins the cluster

    Each node's home, database and logs are in ``directory/node<i>``; ``close`` stops the
    nodes (killing those that do not stop in time) and removes nothing.

    Args:
        directory: the cluster's directory (created if missing).
        nodes: how many nodes (at least 1).

    Raises:
        ValueError: ``nodes`` < 1.
        ServiceUnavailable: RabbitMQ is not installed (at ``start``).
        ServiceError: a node did not start, join or stop in time, or a ``rabbitmqctl``
            command failed (the message has its output).
    """

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        self.directory = directory
        self.token = secrets.token_hex(4)
        #: Whether the nodes were joined: from then on a node's ``start`` waits to rejoin.
        self.formed = False
        self._cookie = secrets.token_hex(20)
        self.nodes = [
            RabbitClusterNode(directory / f"node{index}", cluster=self, index=index)
            for index in range(1, nodes + 1)
        ]
        taken: set[int] = set()
        for node in self.nodes:
            node.port, node.dist_port = _distinct_ports(2, taken)

    def __repr__(self) -> str:
        return f"PrivateRabbitCluster(nodes={[node.node for node in self.nodes]})"

    @property
    def url(self) -> str:
        """The nodes' AMQP URLs in node order, joined by ``;`` (tried in turn)."""
        return ";".join(node.url for node in self.nodes)

    def _write_cookies(self) -> None:
        # Nodes of one cluster (and their rabbitmqctl) must share the cookie; Erlang
        # refuses a cookie file others may read, hence 0400. Written once: a restart
        # finds it in place.
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            cookie = node.directory / ".erlang.cookie"
            if cookie.exists():
                continue
            descriptor = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(descriptor, "w") as file:
                file.write(self._cookie)

    def _checked(self, node: RabbitClusterNode, *args: str) -> str:
        result = node.ctl(*args)
        if result.returncode != 0:
            raise ServiceError(
                f"rabbitmqctl -n {node.node} {' '.join(args)} failed "
                f"({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def _join(self) -> None:
        """Join nodes 2.. to node 1: ``stop_app`` and ``start_app`` side by side, the
        ``join_cluster`` calls (schema changes on node 1) one at a time."""
        joining = self.nodes[1:]
        _parallel([functools.partial(self._checked, node, "stop_app") for node in joining])
        for node in joining:
            self._checked(node, "join_cluster", self.nodes[0].node)
        _parallel([functools.partial(self._checked, node, "start_app") for node in joining])

    def start(self) -> None:
        """Start every node side by side, join nodes 2.. to node 1 and wait until the
        cluster lists them all as running.

        Raises:
            ServiceUnavailable: RabbitMQ is not installed.
            ServiceError: a node did not start or join in time (every node is killed).
        """
        self._write_cookies()
        try:
            # Booting is mostly CPU: launching all at once overlaps each node's waits.
            for node in self.nodes:
                node._launch()
            for node in self.nodes:
                node._wait_answers()
            if not self.formed:
                self._join()
                self.formed = True
            self.wait_running(timeout_s=START_TIMEOUT_S)
        except BaseException:
            self.kill()
            raise

    @staticmethod
    def _listed_running(node: RabbitClusterNode) -> list[str] | None:
        """The running nodes ``node``'s ``cluster_status`` lists, sorted; ``None`` when it
        does not answer."""
        try:
            result = node.ctl("cluster_status", "--formatter", "json", timeout_s=15)
            status = json.loads(result.stdout) if result.returncode == 0 else None
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            return None
        if not isinstance(status, dict):
            return None
        return sorted(str(name) for name in status.get("running_nodes", []))

    def running_nodes(self) -> list[str]:
        """The node names ``rabbitmqctl cluster_status`` lists as running, asked of each
        running node in turn until one answers; empty when none does."""
        for node in self.nodes:
            if node.running:
                listed = self._listed_running(node)
                if listed is not None:
                    return listed
        return []

    def wait_running(self, *, timeout_s: float) -> None:
        """Wait until each node whose process runs lists exactly those nodes as running
        (``cluster_status``).

        Raises:
            ServiceError: not so within ``timeout_s``, or no node runs (the message has
                the last lists).
        """
        last: dict[str, list[str] | None] = {}

        def all_running() -> bool:
            alive = [node for node in self.nodes if node.running]
            if not alive:
                raise ServiceError("no node of the cluster runs")
            expected = sorted(node.node for node in alive)
            # One rabbitmqctl takes about 0.3 s: ask the nodes side by side.
            with ThreadPoolExecutor(max_workers=len(alive)) as pool:
                listed = list(pool.map(self._listed_running, alive))
            last.clear()
            last.update(zip([node.node for node in alive], listed, strict=True))
            return all(view == expected for view in listed)

        try:
            wait_until(all_running, timeout_s=timeout_s, interval_s=0.2, message="cluster")
        except TimeoutError:
            raise ServiceError(f"the cluster did not form: running nodes {last}") from None

    def ctl(
        self, *args: str, timeout_s: float = STOP_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl <args>`` on the first node whose process runs; its output is
        returned, not checked.

        Raises:
            ServiceError: no node runs.
        """
        for node in self.nodes:
            if node.running:
                return node.ctl(*args, timeout_s=timeout_s)
        raise ServiceError("no node of the cluster runs")

    def _queues(self) -> list[dict[str, object]]:
        """``rabbitmqctl list_queues`` (``_LIST_QUEUES``, vhost ``/``) from the first
        running node that answers.

        Raises:
            ServiceError: no running node answered.
        """
        errors: list[str] = []
        for node in self.nodes:
            if not node.running:
                continue
            try:
                result = node.ctl(*_LIST_QUEUES, timeout_s=30)
            except subprocess.TimeoutExpired:
                errors.append(f"{node.node}: no answer in 30 s")
                continue
            if result.returncode == 0:
                try:
                    rows = json.loads(result.stdout)
                except json.JSONDecodeError:
                    errors.append(f"{node.node}: not JSON: {result.stdout[:500]}")
                    continue
                return [row for row in rows if isinstance(row, dict)]
            errors.append(f"{node.node}: {result.stdout}{result.stderr}")
        raise ServiceError("no node listed the queues:\n" + "\n".join(errors))

    def _row(self, queue: str) -> dict[str, object] | None:
        return next((row for row in self._queues() if row.get("name") == queue), None)

    def _by_name(self, name: object) -> RabbitClusterNode | None:
        return next((node for node in self.nodes if node.node == name), None)

    def queue_types(self) -> dict[str, str]:
        """Every queue of vhost ``/`` and its type (``classic``, ``quorum``, ``stream``).

        Raises:
            ServiceError: no running node answered.
        """
        return {str(row["name"]): str(row.get("type", "")) for row in self._queues()}

    def leader_of(self, queue: str) -> RabbitClusterNode | None:
        """The node leading quorum queue ``queue`` of vhost ``/`` as the cluster records it
        (it may be a node just killed, until the queue elects another: check
        ``.running``); ``None`` when there is no such queue or no leader is named.

        Raises:
            ServiceError: no running node answered.
        """
        row = self._row(queue)
        return None if row is None else self._by_name(row.get("leader"))

    def members_of(self, queue: str, *, online: bool = False) -> list[RabbitClusterNode]:
        """The nodes holding a member (replica) of quorum queue ``queue`` of vhost ``/``,
        in node order; with ``online``, only the members that run now. Empty when there is
        no such queue.

        Raises:
            ServiceError: no running node answered.
        """
        row = self._row(queue)
        if row is None:
            return []
        names = row.get("online" if online else "members")
        listed = set(names) if isinstance(names, list) else set()
        return [node for node in self.nodes if node.node in listed]

    def stop(self) -> None:
        """Stop every node side by side (``rabbitmqctl stop``), each killed if it does not
        stop within ``STOP_TIMEOUT_S``.

        Raises:
            ServiceError: a node had to be killed.
        """
        _parallel([node.stop for node in self.nodes])

    def kill(self) -> None:
        """SIGKILL every node."""
        for node in self.nodes:
            node.kill()


def _redis_program() -> str:
    program = shutil.which("redis-server")
    if program is None:
        raise ServiceUnavailable("redis-server is not installed")
    return program


class SentinelRedis(PrivateRedis):
    """One of ``PrivateRedisSentinel``'s two Redis servers: no persistence, started from a
    config file of its own that Sentinel rewrites (``CONFIG REWRITE``) when it makes the
    server a replica or a primary, so a restart comes back as what Sentinel last made it
    (a primary killed before Sentinel reconfigured it comes back a primary, empty, and
    Sentinel turns it into a replica).

    ``start`` (again) waits until the server's role agrees with the sentinels: the primary
    they name, or a replica of it with its link up.

    Attributes:
        name: ``redis-1`` (the first primary) or ``redis-2``.
        frozen: whether ``freeze`` stopped it (SIGSTOP) and no ``thaw`` followed.
    """

    def __init__(
        self, directory: Path, *, group: PrivateRedisSentinel, name: str, port: int
    ) -> None:
        super().__init__(directory, appendonly=False)
        self.name = name
        self.port = port
        self.config_path = directory / "redis.conf"
        self.frozen = False
        self._group = group

    def __repr__(self) -> str:
        return f"SentinelRedis({self.name!r}, port={self.port})"

    def _arguments(self) -> list[str]:
        # The config file first (Redis requires it), then PrivateRedis's options; a
        # replica starts syncing at once (diskless, no 5 s wait for other replicas).
        return [
            str(self.config_path),
            *super()._arguments(),
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]

    def write_config(self, *, replicaof: int | None) -> None:
        """Write the server's config file (before its first start): empty for a primary,
        ``replicaof 127.0.0.1 <replicaof>`` for a replica."""
        self.directory.mkdir(parents=True, exist_ok=True)
        line = "" if replicaof is None else f"replicaof 127.0.0.1 {replicaof}\n"
        self.config_path.write_text(line)

    def client(self) -> redis.Redis:
        """A client of this server (a second's socket timeout; the caller closes it)."""
        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def replication(self) -> dict[str, object]:
        """The server's ``INFO replication`` (``role`` is ``master`` or ``slave``).

        Raises:
            redis.RedisError, OSError: it does not answer.
        """
        with self.client() as client:
            return dict(client.info("replication"))

    def start(self) -> None:
        """Start the server on its port and config file and wait until it answers PING
        and, once the sentinels watch it, until its role agrees with them (a restarted
        old primary: until Sentinel has made it a replica of the new one, about 10 s).

        Raises:
            ServiceUnavailable: ``redis-server`` is not installed.
            ServiceError: it did not answer, or its role did not agree, within
                ``START_TIMEOUT_S``.
        """
        super().start()
        self.frozen = False
        if self._group.watching:
            self._group.wait_agrees(self, timeout_s=START_TIMEOUT_S)

    def stop(self) -> None:
        """Shut the server down (SIGTERM; thawed first, or it could not act on it)."""
        self.thaw()
        super().stop()

    def kill(self) -> None:
        """SIGKILL the server (as ``kill -9``): no data survives."""
        super().kill()
        self.frozen = False

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signum)

    def freeze(self) -> None:
        """SIGSTOP the server: it keeps its sockets but answers nothing, like a hung host
        (the sentinels see it down after ``down-after-milliseconds``)."""
        self._signal(signal.SIGSTOP)
        self.frozen = True

    def cut_replication(self) -> None:
        """Make this replica lag: its link to the primary is dropped and, its
        ``masterauth`` wrong, every reconnection is refused, while the server itself
        answers (its Sentinels see it up, and may promote it). Writes the primary takes
        meanwhile never reach it: what a replica behind a slow or broken network misses.

        Raises:
            redis.RedisError, OSError: it does not answer.
        """
        with self.client() as client:
            client.config_set("masterauth", "a-password-no-primary-has")
            client.client_kill_filter(_type="master")

    def restore_replication(self) -> None:
        """Undo ``cut_replication`` (the link comes back, or a promotion makes it moot)."""
        with self.client() as client:
            client.config_set("masterauth", "")

    def thaw(self) -> None:
        """SIGCONT a frozen server (a no-op otherwise)."""
        if self.frozen:
            self._signal(signal.SIGCONT)
            self.frozen = False


class RedisSentinelProcess(_PrivateServer):
    """One Sentinel (``redis-sentinel``, or ``redis-server <conf> --sentinel``) of a
    ``PrivateRedisSentinel``, its config file (which Sentinel rewrites) and log in
    ``directory``.

    Raises:
        ServiceUnavailable: Redis is not installed (at ``start``).
        ServiceError: it did not answer, or did not stop, in time.
    """

    def __init__(self, directory: Path, *, port: int, myid: str) -> None:
        self.directory = directory
        self.port = port
        self.myid = myid
        self.config_path = directory / "sentinel.conf"
        self.log_path = directory / "sentinel.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"RedisSentinelProcess(port={self.port})"

    @property
    def running(self) -> bool:
        """Whether the Sentinel process is alive."""
        return self._process is not None and self._process.poll() is None

    def client(self) -> redis.Redis:
        """A client of this Sentinel (a second's socket timeout; the caller closes it)."""
        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def start(self) -> None:
        """Start the Sentinel on its config file (written by the caller) and wait until it
        answers PING."""
        sentinel = shutil.which("redis-sentinel")
        command = [sentinel, str(self.config_path)] if sentinel else None
        if command is None:
            command = [_redis_program(), str(self.config_path), "--sentinel"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        process = self._process

        def answers() -> bool:
            if process.poll() is not None:
                raise ServiceError(f"redis sentinel exited:\n{_tail(self.log_path)}")
            try:
                with self.client() as client:
                    return bool(client.ping())
            except (redis.RedisError, OSError):
                return False

        try:
            wait_until(answers, timeout_s=START_TIMEOUT_S, interval_s=0.05, message="Sentinel")
        except TimeoutError:
            self.kill()
            raise ServiceError(f"Sentinel did not answer:\n{_tail(self.log_path)}") from None

    def stop(self) -> None:
        """SIGTERM the Sentinel and wait until it has exited; killed if it has not within
        ``STOP_TIMEOUT_S``."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        if not _wait_exit(process, STOP_TIMEOUT_S):
            _kill_group(process)
            raise ServiceError(f"Sentinel did not stop:\n{_tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL the Sentinel."""
        if self._process is not None:
            _kill_group(self._process)


class PrivateRedisSentinel(_PrivateServer):
    """A Redis primary, one replica and three Sentinels of its own, on free ports of
    127.0.0.1::

        with PrivateRedisSentinel(tmp_path / "sentinel") as group:
            group.url                    # "redis+sentinel://127.0.0.1:s1,…/segmind/0"
            old = group.primary()
            old.kill()                   # SIGKILL
            group.wait_failover(old, timeout_s=30)   # the replica is promoted
            old.start()                  # comes back empty; Sentinel makes it a replica

    No persistence (``PrivateRedis(appendonly=False)``): the data lives in the primary's
    memory and its replica's. The Sentinels monitor the primary as ``service`` with
    quorum 2, ``down-after-milliseconds`` ``DOWN_AFTER_MS`` and ``failover-timeout``
    ``FAILOVER_TIMEOUT_MS``: a failover of a killed primary takes about 3 s, a
    restarted old primary is a replica again about 10 s after its start. Each server
    and Sentinel has a directory of its own in ``directory`` (config files, logs);
    ``close`` stops the Sentinels, then the servers (killing what does not stop in time),
    and removes nothing.

    Args:
        directory: where everything goes (created if missing).
        service: the name the Sentinels monitor the primary under.

    Raises:
        ServiceUnavailable: Redis is not installed (at ``start``).
        ServiceError: a server or Sentinel did not start, stop, or come to know the others
            in time.
    """

    #: How long the Sentinels wait for a silent primary before they call it down. Not
    #: 1000, Sentinel's own ping period: with 1000 (Redis 7.0.15), twice in five failovers
    #: a Sentinel that had not led the failover called the new primary down about 1.0 s
    #: after switching to it, counted the others' still-fresh "down" votes about the old
    #: one as a quorum and failed over again, to the restarted, empty old primary. With
    #: 2000 no such second failover was seen in 20 failovers.
    DOWN_AFTER_MS: Final = 2000
    #: Sentinel's failover deadline: an election or a promotion not done in time is
    #: abandoned and retried after twice this.
    FAILOVER_TIMEOUT_MS: Final = 3000

    def __init__(self, directory: Path, *, service: str = "segmind") -> None:
        self.directory = directory
        self.service = service
        #: Whether the Sentinels were started: from then on a server's ``start`` waits
        #: until its role agrees with them.
        self.watching = False
        taken: set[int] = set()
        ports = _distinct_ports(5, taken)
        self.servers = [
            SentinelRedis(directory / name, group=self, name=name, port=port)
            for name, port in zip(("redis-1", "redis-2"), ports[:2], strict=True)
        ]
        self.sentinels = [
            RedisSentinelProcess(
                directory / f"sentinel-{index}", port=port, myid=secrets.token_hex(20)
            )
            for index, port in enumerate(ports[2:], start=1)
        ]

    def __repr__(self) -> str:
        return f"PrivateRedisSentinel({self.url!r})"

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,127.0.0.1:<s3>/<service>/0``."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def _sentinel_config(self, sentinel: RedisSentinelProcess) -> str:
        primary, replica = self.servers
        name = self.service
        lines = [
            f"port {sentinel.port}",
            "bind 127.0.0.1",
            "protected-mode no",
            "daemonize no",
            f'dir "{sentinel.directory}"',
            f"sentinel myid {sentinel.myid}",
            f"sentinel monitor {name} 127.0.0.1 {primary.port} 2",
            f"sentinel down-after-milliseconds {name} {self.DOWN_AFTER_MS}",
            f"sentinel failover-timeout {name} {self.FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {name} 1",
            # What Sentinel would learn from INFO and from the others' hello messages
            # (every 2 s), written as it writes them itself: known at once.
            f"sentinel known-replica {name} 127.0.0.1 {replica.port}",
            *(
                f"sentinel known-sentinel {name} 127.0.0.1 {other.port} {other.myid}"
                for other in self.sentinels
                if other is not sentinel
            ),
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start the primary and the replica, wait until the replica is synced, start the
        Sentinels and wait until each knows the primary, the replica and the other two.

        Raises:
            ServiceUnavailable: Redis is not installed.
            ServiceError: any of it not done within ``START_TIMEOUT_S`` (everything is
                killed).
        """
        _redis_program()
        primary, replica = self.servers
        try:
            primary.write_config(replicaof=None)
            replica.write_config(replicaof=primary.port)
            primary.start()
            replica.start()
            # The Sentinels read the replica from the primary's INFO: let it be there.
            self._wait_synced(primary, replica, timeout_s=START_TIMEOUT_S)
            for sentinel in self.sentinels:
                sentinel.directory.mkdir(parents=True, exist_ok=True)
                sentinel.config_path.write_text(self._sentinel_config(sentinel))
            _parallel([sentinel.start for sentinel in self.sentinels])
            self._wait_acquainted(timeout_s=START_TIMEOUT_S)
            self.watching = True
        except BaseException:
            self.kill()
            raise

    def _acquainted(self, sentinel: RedisSentinelProcess) -> str | None:
        """What ``sentinel`` does not know yet (``None``: it knows everything)."""
        primary, replica = self.servers
        try:
            with sentinel.client() as client:
                master = client.sentinel_master(self.service)
                replicas = client.sentinel_slaves(self.service)
                others = client.sentinel_sentinels(self.service)
        except (redis.RedisError, OSError) as exc:
            return f"no answer ({exc})"
        if int(master["port"]) != primary.port or not master["is_master"]:
            return f"primary {master}"
        if master["is_sdown"] or master["is_odown"] or master["is_disconnected"]:
            return f"primary {master['flags']}"
        if [(int(r["port"]), r["master-link-status"]) for r in replicas] != [(replica.port, "ok")]:
            return f"replicas {replicas}"
        if any(r["is_sdown"] or r["is_disconnected"] for r in replicas):
            return f"replica {[r['flags'] for r in replicas]}"
        ports = sorted(int(other["port"]) for other in others)
        expected = sorted(other.port for other in self.sentinels if other is not sentinel)
        if ports != expected or any(o["is_sdown"] or o["is_disconnected"] for o in others):
            return f"sentinels {others}"
        return None

    def _wait_acquainted(self, *, timeout_s: float) -> None:
        missing: dict[int, str | None] = {}

        def all_known() -> bool:
            for sentinel in self.sentinels:
                missing[sentinel.port] = self._acquainted(sentinel)
            return not any(missing.values())

        try:
            wait_until(all_known, timeout_s=timeout_s, interval_s=0.05, message="Sentinels")
        except TimeoutError:
            raise ServiceError(f"the Sentinels did not know everything: {missing}") from None

    def _named_ports(self) -> list[int]:
        """The primary's port as each running Sentinel that answers names it."""
        ports: list[int] = []
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                with sentinel.client() as client:
                    address = client.sentinel_get_master_addr_by_name(self.service)
            except (redis.RedisError, OSError):
                continue
            if address:
                ports.append(int(address[1]))
        return ports

    def _server(self, port: int) -> SentinelRedis:
        return next(server for server in self.servers if server.port == port)

    def primary(self) -> SentinelRedis:
        """The server most Sentinels (at least 2, the quorum) name the primary
        (``SENTINEL get-master-addr-by-name``); it may be down, until a failover.

        Raises:
            ServiceError: no 2 Sentinels agree (a failover under way: ``wait_failover``).
        """
        ports = self._named_ports()
        for port in set(ports):
            if ports.count(port) >= 2:
                return self._server(port)
        raise ServiceError(f"the Sentinels do not agree on a primary: ports {ports}")

    def replica(self) -> SentinelRedis:
        """The server that is not ``primary()``.

        Raises:
            ServiceError: as ``primary``.
        """
        primary = self.primary()
        return next(server for server in self.servers if server is not primary)

    def _role(self, server: SentinelRedis) -> dict[str, object] | None:
        if not server.running or server.frozen:
            return None
        try:
            return server.replication()
        except (redis.RedisError, OSError):
            return None

    def wait_failover(self, old_primary: SentinelRedis, timeout_s: float) -> float:
        """Wait until every running Sentinel names the other server the primary and that
        server reports ``role:master``; returns the seconds waited.

        Raises:
            ServiceError: not so within ``timeout_s`` (the message ends with the first
                Sentinel's log).
        """
        began = time.monotonic()
        running = [sentinel for sentinel in self.sentinels if sentinel.running]

        def promoted() -> bool:
            ports = self._named_ports()
            # Every Sentinel, not a quorum: after this, ``primary()`` is settled.
            if len(ports) < len(running) or len(set(ports)) != 1:
                return False
            if ports[0] == old_primary.port:
                return False
            info = self._role(self._server(ports[0]))
            return info is not None and info.get("role") == "master"

        try:
            wait_until(promoted, timeout_s=timeout_s, interval_s=0.05, message="failover")
        except TimeoutError:
            raise ServiceError(
                f"no failover from {old_primary!r} within {timeout_s:g} s "
                f"(Sentinels name ports {self._named_ports()}):\n"
                f"{_tail(self.sentinels[0].log_path)}"
            ) from None
        return time.monotonic() - began

    def _replica_online(self, primary: SentinelRedis, replica: SentinelRedis) -> bool:
        info = self._role(primary)
        if info is None or info.get("role") != "master":
            return False
        if int(str(info.get("connected_slaves", 0))) < 1:
            return False
        entries = (value for key, value in info.items() if key.startswith("slave"))
        return any(
            isinstance(entry, dict)
            and int(entry.get("port", 0)) == replica.port
            and entry.get("state") == "online"
            for entry in entries
        )

    def _wait_synced(
        self, primary: SentinelRedis, replica: SentinelRedis, *, timeout_s: float
    ) -> None:
        try:
            wait_until(
                lambda: self._replica_online(primary, replica),
                timeout_s=timeout_s,
                interval_s=0.05,
                message="replica",
            )
        except TimeoutError:
            raise ServiceError(
                f"{replica!r} did not sync with {primary!r}:\n{_tail(replica.log_path)}"
            ) from None

    def wait_replica_synced(self, timeout_s: float) -> float:
        """Wait until the primary the Sentinels name reports the other server as an online
        replica (``INFO replication``); returns the seconds waited.

        Raises:
            ServiceError: not so within ``timeout_s``.
        """
        began = time.monotonic()

        def synced() -> bool:
            try:
                primary = self.primary()
            except ServiceError:
                return False
            replica = next(server for server in self.servers if server is not primary)
            return self._replica_online(primary, replica)

        try:
            wait_until(synced, timeout_s=timeout_s, interval_s=0.05, message="replica")
        except TimeoutError:
            raise ServiceError(f"no replica online within {timeout_s:g} s") from None
        return time.monotonic() - began

    def wait_agrees(self, server: SentinelRedis, *, timeout_s: float) -> None:
        """Wait until ``server``'s role agrees with the Sentinels: ``role:master`` if they
        name it the primary, else a replica of the one they name, its link up.

        Raises:
            ServiceError: not so within ``timeout_s``.
        """
        last: list[object] = []

        def agrees() -> bool:
            try:
                primary = self.primary()
            except ServiceError as exc:
                last[:] = [exc]
                return False
            info = self._role(server)
            last[:] = [primary, info]
            if info is None:
                return False
            if primary is server:
                return info.get("role") == "master"
            return (
                info.get("role") == "slave"
                and int(str(info.get("master_port", 0))) == primary.port
                and info.get("master_link_status") == "up"
            )

        try:
            wait_until(agrees, timeout_s=timeout_s, interval_s=0.05, message="role")
        except TimeoutError:
            raise ServiceError(
                f"{server!r} did not take the role the Sentinels give it: {last}:\n"
                f"{_tail(server.log_path)}"
            ) from None

    def stop(self) -> None:
        """Stop the Sentinels (so that none fails over while the servers go), then the
        servers, each killed if it does not stop within ``STOP_TIMEOUT_S``.

        Raises:
            ServiceError: something had to be killed.
        """
        self.watching = False
        _parallel([sentinel.stop for sentinel in self.sentinels])
        _parallel([server.stop for server in self.servers])

    def kill(self) -> None:
        """SIGKILL every Sentinel and server."""
        self.watching = False
        for process in [*self.sentinels, *self.servers]:
            process.kill()
