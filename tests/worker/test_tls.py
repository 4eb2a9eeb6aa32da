"""TLS from the URL alone: ``amqps://`` and ``rediss://`` verify the server.

The pure part: what ``producers.amqp.amqp_parameters`` / ``broker_parameters`` and
``worker.ledger.redis_client`` make of a URL. The real part: the project's publisher and
ledger through a TLS-terminating proxy (``tests.tls.TlsProxy``) in front of the shared
RabbitMQ and Redis, with a throwaway CA trusted through ``SSL_CERT_FILE``, and refused when
the CA is not trusted or the certificate names another host. The whole worker over TLS is
in ``tests/e2e/test_tls.py``.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from producers.amqp import (
    AmqpUrlError,
    ConfirmedPublisher,
    PublishError,
    amqp_parameters,
    broker_parameters,
    parse_amqp_urls,
)
from simulator.testing import wait_until
from tests.tls import Certificate, Pki, TlsProxy, amqps_url, rediss_url, upstream_port
from worker.store import RedisStore, StoreError, redis_client

#: A password that must never show up in an error or a log line.
CANARY = "tls-canary-pw-5f1e"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA for this module."""
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def localhost_cert(pki: Pki) -> Certificate:
    """A server certificate for ``localhost`` (and 127.0.0.1), signed by ``pki``."""
    return pki.server(["localhost", "127.0.0.1"], file_name="localhost")


@pytest.fixture
def trust_test_ca(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Trust only the test CA, the way an operator would: ``SSL_CERT_FILE``."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return pki.ca_file


@pytest.fixture
def system_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSL's default trust store, which does not hold the test CA."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture(scope="module")
def rabbit_tls(amqp_url: str, localhost_cert: Certificate) -> Iterator[TlsProxy]:
    """TLS in front of the shared RabbitMQ."""
    with TlsProxy(upstream_port(amqp_url, 5672), localhost_cert) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def redis_tls(redis_url: str, localhost_cert: Certificate) -> Iterator[TlsProxy]:
    """TLS in front of the shared Redis."""
    with TlsProxy(upstream_port(redis_url, 6379), localhost_cert) as proxy:
        yield proxy


# ------------------------------------------------------------------ what a URL becomes


def _context(params: pika.ConnectionParameters) -> ssl.SSLContext:
    assert params.ssl_options is not None
    context: ssl.SSLContext = params.ssl_options.context
    return context


def test_amqps_verifies_the_certificate_and_the_host_name(trust_test_ca: Path) -> None:
    params = amqp_parameters("amqps://u:p@rabbit.example.com/prod")

    context = _context(params)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert params.ssl_options.server_hostname == "rabbit.example.com"
    assert params.port == 5671  # amqps' port when the URL names none
    assert params.virtual_host == "prod"
    # The trust store is the system's, as OpenSSL finds it: here SSL_CERT_FILE, one CA.
    assert context.cert_store_stats()["x509_ca"] == 1


def test_amqp_is_plaintext() -> None:
    params = amqp_parameters("amqp://u:p@rabbit.example.com:5673/%2F")
    assert params.ssl_options is None
    assert (params.host, params.port, params.virtual_host) == ("rabbit.example.com", 5673, "/")


def test_ssl_options_in_the_query_are_kept_and_still_verify(
    pki: Pki, localhost_cert: Certificate, system_trust: None
) -> None:
    options = {
        "cafile": str(pki.ca_file),
        "certfile": str(localhost_cert.cert_file),
        "keyfile": str(localhost_cert.key_file),
        "server_hostname": "rabbit.internal",
        "ciphers": "ECDHE+AESGCM",
    }
    url = f"amqps://u:p@10.0.0.5/%2F?heartbeat=30&ssl_options={quote(repr(options))}"

    params = amqp_parameters(url)

    context = _context(params)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert params.ssl_options.server_hostname == "rabbit.internal"
    assert context.cert_store_stats()["x509_ca"] == 1  # only the CA the options name
    assert params.heartbeat == 30  # the rest of the query is pika's, as before


def test_a_client_certificate_alone_keeps_the_system_trust_store(
    localhost_cert: Certificate, trust_test_ca: Path
) -> None:
    # pika itself fails on this URL ("cafile, capath and cadata cannot be all omitted").
    options = {"certfile": str(localhost_cert.cert_file), "keyfile": str(localhost_cert.key_file)}
    params = amqp_parameters(f"amqps://u:p@localhost/%2F?ssl_options={quote(repr(options))}")

    context = _context(params)
    assert context.cert_store_stats()["x509_ca"] == 1
    assert params.ssl_options.server_hostname == "localhost"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"http://u:{CANARY}@host/", "amqp:// or amqps://"),
        (f"amqps://u:{CANARY}@host/?ssl_options={{'protocol':2}}", "dict of strings"),
        (f"amqps://u:{CANARY}@host/?ssl_options={{'check_hostname':'no'}}", "check_hostname"),
        (f"amqps://u:{CANARY}@host/?ssl_options=[1", "dict literal"),
        (f"amqp://u:{CANARY}@host/?ssl_options={{'cafile':'/ca.pem'}}", "needs an amqps://"),
        (f"amqps://u:{CANARY}@host/?ssl_options={{'cafile':'/nonexistent.pem'}}", "TLS"),
        (f"amqps://u:{CANARY}@host/?ssl_options=None", "contradicts"),
    ],
)
def test_an_unusable_url_is_refused_without_echoing_it(url: str, reason: str) -> None:
    with pytest.raises(AmqpUrlError) as raised:
        amqp_parameters(url)
    assert reason in str(raised.value)
    assert CANARY not in str(raised.value)


def test_ssl_options_none_is_refused_on_amqps_only() -> None:
    # An explicit "no TLS" on an amqps:// URL is a contradiction; on amqp:// it is moot.
    assert amqp_parameters("amqp://u:p@host/?ssl_options=None").ssl_options is None
    with pytest.raises(AmqpUrlError):
        amqp_parameters("amqps://u:p@host/?ssl_options=None")


def test_the_position_of_a_bad_url_is_named() -> None:
    good = "amqp://u:p@a/%2F"
    bad = f"amqps://u:{CANARY}@b/?ssl_options={{'nope':'x'}}"
    for parse in (
        lambda url: parse_amqp_urls(url, connect_timeout_s=1),
        broker_parameters,
    ):
        with pytest.raises(ValueError, match="AMQP URL #2: ssl_options") as raised:
            parse(f"{good};{bad}")
        assert CANARY not in str(raised.value)


def test_dramatiq_broker_gets_the_same_verified_tls(trust_test_ca: Path) -> None:
    parameters = broker_parameters("amqps://u:p@rabbit.example.com:5700/vh;amqp://u:p@b/%2F")

    broker = RabbitmqBroker(parameters=parameters)
    first, second = broker.parameters
    assert (first.host, first.port, first.virtual_host) == ("rabbit.example.com", 5700, "vh")
    assert first.credentials.password == "p"
    assert first.ssl_options.server_hostname == "rabbit.example.com"
    assert first.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
    assert first.ssl_options.context.check_hostname
    assert second.ssl_options is None


def test_rediss_verifies_the_certificate_and_the_host_name() -> None:
    client = redis_client("rediss://:pw@redis.example.com:6380/2", decode_responses=True)
    try:
        options = client.connection_pool.connection_kwargs
        assert options["ssl_cert_reqs"] == "required"
        assert options["ssl_check_hostname"] is True
        assert (options["host"], options["port"], options["db"]) == ("redis.example.com", 6380, 2)
        assert options["decode_responses"] is True
    finally:
        client.close()


def test_rediss_query_options_win_and_redis_stays_plain() -> None:
    # An operator who writes ?ssl_cert_reqs=none in the URL has chosen it; say it explicitly.
    client = redis_client("rediss://h:6380/0?ssl_cert_reqs=none")
    plain = redis_client("redis://h:6379/0")
    try:
        assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"
        assert "ssl_cert_reqs" not in plain.connection_pool.connection_kwargs
    finally:
        client.close()
        plain.close()


# ------------------------------------------------------------ over real TLS connections


def _basic_get(amqp_url: str, queue: str) -> bytes | None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        _, _, body = connection.channel().basic_get(queue, auto_ack=True)
        return body  # type: ignore[no-any-return]
    finally:
        connection.close()


def test_publisher_over_amqps(
    amqp_url: str,
    rabbit_tls: TlsProxy,
    trust_test_ca: Path,
    queues: Callable[[str], str],
) -> None:
    queue = queues("tls")
    before = rabbit_tls.handshakes
    body = secrets.token_bytes(16)
    with ConfirmedPublisher(amqps_url(amqp_url, rabbit_tls), attempts=1) as publisher:
        publisher.publish(queue, body, pika.BasicProperties(delivery_mode=2))

    assert rabbit_tls.handshakes > before  # it went through the TLS proxy
    assert _basic_get(amqp_url, queue) == body


def test_ledger_over_rediss(
    redis_url: str, redis_tls: TlsProxy, trust_test_ca: Path, namespace: str
) -> None:
    key = f"{namespace}:tls:{secrets.token_hex(4)}"
    before = redis_tls.handshakes
    store = RedisStore.from_url(rediss_url(redis_url, redis_tls))
    try:
        assert store.create(key, {"state": "NEW"}, ttl_s=60)
        assert store.get(key) == {"state": "NEW"}
    finally:
        store.client.delete(key)
        store.close()
    assert redis_tls.handshakes > before


def test_an_untrusted_certificate_is_refused_clearly(
    amqp_url: str,
    redis_url: str,
    rabbit_tls: TlsProxy,
    redis_tls: TlsProxy,
    system_trust: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    failed = rabbit_tls.failed_handshakes, redis_tls.failed_handshakes
    publisher = ConfirmedPublisher(
        amqps_url(amqp_url, rabbit_tls, password=CANARY), attempts=1, connect_timeout_s=5
    )
    with publisher, pytest.raises(PublishError) as amqp_refused:
        publisher.publish("never.created", b"x", pika.BasicProperties())
    store = RedisStore.from_url(rediss_url(redis_url, redis_tls, password=CANARY))
    try:
        with pytest.raises(StoreError) as redis_refused:
            store.get("never-read")
    finally:
        store.close()

    for refused in (amqp_refused, redis_refused):
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        assert CANARY not in str(refused.value)
    assert CANARY not in caplog.text
    # The proxy learns of a refused handshake on its own thread, after the client gave up.
    wait_until(
        lambda: (
            rabbit_tls.failed_handshakes > failed[0] and redis_tls.failed_handshakes > failed[1]
        ),
        timeout_s=5,
        message="the proxies to count the refused handshakes",
    )


def test_a_certificate_for_another_host_is_refused(
    amqp_url: str, pki: Pki, trust_test_ca: Path
) -> None:
    # Signed by the trusted CA, but not for "localhost": only the host name check stops it.
    other = pki.server(["rabbit.example.com"], file_name="other-host")
    with TlsProxy(upstream_port(amqp_url, 5672), other) as proxy:
        publisher = ConfirmedPublisher(amqps_url(amqp_url, proxy), attempts=1)
        with publisher, pytest.raises(PublishError, match="Hostname mismatch"):
            publisher.publish("never.created", b"x", pika.BasicProperties())
        wait_until(
            lambda: proxy.failed_handshakes >= 1,
            timeout_s=5,
            message="the proxy to count the refused handshake",
        )
        assert proxy.handshakes == 0
