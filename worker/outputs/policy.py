"""Which output URLs may be fetched, and where a copy is stored. Pure functions, no I/O.

An output URL is fetched only from a host of ``OUTPUT_FETCH_HOSTS``: entries are a host
name (``images.segmind.com``: https only), a wildcard (``*.segmind.com``: its subdomains,
https only) or a URL with a scheme and port (``http://127.0.0.1:8765``: that scheme, host
and port exactly, the one way to allow plain http). An address that is private, loopback,
link-local or otherwise not public is refused, whatever the host's name resolves to,
unless ``OUTPUT_ALLOW_PRIVATE`` is set (tests, a store in your own network).
"""

from __future__ import annotations

import ipaddress
import mimetypes
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

#: Segmind's output hosts (its CDN): what is fetched when ``OUTPUT_FETCH_HOSTS`` is unset.
DEFAULT_FETCH_HOSTS: Final = "images.segmind.com,*.segmind.com"
#: The extension of a stored copy whose type and URL say nothing better.
_FALLBACK_EXTENSION: Final = "bin"
_EXTENSIONS: Final = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "application/zip": "zip",
    "application/pdf": "pdf",
    "application/json": "json",
    "text/plain": "txt",
}
_SAFE_PART = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class AllowedHost:
    """One entry of ``OUTPUT_FETCH_HOSTS``.

    Attributes:
        host: the host name (lower case), or the domain of a wildcard.
        wildcard: any subdomain of ``host`` (not ``host`` itself).
        scheme: the one scheme allowed (``https`` unless the entry named one).
        port: the one port allowed (``None``: the scheme's default).
    """

    host: str
    wildcard: bool = False
    scheme: str = "https"
    port: int | None = None

    def allows(self, scheme: str, host: str, port: int | None) -> bool:
        """Whether a URL of ``scheme://host:port`` is fetched under this entry."""
        if scheme != self.scheme or port != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def parse_fetch_hosts(text: str) -> tuple[AllowedHost, ...]:
    """The entries of a comma-separated ``OUTPUT_FETCH_HOSTS``.

    Raises:
        ValueError: an entry is not a host, a ``*.`` wildcard or an http(s) URL of a host.
    """
    entries: list[AllowedHost] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if "://" in item:
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{item!r}: expected http(s)://host[:port]")
            if parts.path not in ("", "/") or parts.query or parts.username:
                raise ValueError(f"{item!r}: a host entry has no path, query or credentials")
            entries.append(AllowedHost(parts.hostname.lower(), False, parts.scheme, parts.port))
            continue
        wildcard = item.startswith("*.")
        host = item[2:] if wildcard else item
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host) or host.startswith("."):
            raise ValueError(f"{item!r}: expected a host name or *.domain")
        entries.append(AllowedHost(host.lower(), wildcard))
    return tuple(entries)


def url_problem(url: str, allowed: tuple[AllowedHost, ...]) -> str | None:
    """Why ``url`` may not be fetched (not http(s), credentials in it, a host not in the
    list), or ``None`` when it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "a URL with credentials in it"
    host = parts.hostname.lower()
    default = {"http": 80, "https": 443}[parts.scheme]
    effective = None if port in (None, default) else port
    if any(entry.allows(parts.scheme, host, effective) for entry in allowed):
        return None
    return f"host {host!r} ({parts.scheme}) is not in OUTPUT_FETCH_HOSTS"


def address_problem(address: str, *, allow_private: bool) -> str | None:
    """Why an output host's ``address`` may not be connected to (not a public address),
    or ``None`` when it may."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    if allow_private or ip.is_global:
        return None
    return f"address {ip} is not public (private, loopback, link-local or reserved)"


def extension(content_type: str | None, url: str) -> str:
    """The extension of a stored copy: from the media type, else the URL's, else ``bin``."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _EXTENSIONS:
        return _EXTENSIONS[media]
    guessed = mimetypes.guess_extension(media) if media else None
    if guessed:
        return guessed.lstrip(".")
    path = urlsplit(url).path
    tail = path.rsplit("/", 1)[-1]
    if "." in tail:
        ext = tail.rsplit(".", 1)[1].lower()
        if re.fullmatch(r"[a-z0-9]{1,8}", ext):
            return ext
    return _FALLBACK_EXTENSION


def storage_key(prefix: str, request_id: str, keyname: str, ext: str) -> str:
    """The stable key of an output's copy: ``<prefix>/<request_id>/<keyname>.<ext>``, with
    every part reduced to ``[A-Za-z0-9._-]`` (no ``..``): a request or an output name can
    never reach outside the prefix. The same output always gets the same key, so a copy
    repeated after a crash overwrites itself with the same bytes."""

    def safe(part: str) -> str:
        cleaned = _SAFE_PART.sub("_", part).strip(".") or "_"
        return cleaned.replace("..", "_")

    parts = [p for p in prefix.strip("/").split("/") if p]
    return "/".join([*map(safe, parts), safe(request_id), f"{safe(keyname)}.{safe(ext)}"])
