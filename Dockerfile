# syntax=docker/dockerfile:1
# segmind-queue: the worker, the producer commands and the local Segmind simulator in one image.
#   docker build -t segmind-queue .
#   docker run --rm -e SEGMIND_API_KEY=... -e AMQP_URL=... -e REDIS_URL=... segmind-queue
# The default command is `segmind-queue worker`; any other command of the CLI runs with
# `docker run ... segmind-queue <command>` (submit, results, status, simulator, ...).
# It runs as an unprivileged user and needs no writable path but /tmp (the metrics of its
# processes): a read-only root filesystem with a tmpfs or emptyDir on /tmp is enough.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build stage: compile and install the project and its dependencies into a virtual
# environment; only that environment is copied into the runtime image.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/segmind-queue
WORKDIR /src
COPY pyproject.toml README.md ./
COPY producers ./producers
COPY worker ./worker
COPY simulator ./simulator
COPY console ./console
# A regular (not editable) install, compiled to bytecode here: the runtime image holds no
# source tree and its processes never need to write a .pyc. The simulator's extra: the
# compose file runs the local Segmind simulator from this image too.
RUN /opt/segmind-queue/bin/python -m pip install '.[simulator]'

# Runtime stage: the interpreter, the virtual environment and nothing else.
FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 segmind \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin segmind \
    && mkdir /app
COPY --from=build /opt/segmind-queue /opt/segmind-queue
ENV PATH=/opt/segmind-queue/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    LOG_FORMAT=json \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9191 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/segmind-queue-metrics
# Owned by root and empty: nothing may be written to the working directory.
WORKDIR /app
USER 10001:10001
# /metrics, /healthz (liveness) and /readyz (readiness: RabbitMQ and Redis reachable).
EXPOSE 9191
# The image has no curl: the CLI checks its own health endpoint (exit 0 healthy, 1 not).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["segmind-queue", "healthcheck"]
# SIGTERM (the default stop signal) lets running steps finish; the orchestrator's grace
# period must exceed the worker's shutdown timeout (Settings.longest_step_s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["segmind-queue"]
CMD ["worker"]
