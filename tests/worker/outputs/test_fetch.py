"""Downloading outputs from a real host over a socket: the policy on every hop, the size
limit, what is transient, and nothing but the URL sent."""

from __future__ import annotations

import httpx
import pytest

from tests.output_host import OutputHost, Route
from worker.outputs.fetch import FetchError, OutputFetcher
from worker.outputs.policy import parse_fetch_hosts

TIMEOUT = httpx.Timeout(2.0)
PUBLIC = "93.184.216.34"


def _fetcher(host: OutputHost, *, max_bytes: int = 1 << 20, private: bool = True) -> OutputFetcher:
    return OutputFetcher(
        parse_fetch_hosts(f"http://127.0.0.1:{host.port}"),
        allow_private=private,
        max_bytes=max_bytes,
        timeout=TIMEOUT,
    )


def _read(fetcher: OutputFetcher, url: str) -> tuple[str, bytes]:
    with fetcher.open(url) as download:
        return download.content_type, b"".join(download.chunks)


def test_an_allowed_file_streams_with_its_type_and_sends_no_key(host: OutputHost) -> None:
    host.file("/outputs/r1/image.png", 300_000)
    content_type, body = _read(_fetcher(host), host.url("/outputs/r1/image.png"))
    assert (content_type, len(body)) == ("image/png", 300_000)
    (headers,) = host.seen["/outputs/r1/image.png"]
    lowered = {name.lower() for name in headers}
    assert "x-api-key" not in lowered
    assert "authorization" not in lowered
    assert headers["Host"] == f"127.0.0.1:{host.port}"


def test_a_loopback_host_is_refused_unless_private_addresses_are_allowed(host: OutputHost) -> None:
    host.file("/outputs/r1/image.png", 10)
    with pytest.raises(FetchError) as refused:
        _read(_fetcher(host, private=False), host.url("/outputs/r1/image.png"))
    assert refused.value.kind == "not_allowed"
    assert not refused.value.transient
    assert "not public" in refused.value.reason
    assert "/outputs/r1/image.png" not in host.seen  # refused before connecting


def test_a_host_not_in_the_list_is_never_contacted(host: OutputHost) -> None:
    fetcher = OutputFetcher(parse_fetch_hosts("images.segmind.com"), max_bytes=100, timeout=TIMEOUT)
    with pytest.raises(FetchError, match="not in OUTPUT_FETCH_HOSTS"):
        _read(fetcher, host.url("/x"))
    assert host.seen == {}


@pytest.mark.parametrize(
    "location",
    [
        "http://10.0.0.1/inside",  # a private address
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "https://elsewhere.example/x",  # off the list
        "file:///etc/passwd",
    ],
)
def test_a_redirect_off_the_policy_is_refused(host: OutputHost, location: str) -> None:
    host.routes["/moved"] = Route(status=302, headers={"Location": location})
    allowed = f"http://127.0.0.1:{host.port},http://10.0.0.1,http://169.254.169.254"
    fetcher = OutputFetcher(
        parse_fetch_hosts(allowed),
        allow_private=False,
        max_bytes=100,
        timeout=TIMEOUT,
        # The first hop's name stands for a public address (sent to the local host by the
        # transport); every other name is the address it says.
        resolver=lambda name, port: [PUBLIC] if name == "127.0.0.1" else [name],
        transport=_Redirecting(host.port),
    )
    with pytest.raises(FetchError) as refused:
        _read(fetcher, host.url("/moved"))
    assert refused.value.kind == "not_allowed"
    assert "/moved" in host.seen  # the first hop was fetched, the redirect was not


class _Redirecting(httpx.HTTPTransport):
    """Sends a request for 93.184.216.34 to the local host instead."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == PUBLIC:
            request.url = request.url.copy_with(host="127.0.0.1", port=self.port)
        return super().handle_request(request)


def test_redirects_within_the_policy_are_followed(host: OutputHost) -> None:
    host.file("/final.mp4", 1000, "video/mp4")
    host.routes["/hop"] = Route(status=302, headers={"Location": "/final.mp4"})
    content_type, body = _read(_fetcher(host), host.url("/hop"))
    assert (content_type, len(body)) == ("video/mp4", 1000)


def test_a_redirect_loop_ends(host: OutputHost) -> None:
    host.routes["/loop"] = Route(status=302, headers={"Location": "/loop"})
    with pytest.raises(FetchError) as looped:
        _read(_fetcher(host), host.url("/loop"))
    assert looped.value.kind == "redirects"


def test_a_file_announced_too_large_is_refused_before_its_body(host: OutputHost) -> None:
    host.file("/big.mp4", 5000, "video/mp4")
    with pytest.raises(FetchError) as too_large:
        _read(_fetcher(host, max_bytes=4096), host.url("/big.mp4"))
    assert too_large.value.kind == "too_large"
    assert not too_large.value.transient


def test_a_body_past_the_limit_is_cut(host: OutputHost) -> None:
    host.file("/sneaky.png", 200_000)
    host.routes["/sneaky.png"].announce_length = False
    fetcher = _fetcher(host, max_bytes=100_000)
    # No announced length to refuse early: the stream itself stops at the limit.
    with fetcher.open(host.url("/sneaky.png")) as download:
        assert download.length is None
        with pytest.raises(FetchError) as cut:
            b"".join(download.chunks)
    assert cut.value.kind == "too_large"


@pytest.mark.parametrize(("status", "transient"), [(404, False), (403, False), (503, True)])
def test_errors_say_whether_they_may_pass(host: OutputHost, status: int, transient: bool) -> None:
    host.routes["/x"] = Route(status=status)
    with pytest.raises(FetchError) as failed:
        _read(_fetcher(host), host.url("/x"))
    assert failed.value.transient is transient
    assert str(status) in failed.value.reason


def test_an_unreachable_host_is_transient() -> None:
    fetcher = OutputFetcher(
        parse_fetch_hosts("http://127.0.0.1:9"),
        allow_private=True,
        max_bytes=100,
        timeout=TIMEOUT,
    )
    with pytest.raises(FetchError) as failed:
        _read(fetcher, "http://127.0.0.1:9/x")
    assert failed.value.transient
    assert failed.value.kind == "unreachable"
