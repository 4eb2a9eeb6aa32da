"""TLS for the tests: a throwaway CA, server certificates, and a TLS-terminating proxy.

- ``Pki(directory)`` makes a CA and issues server certificates (``Pki.server``) for host
  names and IP addresses; everything is written as PEM files, so a worker process can be
  pointed at the CA with ``SSL_CERT_FILE``.
- ``TlsProxy(upstream_port, certificate)`` listens on a free port of 127.0.0.1, terminates
  TLS with the certificate and forwards the plaintext bytes to 127.0.0.1:``upstream_port``
  (the shared RabbitMQ or Redis, whose configuration is never touched). It counts the
  connections whose handshake succeeded and those that failed, so a test can tell that its
  client really spoke TLS through it, and that a client refused the certificate.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import free_port

_VALIDITY: datetime.timedelta = datetime.timedelta(days=2)


@dataclass(frozen=True)
class Certificate:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class Pki:
    """A throwaway certificate authority whose files live in ``directory``.

    Attributes:
        ca_file: the CA's certificate (PEM): what a client must trust.
    """

    def __init__(self, directory: Path, name: str = "segmind-queue test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        public = self._key.public_key()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def server(self, names: Sequence[str], *, file_name: str = "server") -> Certificate:
        """A server certificate signed by this CA for ``names`` (host names or IPs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        ca_public = self._key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_file = self.directory / f"{file_name}.pem"
        key_file = self.directory / f"{file_name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return Certificate(cert_file, key_file)


class TlsProxy:
    """TLS on 127.0.0.1:``port`` in front of a plaintext service on 127.0.0.1.

    An asyncio loop on a thread of its own accepts TLS connections with ``certificate``
    and pipes each to a new connection to ``upstream_port``. Use it as a context manager:
    leaving it closes the listener and every connection.

    Attributes:
        port: the port it listens on.
        handshakes: connections whose TLS handshake succeeded.
        failed_handshakes: connections whose handshake failed (the client refused the
            certificate, or spoke plaintext).
    """

    def __init__(self, upstream_port: int, certificate: Certificate) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.handshakes = 0
        self.failed_handshakes = 0
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certificate.cert_file, certificate.key_file)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._loop.set_exception_handler(self._on_loop_error)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with suppress(Exception):  # best effort: the loop is stopped below in any case
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        # Plain TCP; _serve upgrades each connection itself, to see the handshake's outcome.
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # A peer that vanished mid-handshake is expected in these tests; the rest is not.
        if isinstance(context.get("exception"), ConnectionError | ssl.SSLError):
            return
        loop.default_exception_handler(context)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await writer.start_tls(self._context, ssl_handshake_timeout=10)
        except OSError:  # ssl.SSLError and TimeoutError are OSErrors
            with self._lock:
                self.failed_handshakes += 1
            self._writers.discard(writer)
            writer.close()
            return
        with self._lock:
            self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for each in (writer, up_writer):
                self._writers.discard(each)
                each.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until either side closes."""
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass  # the other side went away: the caller closes both
    finally:
        with suppress(Exception):  # already closed
            writer.close()


def amqps_url(amqp_url: str, proxy: TlsProxy, *, password: str | None = None) -> str:
    """``amqp_url``'s user and vhost through ``proxy``, as ``amqps://localhost:<port>``.

    Args:
        amqp_url: the plaintext RabbitMQ the proxy is in front of.
        proxy: the proxy.
        password: instead of ``amqp_url``'s password (a canary the test looks for).
    """
    parts = urlsplit(amqp_url)
    user = parts.username or "guest"
    secret = quote(password if password is not None else parts.password or "guest", safe="")
    return f"amqps://{user}:{secret}@localhost:{proxy.port}{parts.path or '/%2F'}"


def rediss_url(redis_url: str, proxy: TlsProxy, *, password: str | None = None) -> str:
    """``redis_url``'s database through ``proxy``, as ``rediss://localhost:<port>``.

    Args:
        redis_url: the plaintext Redis the proxy is in front of (no password).
        proxy: the proxy.
        password: a password to put in the URL (a canary the test looks for).
    """
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"rediss://{auth}localhost:{proxy.port}{urlsplit(redis_url).path or '/0'}"


def upstream_port(url: str, default: int) -> int:
    """The port of a plaintext service's URL (``default`` when it names none)."""
    return urlsplit(url).port or default
