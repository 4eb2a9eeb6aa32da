"""The module Dramatiq's worker processes import: ``segmind-queue worker`` runs
``dramatiq worker.main``. Importing it configures logging, builds the service's parts from
the environment (``worker.settings.Settings``) with Dramatiq's Prometheus middleware, and
makes the broker Dramatiq's global one.

``segmind-queue worker`` has already set ``PROMETHEUS_MULTIPROC_DIR`` and
``dramatiq_prom_db`` (one emptied directory) and ``dramatiq_prom_host``/``_port`` (from
``METRICS_HOST``/``METRICS_PORT``) before this is imported: Dramatiq's middleware reads them
when its module is imported, and prometheus_client when it is.

The endpoint on that port is the service's own (``worker.health.serve``: every process's
metrics through prometheus_client's multiprocess collector, and the health probes), forked by
Dramatiq's Prometheus middleware in place of its exposition server (``WorkerEndpoint``);
every process writes its heartbeat for it (``HeartbeatMiddleware``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import dramatiq
from dramatiq.middleware.prometheus import DB_PATH, Prometheus

from worker.app import create_app
from worker.health import HeartbeatMiddleware, heartbeat_dir, serve
from worker.logs import configure_logging, secrets_of
from worker.settings import Settings


class WorkerEndpoint(Prometheus):
    """Dramatiq's Prometheus middleware whose forked server is ``worker.health.serve``
    (``/metrics``, ``/healthz``, ``/readyz``); its metrics are Dramatiq's, unchanged."""

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve]


settings = Settings()
# Dramatiq's command line has replaced sys.stderr with the pipe to the parent process;
# the parent chose the format (a pipe is never a terminal).
configure_logging(
    fmt="console" if settings.log_format == "console" else "json",
    level=settings.log_level,
    secrets=secrets_of(settings),
    stream=sys.stderr,
)
app = create_app(
    settings, middleware=[WorkerEndpoint(), HeartbeatMiddleware(heartbeat_dir(DB_PATH))]
)
broker = app.broker
dramatiq.set_broker(broker)
