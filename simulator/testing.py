"""The simulator in a background thread, for tests and benchmarks.

    with run_simulator(SimulatorConfig(api_key="k", time_scale=0.01)) as sim:
        httpx.post(f"{sim.url}/workflows/<id>", headers={"x-api-key": sim.api_key}, json={})
        sim.add_faults({"endpoint": "poll", "status": 502, "count": 1})
        assert sim.stats()["submits"] == 1

The server listens on a real socket on 127.0.0.1 (an ephemeral port unless the config
names one) and is reached over HTTP only, admin calls included.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, TypeVar

import httpx
import uvicorn

from producers.catalog import Catalog
from simulator.app import SimulatorApp, create_app
from simulator.config import SimulatorConfig
from simulator.server import bound_url, uvicorn_config
from simulator.state import SimulatorState

T = TypeVar("T")

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 5.0


@cache
def _ssl_context() -> ssl.SSLContext:
    # The simulator speaks plain HTTP, but httpx builds a verifying SSL context for every
    # client (~20 ms each); tests create many clients, so they share one.
    return ssl.create_default_context()


class SimulatorError(RuntimeError):
    """The simulator did not start, or an admin call failed."""


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout_s: float = 5.0,
    interval_s: float = 0.01,
    message: str = "condition",
) -> T:
    """Call ``condition`` until it returns a truthy value, and return that value.

    Raises:
        TimeoutError: still falsy after ``timeout_s`` seconds (``message`` says what).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not met within {timeout_s:g} s")
        time.sleep(interval_s)


class RunningSimulator:
    """A simulator serving in this process, reached over HTTP.

    Attributes:
        url: ``http://127.0.0.1:<port>``; Segmind paths go under it
            (``/workflows/<id>``), the SDK's ``base_url`` is ``v1_url``.
        api_key: the key the simulator accepts (not shown in ``repr``).
        config: the base config (``reset`` returns to it).
        app: the ASGI app; ``app.simulator`` is its state, owned by the server's thread
            (read it for debugging only, use the admin calls to act).
    """

    def __init__(self, url: str, config: SimulatorConfig, app: SimulatorApp) -> None:
        self.url = url
        self.config = config
        self.app = app
        self._admin = httpx.Client(base_url=f"{url}/_sim", timeout=10.0, verify=_ssl_context())

    def __repr__(self) -> str:
        return f"RunningSimulator(url={self.url!r})"

    @property
    def api_key(self) -> str:
        """The API key the simulator accepts."""
        return self.config.api_key.get_secret_value()

    @property
    def v1_url(self) -> str:
        """The base URL of the v1 API (``SegmindClient(base_url=...)``)."""
        return f"{self.url}/v1"

    @property
    def state(self) -> SimulatorState:
        """The live state (owned by the server's thread: read, do not modify)."""
        return self.app.simulator

    def client(self, *, timeout_s: float = 5.0, **kwargs: Any) -> httpx.Client:
        """An httpx client for the Segmind endpoints, sending ``x-api-key``.

        ``kwargs`` go to ``httpx.Client`` (``headers`` are added to the key header).
        The caller closes it.
        """
        headers = {"x-api-key": self.api_key, **kwargs.pop("headers", {})}
        kwargs.setdefault("verify", _ssl_context())
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, **kwargs)

    def reset(self, **overrides: Any) -> dict[str, Any]:
        """Forget jobs, counters, faults and rate windows; restore credits.

        ``overrides`` are config fields (``rpm=5``, ``credits=1.0``, ``time_scale=0.001``,
        ``faults=[...]``, ``serve_outputs=True``, ``output_faults=[...]``) valid until the
        next reset. Returns the new config (key masked).

        Raises:
            SimulatorError: an unknown or invalid override.
        """
        return dict(self._call("POST", "/reset", json=overrides)["config"])

    def add_faults(self, *rules: dict[str, Any]) -> list[dict[str, Any]]:
        """Append fault rules (see ``simulator.config.HttpFault`` and ``JobFault``).

        Returns the active rules.

        Raises:
            SimulatorError: a rule is invalid (none is added).
        """
        return list(self._call("POST", "/faults", json={"faults": list(rules)})["faults"])

    def add_output_faults(self, *rules: dict[str, Any]) -> list[dict[str, Any]]:
        """Append output fault rules (see ``simulator.config.OutputFault``), e.g.
        ``{"kind": "status", "status": 503, "count": 2}``.

        Returns the active output rules.

        Raises:
            SimulatorError: a rule is invalid (none is added).
        """
        answer = self._call("POST", "/faults", json={"output_faults": list(rules)})
        return list(answer["output_faults"])

    def clear_faults(self) -> None:
        """Remove every fault rule, output faults included."""
        self._call("DELETE", "/faults")

    def faults(self) -> list[dict[str, Any]]:
        """The active fault rules, each with its ``remaining`` count."""
        return list(self._call("GET", "/faults")["faults"])

    def output_faults(self) -> list[dict[str, Any]]:
        """The active output fault rules, each with its ``remaining`` count."""
        return list(self._call("GET", "/faults")["output_faults"])

    def stats(self) -> dict[str, Any]:
        """The counters (``GET /_sim/stats``)."""
        return dict(self._call("GET", "/stats"))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job since the last reset (``GET /_sim/jobs``)."""
        return list(self._call("GET", "/jobs"))

    def close(self) -> None:
        """Close the admin HTTP client (the server is stopped by ``run_simulator``)."""
        self._admin.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._admin.request(method, path, **kwargs)
        if response.status_code != 200:
            raise SimulatorError(
                f"simulator admin {method} {path}: HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )
        return response.json()


@contextmanager
def run_simulator(
    config: SimulatorConfig | None = None, *, catalog: Catalog | None = None
) -> Iterator[RunningSimulator]:
    """Serve a simulator in a daemon thread for the duration of the ``with`` block.

    Args:
        config: what to simulate; ``host``/``port`` default to 127.0.0.1 and, when the
            config leaves the port at its default, an ephemeral port.
        catalog: the workflows it knows (the process default if omitted).

    Raises:
        SimulatorError: the server did not start within ``STARTUP_TIMEOUT_S``.
    """
    config = config or SimulatorConfig()
    if "port" not in config.model_fields_set:
        config = config.model_copy(update={"port": 0})
    app = create_app(config, state=SimulatorState(config, catalog=catalog))
    # log_config=None: leave the process's logging alone; warnings still reach the root.
    server = uvicorn.Server(uvicorn_config(app, config, log_level="warning", log_config=None))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run()
        except BaseException as exc:  # uvicorn raises SystemExit when it cannot bind
            failure.append(exc)

    thread = threading.Thread(target=serve, name="segmind-simulator", daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: server.started or failure or not thread.is_alive(),
            timeout_s=STARTUP_TIMEOUT_S,
            message="simulator startup",
        )
    except TimeoutError:
        server.should_exit = True
        raise SimulatorError("the simulator did not start in time") from None
    if not server.started:
        reason = f": {failure[0]!r}" if failure else ""
        raise SimulatorError(f"the simulator failed to start on {config.host}{reason}")

    running = RunningSimulator(bound_url(server, config.host), config, app)
    try:
        yield running
    finally:
        running.close()
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
