"""The Segmind HTTP client: submit a workflow, poll a generation, read the credits.

Synchronous (Dramatiq actors run in threads) on one ``httpx.Client`` with explicit
connect, read, write and pool timeouts, plus a wall-clock limit on reading a body. Each
call either returns a typed value (``Submission``, ``PollResult``, ``Credits``) or raises
one ``worker.segmind.errors.SegmindError`` subclass saying what to do next (see that module's
classification table); it never retries by itself: retries, backoff and rate limiting are
the caller's policies.

Safety:

- The key is sent as ``x-api-key`` only, to the configured API host only: a poll_url whose
  scheme, host or port differ is refused before any I/O, and redirects are not followed.
- The key never appears in a repr, a log line or an exception: it lives in a ``SecretStr``
  until the request is built, httpx's exceptions (which hold the request and its headers)
  are replaced by ``SegmindError`` raised outside the ``except`` block, so they are not
  even the ``__context__``, and any message echoing the key has it redacted.
- Response bodies are streamed with a byte limit (``response_too_large``).

Usage::

    with SegmindClient.from_settings(Settings()) as client:
        submission = client.submit("66cec9a38aeef98f887211f1-v1", {"input_image": url})
        result = client.poll(submission.poll_url)
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from typing import Final, TypeVar

import httpx
from pydantic import JsonValue, SecretStr

from producers.closing import Closing
from producers.contract import ErrorCode
from producers.redaction import redact
from worker.ratelimit.limiter import key_digest
from worker.segmind.errors import (
    DEFAULT_MAX_RATE_LIMIT_WAIT_S,
    Endpoint,
    FinalError,
    SegmindError,
    TransientError,
    classify_response,
    classify_transport_error,
)
from worker.segmind.responses import (
    Credits,
    PollResult,
    Submission,
    parse_credits,
    parse_poll,
    parse_submission,
)
from worker.settings import DEFAULT_API_URL, Settings, checked_api_key, normalize_api_url

log = logging.getLogger(__name__)
#: The clock for durations and the body-read deadline (a module attribute so tests can
#: replace it).
_monotonic = time.perf_counter

T = TypeVar("T")

#: Called after every request that was sent: ``(endpoint, HTTP status or None, seconds)``.
ResponseHook = Callable[[Endpoint, int | None, float], None]

CREDITS_PATH: Final = "/v1/get-user-credits"
API_KEY_HEADER: Final = "x-api-key"
CLIENT_REQUEST_ID_HEADER: Final = "x-client-request-id"
#: How much of an error response is read: enough for any error page, and the rest of a
#: huge error body is not worth reading (the status already says what happened).
ERROR_BODY_BYTES: Final = 64 * 1024
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Conservative: letters, digits, '.', '_', '-', not starting with a dot (no "..").
_WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")


def user_agent() -> str:
    """``segmind-queue/<installed version>``."""
    try:
        version = metadata.version("segmind-queue")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"segmind-queue/{version}"


class _ApiKeyAuth(httpx.Auth):
    """Adds ``x-api-key`` to each request; keeps the key a ``SecretStr`` until then."""

    def __init__(self, key: SecretStr) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[API_KEY_HEADER] = self.key.get_secret_value()
        yield request

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r})"


@dataclass(frozen=True, slots=True)
class _Reply:
    status_code: int
    headers: httpx.Headers
    body: bytes

    def __repr__(self) -> str:
        return f"_Reply(status_code={self.status_code}, body={len(self.body)} bytes)"


@dataclass(frozen=True, slots=True)
class _ParseFailure:
    error: SegmindError


class SegmindClient(Closing):
    """A client for Segmind's workflow API. Thread-safe; close it (or use ``with``).

    Args:
        api_url: the API's base URL (``https://api.segmind.com``); http or https, no path.
        api_key: the key, sent as ``x-api-key``.
        connect_timeout_s: seconds to establish a connection.
        read_timeout_s: seconds to wait for each read from the socket.
        write_timeout_s: seconds to wait for each write to the socket.
        pool_timeout_s: seconds to wait for a free pooled connection.
        total_timeout_s: wall-clock seconds for a whole call, checked as the body arrives
            (a server trickling bytes within the read timeout cannot hold a thread forever).
        max_response_bytes: the largest successful body read (``response_too_large``).
        max_rate_limit_wait_s: the longest wait taken from a 429's headers.
        transport: an httpx transport (``httpx.MockTransport`` in unit tests).
        on_response: called after every request sent, with the endpoint, the HTTP status
            (``None`` when no response arrived) and the seconds taken; for metrics. Its
            exceptions are logged and swallowed. Also an attribute, settable later.
        clock: the current time (aware), to turn a reset time into a wait.

    Raises:
        ValueError: ``api_url`` is not a valid base URL.
        worker.settings.InvalidApiKeyError: the key cannot be sent as a header.
    """

    def __init__(
        self,
        *,
        api_key: SecretStr,
        api_url: str = DEFAULT_API_URL,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        write_timeout_s: float = 10.0,
        pool_timeout_s: float = 5.0,
        total_timeout_s: float = 60.0,
        max_response_bytes: int = 8 * 1024 * 1024,
        max_rate_limit_wait_s: float = DEFAULT_MAX_RATE_LIMIT_WAIT_S,
        transport: httpx.BaseTransport | None = None,
        on_response: ResponseHook | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.api_url = normalize_api_url(api_url)
        self._auth = _ApiKeyAuth(checked_api_key(api_key, "api_key"))
        base = httpx.URL(self.api_url)
        self._base = base
        self._origin = _origin(base)
        self._total_timeout_s = total_timeout_s
        self._max_response_bytes = max_response_bytes
        self._max_rate_limit_wait_s = max_rate_limit_wait_s
        self.on_response = on_response
        self._clock = clock or _utcnow
        self._http = httpx.Client(
            auth=self._auth,
            timeout=httpx.Timeout(
                connect=connect_timeout_s,
                read=read_timeout_s,
                write=write_timeout_s,
                pool=pool_timeout_s,
            ),
            headers={"user-agent": user_agent(), "accept": "application/json"},
            # A redirect would carry x-api-key to wherever it points: never follow one.
            follow_redirects=False,
            transport=transport,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        on_response: ResponseHook | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> SegmindClient:
        """A client configured by ``settings``.

        Raises:
            worker.settings.SettingsError: no usable API key (see ``Settings.api_key``).
        """
        return cls(
            api_url=settings.segmind_api_url,
            api_key=settings.api_key(),
            connect_timeout_s=settings.segmind_connect_timeout_s,
            read_timeout_s=settings.segmind_read_timeout_s,
            write_timeout_s=settings.segmind_write_timeout_s,
            pool_timeout_s=settings.segmind_pool_timeout_s,
            total_timeout_s=settings.segmind_total_timeout_s,
            max_response_bytes=settings.segmind_max_response_bytes,
            max_rate_limit_wait_s=settings.segmind_max_rate_limit_wait_s,
            transport=transport,
            on_response=on_response,
            clock=clock,
        )

    @property
    def key_digest(self) -> str:
        """A digest naming the key (the fleet's rate bucket is per key); not the key."""
        return key_digest(self._auth.key.get_secret_value())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_url={self.api_url!r})"

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._http.close()

    def submit(
        self,
        workflow_id: str,
        inputs: Mapping[str, JsonValue],
        *,
        client_request_id: str | None = None,
    ) -> Submission:
        """Start a generation: ``POST /workflows/<workflow_id>`` with ``inputs`` as JSON.

        Each call that reaches Segmind may be billed: Segmind has no idempotency key.

        Args:
            workflow_id: the workflow's id (``66cec9a38aeef98f887211f1-v1``).
            inputs: the workflow's inputs.
            client_request_id: sent as ``x-client-request-id`` when given (Segmind ignores
                it; the simulator counts POSTs per id with it).

        Returns:
            The submission, with its poll_url (not yet checked against the API host:
            ``poll`` does that).

        Raises:
            FinalError: a 4xx other than 408/429 (``bad_request``, ``unauthorized``,
                ``forbidden``, ``workflow_not_found``, ``insufficient_credits``,
                ``client_error``), a redirect, a malformed or too large 200 body, or
                (``bad_request`` without an HTTP status, nothing sent) an invalid workflow
                id or inputs that are not JSON.
            RateLimitedError: 429, with the requested wait.
            TransientError: 5xx, 408, timeouts, connection errors; check
                ``may_have_been_processed`` before submitting again.
        """
        if not _WORKFLOW_ID_RE.match(workflow_id):
            raise FinalError(
                ErrorCode.BAD_REQUEST,
                f"invalid workflow id {workflow_id[:80]!r}: use letters, digits, '.', '_', '-'",
                endpoint="submit",
            )
        problem: str | None = None
        try:
            payload = json.dumps(
                dict(inputs), ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            problem = str(exc)[:200]
        if problem is not None:
            raise FinalError(
                ErrorCode.BAD_REQUEST, f"the inputs are not JSON: {problem}", endpoint="submit"
            )
        headers = {"content-type": "application/json"}
        if client_request_id is not None:
            headers[CLIENT_REQUEST_ID_HEADER] = client_request_id
        url = self._base.copy_with(path=f"/workflows/{workflow_id}")
        reply = self._send("submit", "POST", url, content=payload, headers=headers)
        return self._parsed(lambda: parse_submission(reply.body, reply.headers))

    def poll(self, poll_url: str) -> PollResult:
        """Read a generation's state: ``GET <poll_url>``.

        Args:
            poll_url: the ``poll_url`` of a submission. It must have the configured API
                URL's scheme, host and port, or it is refused before any I/O.

        Returns:
            The state; ``result.terminal`` says whether the generation is over.

        Raises:
            FinalError: ``foreign_poll_url`` (refused, nothing sent), a 4xx other than
                404/408/429, a redirect, a body too large.
            ExpiredError: 404: the record expired.
            RateLimitedError: 429, with the requested wait.
            TransientError: 5xx, 408, timeouts, connection errors, a malformed body.
        """
        url = self._own_url(poll_url)
        reply = self._send("poll", "GET", url)
        return self._scrubbed(self._parsed(lambda: parse_poll(reply.body)))

    def credits(self) -> Credits:
        """The account's credits: ``GET /v1/get-user-credits``.

        Raises:
            FinalError: a 4xx other than 408/429, a redirect, a body too large.
            RateLimitedError: 429, with the requested wait.
            TransientError: 5xx, 408, timeouts, connection errors, a malformed body.
        """
        url = self._base.copy_with(path=CREDITS_PATH)
        reply = self._send("credits", "GET", url)
        return self._parsed(lambda: parse_credits(reply.body))

    def _own_url(self, poll_url: str) -> httpx.URL:
        """``poll_url`` parsed, if it points at the configured API (scheme, host, port)."""
        problem: str | None = None
        try:
            url = httpx.URL(poll_url.strip())
        except (httpx.InvalidURL, TypeError, ValueError):
            url, problem = None, "the poll_url is not a valid URL"
        if url is not None:
            if url.scheme not in _DEFAULT_PORTS or not url.host:
                problem = "the poll_url is not an absolute http(s) URL"
            elif url.userinfo:
                problem = "the poll_url carries credentials; it is not followed"
            elif _origin(url) != self._origin:
                scheme, host, port = _origin(url)
                problem = (
                    f"the poll_url points at {scheme}://{host}:{port}, not the configured "
                    f"Segmind API {self._describe_origin()}; the API key is only sent there"
                )
        if url is None or problem is not None:
            raise FinalError(
                ErrorCode.FOREIGN_POLL_URL, problem or "foreign poll_url", endpoint="poll"
            )
        return url

    def _describe_origin(self) -> str:
        scheme, host, port = self._origin
        return f"{scheme}://{host}:{port}"

    def _send(
        self,
        endpoint: Endpoint,
        method: str,
        url: httpx.URL,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Reply:
        """Send one request and read its reply; raise the error it means, if any."""
        outcome = self._call(endpoint, method, url, content, headers)
        if isinstance(outcome, SegmindError):
            # Raised here, outside any except block: httpx's exception (and its request,
            # whose headers hold the key) is not attached as __context__.
            raise outcome
        return outcome

    def _call(
        self,
        endpoint: Endpoint,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        headers: dict[str, str] | None,
    ) -> _Reply | SegmindError:
        """The successful reply, or the (redacted) error; reports to the hook."""
        started = _monotonic()
        outcome = self._exchange(endpoint, method, url, content, headers, started)
        elapsed = _monotonic() - started
        status = outcome.status_code if isinstance(outcome, _Reply) else outcome.http_status
        self._report(endpoint, status, elapsed)
        if isinstance(outcome, _Reply):
            error = classify_response(
                endpoint,
                outcome.status_code,
                outcome.headers,
                outcome.body,
                outcome.headers.get("content-type"),
                self._clock(),
                max_wait_s=self._max_rate_limit_wait_s,
            )
            if error is None:
                return outcome
            outcome = error
        return self._redacted(outcome)

    def _exchange(
        self,
        endpoint: Endpoint,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        headers: dict[str, str] | None,
        started: float,
    ) -> _Reply | SegmindError:
        """The reply, or the error that stopped it. Returns errors instead of raising them
        so the caller raises them without httpx's exception as context."""
        try:
            request = self._http.build_request(method, url, content=content, headers=headers)
            response = self._http.send(request, stream=True)
            try:
                return self._read(endpoint, response, started)
            finally:
                response.close()
        except httpx.TransportError as exc:
            return classify_transport_error(endpoint, exc)
        except httpx.DecodingError:
            return TransientError(
                ErrorCode.MALFORMED_RESPONSE,
                "the response body could not be decoded (bad content-encoding)",
                endpoint=endpoint,
                may_have_been_processed=True,
            )

    def _read(
        self, endpoint: Endpoint, response: httpx.Response, started: float
    ) -> _Reply | SegmindError:
        status = response.status_code
        success = 200 <= status < 300
        limit = self._max_response_bytes if success else ERROR_BODY_BYTES
        declared = _content_length(response.headers)
        if success and declared is not None and declared > limit:
            return self._too_large(endpoint, status)
        body = bytearray()
        deadline = started + self._total_timeout_s
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                if success:
                    return self._too_large(endpoint, status)
                del body[limit:]  # an error page: its beginning says enough
                break
            if _monotonic() > deadline:
                return TransientError(
                    ErrorCode.TIMEOUT,
                    f"the response took longer than {self._total_timeout_s:g} s to read",
                    endpoint=endpoint,
                    http_status=status,
                    may_have_been_processed=True,
                )
        return _Reply(status_code=status, headers=response.headers, body=bytes(body))

    def _too_large(self, endpoint: Endpoint, status: int) -> FinalError:
        return FinalError(
            ErrorCode.RESPONSE_TOO_LARGE,
            f"the response is larger than {self._max_response_bytes} bytes",
            endpoint=endpoint,
            http_status=status,
        )

    def _parsed(self, parse: Callable[[], T]) -> T:
        outcome = self._parse(parse)
        if isinstance(outcome, _ParseFailure):
            raise outcome.error
        return outcome

    def _parse(self, parse: Callable[[], T]) -> T | _ParseFailure:
        try:
            return parse()
        except SegmindError as exc:
            return _ParseFailure(self._redacted(exc))

    def _redacted(self, error: SegmindError) -> SegmindError:
        """A fresh copy of ``error`` with the key, if a server echoed it, redacted.

        Always a copy: the original's traceback holds the parsers' frames, whose locals
        (the body) may hold what the message does not show.
        """
        return error.with_message(_redact(error.message, self._auth.key.get_secret_value()))

    def _scrubbed(self, polled: PollResult) -> PollResult:
        """``polled`` with the key redacted from the texts a result carries on: a
        generation's error (Segmind's text, which could echo the request) and outputs."""
        key = self._auth.key.get_secret_value()
        outputs = polled.outputs
        if outputs is not None:
            outputs = [
                output.model_copy(update={"data": _redact_json(output.data, key)})
                for output in outputs
            ]
        error = polled.error_message
        return replace(
            polled,
            raw_status=_redact(polled.raw_status, key),
            outputs=outputs,
            error_message=_redact(error, key) if error is not None else None,
        )

    def _report(self, endpoint: Endpoint, status: int | None, elapsed: float) -> None:
        log.debug("segmind %s: HTTP %s in %.3f s", endpoint, status, elapsed)
        if self.on_response is None:
            return
        try:
            self.on_response(endpoint, status, elapsed)
        except Exception:
            log.exception("the on_response hook failed (ignored)")


def _redact_json(value: JsonValue, key: str) -> JsonValue:
    if isinstance(value, str):
        return _redact(value, key)
    if isinstance(value, list):
        return [_redact_json(item, key) for item in value]
    if isinstance(value, dict):
        return {name: _redact_json(item, key) for name, item in value.items()}
    return value


def _redact(message: str, key: str) -> str:
    """``message`` with every occurrence of ``key`` replaced, including a prefix of it cut
    off by clipping (``"... invalid key sk-ab…"``): ``producers.redaction``'s rule."""
    return redact(message, [key])


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    scheme = url.scheme.lower()
    return scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(scheme, 0)


def _content_length(headers: httpx.Headers) -> int | None:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _utcnow() -> datetime:
    return datetime.now(UTC)
