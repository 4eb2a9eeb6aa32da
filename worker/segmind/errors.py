"""Segmind errors: the exception classes and the pure functions that classify responses.

Every failed call to Segmind becomes one ``SegmindError`` subclass, which tells the caller
what to do next:

- ``FinalError``: do not retry; the job fails with ``code`` and Segmind's message.
- ``RateLimitedError``: 429; retry after ``wait_s`` (what the response asked for) or backoff.
- ``TransientError``: 5xx, 408, timeouts, connection errors, a malformed poll body; retry
  with backoff up to a limit. ``may_have_been_processed`` says whether Segmind may have
  received and acted on the request: Segmind has no idempotency key, so a submit for which
  it is true must not be blindly POSTed again (a second POST is a second charge).
- ``ExpiredError``: a poll answered 404; the record expired (Segmind keeps it ~1 hour).

Classification table (``classify_response``; the endpoint is submit, poll or credits):

====================  ================  ===========================  ======================
HTTP status           class             code                         may_have_been_processed
====================  ================  ===========================  ======================
2xx                   (none)
3xx                   FinalError        malformed_response           (redirects are never
                                                                     followed: the key must
                                                                     not go elsewhere)
400                   FinalError        bad_request
401                   FinalError        unauthorized
403                   FinalError        forbidden
404 submit            FinalError        workflow_not_found
404 poll              ExpiredError      expired
404 credits           FinalError        client_error
405                   FinalError        client_error
406                   FinalError        insufficient_credits (Segmind's text kept: it
                                        also means "invalid content type")
408                   TransientError    timeout                      False
429                   RateLimitedError  rate_limited (wait_s from Retry-After, else
                                        x-rate-limit-reset-at-utc, else None)
other 4xx             FinalError        client_error
500 501 502 503 505   TransientError    server_error                 False
521 522 523 525 526
504 524 598 599       TransientError    timeout                      True
other 5xx             TransientError    server_error                 True (unknown: assume
                                                                     the worst)
anything else         TransientError    malformed_response           True
====================  ================  ===========================  ======================

A 2xx whose body cannot be read is ``malformed_response`` (``worker.segmind.responses``): final
for a submit (the job probably exists; repeating the POST would pay twice), transient for
a poll or credits. A successful body over the size limit is a final
``response_too_large`` (``worker.segmind.client``).

Transport errors (``classify_transport_error``) are all ``TransientError``: connect errors,
connect timeouts and pool timeouts never reached Segmind (False); read and write timeouts,
dropped connections and protocol errors after sending may have (True).

Messages are read from the body whatever its content type (``error_message``): JSON
(``error_message``, ``error``, ``message``, ``detail`` ..., nested), plain text or HTML.
No exception here ever holds the API key, a request or its headers.
"""

from __future__ import annotations

import http
import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from html.parser import HTMLParser
from typing import Any, ClassVar, Final, Literal

import httpx

from producers.contract import ErrorCode, ErrorInfo
from worker.backoff import get_header, rate_limit_wait

Endpoint = Literal["submit", "poll", "credits"]

#: The longest message an error keeps, in characters.
MAX_MESSAGE_CHARS: Final = 500
#: The most of a body ``error_message`` looks at; error pages are small.
MAX_MESSAGE_BODY_BYTES: Final = 256 * 1024
#: The default for the longest wait a 429 may ask for.
DEFAULT_MAX_RATE_LIMIT_WAIT_S: Final = 600.0

# 5xx answers that mean the request was not acted on: the server failed before or instead
# of handling it, or a proxy could not reach it. Everything else in 5xx may have been.
_NOT_PROCESSED_5XX: Final = frozenset({500, 501, 502, 503, 505, 521, 522, 523, 525, 526})
_TIMEOUT_5XX: Final = frozenset({504, 524, 598, 599})
# Keys read from a JSON body, in order. Both error_message and error are documented for
# FAILED polls; message/detail are what gateways and frameworks use.
_MESSAGE_KEYS: Final = (
    "error_message",
    "error",
    "message",
    "detail",
    "details",
    "msg",
    "error_description",
    "description",
    "reason",
    "errors",
    "title",
)
_MAX_JSON_DEPTH: Final = 6
_WHITESPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]*>")
_HIDDEN_TAGS: Final = frozenset({"script", "style", "noscript", "template", "head"})


class SegmindError(Exception):
    """A call to Segmind failed. Base of all the worker's Segmind errors.

    Attributes:
        code: the machine-readable reason (``producers.contract.ErrorCode``).
        message: a human-readable reason, read from the response body when it had one;
            single-line, at most ``MAX_MESSAGE_CHARS`` characters.
        http_status: the HTTP status, or ``None`` when there was no response.
        endpoint: which call failed: ``"submit"``, ``"poll"`` or ``"credits"``.

    Exceptions pickle (Dramatiq may serialize them) and hold no request, header or key.
    """

    #: Whether retrying the same call can succeed.
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        endpoint: Endpoint,
        http_status: int | None = None,
    ) -> None:
        self.code = ErrorCode(code)
        self.message = clean_message(message) or _default_message(self.code, http_status)
        self.endpoint: Endpoint = endpoint
        self.http_status = http_status
        super().__init__(self.message)

    def __str__(self) -> str:
        status = f" (HTTP {self.http_status})" if self.http_status is not None else ""
        return f"Segmind {self.endpoint} failed: {self.code.value}{status}: {self.message}"

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value.value if isinstance(value, ErrorCode) else value!r}"
            for name, value in self._fields().items()
        )
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce calls cls(*args), which does not fit the keyword arguments.
        return (_rebuild, (type(self), self._fields()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmindError) or type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self), *self._fields().values()))

    def _fields(self) -> dict[str, Any]:
        """The constructor's keyword arguments that rebuild this error."""
        return {
            "code": self.code,
            "message": self.message,
            "endpoint": self.endpoint,
            "http_status": self.http_status,
        }

    def with_message(self, message: str) -> SegmindError:
        """A copy of this error with another message (used to redact what must not leak)."""
        return _rebuild(type(self), {**self._fields(), "message": message})

    def to_error_info(self) -> ErrorInfo:
        """The ``error`` object of a job's result."""
        return ErrorInfo(code=self.code, message=self.message, http_status=self.http_status)


class FinalError(SegmindError):
    """Retrying cannot help: a 4xx other than 408/429, a refused poll_url, a malformed
    successful submit, a response too large. The job fails with this error."""


class RateLimitedError(SegmindError):
    """HTTP 429.

    Attributes:
        wait_s: the seconds the response asked to wait (``Retry-After``, else
            ``x-rate-limit-reset-at-utc``), clamped; ``None`` when it asked for none, in
            which case back off with jitter.
    """

    retryable = True

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        endpoint: Endpoint,
        http_status: int | None = 429,
        wait_s: float | None = None,
    ) -> None:
        super().__init__(code, message, endpoint=endpoint, http_status=http_status)
        self.wait_s = wait_s

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "wait_s": self.wait_s}


class TransientError(SegmindError):
    """A failure that may pass: 5xx, 408, a timeout, a connection error, a malformed poll.

    Attributes:
        may_have_been_processed: True when the request may have reached Segmind and been
            acted on (read/write timeouts, a connection dropped after sending, 504). For a
            submit this means a job may exist and be billed: do not POST again blindly.
            False when it certainly was not (connect errors and timeouts, 500/502/503).
    """

    retryable = True

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        endpoint: Endpoint,
        http_status: int | None = None,
        may_have_been_processed: bool = True,
    ) -> None:
        super().__init__(code, message, endpoint=endpoint, http_status=http_status)
        self.may_have_been_processed = may_have_been_processed

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "may_have_been_processed": self.may_have_been_processed}


class ExpiredError(SegmindError):
    """A poll answered 404: Segmind no longer has the record (kept ~1 hour after submit)."""


def _rebuild(cls: type[SegmindError], fields: dict[str, Any]) -> SegmindError:
    return cls(**fields)


def classify_response(
    endpoint: Endpoint,
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    content_type: str | None,
    now: datetime,
    *,
    max_wait_s: float = DEFAULT_MAX_RATE_LIMIT_WAIT_S,
) -> SegmindError | None:
    """The error an HTTP response means, or ``None`` for a 2xx (see the module's table).

    Args:
        endpoint: the call: ``"submit"``, ``"poll"`` or ``"credits"``.
        status_code: the HTTP status.
        headers: the response headers (for a 429's wait; looked up case-insensitively).
        body: the response body, possibly truncated, possibly not text at all.
        content_type: the ``Content-Type`` header, if any (a hint only: bodies are sniffed).
        now: the current time, to turn a reset time into a wait.
        max_wait_s: the longest wait a 429 may ask for; longer is clamped.

    Returns:
        ``None`` for 2xx, else the error. Never raises for any input.
    """
    if 200 <= status_code < 300:
        return None
    text = error_message(body, content_type)
    if 300 <= status_code < 400:
        location = get_header(headers, "location")
        where = f" to {_host_of(location)}" if location else ""
        return FinalError(
            ErrorCode.MALFORMED_RESPONSE,
            f"unexpected redirect{where}; redirects are not followed (the API key is only "
            "sent to the configured host)",
            endpoint=endpoint,
            http_status=status_code,
        )
    if status_code == 429:
        wait = rate_limit_wait(headers, now, max_wait_s=max_wait_s)
        return RateLimitedError(
            ErrorCode.RATE_LIMITED, text, endpoint=endpoint, http_status=429, wait_s=wait
        )
    if status_code == 408:
        return TransientError(
            ErrorCode.TIMEOUT,
            text,
            endpoint=endpoint,
            http_status=408,
            may_have_been_processed=False,
        )
    if status_code == 404 and endpoint == "poll":
        return ExpiredError(
            ErrorCode.EXPIRED,
            text or "the generation's record is gone (Segmind keeps results about an hour)",
            endpoint=endpoint,
            http_status=404,
        )
    if 400 <= status_code < 500:
        return FinalError(
            _final_code(endpoint, status_code), text, endpoint=endpoint, http_status=status_code
        )
    if 500 <= status_code < 600:
        code = ErrorCode.TIMEOUT if status_code in _TIMEOUT_5XX else ErrorCode.SERVER_ERROR
        return TransientError(
            code,
            text,
            endpoint=endpoint,
            http_status=status_code,
            may_have_been_processed=status_code not in _NOT_PROCESSED_5XX,
        )
    return TransientError(
        ErrorCode.MALFORMED_RESPONSE,
        f"unexpected HTTP status {status_code}" + (f": {text}" if text else ""),
        endpoint=endpoint,
        http_status=status_code,
        may_have_been_processed=True,
    )


def classify_transport_error(endpoint: Endpoint, exc: httpx.TransportError) -> TransientError:
    """The error for a call that got no complete response.

    The message names the failure and httpx's reason (an errno text, say); it never holds
    the request. Raise the result ``from None`` or outside the ``except`` block: ``exc``
    holds the request, whose headers hold the key.

    Args:
        endpoint: the call.
        exc: what httpx raised.

    Returns:
        A ``TransientError``: code ``timeout`` or ``connection_error``, and
        ``may_have_been_processed`` False only when the request certainly never reached
        Segmind (connect errors and timeouts, pool timeouts, an invalid request).
    """
    processed = True
    if isinstance(exc, httpx.TimeoutException):
        code = ErrorCode.TIMEOUT
        if isinstance(exc, httpx.ConnectTimeout):
            what, processed = "connect timeout", False
        elif isinstance(exc, httpx.PoolTimeout):
            what, processed = "no free connection in the pool (pool timeout)", False
        elif isinstance(exc, httpx.WriteTimeout):
            what = "write timeout (the request may have been received)"
        elif isinstance(exc, httpx.ReadTimeout):
            what = "read timeout (the request may have been processed)"
        else:
            what = "timeout"
    else:
        code = ErrorCode.CONNECTION_ERROR
        if isinstance(exc, httpx.ConnectError):
            what, processed = "cannot connect", False
        elif isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
            what, processed = "the request could not be sent", False
        elif isinstance(exc, httpx.ProxyError):
            what, processed = "proxy error", False
        elif isinstance(exc, httpx.RemoteProtocolError):
            what = "the connection was dropped or the response was invalid"
        elif isinstance(exc, httpx.ReadError | httpx.WriteError):
            what = "the connection broke during the exchange"
        else:
            what = "connection error"
    # str(exc) is the underlying reason ("[Errno 111] Connection refused"); it is short and
    # holds no header, but it is still clipped.
    reason = clean_message(str(exc), limit=200)
    message = f"{what}: {reason}" if reason and reason != what else what
    return TransientError(code, message, endpoint=endpoint, may_have_been_processed=processed)


def error_message(body: bytes, content_type: str | None) -> str:
    """A one-line, human-readable message from an error body, whatever it holds.

    Reads JSON whatever the content type says (``error_message``, ``error``, ``message``,
    ``detail``, ... nested objects and lists too; distinct messages are joined with
    ``": "``), HTML or other markup (``<title>``, else the visible text without scripts and
    styles) and plain text. Invalid UTF-8 is replaced, control characters dropped,
    whitespace collapsed, and the result clipped to ``MAX_MESSAGE_CHARS``.

    Args:
        body: the response body (only the first ``MAX_MESSAGE_BODY_BYTES`` are read).
        content_type: the ``Content-Type`` header, if any; a hint, not trusted.

    Returns:
        The message, or ``""`` when the body says nothing. Never raises.
    """
    text = body[:MAX_MESSAGE_BODY_BYTES].decode("utf-8", errors="replace").lstrip("\ufeff")
    stripped = text.strip()
    if not stripped:
        return ""
    if stripped[0] in '{["':
        try:
            parsed = json.loads(stripped)
        except (ValueError, RecursionError):
            pass
        else:
            return clean_message(json_message(parsed))
    if stripped[0] == "<" or "html" in (content_type or "").lower():
        return clean_message(_markup_text(stripped))
    return clean_message(stripped)


def json_message(value: object, _depth: int = 0) -> str:
    """The human-readable message in a decoded JSON value (see ``error_message``).

    An object without any known message key is rendered as compact JSON. Never raises.
    """
    if _depth > _MAX_JSON_DEPTH or value is None or isinstance(value, bool):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        parts = [json_message(item, _depth + 1) for item in value[:5]]
        return "; ".join(_distinct(parts))
    if isinstance(value, dict):
        found = keyed_message(value, _depth)
        if found:
            return found
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)[:MAX_MESSAGE_CHARS]
        except (TypeError, ValueError, RecursionError):
            return ""
    return ""


def keyed_message(value: Mapping[str, object], _depth: int = 0) -> str:
    """The message under the known message keys of a JSON object, or ``""`` when none.

    Keys are matched case-insensitively, in the order ``error_message``, ``error``,
    ``message``, ``detail``, ...; distinct messages are joined with ``": "``
    (``{"error": "Unauthorized", "message": "Invalid key"}`` gives
    ``"Unauthorized: Invalid key"``). Never raises.
    """
    lowered = {str(key).lower(): item for key, item in value.items()}
    parts = [json_message(lowered[key], _depth + 1) for key in _MESSAGE_KEYS if key in lowered]
    return ": ".join(_distinct(parts))


def clean_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line: control characters dropped, whitespace collapsed, clipped."""
    if not text:
        return ""
    printable = "".join(
        " " if ch.isspace() else ch
        for ch in text[: limit * 4]
        if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
    )
    line = _WHITESPACE.sub(" ", printable).strip()
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _distinct(parts: list[str]) -> list[str]:
    found: list[str] = []
    for part in parts:
        part = part.strip()
        if part and part not in found:
            found.append(part)
    return found


class _MarkupText(HTMLParser):
    """Collects a page's ``<title>`` and its visible text, skipping scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.text: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _HIDDEN_TAGS:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _HIDDEN_TAGS and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._hidden:
            self.text.append(data)


def _markup_text(text: str) -> str:
    parser = _MarkupText()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # html.parser has raised on odd markup in the past
        return _TAG.sub(" ", text)
    title = " ".join(parser.title).strip()
    return title or " ".join(parser.text)


def _default_message(code: ErrorCode, http_status: int | None) -> str:
    if http_status is None:
        return code.value.replace("_", " ")
    try:
        phrase = http.HTTPStatus(http_status).phrase
    except ValueError:
        phrase = code.value.replace("_", " ")
    return f"HTTP {http_status} {phrase}"


def _final_code(endpoint: Endpoint, status_code: int) -> ErrorCode:
    if status_code == 404:
        return ErrorCode.WORKFLOW_NOT_FOUND if endpoint == "submit" else ErrorCode.CLIENT_ERROR
    return {
        400: ErrorCode.BAD_REQUEST,
        401: ErrorCode.UNAUTHORIZED,
        403: ErrorCode.FORBIDDEN,
        406: ErrorCode.INSUFFICIENT_CREDITS,
    }.get(status_code, ErrorCode.CLIENT_ERROR)


def _host_of(url: str) -> str:
    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, ValueError, TypeError):
        return "an invalid URL"
    return clean_message(host, limit=100) if host else "a relative URL"
