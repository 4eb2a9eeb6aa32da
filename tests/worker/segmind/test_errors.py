"""Error classification: every rule of worker.segmind.errors, with Segmind's quirky bodies."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.contract import ErrorCode
from worker.segmind.errors import (
    MAX_MESSAGE_CHARS,
    Endpoint,
    ExpiredError,
    FinalError,
    RateLimitedError,
    SegmindError,
    TransientError,
    classify_response,
    classify_transport_error,
    clean_message,
    error_message,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
ENDPOINTS: tuple[Endpoint, ...] = ("submit", "poll", "credits")

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
HTML_405 = (
    b"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
    b"<style>body{color:red}</style><script>var key='x';</script></head>"
    b"<body><h1>Method Not Allowed</h1><p>The method is not allowed for the requested URL.</p>"
    b"</body></html>"
)


def classify(
    status: int,
    body: bytes = b"",
    *,
    endpoint: Endpoint = "submit",
    headers: dict[str, str] | None = None,
    content_type: str | None = None,
) -> SegmindError | None:
    return classify_response(endpoint, status, headers or {}, body, content_type, NOW)


# error_message -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"error": "Invalid API key"}', "application/json", "Invalid API key"),
        (b'{"error_message": "Out of memory"}', "application/json", "Out of memory"),
        (b'{"message": "Workflow not found"}', "application/json", "Workflow not found"),
        (b'{"detail": "Not authenticated"}', "application/json", "Not authenticated"),
        (b'{"error": {"code": 401, "message": "bad key"}}', None, "bad key"),
        (b'{"detail": [{"loc": ["body"], "msg": "field required"}]}', None, "field required"),
        (
            b'{"error": "Unauthorized", "message": "Invalid API key"}',
            None,
            "Unauthorized: Invalid API key",
        ),
        (b'{"error": "same", "message": "same"}', None, "same"),
        (b'{"ERROR": "shouting"}', None, "shouting"),
        (b'{"error": true, "message": "flagged"}', None, "flagged"),
        (b'{"code": 17}', None, '{"code":17}'),  # nothing known: the JSON itself
        (b'["first", "second"]', None, "first; second"),
        (b'"just a string"', None, "just a string"),
        # JSON whatever the content type says, text whatever it says.
        (b'{"error": "mislabelled"}', "text/html", "mislabelled"),
        (b"Insufficient credits", "application/json", "Insufficient credits"),
        (b"invalid content type", "text/plain", "invalid content type"),
        (b"  multi\n  line\ttext  ", None, "multi line text"),
        (NGINX_502, "text/html", "502 Bad Gateway"),
        (HTML_405, "text/html; charset=utf-8", "Method Not Allowed The method is not allowed"),
        (b"<p>no title &amp; entity</p>", None, "no title & entity"),
        (b"<Error><Message>xml body</Message></Error>", "application/xml", "xml body"),
        (b'{"error": "truncated', None, '{"error": "truncated'),
        (b"", None, ""),
        (b"   \r\n", "text/plain", ""),
        (b'\xef\xbb\xbf{"error": "with a BOM"}', None, "with a BOM"),
    ],
)
def test_error_message_reads_every_body_shape(
    body: bytes, content_type: str | None, expected: str
) -> None:
    message = error_message(body, content_type)
    assert message.startswith(expected)
    if expected and "The method" not in expected:
        assert message == expected


def test_error_message_html_drops_scripts_and_styles() -> None:
    message = error_message(HTML_405, "text/html")
    assert "var key" not in message
    assert "color:red" not in message


def test_error_message_survives_invalid_utf8_and_binary() -> None:
    assert error_message(b"\xff\xfe bad \xc3\x28 bytes", None) == "\ufffd\ufffd bad \ufffd( bytes"
    assert error_message(bytes(range(256)), "application/octet-stream")  # something, no crash


def test_error_message_drops_control_characters() -> None:
    assert error_message(b"line one\x00\x1b[31m red \x7f", None) == "line one[31m red"


def test_error_message_clips_huge_bodies() -> None:
    message = error_message(b"x" * 5_000_000, "text/plain")
    assert len(message) == MAX_MESSAGE_CHARS
    assert message.endswith("…")
    huge_json = b'{"error": "' + b"y" * 10_000 + b'"}'
    assert len(error_message(huge_json, None)) == MAX_MESSAGE_CHARS


def test_error_message_survives_deep_json() -> None:
    deep = b'{"error": ' * 5000 + b'"x"' + b"}" * 5000
    assert isinstance(error_message(deep, None), str)
    nested = b"[" * 100_000 + b"]" * 100_000
    assert isinstance(error_message(nested, None), str)


@given(body=st.binary(max_size=2048), content_type=st.none() | st.text(max_size=40))
def test_error_message_never_crashes_and_is_one_clipped_line(
    body: bytes, content_type: str | None
) -> None:
    message = error_message(body, content_type)
    assert len(message) <= MAX_MESSAGE_CHARS
    assert "\n" not in message
    assert "\r" not in message
    assert message == message.strip()


@given(text=st.text(max_size=300).map(lambda s: "<html><title>" + s))
def test_error_message_never_crashes_on_odd_markup(text: str) -> None:
    assert len(error_message(text.encode(), "text/html")) <= MAX_MESSAGE_CHARS


def test_clean_message_limit() -> None:
    assert clean_message("abcdef", limit=4) == "abc…"
    assert clean_message("", limit=4) == ""


# classify_response: the table -------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_not_an_error(endpoint: Endpoint, status: int) -> None:
    assert classify(status, b"anything", endpoint=endpoint) is None


@pytest.mark.parametrize(
    ("status", "endpoint", "cls", "code"),
    [
        (400, "submit", FinalError, ErrorCode.BAD_REQUEST),
        (401, "submit", FinalError, ErrorCode.UNAUTHORIZED),
        (401, "poll", FinalError, ErrorCode.UNAUTHORIZED),
        (401, "credits", FinalError, ErrorCode.UNAUTHORIZED),
        (403, "submit", FinalError, ErrorCode.FORBIDDEN),
        (404, "submit", FinalError, ErrorCode.WORKFLOW_NOT_FOUND),
        (404, "poll", ExpiredError, ErrorCode.EXPIRED),
        (404, "credits", FinalError, ErrorCode.CLIENT_ERROR),
        (405, "submit", FinalError, ErrorCode.CLIENT_ERROR),
        (406, "submit", FinalError, ErrorCode.INSUFFICIENT_CREDITS),
        (406, "poll", FinalError, ErrorCode.INSUFFICIENT_CREDITS),
        (408, "submit", TransientError, ErrorCode.TIMEOUT),
        (409, "submit", FinalError, ErrorCode.CLIENT_ERROR),
        (413, "submit", FinalError, ErrorCode.CLIENT_ERROR),
        (422, "submit", FinalError, ErrorCode.CLIENT_ERROR),
        (429, "submit", RateLimitedError, ErrorCode.RATE_LIMITED),
        (429, "poll", RateLimitedError, ErrorCode.RATE_LIMITED),
        (429, "credits", RateLimitedError, ErrorCode.RATE_LIMITED),
        (499, "poll", FinalError, ErrorCode.CLIENT_ERROR),
        (500, "submit", TransientError, ErrorCode.SERVER_ERROR),
        (502, "poll", TransientError, ErrorCode.SERVER_ERROR),
        (503, "credits", TransientError, ErrorCode.SERVER_ERROR),
        (504, "submit", TransientError, ErrorCode.TIMEOUT),
        (524, "submit", TransientError, ErrorCode.TIMEOUT),
        (507, "submit", TransientError, ErrorCode.SERVER_ERROR),
        (301, "poll", FinalError, ErrorCode.MALFORMED_RESPONSE),
        (302, "submit", FinalError, ErrorCode.MALFORMED_RESPONSE),
        (600, "submit", TransientError, ErrorCode.MALFORMED_RESPONSE),
        (99, "credits", TransientError, ErrorCode.MALFORMED_RESPONSE),
    ],
)
def test_classification_table(
    status: int, endpoint: Endpoint, cls: type[SegmindError], code: ErrorCode
) -> None:
    error = classify(status, endpoint=endpoint)
    assert type(error) is cls
    assert error.code is code
    assert error.http_status == status
    assert error.endpoint == endpoint
    assert error.retryable is (cls in (TransientError, RateLimitedError))


@pytest.mark.parametrize(
    ("status", "processed"),
    [
        (408, False),
        (500, False),
        (501, False),
        (502, False),
        (503, False),
        (504, True),
        (520, True),
        (524, True),
        (507, True),
        (600, True),
    ],
)
def test_may_have_been_processed_by_status(status: int, processed: bool) -> None:
    error = classify(status)
    assert isinstance(error, TransientError)
    assert error.may_have_been_processed is processed


def test_406_keeps_segminds_text_whatever_it_says() -> None:
    credits = classify(406, b"Insufficient credits", content_type="text/plain")
    content_type = classify(406, b"invalid content type", content_type="text/plain")
    assert credits is not None
    assert content_type is not None
    assert credits.code is content_type.code is ErrorCode.INSUFFICIENT_CREDITS
    assert credits.message == "Insufficient credits"
    assert content_type.message == "invalid content type"


def test_html_405_and_502_are_read() -> None:
    method = classify(405, HTML_405, content_type="text/html")
    gateway = classify(502, NGINX_502, content_type="text/html", endpoint="poll")
    assert method is not None
    assert method.message.startswith("Method Not Allowed")
    assert gateway is not None
    assert gateway.message == "502 Bad Gateway"


def test_json_401_message() -> None:
    error = classify(401, b'{"error": "Invalid API key provided"}', content_type="application/json")
    assert error is not None
    assert error.message == "Invalid API key provided"
    assert str(error) == (
        "Segmind submit failed: unauthorized (HTTP 401): Invalid API key provided"
    )


@pytest.mark.parametrize(
    ("status", "phrase"), [(401, "Unauthorized"), (503, "Service Unavailable")]
)
def test_an_empty_body_gets_the_status_phrase(status: int, phrase: str) -> None:
    error = classify(status, b"")
    assert error is not None
    assert error.message == f"HTTP {status} {phrase}"


def test_an_unknown_status_with_an_empty_body_has_a_message() -> None:
    error = classify(600)
    assert error is not None
    assert error.message == "unexpected HTTP status 600"


def test_poll_404_is_expired_with_a_message() -> None:
    error = classify(404, b"", endpoint="poll")
    assert isinstance(error, ExpiredError)
    assert "hour" in error.message
    assert classify(404, b'{"error": "Request not found"}', endpoint="poll").message == (  # type: ignore[union-attr]
        "Request not found"
    )


def test_redirect_names_the_target_host_only() -> None:
    error = classify(
        302,
        endpoint="poll",
        headers={"Location": "https://evil.example/steal?token=abc"},
    )
    assert error is not None
    assert "evil.example" in error.message
    assert "token" not in error.message


def test_invalid_utf8_error_body_is_classified() -> None:
    error = classify(500, b"\xff\xfe\xfd boom")
    assert isinstance(error, TransientError)
    assert "boom" in error.message


def test_huge_error_body_is_clipped() -> None:
    error = classify(502, b"<html><body>" + b"oops " * 1_000_000 + b"</body></html>")
    assert error is not None
    assert len(error.message) <= MAX_MESSAGE_CHARS


# 429 waits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "17"}, 17.0),
        ({"Retry-After": "Sat, 01 Mar 2025 12:00:09 GMT"}, 9.0),
        ({"x-rate-limit-reset-at-utc": "2025-03-01T12:00:42.000Z"}, 42.0),
        ({"x-rate-limit-reset-at-utc": str(int(NOW.timestamp()) + 30)}, 30.0),
        ({"x-rate-limit-reset-at-utc": str(int(NOW.timestamp() * 1000) + 1500)}, 1.5),
        ({"x-rate-limit-reset-at-utc": "2025-03-01T11:00:00Z"}, 0.0),  # past
        ({"Retry-After": "3", "x-rate-limit-reset-at-utc": "2025-03-01T12:00:42Z"}, 3.0),
        ({"x-rate-limit-reset-at-utc": "2030-01-01T00:00:00Z"}, 600.0),  # clamped
        ({"x-rate-limit-reset-at-utc": "garbage"}, None),
        ({}, None),
    ],
)
def test_429_carries_the_wait_the_response_asked_for(
    headers: dict[str, str], wait: float | None
) -> None:
    error = classify(429, b'{"message": "Rate limit exceeded"}', headers=headers)
    assert isinstance(error, RateLimitedError)
    assert error.message == "Rate limit exceeded"
    if wait is None:
        assert error.wait_s is None
    else:
        assert error.wait_s == pytest.approx(wait)


def test_429_max_wait_is_configurable() -> None:
    error = classify_response("poll", 429, {"Retry-After": "100"}, b"", None, NOW, max_wait_s=10.0)
    assert isinstance(error, RateLimitedError)
    assert error.wait_s == 10.0


# classify_transport_error -------------------------------------------------------------


REQUEST = httpx.Request("POST", "https://api.segmind.com/workflows/x", headers={"x-api-key": "K"})


@pytest.mark.parametrize(
    ("exc", "code", "processed"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), ErrorCode.CONNECTION_ERROR, False),
        (httpx.ConnectTimeout("timed out"), ErrorCode.TIMEOUT, False),
        (httpx.PoolTimeout("pool"), ErrorCode.TIMEOUT, False),
        (httpx.ReadTimeout("timed out"), ErrorCode.TIMEOUT, True),
        (httpx.WriteTimeout("timed out"), ErrorCode.TIMEOUT, True),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            ErrorCode.CONNECTION_ERROR,
            True,
        ),
        (httpx.ReadError("connection reset"), ErrorCode.CONNECTION_ERROR, True),
        (httpx.WriteError("broken pipe"), ErrorCode.CONNECTION_ERROR, True),
        (httpx.LocalProtocolError("bad header"), ErrorCode.CONNECTION_ERROR, False),
        (httpx.UnsupportedProtocol("ftp"), ErrorCode.CONNECTION_ERROR, False),
        (httpx.ProxyError("proxy said no"), ErrorCode.CONNECTION_ERROR, False),
        (httpx.NetworkError("other"), ErrorCode.CONNECTION_ERROR, True),
        (httpx.TimeoutException("other"), ErrorCode.TIMEOUT, True),
    ],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_transport_errors_are_transient(
    exc: httpx.TransportError, code: ErrorCode, processed: bool, endpoint: Endpoint
) -> None:
    exc.request = REQUEST
    error = classify_transport_error(endpoint, exc)
    assert type(error) is TransientError
    assert error.code is code
    assert error.may_have_been_processed is processed
    assert error.http_status is None
    assert error.endpoint == endpoint
    assert str(exc) in error.message
    assert error.__cause__ is None
    assert error.__context__ is None


# The exceptions themselves ------------------------------------------------------------


EXAMPLES: list[SegmindError] = [
    FinalError(ErrorCode.UNAUTHORIZED, "bad key", endpoint="submit", http_status=401),
    RateLimitedError(ErrorCode.RATE_LIMITED, "slow down", endpoint="poll", wait_s=12.5),
    TransientError(
        ErrorCode.SERVER_ERROR,
        "boom",
        endpoint="credits",
        http_status=500,
        may_have_been_processed=False,
    ),
    ExpiredError(ErrorCode.EXPIRED, "gone", endpoint="poll", http_status=404),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_every_attribute(error: SegmindError) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(error, protocol=protocol))  # noqa: S301
        assert type(copy) is type(error)
        assert copy == error
        assert vars(copy) == vars(error)
        assert str(copy) == str(error)


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_have_a_useful_str_and_repr(error: SegmindError) -> None:
    assert error.code.value in str(error)
    assert error.message in str(error)
    assert error.endpoint in str(error)
    assert repr(error).startswith(f"{type(error).__name__}(code='{error.code.value}'")
    assert error.message in repr(error)
    assert isinstance(error, Exception)


def test_error_to_error_info() -> None:
    info = EXAMPLES[0].to_error_info()
    assert info.code is ErrorCode.UNAUTHORIZED
    assert info.message == "bad key"
    assert info.http_status == 401


def test_with_message_keeps_the_class_and_attributes() -> None:
    copy = EXAMPLES[1].with_message("other")
    assert isinstance(copy, RateLimitedError)
    assert copy.wait_s == 12.5
    assert copy.message == "other"


def test_message_is_cleaned_on_construction() -> None:
    error = FinalError(ErrorCode.BAD_REQUEST, " two\nlines\x00 ", endpoint="submit")
    assert error.message == "two lines"
    blank = FinalError(ErrorCode.BAD_REQUEST, "", endpoint="submit", http_status=400)
    assert blank.message == "HTTP 400 Bad Request"
    no_status = TransientError(ErrorCode.CONNECTION_ERROR, "", endpoint="poll")
    assert no_status.message == "connection error"


def test_errors_hash_and_compare_by_value() -> None:
    same = FinalError(ErrorCode.UNAUTHORIZED, "bad key", endpoint="submit", http_status=401)
    assert same == EXAMPLES[0]
    assert hash(same) == hash(EXAMPLES[0])
    assert same != EXAMPLES[3]
    assert same != "bad key"
