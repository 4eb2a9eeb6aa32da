"""The contract between producers and the service: the request, the result, and validation.

A request is the single argument of the ``submit_workflow`` actor; a result is the JSON body
published to the request's ``reply_to`` queue with ``correlation_id`` set to its
``request_id``. Both are pydantic models; their JSON Schemas live in ``producers/schemas/``.

``validate_request`` turns whatever arrived on the queue into an ``AcceptedRequest`` or raises
``RequestRejected`` with a code and a message fit to be sent back to the producer: a request
that cannot be valid is answered REJECTED and costs no Segmind call. The Dramatiq message
around a request is checked before that, by ``producers.envelope``.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from producers import wire
from producers.catalog import Catalog, InputSpec, UnknownWorkflowError, Workflow

DEFAULT_REPLY_TO: Final = "segmind.results"
#: Bytes of the request serialized as compact JSON; larger requests are REJECTED.
DEFAULT_MAX_REQUEST_BYTES: Final = 256 * 1024
#: Segmind keeps results about an hour after submission; a deadline past it cannot be kept.
MAX_DEADLINE_S: Final = 3600.0
#: The longest ``start_by_s``: a day (a request that may wait longer needs no deadline).
MAX_START_BY_S: Final = 86400.0
MAX_URI_LENGTH: Final = 4096
MAX_ECHOED_METADATA_BYTES: Final = 16 * 1024
#: The longest reason a rejection carries: it may quote the request, which may be huge.
MAX_REASON_CHARS: Final = 1000
_INT64 = 2**63

REQUEST_ID_PATTERN: Final = r"^[\x21-\x7e]{1,128}$"
TENANT_PATTERN: Final = r"^[A-Za-z0-9._-]{1,64}$"
#: The tenant of a request that names none.
DEFAULT_TENANT: Final = "default"
# AMQP queue names are at most 255 bytes; "amq." names are reserved by the broker.
REPLY_TO_PATTERN: Final = r"^[A-Za-z0-9._:/@-]{1,255}$"
# Used with fullmatch: with match, "$" also matches before a trailing newline.
_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
_REPLY_TO_RE = re.compile(REPLY_TO_PATTERN)
_TENANT_RE = re.compile(TENANT_PATTERN)


class Status(StrEnum):
    """How a job ended. Every job ends in exactly one of these."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    #: Never sent to Segmind: bad input, unknown workflow, or the budget guard.
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"


class ErrorCode(StrEnum):
    """Machine-readable reasons in ``Result.error.code``, shared by validation and the worker."""

    # The request itself (REJECTED, no Segmind call).
    INVALID_REQUEST = "invalid_request"
    REQUEST_TOO_LARGE = "request_too_large"
    UNKNOWN_WORKFLOW = "unknown_workflow"
    UNKNOWN_INPUT = "unknown_input"
    INVALID_INPUT = "invalid_input"
    # Segmind's answers.
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    WORKFLOW_NOT_FOUND = "workflow_not_found"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    CLIENT_ERROR = "client_error"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    MALFORMED_RESPONSE = "malformed_response"
    RESPONSE_TOO_LARGE = "response_too_large"
    EXPIRED = "expired"
    GENERATION_FAILED = "generation_failed"
    FOREIGN_POLL_URL = "foreign_poll_url"
    # The service's own decisions.
    SUBMIT_OUTCOME_UNKNOWN = "submit_outcome_unknown"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    BUDGET_EXHAUSTED = "budget_exhausted"
    START_DEADLINE = "start_deadline"
    CANCELLED = "cancelled"


class Request(BaseModel):
    """A workflow request as a producer publishes it: the one argument of ``submit_workflow``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    request_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex, pattern=REQUEST_ID_PATTERN, max_length=128
    )
    """The caller's idempotency key (printable ASCII, no spaces): one request_id is never
    paid for twice. Generated when absent."""
    workflow: str = Field(min_length=1, max_length=200)
    """A catalog name (``character-video``) or a raw workflow id (``<24 hex>-v<N>``)."""
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    """The workflow's inputs; checked against the catalog for catalogued workflows, passed
    through for raw ids. Missing inputs take Segmind's defaults."""
    reply_to: str = Field(
        default=DEFAULT_REPLY_TO,
        pattern=REPLY_TO_PATTERN,
        # The schema says what the validator below does: no reserved name.
        json_schema_extra={"not": {"pattern": r"^amq\."}},
    )
    """The queue that receives the result: a named queue (durable, or exclusive or
    auto-delete while its consumer is connected). ``amq.*`` names (server-named queues,
    Direct Reply-to) are refused: they vanish with the connection that made them, before a
    generation ends."""
    # Strict numbers: a value of the wrong JSON type ("5", true, 5.0) is refused, as the
    # JSON Schema says, not converted. (The strings are strict already: pydantic never
    # turns a JSON number into a string.)
    priority: int | None = Field(default=None, ge=0, le=9, strict=True)
    """0 (default) to 9; higher runs sooner when the queue is backed up."""
    deadline_s: float | None = Field(default=None, gt=0, le=MAX_DEADLINE_S, strict=True)
    """Seconds from submission after which the job ends TIMED_OUT (the worker's default
    when absent; at most an hour, Segmind's retention)."""
    start_by_s: float | None = Field(default=None, gt=0, le=MAX_START_BY_S, strict=True)
    """Seconds from publishing within which the job must be submitted to Segmind; past
    them, still waiting (for rate, budget or a retry), it ends CANCELLED with the code
    ``start_deadline``, unpaid. No limit when absent."""
    progress: bool | None = Field(default=None, strict=True)
    """``true``: publish progress messages (AMQP ``type`` ``segmind.progress``, see
    ``Progress``) to ``reply_to`` before the one final result. None when absent."""
    tenant: str | None = Field(default=None, pattern=TENANT_PATTERN, max_length=64)
    """Whose request this is (1-64 of ``[A-Za-z0-9._-]``): waiting requests of different
    tenants take the rate in turn, and each tenant's spend and budget are its own.
    Absent: the ``default`` tenant."""
    metadata: dict[str, JsonValue] | None = None
    """Anything the producer wants back: echoed unchanged in the result."""

    @field_validator("reply_to")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith("amq."):
            raise ValueError(
                "amq.* queues (server-named, Direct Reply-to) cannot hold a result until it "
                "is read: name the reply queue"
            )
        return value


class Cancel(BaseModel):
    """A cancel message: the body published to the cancels queue (``segmind.cancels``), or
    the one argument of the ``cancel_workflow`` actor."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    request_ids: list[Annotated[str, Field(pattern=REQUEST_ID_PATTERN, max_length=128)]] = Field(
        min_length=1, max_length=wire.MAX_CANCEL_IDS
    )
    """The requests to cancel (1 to 1000). Never POSTed ones end CANCELLED unpaid; POSTed
    ones are no longer followed and end CANCELLED, charged; finished ones are left as they
    are."""


class Output(BaseModel):
    """One item of a finished generation: Segmind's ``{keyname, value: {data, type}}``, flat."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    keyname: str
    """The output's name in the workflow."""
    type: str
    """What ``data`` holds: image, video, audio, text, ... (Segmind's ``value.type``)."""
    data: JsonValue
    """A URL for files, or the text itself. Segmind keeps its files about 7 days; with
    ``OUTPUT_STORE`` set, a file stored there is named by its location in the store
    (``file:///...`` or ``s3://bucket/key``) and Segmind's URL moves to ``source_url``."""
    source_url: str | None = None
    """Segmind's URL of a file whose stored copy ``data`` names."""
    sha256: str | None = None
    """The stored copy's SHA-256, hex."""
    content_type: str | None = None
    """The stored copy's media type, as the output host served it."""
    stored: bool | None = None
    """With ``OUTPUT_STORE`` set, for a file: whether it was copied; false keeps Segmind's
    URL in ``data`` and says why in ``store_error`` (the job still COMPLETED)."""
    store_error: str | None = None
    """Why the file could not be copied."""
    bytes: int | None = Field(default=None, ge=0)
    """The stored copy's size."""


class ErrorInfo(BaseModel):
    """Why a job did not complete."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    code: ErrorCode
    """A stable machine-readable reason."""
    message: str
    """A human-readable explanation; Segmind's own words when it gave any."""
    http_status: int | None = None
    """The HTTP status Segmind answered with, when the error came from Segmind."""


class Timings(BaseModel):
    """When a job moved, and how long each part took."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    queued_at: datetime | None = None
    """When the producer published the request (UTC)."""
    submitted_at: datetime | None = None
    """When Segmind accepted the job (UTC)."""
    completed_at: datetime | None = None
    """When the job reached its terminal state (UTC)."""
    queue_wait_s: float | None = Field(default=None, ge=0)
    """Seconds from publish to Segmind's acceptance."""
    generation_s: float | None = Field(default=None, ge=0)
    """Seconds from Segmind's acceptance to the terminal state."""
    total_s: float | None = Field(default=None, ge=0)
    """Seconds from publish to the terminal state."""


class Result(BaseModel):
    """The one terminal message a job produces on its ``reply_to`` queue.

    Published persistent with ``correlation_id`` = ``request_id``.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    request_id: str
    """The request's idempotency key."""
    workflow: str
    """The workflow as the request named it."""
    workflow_id: str | None = None
    """Segmind's workflow id, when the workflow was known."""
    status: Status
    """COMPLETED, FAILED, REJECTED (never sent to Segmind), TIMED_OUT or CANCELLED."""
    outputs: list[Output] | None = None
    """The generation's outputs; present exactly when the status is COMPLETED."""
    error: ErrorInfo | None = None
    """Why the job did not complete; present exactly when the status is not COMPLETED."""
    segmind_request_id: str | None = None
    """Segmind's id for the generation, when it was submitted."""
    cost_usd: float | None = None
    """What the job cost: Segmind's reported cost, else the catalog price; 0 when not run."""
    timings: Timings = Field(default_factory=Timings)
    """When the job moved and how long each part took."""
    polls: int = Field(default=0, ge=0)
    """How many times Segmind was polled for this job."""
    tenant: str | None = None
    """The request's tenant (``default`` when it named none), when it could be read."""
    metadata: dict[str, JsonValue] | None = None
    """The request's metadata, unchanged."""

    @model_validator(mode="after")
    def _outputs_xor_error(self) -> Result:
        if self.status is Status.COMPLETED:
            if self.outputs is None or self.error is not None:
                raise ValueError("a COMPLETED result has outputs and no error")
        elif self.error is None or self.outputs is not None:
            raise ValueError(f"a {self.status} result has an error and no outputs")
        return self


class ProgressEvent(StrEnum):
    """What a progress message reports."""

    #: The service took the request: valid, recorded, waiting for its turn (rate, budget).
    ACCEPTED = "accepted"
    #: Segmind accepted the job: from here it is paid for.
    SUBMITTED = "submitted"
    #: A poll first found the job PROCESSING.
    PROCESSING = "processing"
    #: A poll found the job still running (at most one of these every
    #: ``PROGRESS_INTERVAL_S``).
    POLLED = "polled"


class Progress(BaseModel):
    """A progress message: published to a request's ``reply_to`` when it asked for them
    (``progress: true``), with AMQP ``type`` ``segmind.progress`` and ``correlation_id`` =
    ``request_id``; never persistent, and never instead of the one final ``Result`` (it
    has no ``status``). Best effort: one may be lost, none comes after the result."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    request_id: str
    """The request's idempotency key."""
    workflow: str
    """The workflow as the request named it."""
    event: ProgressEvent
    """What happened: accepted, submitted, processing or polled."""
    state: str
    """Where the request stands in the ledger, as ``segmind-queue get`` says it: NEW
    (waiting its turn), SUBMITTING or SUBMITTED."""
    segmind_status: str | None = None
    """What the last poll read (QUEUED, PROCESSING), once polled."""
    segmind_request_id: str | None = None
    """Segmind's id for the generation, once submitted."""
    polls: int = Field(default=0, ge=0)
    """Polls so far."""
    queue_position: int | None = Field(default=None, ge=0)
    """Requests ahead of this one in the service's admission line, where known."""
    eta: datetime | None = None
    """When the job will likely end, from its workflow's learned durations (UTC)."""
    eta_s: float | None = None
    """Seconds from ``at`` to ``eta`` (negative when overdue)."""
    at: datetime
    """When the event happened (UTC)."""


class RequestRejected(Exception):
    """A request that cannot be valid; it is answered REJECTED and never sent to Segmind.

    Attributes:
        code: the reason, one of the request codes of ``ErrorCode``.
        message: a human-readable explanation, safe to send back to the producer (at most
            ``MAX_REASON_CHARS`` characters: a longer one is cut).
        request_id: the request's id when it could be read, else ``None``.
        reply_to: where to send the REJECTED result when it could be read, else ``None``.
        workflow: the workflow as given when it could be read, else ``None``.
        metadata: the metadata to echo when it could be read, else ``None``.
        tenant: the tenant when it could be read (``default`` when absent), else ``None``.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: str | None = None,
        reply_to: str | None = None,
        workflow: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
        tenant: str | None = None,
    ) -> None:
        message = shorten(message)
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.reply_to = reply_to
        self.workflow = workflow
        self.metadata = metadata
        self.tenant = tenant

    def to_result(self, request_id: str) -> Result:
        """The REJECTED result for this request (``request_id`` when none could be read)."""
        return Result(
            request_id=self.request_id or request_id,
            workflow=self.workflow or "",
            status=Status.REJECTED,
            error=ErrorInfo(code=self.code, message=self.message),
            cost_usd=0.0,
            tenant=self.tenant,
            metadata=self.metadata,
        )


class AcceptedRequest(BaseModel):
    """A request that passed validation, with its workflow resolved and inputs normalized."""

    model_config = ConfigDict(frozen=True)

    request: Request
    workflow: Workflow
    inputs: dict[str, JsonValue]


def validate_request(
    payload: object, catalog: Catalog, *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> AcceptedRequest:
    """Check a request as received from the queue against the contract and the catalog.

    Args:
        payload: the decoded request (normally a dict from the message's JSON).
        catalog: the workflows the service knows.
        max_bytes: the largest serialized request accepted.

    Returns:
        The request with its workflow resolved and its inputs normalized (integer inputs
        given as digit strings become integers, as Segmind's pages type them).

    Raises:
        RequestRejected: the request cannot be valid; carries what could be read of its
            id, reply_to, workflow and metadata so the rejection can be answered. Nothing
            else: any JSON value (and any Python value) ends accepted or rejected, and the
            rejection's ``to_result`` always builds and serializes.
    """
    ids = readable_fields(payload)
    if not isinstance(payload, dict):
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            f"a request is a JSON object, not {json_type(payload)}",
            **ids,
        )
    size = _serialized_size(payload)
    if size is None:
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            "the request is not JSON data (it holds NaN, Infinity, a lone surrogate, "
            "or nests too deep)",
            **ids,
        )
    if size > max_bytes:
        raise RequestRejected(
            ErrorCode.REQUEST_TOO_LARGE,
            f"the request is {size} bytes as JSON; the limit is {max_bytes}",
            **ids,
        )
    try:
        request = Request.model_validate(payload)
    except ValidationError as exc:
        raise RequestRejected(ErrorCode.INVALID_REQUEST, _describe(exc), **ids) from None
    try:
        workflow = catalog.resolve(request.workflow)
    except (UnknownWorkflowError, ValidationError):
        # A ValidationError: an id-like name the catalog's Workflow model refuses (a
        # trailing newline passes the catalog's ``$`` but not the model's pattern).
        unknown = UnknownWorkflowError(request.workflow)
        raise RequestRejected(ErrorCode.UNKNOWN_WORKFLOW, str(unknown), **ids) from None
    inputs = _check_inputs(workflow, request.inputs, ids)
    return AcceptedRequest(request=request, workflow=workflow, inputs=inputs)


def _check_inputs(
    workflow: Workflow, inputs: dict[str, JsonValue], ids: dict[str, Any]
) -> dict[str, JsonValue]:
    if not workflow.in_catalog:
        return dict(inputs)
    normalized: dict[str, JsonValue] = {}
    for name, value in inputs.items():
        spec = workflow.input(name)
        if spec is None:
            allowed = ", ".join(s.name for s in workflow.inputs or ()) or "none"
            raise RequestRejected(
                ErrorCode.UNKNOWN_INPUT,
                f"workflow {workflow.name!r} has no input {name[:80]!r} (inputs: {allowed})",
                **ids,
            )
        problem, value = _check_input(spec, value)
        if problem:
            raise RequestRejected(
                ErrorCode.INVALID_INPUT, f"input {name!r} of {workflow.name!r} {problem}", **ids
            )
        normalized[name] = value
    return normalized


def _check_input(spec: InputSpec, value: JsonValue) -> tuple[str | None, JsonValue]:
    """``(problem, normalized value)``; ``problem`` is ``None`` when the value is fine."""
    if spec.type == "integer":
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value.strip()):
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be an integer, not {json_type(value)}", value
        if not -_INT64 <= value < _INT64:
            return "is out of the 64-bit integer range", value
        return None, value
    if not isinstance(value, str):
        return f"must be a string, not {json_type(value)}", value
    if spec.type == "uri":
        return _check_uri(value), value
    return None, value


#: Unicode categories a URL never holds: separators, controls, invisible formatting (bidi
#: overrides, zero-width characters), surrogates, private-use and unassigned code points.
_NOT_IN_URLS: Final = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"})


def _check_uri(value: str) -> str | None:
    if len(value) > MAX_URI_LENGTH:
        return f"is longer than {MAX_URI_LENGTH} characters"
    if any(ch.isspace() or unicodedata.category(ch) in _NOT_IN_URLS for ch in value):
        return "must be a URL without whitespace, control or invisible characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (reading it checks it: a port out of 0-65535 raises)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    return None


def readable_fields(payload: object) -> dict[str, Any]:
    """What can safely be read of a request that may be invalid, to answer its rejection:
    the keyword arguments of ``RequestRejected`` (request_id, reply_to, workflow, tenant,
    metadata) that ``payload`` holds in a usable form."""
    if not isinstance(payload, dict):
        return {}
    found: dict[str, Any] = {}
    request_id = payload.get("request_id")
    if isinstance(request_id, str) and _REQUEST_ID_RE.fullmatch(request_id):
        found["request_id"] = request_id
    reply_to = payload.get("reply_to", DEFAULT_REPLY_TO)
    if isinstance(reply_to, str) and _REPLY_TO_RE.fullmatch(reply_to) and reply_to[:4] != "amq.":
        found["reply_to"] = reply_to
    tenant = payload.get("tenant", DEFAULT_TENANT)
    if isinstance(tenant, str) and _TENANT_RE.fullmatch(tenant):
        found["tenant"] = tenant
    workflow = payload.get("workflow")
    if isinstance(workflow, str):
        # A lone surrogate cannot be written as UTF-8: the result must still serialize.
        found["workflow"] = _SURROGATE_RE.sub("\ufffd", workflow[:200])
    metadata = payload.get("metadata")
    # Echo metadata back only while it is small JSON: a rejection must never be too large.
    size = _serialized_size(metadata) if isinstance(metadata, dict) else None
    if size is not None and size <= MAX_ECHOED_METADATA_BYTES and _is_metadata(metadata):
        found["metadata"] = metadata
    return found


_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_METADATA: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(dict[str, JsonValue])


def _is_metadata(value: object) -> bool:
    """Whether ``value`` is metadata a ``Result`` takes (pydantic refuses deep nesting)."""
    try:
        _METADATA.validate_python(value, strict=True)
    except (ValidationError, RecursionError):
        return False
    return True


def _serialized_size(value: object) -> int | None:
    """Bytes of ``value`` as compact UTF-8 JSON; ``None`` when it is not JSON data: not
    serializable, NaN or an infinity (Python's ``json`` reads and writes them, JSON has
    none), a lone surrogate (no UTF-8), or nested deeper than Python can walk."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return len(text.encode())
    except (TypeError, ValueError, RecursionError):
        return None


def shorten(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _describe(exc: ValidationError) -> str:
    # include_input=False: never echo a (possibly huge or sensitive) value back.
    problems = []
    for error in exc.errors(include_input=False, include_url=False)[:10]:
        # A key in the path may be anything the producer sent: each part is cut short.
        where = ".".join(shorten(str(part), 40) for part in error["loc"][:8]) or "request"
        problems.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def json_type(value: object) -> str:
    """What JSON calls ``value``'s type, with an article (``"an array"``), for messages."""
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__
