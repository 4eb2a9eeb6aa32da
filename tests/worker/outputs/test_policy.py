"""Which output URLs are fetched, and the keys their copies get."""

from __future__ import annotations

import pytest

from worker.outputs.policy import (
    DEFAULT_FETCH_HOSTS,
    address_problem,
    extension,
    parse_fetch_hosts,
    storage_key,
    url_problem,
)

SEGMIND = parse_fetch_hosts(DEFAULT_FETCH_HOSTS)


@pytest.mark.parametrize(
    "url",
    [
        "https://images.segmind.com/outputs/a.png",
        "https://cdn.segmind.com/x/y.mp4",
        "https://images.segmind.com:443/outputs/a.png",
    ],
)
def test_segmind_hosts_are_fetched_over_https(url: str) -> None:
    assert url_problem(url, SEGMIND) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://images.segmind.com/a.png", "not in OUTPUT_FETCH_HOSTS"),  # plain http
        ("https://segmind.com.evil.example/a.png", "not in OUTPUT_FETCH_HOSTS"),
        ("https://evil.example/?u=images.segmind.com", "not in OUTPUT_FETCH_HOSTS"),
        ("https://images.segmind.com:8443/a.png", "not in OUTPUT_FETCH_HOSTS"),
        ("https://user:pw@images.segmind.com/a.png", "credentials"),
        ("ftp://images.segmind.com/a.png", "not an http(s) URL"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("https://images.segmind.com:99999/a", "not a valid URL"),
    ],
)
def test_other_urls_are_refused_with_a_reason(url: str, why: str) -> None:
    problem = url_problem(url, SEGMIND)
    assert problem is not None
    assert why in problem


def test_plain_http_is_allowed_only_for_a_host_and_port_named_with_it() -> None:
    allowed = parse_fetch_hosts("http://127.0.0.1:8765, images.segmind.com")
    assert url_problem("http://127.0.0.1:8765/outputs/r/a.png", allowed) is None
    assert url_problem("http://127.0.0.1:8766/outputs/r/a.png", allowed) is not None
    assert url_problem("https://127.0.0.1:8765/outputs/r/a.png", allowed) is not None


@pytest.mark.parametrize("entry", ["ftp://x", "http://h/path", "bad host", "*.", "http://u@h"])
def test_a_bad_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=r"expected|no path"):
        parse_fetch_hosts(entry)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fd00::1", "0.0.0.0"],  # noqa: S104
)
def test_non_public_addresses_are_refused_unless_allowed(address: str) -> None:
    assert address_problem(address, allow_private=False) is not None
    assert address_problem(address, allow_private=True) is None


def test_public_addresses_are_fetched() -> None:
    assert address_problem("93.184.216.34", allow_private=False) is None
    assert address_problem("2606:2800:220:1::1", allow_private=False) is None


def test_the_extension_comes_from_the_type_then_the_url() -> None:
    assert extension("image/png", "https://h/x") == "png"
    assert extension("video/mp4; codecs=avc1", "https://h/x") == "mp4"
    assert extension(None, "https://h/a/clip.webm?sig=1") == "webm"
    assert extension("application/octet-stream", "https://h/a/noext") == "bin"
    assert extension(None, "https://h/a/noext") == "bin"


def test_keys_are_stable_and_never_leave_the_prefix() -> None:
    assert storage_key("outputs/", "r1", "image", "png") == "outputs/r1/image.png"
    assert storage_key("", "r1", "image", "png") == "r1/image.png"
    hostile = storage_key("p", "../../etc", "../passwd", "png")
    assert ".." not in hostile
    assert hostile.startswith("p/")
    assert storage_key("p", "a/b", "k", "png") == "p/a_b/k.png"
