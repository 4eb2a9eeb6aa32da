"""Downloading an output file from its host, safely, as a stream.

Every URL, the first and each redirect's, is checked against ``OUTPUT_FETCH_HOSTS``
(``worker.outputs.policy``); the host's name is resolved once, every address it resolves
to must be public (unless ``OUTPUT_ALLOW_PRIVATE``), and the connection goes to that very
address (the name is kept for the ``Host`` header and TLS), so a DNS answer that changes
between the check and the connection cannot lead anywhere else. Redirects are followed by
hand, at most ``MAX_REDIRECTS``, each checked the same way. The body is streamed in
chunks and cut at ``OUTPUT_MAX_BYTES``; nothing but the URL is sent (never the API key).

Failure modes: ``FetchError`` with ``transient`` True for what may work later (a timeout,
a connection error, 408, 429, 5xx) and False for what never will (a host or address not
allowed, 4xx, too large, too many redirects).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from worker.outputs.policy import AllowedHost, address_problem, url_problem

MAX_REDIRECTS: Final = 5
#: Bytes read from the host at a time.
CHUNK_BYTES: Final = 64 * 1024
_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})

#: Resolves a host name and port to IP addresses (``socket.getaddrinfo`` by default).
Resolver = Callable[[str, int], list[str]]


FetchKind = Literal["not_allowed", "too_large", "http_error", "unreachable", "redirects"]


class FetchError(Exception):
    """An output could not be downloaded.

    Attributes:
        reason: why, fit for the result's ``store_error`` (no secret, no body).
        kind: the class of failure (a metric label).
        transient: whether trying again later may work.
    """

    def __init__(self, reason: str, *, kind: FetchKind, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: FetchKind = kind
        self.transient = transient


@dataclass(frozen=True)
class Download:
    """An output being downloaded.

    Attributes:
        url: the URL the body comes from (after redirects).
        content_type: its media type (``application/octet-stream`` when not given).
        length: its announced length, when given.
        chunks: the body, in chunks (raises ``FetchError`` past the size limit or when
            the connection breaks).
    """

    url: str
    content_type: str
    length: int | None
    chunks: Iterator[bytes]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchError(
            f"cannot resolve {host!r}: {exc}", kind="unreachable", transient=True
        ) from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class OutputFetcher:
    """Downloads output files under the fetch policy.

    Args:
        allowed: the hosts of ``OUTPUT_FETCH_HOSTS``.
        allow_private: connect to non-public addresses too (``OUTPUT_ALLOW_PRIVATE``).
        max_bytes: the largest file (``OUTPUT_MAX_BYTES``).
        timeout: httpx's timeouts for each step (connect, read, write, pool).
        resolver: resolves host names (tests replace it).
        transport: an httpx transport (tests).
    """

    def __init__(
        self,
        allowed: tuple[AllowedHost, ...],
        *,
        allow_private: bool = False,
        max_bytes: int,
        timeout: httpx.Timeout,
        resolver: Resolver = system_resolver,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.allowed = allowed
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.resolver = resolver
        # No redirects (followed by hand, each checked), no environment proxies or netrc:
        # nothing but the URL leaves this process.
        # No kept-alive connections: a pooled connection is keyed by the address, and one
        # opened for a name must not carry another name's request.
        self._client = httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    @contextmanager
    def open(self, url: str) -> Iterator[Download]:
        """Start downloading ``url``; the connection is closed when the block ends.

        Raises:
            FetchError: the URL, a redirect or an address is not allowed, the host
                answered an error, or the file is announced larger than the limit.
        """
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            request = self._pinned_request(current)
            try:
                response = self._client.send(request, stream=True)
            except httpx.TimeoutException:
                raise FetchError(
                    "the output host timed out", kind="unreachable", transient=True
                ) from None
            except httpx.HTTPError as exc:
                raise FetchError(
                    f"cannot reach the output host: {type(exc).__name__}",
                    kind="unreachable",
                    transient=True,
                ) from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = urljoin(current, location)
                    continue
                self._check_status(response)
                length = _length(response)
                if length is not None and length > self.max_bytes:
                    raise FetchError(
                        f"the file is {length} bytes; OUTPUT_MAX_BYTES is {self.max_bytes}",
                        kind="too_large",
                    )
                content_type = response.headers.get("content-type", "application/octet-stream")
                yield Download(current, content_type, length, self._body(response))
                return
            finally:
                response.close()
        raise FetchError(f"more than {MAX_REDIRECTS} redirects", kind="redirects")

    def _pinned_request(self, url: str) -> httpx.Request:
        """A GET of ``url`` sent to the checked address of its host."""
        problem = url_problem(url, self.allowed)
        if problem is not None:
            raise FetchError(f"not fetched: {problem}", kind="not_allowed")
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = self.resolver(host, port)
        if not addresses:
            raise FetchError(f"{host!r} resolves to no address", kind="unreachable", transient=True)
        for address in addresses:
            refused = address_problem(address, allow_private=self.allow_private)
            if refused is not None:
                raise FetchError(f"not fetched from {host!r}: {refused}", kind="not_allowed")
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path, parts.query, ""))
        netloc_host = f"[{host}]" if ":" in host else host
        host_header = netloc_host if parts.port is None else f"{netloc_host}:{parts.port}"
        return self._client.build_request(
            "GET",
            pinned,
            headers={"Host": host_header, "Accept": "*/*"},
            # TLS is checked against the name, not the address.
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )

    @staticmethod
    def _check_status(response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        raise FetchError(
            f"the output host answered {status}",
            kind="http_error",
            transient=status in _TRANSIENT_STATUSES,
        )

    def _body(self, response: httpx.Response) -> Iterator[bytes]:
        read = 0
        try:
            for chunk in response.iter_bytes(CHUNK_BYTES):
                read += len(chunk)
                if read > self.max_bytes:
                    raise FetchError(
                        f"the file is over OUTPUT_MAX_BYTES ({self.max_bytes} bytes)",
                        kind="too_large",
                    )
                yield chunk
        except httpx.TimeoutException:
            raise FetchError(
                "the output host timed out mid-file", kind="unreachable", transient=True
            ) from None
        except httpx.HTTPError as exc:
            raise FetchError(
                f"the download broke off: {type(exc).__name__}", kind="unreachable", transient=True
            ) from None


def _length(response: httpx.Response) -> int | None:
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None
