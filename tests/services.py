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
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
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

    def start(self) -> None:
        """Start the server (on the same port and directory as before) and wait until it
        answers PING."""
        program = shutil.which("redis-server")
        if program is None:
            raise ServiceUnavailable("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    program,
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
                ],
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
        process = self._process
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
