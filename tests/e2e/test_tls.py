"""The service over TLS, configured by its URLs alone.

A ``segmind-queue worker`` whose ``AMQP_URL`` is ``amqps://`` and ``REDIS_URL`` is
``rediss://`` (TLS proxies with a throwaway CA, ``tests.tls``, in front of the shared
RabbitMQ and Redis; the CA trusted through ``SSL_CERT_FILE``) runs a request published over
``amqps://`` to COMPLETED; a worker that does not trust the CA refuses the servers and says
why, without its passwords.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers.consumer import ResultConsumer
from producers.publisher import Publisher
from simulator.testing import wait_until
from tests.conftest import free_port
from tests.e2e.conftest import Stack, Worker
from tests.tls import Certificate, Pki, TlsProxy, amqps_url, rediss_url, upstream_port

CANARY = "tls-e2e-canary-pw-77d0"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def localhost_cert(pki: Pki) -> Certificate:
    return pki.server(["localhost", "127.0.0.1"], file_name="localhost")


@pytest.fixture
def rabbit_tls(amqp_url: str, localhost_cert: Certificate) -> Iterator[TlsProxy]:
    with TlsProxy(upstream_port(amqp_url, 5672), localhost_cert) as proxy:
        yield proxy


@pytest.fixture
def redis_tls(redis_url: str, localhost_cert: Certificate) -> Iterator[TlsProxy]:
    with TlsProxy(upstream_port(redis_url, 6379), localhost_cert) as proxy:
        yield proxy


def test_a_request_over_amqps_and_rediss_completes(
    fresh_stack: Stack,
    rabbit_tls: TlsProxy,
    redis_tls: TlsProxy,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    amqps = amqps_url(fresh_stack.amqp_url, rabbit_tls)
    rediss = rediss_url(fresh_stack.redis_url, redis_tls)
    no_extra_cas = tmp_path / "no-cas"
    no_extra_cas.mkdir()
    trust = {"SSL_CERT_FILE": str(pki.ca_file), "SSL_CERT_DIR": str(no_extra_cas)}
    for name, value in trust.items():
        monkeypatch.setenv(name, value)  # the producer and consumer in this process
    fresh_stack.start_worker(
        AMQP_URL=amqps,
        REDIS_URL=rediss,
        SSL_CERT_FILE=trust["SSL_CERT_FILE"],
        SSL_CERT_DIR=trust["SSL_CERT_DIR"],
    )

    with ResultConsumer.private(amqps, prefix=f"{fresh_stack.name}.results") as consumer:
        try:
            with Publisher(amqps, queue=fresh_stack.requests_queue) as publisher:
                request_id = publisher.publish(
                    {
                        "workflow": "stock-video",
                        "inputs": {"text_prompt": "a meeting"},
                        "reply_to": consumer.queue,
                    }
                )
            result = consumer.wait([request_id], timeout_s=60)[request_id]
        finally:
            consumer.delete_queue(if_empty=False)

    assert result.status == "COMPLETED", result.error
    assert result.outputs
    assert fresh_stack.sim.stats()["submits_by_client_request_id"] == {request_id: 1}
    # The worker's RabbitMQ and Redis were only reachable through the proxies: the
    # broker, the result publisher, both consumers and the ledger spoke TLS.
    assert rabbit_tls.handshakes >= 3  # this process's publisher and consumer, the worker
    assert redis_tls.handshakes >= 1
    assert rabbit_tls.failed_handshakes == 0
    assert redis_tls.failed_handshakes == 0


def test_a_worker_that_does_not_trust_the_ca_refuses_and_says_why(
    fresh_stack: Stack, rabbit_tls: TlsProxy, redis_tls: TlsProxy, tmp_path: Path
) -> None:
    # The worker trusts a CA, just not the one that signed the servers' certificate.
    other_ca = Pki(tmp_path / "other-ca", name="another CA").ca_file
    no_cas = tmp_path / "no-cas"
    no_cas.mkdir()
    env = fresh_stack.env(
        AMQP_URL=amqps_url(fresh_stack.amqp_url, rabbit_tls, password=CANARY),
        REDIS_URL=rediss_url(fresh_stack.redis_url, redis_tls, password=CANARY),
        SSL_CERT_FILE=str(other_ca),
        SSL_CERT_DIR=str(no_cas),
        METRICS_PORT=str(free_port()),
        METRICS_HOST="127.0.0.1",
        METRICS_REFRESH_S="0.2",
        LOG_LEVEL="DEBUG",
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("segmind-queue")), "worker", "--processes", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    worker = Worker(process, log_path, int(env["METRICS_PORT"]), fresh_stack.consumers)
    fresh_stack.workers.append(worker)  # stopped by the stack's cleanup

    def refused_both() -> bool:
        return rabbit_tls.failed_handshakes > 0 and redis_tls.failed_handshakes > 0

    wait_until(refused_both, timeout_s=60, interval_s=0.1, message="both TLS handshakes refused")
    wait_until(
        lambda: "CERTIFICATE_VERIFY_FAILED" in worker.log(),
        timeout_s=60,
        interval_s=0.1,
        message="the worker to log the refused certificate",
    )
    worker.stop()

    text = worker.log()
    assert CANARY not in text
    assert rabbit_tls.handshakes == 0
    assert redis_tls.handshakes == 0
    assert fresh_stack.consumers() == 0
    # The reason is logged where an operator sees it (warning or above), for both servers.
    loud = [
        event
        for event in worker.events()
        if "CERTIFICATE_VERIFY_FAILED" in json.dumps(event)
        and event.get("level") in ("warning", "error", "critical")
    ]
    assert any(event["logger"].startswith(("pika", "dramatiq")) for event in loud), text[-3000:]
    assert any("Redis" in json.dumps(event) for event in loud), text[-3000:]
