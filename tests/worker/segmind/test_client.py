"""The Segmind client: unit tests on a mock transport, then the simulator over real sockets.

The unit tests (``httpx.MockTransport``) cover what does not need a socket: the request's
shape, refusing foreign poll URLs, byte limits, redirects, the metrics hook, and that the
key never leaks. The integration tests drive the same client against the local simulator
(``sim`` fixture, tests/conftest.py) on 127.0.0.1: every workflow to completion, and every
error Segmind is known to send.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial

import httpx
import pytest
from pydantic import SecretStr

import worker.segmind.client as client_module
from producers.catalog import Workflow, default_catalog
from producers.contract import ErrorCode
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import SIM_API_KEY
from worker.segmind.client import SegmindClient, user_agent
from worker.segmind.errors import (
    ExpiredError,
    FinalError,
    RateLimitedError,
    SegmindError,
    TransientError,
)
from worker.segmind.responses import Credits, JobStatus, PollResult, Submission
from worker.settings import InvalidApiKeyError, Settings

KEY = "sk-DISTINCTIVE-client-key-c0ffee42"
API = "https://api.segmind.com"
WORKFLOW = "66cec9a38aeef98f887211f1-v1"
REQUEST_ID = "0123456789abcdef0123456789abcdef"
POLL_URL = f"{API}/workflows/request/{REQUEST_ID}"
ITEMS = [{"keyname": "image", "value": {"data": "https://cdn/x.png", "type": "image"}}]

Handler = Callable[[httpx.Request], httpx.Response]


def assert_no_secret(value: object, secret: str = KEY) -> None:
    """``secret`` appears nowhere in ``value``: str, repr, traceback, pickle, causes."""
    assert secret not in str(value)
    assert secret not in repr(value)
    if isinstance(value, BaseException):
        assert secret not in "".join(traceback.format_exception(value))
        assert secret not in rendered_with_locals(value)
        if isinstance(value, SegmindError):
            assert secret.encode() not in pickle.dumps(value)
        chained = value.__cause__ or value.__context__
        while chained is not None:
            assert not isinstance(chained, httpx.HTTPError), "httpx's exception holds the request"
            chained = chained.__cause__ or chained.__context__


def rendered_with_locals(exc: BaseException) -> str:
    """The traceback as rich or structlog's dev renderer show it: with every frame's locals,
    below the test's own frame."""
    below_test = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    rendered = traceback.TracebackException(
        type(exc), exc, below_test, capture_locals=True, compact=True
    )
    return "".join(rendered.format())


class Recorder:
    """A mock Segmind: records requests, answers with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def json_response(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)


def make_client(handler: Handler, **kwargs: object) -> tuple[SegmindClient, Recorder]:
    recorder = Recorder(handler)
    client = SegmindClient(
        api_url=API,
        api_key=SecretStr(KEY),
        transport=httpx.MockTransport(recorder),
        **kwargs,  # type: ignore[arg-type]
    )
    return client, recorder


def submitted(request: httpx.Request) -> httpx.Response:
    return json_response(
        200,
        {"message": "Request in queue", "poll_url": POLL_URL, "request_id": REQUEST_ID},
    )


# Requests ------------------------------------------------------------------------------


def test_submit_sends_json_with_x_api_key_only() -> None:
    client, recorder = make_client(submitted)
    with client:
        submission = client.submit(WORKFLOW, {"input_image": "https://x/y.png", "seed": 7})
    assert submission == Submission(
        segmind_request_id=REQUEST_ID, poll_url=POLL_URL, status="QUEUED"
    )
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == f"{API}/workflows/{WORKFLOW}"
    assert request.headers["x-api-key"] == KEY
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == user_agent()
    assert user_agent().startswith("segmind-queue/")
    assert "x-client-request-id" not in request.headers
    assert json.loads(request.content) == {"input_image": "https://x/y.png", "seed": 7}


def test_submit_sends_the_client_request_id() -> None:
    client, recorder = make_client(submitted)
    with client:
        client.submit(WORKFLOW, {}, client_request_id="req-42")
    assert recorder.requests[0].headers["x-client-request-id"] == "req-42"


def test_submit_reads_cost_headers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(
            200, {"poll_url": POLL_URL, "request_id": REQUEST_ID}, **{"x-cost": "0.1006"}
        )

    client, _ = make_client(handler)
    with client:
        assert client.submit(WORKFLOW, {}).cost_usd == pytest.approx(0.1006)


def test_poll_and_credits_requests() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/workflows/request/"):
            return json_response(200, {"status": "COMPLETED", "output": json.dumps(ITEMS)})
        return json_response(200, {"credits": 2.5, "free-credits": 0.5})

    client, recorder = make_client(handler)
    with client:
        result = client.poll(POLL_URL)
        credits = client.credits()
    assert result.status is JobStatus.COMPLETED
    assert result.outputs is not None
    assert result.outputs[0].data == "https://cdn/x.png"
    assert credits == Credits(credits=2.5, free_credits=0.5)
    poll, credit = recorder.requests
    assert (poll.method, str(poll.url)) == ("GET", POLL_URL)
    assert (credit.method, str(credit.url)) == ("GET", f"{API}/v1/get-user-credits")
    assert all(r.headers["x-api-key"] == KEY for r in recorder.requests)


@pytest.mark.parametrize(
    "workflow_id", ["", "..", ".hidden", "a/b", "../v1/get-user-credits", "id?x=1", "x" * 201]
)
def test_submit_refuses_an_invalid_workflow_id_without_io(workflow_id: str) -> None:
    client, recorder = make_client(submitted)
    with client, pytest.raises(FinalError) as caught:
        client.submit(workflow_id, {})
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert caught.value.http_status is None
    assert recorder.requests == []


@pytest.mark.parametrize("inputs", [{"x": float("nan")}, {"x": {1, 2}}, {"x": float("inf")}])
def test_submit_refuses_inputs_that_are_not_json_without_io(inputs: dict[str, object]) -> None:
    client, recorder = make_client(submitted)
    with client, pytest.raises(FinalError, match="not JSON") as caught:
        client.submit(WORKFLOW, inputs)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert recorder.requests == []


# Foreign poll URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "poll_url",
    [
        f"https://evil.example/workflows/request/{REQUEST_ID}",
        f"https://api.segmind.com.evil.example/workflows/request/{REQUEST_ID}",
        f"http://api.segmind.com/workflows/request/{REQUEST_ID}",  # scheme differs
        f"https://api.segmind.com:8443/workflows/request/{REQUEST_ID}",  # port differs
        f"https://user:pw@api.segmind.com/workflows/request/{REQUEST_ID}",
        f"https://api.segmind.com@evil.example/workflows/request/{REQUEST_ID}",
        f"/workflows/request/{REQUEST_ID}",
        "ftp://api.segmind.com/x",
        "file:///etc/passwd",
        "not a url at all",
        "https://[::1/broken",
        "",
    ],
)
def test_poll_refuses_a_foreign_poll_url_without_io(poll_url: str) -> None:
    client, recorder = make_client(submitted)
    with client, pytest.raises(FinalError) as caught:
        client.poll(poll_url)
    assert caught.value.code is ErrorCode.FOREIGN_POLL_URL
    assert caught.value.endpoint == "poll"
    assert "pw" not in caught.value.message
    assert recorder.requests == []
    assert_no_secret(caught.value)


def test_foreign_poll_url_message_names_both_hosts() -> None:
    client, _ = make_client(submitted)
    with client, pytest.raises(FinalError) as caught:
        client.poll("https://evil.example/workflows/request/abc")
    assert "evil.example" in caught.value.message
    assert "api.segmind.com" in caught.value.message


@pytest.mark.parametrize(
    "poll_url",
    [
        POLL_URL,
        f"https://api.segmind.com:443/workflows/request/{REQUEST_ID}",  # explicit default port
        f"https://API.Segmind.COM/workflows/request/{REQUEST_ID}",  # hosts are case-insensitive
        f" {POLL_URL} ",
    ],
)
def test_poll_follows_the_configured_host(poll_url: str) -> None:
    client, recorder = make_client(lambda r: json_response(200, {"status": "QUEUED"}))
    with client:
        assert client.poll(poll_url).status is JobStatus.QUEUED
    assert recorder.requests[0].url.host == "api.segmind.com"


# Bodies: limits and classification ------------------------------------------------------


def test_a_declared_too_large_success_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": "5000"}, content=b"{}" * 2500)

    client, _ = make_client(handler, max_response_bytes=1000)
    with client, pytest.raises(FinalError) as caught:
        client.credits()
    assert caught.value.code is ErrorCode.RESPONSE_TOO_LARGE
    assert caught.value.http_status == 200


def test_a_streamed_too_large_success_is_refused_without_reading_it_all() -> None:
    served: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(1000):
            served.append(index)
            yield b"x" * 100

    client, _ = make_client(
        lambda r: httpx.Response(200, content=chunks()), max_response_bytes=1000
    )
    with client, pytest.raises(FinalError) as caught:
        client.poll(POLL_URL)
    assert caught.value.code is ErrorCode.RESPONSE_TOO_LARGE
    assert len(served) < 20


def test_a_huge_error_body_is_read_partly_and_classified() -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 10_000_000
    client, _ = make_client(lambda r: httpx.Response(502, content=page), max_response_bytes=100)
    with client, pytest.raises(TransientError) as caught:
        client.poll(POLL_URL)
    assert caught.value.code is ErrorCode.SERVER_ERROR
    assert caught.value.message == "502 Bad Gateway"


def test_a_body_that_trickles_past_the_total_timeout_is_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(client_module, "_monotonic", lambda: now[0])

    def chunks() -> Iterator[bytes]:
        yield b'{"status": '
        now[0] += 10.0  # each chunk arrives within the read timeout, the whole does not
        yield b'"QUEUED"'
        now[0] += 10.0
        yield b"}"

    client, _ = make_client(lambda r: httpx.Response(200, content=chunks()), total_timeout_s=15.0)
    with client, pytest.raises(TransientError) as caught:
        client.poll(POLL_URL)
    assert caught.value.code is ErrorCode.TIMEOUT
    assert caught.value.may_have_been_processed is True


def test_a_redirect_is_not_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "https://evil.example/steal"})

    client, recorder = make_client(handler)
    with client, pytest.raises(FinalError) as caught:
        client.submit(WORKFLOW, {})
    assert caught.value.code is ErrorCode.MALFORMED_RESPONSE
    assert "evil.example" in caught.value.message
    assert len(recorder.requests) == 1


def test_a_bad_content_encoding_is_transient_malformed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip")

    client, _ = make_client(handler)
    with client, pytest.raises(TransientError) as caught:
        client.credits()
    assert caught.value.code is ErrorCode.MALFORMED_RESPONSE


def test_429_wait_uses_the_clients_clock() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"x-rate-limit-reset-at-utc": "2025-03-01T12:00:25Z"}
        return json_response(429, {"error": "Too many requests"}, **headers)

    clock = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    client, _ = make_client(handler, clock=lambda: clock)
    with client, pytest.raises(RateLimitedError) as caught:
        client.poll(POLL_URL)
    assert caught.value.wait_s == pytest.approx(25.0)
    assert caught.value.message == "Too many requests"


# Transport errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code", "processed"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), ErrorCode.CONNECTION_ERROR, False),
        (httpx.ConnectTimeout("timed out"), ErrorCode.TIMEOUT, False),
        (httpx.ReadTimeout("timed out"), ErrorCode.TIMEOUT, True),
        (httpx.RemoteProtocolError("Server disconnected"), ErrorCode.CONNECTION_ERROR, True),
    ],
)
def test_transport_errors_are_wrapped_without_the_request(
    exc: httpx.TransportError, code: ErrorCode, processed: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        exc.request = request  # as httpx does: the exception holds the request and its key
        raise exc

    client, _ = make_client(handler)
    with client, pytest.raises(TransientError) as caught:
        client.submit(WORKFLOW, {})
    assert caught.value.code is code
    assert caught.value.may_have_been_processed is processed
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None
    assert_no_secret(caught.value)


# The metrics hook --------------------------------------------------------------------------


def test_on_response_is_called_after_every_request() -> None:
    calls: list[tuple[str, int | None, float]] = []
    answers = iter(
        [
            json_response(200, {"credits": 1.0}),
            json_response(500, {"error": "boom"}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        try:
            return next(answers)
        except StopIteration:
            raise httpx.ConnectError("refused") from None

    client, _ = make_client(handler, on_response=lambda *args: calls.append(args))
    with client:
        client.credits()
        with pytest.raises(TransientError):
            client.poll(POLL_URL)
        with pytest.raises(TransientError):
            client.submit(WORKFLOW, {})
        with pytest.raises(FinalError):
            client.poll("https://evil.example/x")  # refused: nothing sent, no call
    assert [(endpoint, status) for endpoint, status, _ in calls] == [
        ("credits", 200),
        ("poll", 500),
        ("submit", None),
    ]
    assert all(seconds >= 0 for _, _, seconds in calls)


def test_a_failing_hook_does_not_break_the_call(caplog: pytest.LogCaptureFixture) -> None:
    def hook(endpoint: str, status: int | None, seconds: float) -> None:
        raise RuntimeError("metrics are down")

    client, _ = make_client(lambda r: json_response(200, {"credits": 1.0}), on_response=hook)
    with client:
        assert client.credits().credits == 1.0
    assert "on_response hook failed" in caplog.text


# The key never leaks -----------------------------------------------------------------------


def test_client_repr_shows_the_url_only() -> None:
    client, _ = make_client(submitted)
    with client:
        assert repr(client) == f"SegmindClient(api_url='{API}')"
        assert_no_secret(client)
        assert_no_secret(vars(client))


def test_a_body_echoing_the_key_is_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(401, {"error": f"invalid key {request.headers['x-api-key']}"})

    client, _ = make_client(handler)
    with client, pytest.raises(FinalError) as caught:
        client.credits()
    assert caught.value.message == "invalid key [redacted]"
    assert_no_secret(caught.value)


def test_a_key_cut_by_clipping_is_redacted_too() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, content=b"x" * 480 + f" key {KEY} rejected".encode())

    client, _ = make_client(handler)
    with client, pytest.raises(FinalError) as caught:
        client.submit(WORKFLOW, {})
    assert caught.value.message.endswith(" key [redacted]…")
    assert KEY[:4] not in caught.value.message
    assert_no_secret(caught.value)


def test_a_malformed_body_echoing_the_key_is_redacted() -> None:
    client, _ = make_client(lambda r: httpx.Response(200, content=f"oops {KEY}".encode()))
    with client, pytest.raises(TransientError) as caught:
        client.poll(POLL_URL)
    assert caught.value.code is ErrorCode.MALFORMED_RESPONSE
    assert_no_secret(caught.value)


@pytest.mark.parametrize("key", ["", "   ", "two words", "line\nbreak", "ключ"])
def test_an_unusable_key_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(InvalidApiKeyError) as caught:
        SegmindClient(api_url=API, api_key=SecretStr(key))
    if key.strip():
        assert key not in str(caught.value)


def test_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGMIND_API_KEY_FILE", raising=False)
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    monkeypatch.setenv("SEGMIND_API_URL", "http://127.0.0.1:9/")
    recorder = Recorder(lambda r: json_response(200, {"credits": 3.0}))
    with SegmindClient.from_settings(Settings(), transport=httpx.MockTransport(recorder)) as client:
        assert client.api_url == "http://127.0.0.1:9"
        assert client.credits().credits == 3.0
    assert recorder.requests[0].headers["x-api-key"] == KEY
    assert_no_secret(client)


def test_bad_api_url_is_refused() -> None:
    with pytest.raises(ValueError, match="SEGMIND_API_URL"):
        SegmindClient(api_url="https://api.segmind.com/v2", api_key=SecretStr(KEY))


# --------------------------------------------------------------------------------------------
# Integration: the simulator over real sockets on 127.0.0.1.
# --------------------------------------------------------------------------------------------

DEADLINE_S = 15.0
POLL_INTERVAL_S = 0.02


@pytest.fixture
def segmind(sim: RunningSimulator) -> Iterator[SegmindClient]:
    """A client of the simulator, with short timeouts."""
    with SegmindClient(
        api_url=sim.url, api_key=SecretStr(sim.api_key), read_timeout_s=5.0
    ) as client:
        yield client


def poll_to_end(client: SegmindClient, poll_url: str) -> PollResult:
    """Poll until the generation is terminal, within ``DEADLINE_S``."""

    def terminal() -> PollResult | None:
        result = client.poll(poll_url)
        return result if result.terminal else None

    return wait_until(
        terminal, timeout_s=DEADLINE_S, interval_s=POLL_INTERVAL_S, message="a terminal poll"
    )


def raised(call: Callable[[], object]) -> SegmindError:
    """The SegmindError ``call`` raises (failing the test if it returns)."""
    with pytest.raises(SegmindError) as caught:
        call()
    assert_no_secret(caught.value, SIM_API_KEY)
    return caught.value


@pytest.mark.integration
@pytest.mark.parametrize("workflow", list(default_catalog()), ids=lambda w: w.name)
def test_every_catalog_workflow_completes(
    sim: RunningSimulator, segmind: SegmindClient, workflow: Workflow
) -> None:
    submission = segmind.submit(
        workflow.workflow_id, workflow.default_inputs(), client_request_id=f"it-{workflow.name}"
    )
    assert submission.status == "QUEUED"
    assert submission.poll_url.startswith(f"{sim.url}/workflows/request/")
    result = poll_to_end(segmind, submission.poll_url)
    assert result.status is JobStatus.COMPLETED
    assert result.outputs
    assert {o.keyname for o in result.outputs} == {o.keyname for o in workflow.outputs}
    stats = sim.stats()
    assert stats["submits_by_client_request_id"] == {f"it-{workflow.name}": 1}
    assert stats["polls_by_job"][submission.segmind_request_id] >= 1


@pytest.mark.integration
def test_a_raw_workflow_id_and_output_as_a_list(
    sim: RunningSimulator, segmind: SegmindClient
) -> None:
    sim.add_faults({"job": "output_as_list", "count": 1})
    submission = segmind.submit("0123456789abcdef01234567-v3", {"anything": ["goes", 1]})
    result = poll_to_end(segmind, submission.poll_url)
    assert result.status is JobStatus.COMPLETED
    assert result.outputs


@pytest.mark.integration
@pytest.mark.parametrize("endpoint", ["submit", "poll", "credits"])
def test_a_wrong_key_is_unauthorized(sim: RunningSimulator, endpoint: str) -> None:
    wrong = "wrong-key-DISTINCTIVE-9d1e"
    poll_url = f"{sim.url}/workflows/request/{REQUEST_ID}"
    with SegmindClient(api_url=sim.url, api_key=SecretStr(wrong)) as client:
        call: Callable[[], object] = {
            "submit": lambda: client.submit(WORKFLOW, {}),
            "poll": lambda: client.poll(poll_url),
            "credits": client.credits,
        }[endpoint]
        error = raised(call)
    assert_no_secret(error, wrong)
    assert isinstance(error, FinalError)
    assert error.code is ErrorCode.UNAUTHORIZED
    assert error.http_status == 401
    assert "invalid API key" in error.message
    assert sim.stats()["jobs"] == 0


@pytest.mark.integration
def test_insufficient_credits_is_a_final_406_with_segminds_text(
    sim: RunningSimulator, segmind: SegmindClient
) -> None:
    sim.reset(credits=0.0)
    error = raised(lambda: segmind.submit(WORKFLOW, {}))
    assert isinstance(error, FinalError)
    assert error.code is ErrorCode.INSUFFICIENT_CREDITS
    assert error.http_status == 406
    assert error.message.startswith("Insufficient credits")


@pytest.mark.integration
def test_a_406_text_fault_keeps_its_text(sim: RunningSimulator, segmind: SegmindClient) -> None:
    sim.add_faults(
        {"endpoint": "submit", "status": 406, "body": "text", "message": "invalid content type"}
    )
    error = raised(lambda: segmind.submit(WORKFLOW, {}))
    assert error.code is ErrorCode.INSUFFICIENT_CREDITS
    assert error.message == "invalid content type"


@pytest.mark.integration
def test_an_unknown_workflow_is_final(sim: RunningSimulator, segmind: SegmindClient) -> None:
    sim.reset(strict_workflows=True)
    error = raised(lambda: segmind.submit("0123456789abcdef01234567-v9", {}))
    assert isinstance(error, FinalError)
    assert error.code is ErrorCode.WORKFLOW_NOT_FOUND
    assert error.message == "Workflow not found"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (400, "json", ErrorCode.BAD_REQUEST),
        (403, "text", ErrorCode.FORBIDDEN),
        (405, "html", ErrorCode.CLIENT_ERROR),
    ],
)
def test_other_4xx_on_submit_are_final(
    sim: RunningSimulator, segmind: SegmindClient, status: int, body: str, code: ErrorCode
) -> None:
    sim.add_faults({"endpoint": "submit", "status": status, "body": body, "count": 1})
    error = raised(lambda: segmind.submit(WORKFLOW, {}))
    assert isinstance(error, FinalError)
    assert error.code is code
    assert error.http_status == status
    assert "<" not in error.message


def _rate_limited(call: Callable[[], object]) -> RateLimitedError | None:
    try:
        call()
    except RateLimitedError as exc:
        return exc
    return None


@pytest.mark.integration
@pytest.mark.parametrize("reset_format", ["iso", "epoch"])
def test_429_wait_comes_from_x_rate_limit_reset_at_utc(
    sim: RunningSimulator, segmind: SegmindClient, reset_format: str
) -> None:
    window_s = 1.0
    sim.reset(rpm=1, rate_window_s=window_s, reset_header_format=reset_format)
    error = wait_until(
        lambda: _rate_limited(segmind.credits), timeout_s=DEADLINE_S, message="a 429"
    )
    asked_at = time.time()
    assert error.code is ErrorCode.RATE_LIMITED
    assert error.http_status == 429
    assert error.wait_s is not None
    # The simulator's windows are aligned on the epoch: the wait is what is left of this one.
    expected = (int(asked_at // window_s) + 1) * window_s - asked_at
    assert error.wait_s == pytest.approx(expected, abs=0.1)
    assert 0.0 <= error.wait_s <= window_s
    # Honouring the wait is enough: the next call, made when it is over, goes through.
    time.sleep(error.wait_s + 0.02)
    assert segmind.credits().credits == pytest.approx(1000.0)


@pytest.mark.integration
def test_429_with_retry_after_prefers_it(sim: RunningSimulator, segmind: SegmindClient) -> None:
    sim.reset(rpm=1, rate_window_s=30.0, retry_after=True)
    error = wait_until(
        lambda: _rate_limited(segmind.credits), timeout_s=DEADLINE_S, message="a 429"
    )
    assert error.wait_s is not None
    assert error.wait_s == float(int(error.wait_s))  # Retry-After: whole seconds
    assert 1.0 <= error.wait_s <= 30.0


@pytest.mark.integration
def test_429_fault_on_poll(sim: RunningSimulator, segmind: SegmindClient) -> None:
    submission = segmind.submit(WORKFLOW, {})
    sim.add_faults({"endpoint": "poll", "status": 429, "count": 1})
    error = raised(lambda: segmind.poll(submission.poll_url))
    assert isinstance(error, RateLimitedError)
    assert error.wait_s is not None
    assert 0.0 <= error.wait_s <= 60.0
    assert poll_to_end(segmind, submission.poll_url).status is JobStatus.COMPLETED


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "body", "code", "processed", "message"),
    [
        (500, "json", ErrorCode.SERVER_ERROR, False, "Internal Server Error"),
        (502, "html", ErrorCode.SERVER_ERROR, False, "502 Bad Gateway"),
        (503, "text", ErrorCode.SERVER_ERROR, False, "Service Unavailable"),
        (504, "html", ErrorCode.TIMEOUT, True, "504 Gateway Timeout"),
    ],
)
def test_5xx_on_submit_are_transient(
    sim: RunningSimulator,
    segmind: SegmindClient,
    status: int,
    body: str,
    code: ErrorCode,
    processed: bool,
    message: str,
) -> None:
    sim.add_faults({"endpoint": "submit", "status": status, "body": body, "count": 1})
    error = raised(lambda: segmind.submit(WORKFLOW, {}))
    assert isinstance(error, TransientError)
    assert error.code is code
    assert error.http_status == status
    assert error.may_have_been_processed is processed
    assert error.message == message


@pytest.mark.integration
def test_a_504_may_hide_a_created_job(sim: RunningSimulator, segmind: SegmindClient) -> None:
    sim.add_faults({"endpoint": "submit", "status": 504, "after_effect": True, "count": 1})
    error = raised(lambda: segmind.submit(WORKFLOW, {}, client_request_id="paid-once"))
    assert isinstance(error, TransientError)
    assert error.may_have_been_processed
    assert sim.stats()["jobs"] == 1  # what the flag is for: this job exists and is billed


@pytest.mark.integration
@pytest.mark.parametrize("status", [500, 502, 504])
def test_5xx_on_poll_pass(sim: RunningSimulator, segmind: SegmindClient, status: int) -> None:
    submission = segmind.submit(WORKFLOW, {})
    sim.add_faults({"endpoint": "poll", "status": status, "body": "html", "count": 1})
    error = raised(lambda: segmind.poll(submission.poll_url))
    assert isinstance(error, TransientError)
    assert error.http_status == status
    assert poll_to_end(segmind, submission.poll_url).status is JobStatus.COMPLETED


@pytest.mark.integration
@pytest.mark.parametrize("endpoint", ["submit", "poll", "credits"])
def test_a_dropped_connection_is_transient(
    sim: RunningSimulator, segmind: SegmindClient, endpoint: str
) -> None:
    submission = segmind.submit(WORKFLOW, {})
    sim.add_faults({"endpoint": endpoint, "drop": True, "count": 1})
    call: Callable[[], object] = {
        "submit": lambda: segmind.submit(WORKFLOW, {}),
        "poll": lambda: segmind.poll(submission.poll_url),
        "credits": segmind.credits,
    }[endpoint]
    error = raised(call)
    assert isinstance(error, TransientError)
    assert error.code is ErrorCode.CONNECTION_ERROR
    assert error.http_status is None
    assert error.may_have_been_processed  # it was sent: the server may have acted on it
    call()  # the next one goes through


@pytest.mark.integration
def test_a_slow_answer_is_a_read_timeout(sim: RunningSimulator) -> None:
    calls: list[tuple[str, int | None, float]] = []
    with SegmindClient(
        api_url=sim.url,
        api_key=SecretStr(sim.api_key),
        read_timeout_s=0.3,
        on_response=lambda *args: calls.append(args),
    ) as client:
        sim.add_faults({"endpoint": "credits", "delay_s": 1.5, "count": 1})
        started = time.monotonic()
        error = raised(client.credits)
        elapsed = time.monotonic() - started
    assert isinstance(error, TransientError)
    assert error.code is ErrorCode.TIMEOUT
    assert error.may_have_been_processed
    assert 0.3 <= elapsed < 1.4
    assert calls[0][:2] == ("credits", None)


@pytest.mark.integration
def test_nothing_listening_is_a_connection_error(sim: RunningSimulator) -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with SegmindClient(
        api_url=f"http://127.0.0.1:{port}", api_key=SecretStr(sim.api_key), connect_timeout_s=2.0
    ) as client:
        error = raised(client.credits)
    assert isinstance(error, TransientError)
    assert error.code is ErrorCode.CONNECTION_ERROR
    assert error.may_have_been_processed is False


@pytest.mark.integration
def test_malformed_poll_is_transient_and_malformed_submit_is_final(
    sim: RunningSimulator, segmind: SegmindClient
) -> None:
    submission = segmind.submit(WORKFLOW, {})
    sim.add_faults({"endpoint": "poll", "malformed": True, "count": 1})
    poll_error = raised(lambda: segmind.poll(submission.poll_url))
    assert isinstance(poll_error, TransientError)
    assert poll_error.code is ErrorCode.MALFORMED_RESPONSE
    assert poll_to_end(segmind, submission.poll_url).status is JobStatus.COMPLETED

    sim.add_faults({"endpoint": "submit", "malformed": True, "count": 1})
    submit_error = raised(lambda: segmind.submit(WORKFLOW, {}))
    assert isinstance(submit_error, FinalError)
    assert submit_error.code is ErrorCode.MALFORMED_RESPONSE


@pytest.mark.integration
@pytest.mark.parametrize("field", ["error", "error_message"])
def test_a_failed_generation_reads_either_field(
    sim: RunningSimulator, segmind: SegmindClient, field: str
) -> None:
    sim.add_faults({"job": "fail", "error_field": field, "message": f"failed via {field}"})
    submission = segmind.submit(WORKFLOW, {})
    result = poll_to_end(segmind, submission.poll_url)
    assert result.status is JobStatus.FAILED
    assert result.error_message == f"failed via {field}"
    assert result.outputs is None


@pytest.mark.integration
def test_an_unknown_status_is_not_terminal(sim: RunningSimulator, segmind: SegmindClient) -> None:
    sim.add_faults({"job": "status", "status": "CANCELLED"})
    submission = segmind.submit(WORKFLOW, {})
    first = segmind.poll(submission.poll_url)
    assert first.status is JobStatus.UNKNOWN
    assert first.raw_status == "CANCELLED"
    assert first.error_message == "Request cancelled"
    assert not first.terminal
    # Still so once the job would be running.
    wait_until(
        lambda: all(job["processing_at"] < time.time() for job in sim.jobs()),
        timeout_s=DEADLINE_S,
        message="the job to be past its queue time",
    )
    later = segmind.poll(submission.poll_url)
    assert later.status is JobStatus.UNKNOWN
    assert not later.terminal


@pytest.mark.integration
def test_polling_goes_on_through_an_unknown_status(
    sim: RunningSimulator, segmind: SegmindClient
) -> None:
    sim.add_faults({"job": "status", "status": "CANCELLED", "forever": False})
    submission = segmind.submit(WORKFLOW, {})
    seen: list[JobStatus] = []

    def terminal() -> PollResult | None:
        result = segmind.poll(submission.poll_url)
        seen.append(result.status)
        return result if result.terminal else None

    result = wait_until(terminal, timeout_s=DEADLINE_S, interval_s=POLL_INTERVAL_S)
    assert seen[0] is JobStatus.UNKNOWN
    assert result.status is JobStatus.COMPLETED


@pytest.mark.integration
def test_a_never_finishing_job_stays_processing(
    sim: RunningSimulator, segmind: SegmindClient
) -> None:
    sim.add_faults({"job": "never_finish"})
    submission = segmind.submit(WORKFLOW, {})
    result = wait_until(
        lambda: (
            r if (r := segmind.poll(submission.poll_url)).status is JobStatus.PROCESSING else None
        ),
        timeout_s=DEADLINE_S,
        interval_s=POLL_INTERVAL_S,
        message="PROCESSING",
    )
    assert not result.terminal


def _expired(client: SegmindClient, poll_url: str) -> ExpiredError | None:
    try:
        client.poll(poll_url)
    except ExpiredError as exc:
        return exc
    return None


@pytest.mark.integration
def test_a_poll_404_after_success_is_expired(sim: RunningSimulator, segmind: SegmindClient) -> None:
    sim.reset(retention_s=500.0)  # x time_scale 0.002: records kept 1 s
    submission = segmind.submit(WORKFLOW, {})
    assert segmind.poll(submission.poll_url).status in (
        JobStatus.QUEUED,
        JobStatus.PROCESSING,
        JobStatus.COMPLETED,
    )
    error = wait_until(
        lambda: _expired(segmind, submission.poll_url),
        timeout_s=DEADLINE_S,
        interval_s=0.05,
        message="the record to expire",
    )
    assert error.code is ErrorCode.EXPIRED
    assert error.http_status == 404
    assert error.message == "Request not found or expired"
    assert_no_secret(error, SIM_API_KEY)


@pytest.mark.integration
def test_credits_and_cost_headers(sim: RunningSimulator, segmind: SegmindClient) -> None:
    sim.reset(cost_headers=True, free_credits=0.25)
    before = segmind.credits()
    assert before == Credits(credits=1000.0, free_credits=0.25)
    workflow = default_catalog().resolve("sketch-maker")
    submission = segmind.submit(workflow.workflow_id, workflow.default_inputs())
    assert submission.cost_usd == pytest.approx(workflow.price_usd)
    after = segmind.credits()
    assert after.credits == pytest.approx(1000.0 - sim.stats()["credits_charged_usd"])
    assert submission.remaining_credits == pytest.approx(after.credits)
    assert sim.stats()["credits_calls"] == 2


@pytest.mark.integration
def test_a_foreign_poll_url_sends_nothing(sim: RunningSimulator, segmind: SegmindClient) -> None:
    host, port = sim.url.removeprefix("http://").split(":")
    foreign = [
        f"http://localhost:{port}/workflows/request/{REQUEST_ID}",  # same socket, other name
        f"http://{host}:{int(port) + 1}/workflows/request/{REQUEST_ID}",
        f"https://{host}:{port}/workflows/request/{REQUEST_ID}",
        f"https://api.segmind.com/workflows/request/{REQUEST_ID}",
    ]
    for poll_url in foreign:
        error = raised(partial(segmind.poll, poll_url))
        assert error.code is ErrorCode.FOREIGN_POLL_URL
    stats = sim.stats()
    assert stats["submits"] == stats["polls"] == stats["credits_calls"] == 0
    assert stats["responses"] == {}


@pytest.mark.integration
def test_errors_from_the_simulator_pickle(sim: RunningSimulator, segmind: SegmindClient) -> None:
    sim.add_faults({"endpoint": "credits", "status": 502, "body": "html", "count": 1})
    error = raised(segmind.credits)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert copy == error
    assert str(copy) == str(error)


@pytest.mark.integration
def test_key_appears_in_no_log_record_even_at_debug_level(
    sim: RunningSimulator, segmind: SegmindClient, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx and httpcore log every request at DEBUG; none of it may carry the key."""
    caplog.set_level(logging.DEBUG)
    submission = segmind.submit(WORKFLOW, {}, client_request_id="log-check")
    poll_to_end(segmind, submission.poll_url)
    segmind.credits()
    sim.add_faults({"endpoint": "credits", "status": 401, "count": 1})
    with pytest.raises(FinalError):
        segmind.credits()
    assert any(record.name.startswith(("httpx", "httpcore")) for record in caplog.records)
    for record in caplog.records:
        assert sim.api_key not in record.getMessage()
        assert sim.api_key not in repr(record.__dict__)


def test_a_poll_echoing_the_key_in_its_error_or_outputs_is_redacted() -> None:
    """A generation's own texts travel on into the result: the key is scrubbed there too."""
    failed = {"status": "FAILED", "error_message": f"bad request with key {KEY}"}
    done = {"status": "COMPLETED", "output": json.dumps({"caption": f"echo {KEY}"})}
    replies = iter([failed, done])
    client, _ = make_client(lambda request: json_response(200, next(replies)))
    with client:
        first = client.poll(POLL_URL)
        second = client.poll(POLL_URL)
    assert first.error_message == "bad request with key [redacted]"
    assert second.outputs is not None
    assert second.outputs
    assert_no_secret(repr(first))
    assert_no_secret(repr(second))
