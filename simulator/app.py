"""The simulator's HTTP layer: a Starlette app wiring Segmind's endpoints to the domain.

Segmind endpoints (paths as on api.segmind.com):

- ``POST /workflows/{workflow_id}``: submit; ``GET /workflows/request/{request_id}``:
  poll; ``GET /v1/get-user-credits``: credits. Any other method on these paths is a
  405 with an HTML body, as Segmind's gateway answers.

Output files (``serve_outputs``), as Segmind's CDN serves them, without a key:
``GET|HEAD /outputs/{request_id}/{name}`` streams a COMPLETED job's file; the first
matching ``OutputFault`` rule may change the answer. Any other path there is a 404.

Admin endpoints under ``/_sim/`` (no auth; loopback clients only unless
``admin_remote``): ``GET stats``, ``GET jobs``, ``GET config``, ``GET|POST|DELETE
faults``, ``POST reset``.

Every Segmind call goes through the same pipeline: count it, configured latency, auth
(401), rate limit (429), the first matching fault rule (its delay, then its action),
the random ``error_rate`` / ``drop_rate`` faults, then the handler.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from simulator.config import (
    OUTPUT_CHUNK_BYTES,
    Endpoint,
    HttpFault,
    OutputFault,
    SimulatorConfig,
    parse_faults,
    parse_output_faults,
)
from simulator.outputs import output_content, output_content_type
from simulator.state import (
    REQUEST_ID_RE,
    InsufficientCreditsError,
    SimulatorState,
    UnknownWorkflowIdError,
    body_fingerprint,
)

#: Where ``SimulatorApp`` keeps the server's own ``send`` callable in the ASGI scope:
#: Starlette's middlewares wrap ``send``, and dropping a connection needs the original.
RAW_SEND_KEY = "segmind_simulator.raw_send"
#: The header a client may name each submit with (segmind-queue's client sends one per
#: POST), so that the counters can tell a retried POST from a new one.
CLIENT_REQUEST_ID_HEADER = "x-client-request-id"

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_RANDOM_ERRORS = (500, 502, 504)

Handler = Callable[[], Awaitable[Response]]


class SimulatorApp(Starlette):
    """The Starlette app, holding its ``SimulatorState`` as ``.simulator``."""

    def __init__(self, state: SimulatorState, routes: list[Route]) -> None:
        super().__init__(routes=routes)
        self.simulator = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND_KEY] = send
        await super().__call__(scope, receive, send)


class DropConnection(Response):
    """Closes the TCP connection without sending a byte of response.

    Under uvicorn the server's ``send`` is a bound method whose owner holds the asyncio
    transport, which is aborted. Elsewhere it falls back to declaring a Content-Length
    and sending fewer bytes, which the client sees as a broken response.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await _abort_connection(scope, send):
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"status": "', "more_body": True})


async def _abort_connection(scope: Scope, send: Send) -> bool:
    """Abort the TCP connection of this request under uvicorn; ``False`` elsewhere."""
    raw_send = scope.get(RAW_SEND_KEY, send)
    cycle = getattr(raw_send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    abort = getattr(transport, "abort", None)
    if not callable(abort):
        return False
    abort()
    # Let connection_lost run, so uvicorn marks the cycle disconnected and does not try
    # to answer "returned without starting/completing response" (a 500, an error log).
    for _ in range(10):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)
    return True


class CutStream(StreamingResponse):
    """A streamed body whose connection is cut after the last chunk: the client saw a
    ``Content-Length`` longer than what came (a truncated download)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope = scope
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await _abort_connection(self._scope, send)


async def _chunks(
    request_id: str, name: str, size: int, chunk_bytes: int, delay_s: float | None
) -> AsyncIterator[bytes]:
    for chunk in output_content(request_id, name, size, chunk_bytes=chunk_bytes):
        # Always give the loop a turn: a client that went away is noticed (the stream is
        # cancelled) before more of a huge file is made and written into a closed socket.
        await asyncio.sleep(delay_s or 0)
        yield chunk


def create_app(config: SimulatorConfig, *, state: SimulatorState | None = None) -> SimulatorApp:
    """The simulator app for ``config``.

    Args:
        config: the base config (``POST /_sim/reset`` returns to it).
        state: an existing state to serve (tests with a fake clock); a new one if omitted.
    """
    sim = state if state is not None else SimulatorState(config)

    # ------------------------------------------------------------------ the pipeline

    async def segmind_call(
        request: Request,
        endpoint: Endpoint,
        handler: Handler,
        *,
        workflow_id: str | None = None,
    ) -> Response:
        generation = sim.generation
        cfg = sim.config
        if cfg.latency_s > 0:
            await asyncio.sleep(cfg.latency_s)
            if sim.generation != generation:
                return _stale()
        identity = sim.authenticate(request.headers)
        if identity is None:
            return _answer(endpoint, _error(401, "Unauthorized: missing or invalid API key"))
        reset_at = sim.rate_limit(identity, endpoint)
        if reset_at is not None:
            response = _error(429, "Rate limit exceeded, please retry later")
            response.headers.update(sim.rate_limit_headers(reset_at))
            return _answer(endpoint, response)

        rule = sim.faults.match_http(endpoint, workflow_id, sim.rng)
        if rule is not None:
            faulted = await apply_fault(rule, endpoint, handler, generation)
            if rule.hold_s:
                await asyncio.sleep(rule.hold_s)
            return _answer(endpoint, faulted)
        if cfg.error_rate > 0 and sim.rng.random() < cfg.error_rate:
            status = sim.rng.choice(_RANDOM_ERRORS)
            sim.served_fault(str(status))
            return _answer(endpoint, _fault_body(status, "json" if status == 500 else "html"))
        if cfg.drop_rate > 0 and sim.rng.random() < cfg.drop_rate:
            sim.served_fault("drop")
            return _answer(endpoint, DropConnection())
        return _answer(endpoint, await handler())

    async def apply_fault(
        rule: HttpFault, endpoint: Endpoint, handler: Handler, generation: int
    ) -> Response:
        if rule.delay_s:
            sim.served_fault("delay")
            await asyncio.sleep(rule.delay_s)
            if sim.generation != generation:
                return _stale()
        action = rule.action
        if action is None:  # a delay only: handle normally
            return await handler()
        sim.served_fault(action)
        # A faulted submit changes nothing unless after_effect; polls and credits have
        # no effect, so their real answer can be computed (a malformed one truncates it).
        real = await handler() if (endpoint != "submit" or rule.after_effect) else None
        if rule.drop:
            return DropConnection()
        if rule.malformed:
            return _malformed(real)
        assert rule.status is not None
        response = _fault_body(rule.status, rule.body, rule.message)
        if rule.status == 429:
            response.headers.update(sim.rate_limit_headers())
        response.headers.update(rule.headers)
        return response

    def _answer(endpoint: Endpoint, response: Response) -> Response:
        outcome = "drop" if isinstance(response, DropConnection) else str(response.status_code)
        sim.counters.response(endpoint, outcome)
        return response

    # ------------------------------------------------------------------ Segmind endpoints

    async def submit(request: Request) -> Response:
        if request.method != "POST":
            return _method_not_allowed()
        workflow_id = request.path_params["workflow_id"]
        body = await request.body()
        client_request_id = request.headers.get(CLIENT_REQUEST_ID_HEADER) or body_fingerprint(body)
        sim.saw_submit(client_request_id)

        async def handle() -> Response:
            if not _is_json(request.headers.get("content-type", "")):
                # Segmind's "invalid content type" quirk: a 406 with a plain-text body.
                return PlainTextResponse(
                    "Invalid content type. Please use application/json", status_code=406
                )
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                payload = None
            if not isinstance(payload, dict):
                return _error(400, "Bad request: the body must be a JSON object of inputs")
            base = sim.config.public_url or f"{request.url.scheme}://{request.url.netloc}"
            try:
                job = sim.create_job(workflow_id, client_request_id, server_url=base)
            except UnknownWorkflowIdError:
                return _error(404, "Workflow not found")
            except InsufficientCreditsError:
                return PlainTextResponse(
                    "Insufficient credits. Please add credits to your account to continue.",
                    status_code=406,
                )
            headers: dict[str, str] = {}
            if sim.config.cost_headers:
                headers["x-cost"] = f"{job.price_usd:.4f}"
                headers["x-remaining-credits"] = f"{sim.credits_usd:.6f}"
            return JSONResponse(
                {
                    "message": "Request in queue",
                    "poll_url": f"{base}/workflows/request/{job.request_id}",
                    "request_id": job.request_id,
                    "status": "QUEUED",
                },
                headers=headers,
            )

        return await segmind_call(request, "submit", handle, workflow_id=workflow_id)

    async def poll(request: Request) -> Response:
        if request.method != "GET":
            return _method_not_allowed()
        request_id = request.path_params["request_id"]
        sim.saw_poll(request_id)

        async def handle() -> Response:
            job = sim.find_job(request_id) if REQUEST_ID_RE.match(request_id) else None
            if job is None:
                return _error(404, "Request not found or expired")
            return JSONResponse(job.poll_body(sim.clock()))

        return await segmind_call(request, "poll", handle)

    async def credits(request: Request) -> Response:
        if request.method != "GET":
            return _method_not_allowed()
        sim.saw_credits_call()

        async def handle() -> Response:
            return JSONResponse(
                {
                    "credits": round(sim.credits_usd, 10),
                    "free-credits": round(sim.config.free_credits, 10),
                }
            )

        return await segmind_call(request, "credits", handle)

    async def output_file(request: Request) -> Response:
        """An output file, as Segmind's CDN serves it: no key needed, the bytes streamed."""
        response = serve_output(request)
        sim.output_response(str(response.status_code))
        return response

    def serve_output(request: Request) -> Response:
        request_id, name = request.path_params["request_id"], request.path_params["name"]
        size = sim.output_file_size(request_id, name)
        if size is None:
            return PlainTextResponse("Not Found", status_code=404)
        sim.saw_output_download(request_id, name)
        rule = sim.output_faults.match(name.rsplit(".", 1)[0])
        if rule is not None:
            sim.served_fault(rule.action)
            if rule.kind == "status":
                return PlainTextResponse(
                    _phrase(rule.answer_status),
                    status_code=rule.answer_status,
                    headers=rule.headers,
                )
            if rule.kind == "redirect":
                return redirect(request, rule, request_id, name)
        size = rule.size if rule is not None and rule.size is not None else size
        announce = rule.announce_length if rule is not None else True
        headers = {"Content-Length": str(size)} if announce else {}
        media = output_content_type(name)
        if request.method == "HEAD":
            head = Response(headers=headers, media_type=media)
            if not announce:
                del head.headers["content-length"]
            return head
        chunk_bytes = rule.chunk_bytes if rule is not None else OUTPUT_CHUNK_BYTES
        delay_s = rule.delay_s if rule is not None else None
        if rule is not None and rule.kind == "truncate":
            body = _chunks(request_id, name, size // 2, chunk_bytes, delay_s)
            return CutStream(body, headers={"Content-Length": str(size)}, media_type=media)
        body = _chunks(request_id, name, size, chunk_bytes, delay_s)
        return StreamingResponse(body, headers=headers, media_type=media)

    def redirect(request: Request, rule: OutputFault, request_id: str, name: str) -> Response:
        assert rule.location is not None
        base = sim.config.public_url or f"{request.url.scheme}://{request.url.netloc}"
        location = (
            rule.location.replace("{base}", base)
            .replace("{path}", request.url.path)
            .replace("{request_id}", request_id)
            .replace("{name}", name)
        )
        return Response(
            status_code=rule.answer_status, headers={**rule.headers, "Location": location}
        )

    # ------------------------------------------------------------------ admin endpoints

    def admin(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not sim.config.admin_remote and not _is_loopback(request):
                return _error(403, "the simulator admin API answers loopback clients only")
            return await handler(request)

        return guarded

    async def stats(request: Request) -> Response:
        return JSONResponse(sim.stats())

    async def jobs(request: Request) -> Response:
        return JSONResponse(sim.jobs_json())

    async def show_config(request: Request) -> Response:
        return JSONResponse(sim.config.model_dump(mode="json"))

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            cleared = sim.faults.clear() + sim.output_faults.clear()
            return JSONResponse({"cleared": cleared})
        if request.method == "POST":
            try:
                raw = await _json_object(request)
                # {"faults": [...]} and/or {"output_faults": [...]}; neither is an error.
                only_output = "output_faults" in raw and "faults" not in raw
                rules = [] if only_output else parse_faults(raw.get("faults"))
                output_rules = parse_output_faults(raw.get("output_faults", []))
            except ValueError as exc:
                return _error(400, str(exc))
            sim.faults.add(rules)
            sim.output_faults.add(output_rules)
        return JSONResponse(
            {"faults": sim.faults.snapshot(), "output_faults": sim.output_faults.snapshot()}
        )

    async def reset(request: Request) -> Response:
        try:
            overrides = await _json_object(request, allow_empty=True)
            new_config = sim.reset(overrides)
        except ValueError as exc:
            return _error(400, str(exc))
        return JSONResponse({"config": new_config.model_dump(mode="json")})

    routes = [
        Route("/workflows/request/{request_id}", poll, methods=_ALL_METHODS),
        Route("/workflows/{workflow_id}", submit, methods=_ALL_METHODS),
        Route("/v1/get-user-credits", credits, methods=_ALL_METHODS),
        Route("/outputs/{request_id}/{name}", output_file, methods=["GET", "HEAD"]),
        Route("/_sim/stats", admin(stats), methods=["GET"]),
        Route("/_sim/jobs", admin(jobs), methods=["GET"]),
        Route("/_sim/config", admin(show_config), methods=["GET"]),
        Route("/_sim/faults", admin(faults), methods=["GET", "POST", "DELETE"]),
        Route("/_sim/reset", admin(reset), methods=["POST"]),
    ]
    return SimulatorApp(sim, routes)


# ---------------------------------------------------------------------- responses


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _stale() -> Response:
    # The simulator was reset while this request waited: it must change nothing.
    return PlainTextResponse("The simulator was reset during this request", status_code=503)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _html_page(status: int, title: str) -> str:
    # The shape of an nginx / gateway error page.
    return (
        f"<html>\r\n<head><title>{status} {title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


def _fault_body(status: int, kind: str, message: str | None = None) -> Response:
    text = message or _phrase(status)
    if kind == "text":
        return PlainTextResponse(text, status_code=status)
    if kind == "html":
        return HTMLResponse(_html_page(status, text), status_code=status)
    return _error(status, text)


def _method_not_allowed() -> Response:
    return HTMLResponse(_html_page(405, "Not Allowed"), status_code=405)


def _malformed(real: Response | None) -> Response:
    body = bytes(real.body) if real is not None and real.body else b""
    if not body.startswith(b"{"):
        body = b'{"message": "Request in queue", "poll_url": "https://api.segmind.com/workflows/'
    # Cut inside the object: never valid JSON, whatever the original was.
    cut = body[: max(2, len(body) // 2)]
    return Response(cut, status_code=200, media_type="application/json")


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _json_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        ValueError: not JSON or not an object (an empty body is ``{}`` with ``allow_empty``).
    """
    body = await request.body()
    if allow_empty and not body.strip():
        return {}
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body must be a JSON object") from None
    if not isinstance(raw, dict):
        raise ValueError("the body must be a JSON object")
    return raw
