"""The simulator's configuration: one pydantic model shared by the CLI and the admin API.

``SimulatorConfig`` holds everything that can be set when the simulator starts (CLI
options) and overridden at runtime (``POST /_sim/reset`` with a JSON object of fields).
Fault rules are part of it: ``HttpFault`` for HTTP-level faults (a status, a dropped
connection, a delay, a malformed body), ``JobFault`` for what a created job does, and
``OutputFault`` for the downloads of served output files.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

Endpoint = Literal["submit", "poll", "credits", "any"]
BodyKind = Literal["json", "text", "html"]
FailureField = Literal["error", "error_message"]

#: Statuses HTTP forbids a body for: an injected fault always has one.
_BODYLESS_STATUSES = frozenset({204, 205, 304})
#: The config fields that make no sense to change on a running server.
STARTUP_ONLY_FIELDS = frozenset({"host", "port", "access_log"})


class HttpFault(BaseModel):
    """An HTTP-level fault applied to the next matching requests.

    A rule matches a request on ``endpoint`` (and ``workflow_id`` for submits) while its
    ``count`` lasts (``None``: until cleared), with ``probability``. The first matching
    rule is the one applied; it sleeps ``delay_s`` (if set), then does its action (if
    any): answer ``status`` with a ``body`` of the given kind, ``drop`` the TCP
    connection without a response, or answer 200 with a ``malformed`` (truncated) JSON
    body. A rule with only ``delay_s`` adds latency and the request is then handled
    normally. A faulted submit creates no job and charges nothing unless
    ``after_effect`` is true (the job is created and charged, the response still fails:
    a 504 whose outcome the client cannot know). ``hold_s`` holds the answer that many
    seconds once it is ready (the job of a submit already created): a client that gives
    up or dies meanwhile never learns what happened.

    Raises (on validation):
        pydantic.ValidationError: no action and no delay, more than one action, or a
            status that cannot carry a body (204, 205, 304).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: Endpoint = "any"
    workflow_id: str | None = None
    status: int | None = Field(default=None, ge=200, le=599)
    body: BodyKind = "json"
    message: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    drop: bool = False
    delay_s: float | None = Field(default=None, ge=0)
    malformed: bool = False
    count: int | None = Field(default=None, ge=1)
    probability: float = Field(default=1.0, ge=0, le=1)
    after_effect: bool = False
    hold_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        actions = sum((self.status is not None, self.drop, self.malformed))
        if actions > 1:
            raise ValueError("a fault has one action: status, drop or malformed")
        if actions == 0 and self.delay_s is None and self.hold_s is None:
            raise ValueError("a fault needs status, drop, malformed, delay_s or hold_s")
        if self.status in _BODYLESS_STATUSES:
            raise ValueError(f"status {self.status} cannot carry a body; use another status")
        return self

    @property
    def action(self) -> str | None:
        """The name this fault is counted under in ``faults_served`` (``None``: delay only)."""
        if self.status is not None:
            return str(self.status)
        if self.drop:
            return "drop"
        if self.malformed:
            return "malformed"
        return None


class JobFault(BaseModel):
    """A fault applied to the next jobs created by successful submits.

    ``job`` is what happens:

    - ``fail``: the job ends FAILED, its message under ``error_field`` (``None``: the
      seeded RNG picks ``error`` or ``error_message``) with ``message`` if given.
    - ``status``: polls answer the unknown ``status`` (default CANCELLED); with
      ``forever`` (default) from submission on and never anything else (its run still
      ends at ``done_at``, with that status as its outcome), otherwise only while the
      job runs, after which it ends normally.
    - ``never_finish``: the job stays PROCESSING.
    - ``output_as_list``: a COMPLETED job's ``output`` is a JSON list, not a string.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: Literal["fail", "status", "never_finish", "output_as_list"]
    workflow_id: str | None = None
    error_field: FailureField | None = None
    message: str | None = None
    status: str = Field(default="CANCELLED", min_length=1, max_length=64)
    forever: bool = True
    count: int | None = Field(default=None, ge=1)
    probability: float = Field(default=1.0, ge=0, le=1)

    @property
    def action(self) -> str:
        """The name this fault is counted under in ``faults_served``."""
        return f"job:{self.job}"


Fault = HttpFault | JobFault
_FAULTS = TypeAdapter(list[Fault])


def parse_faults(raw: Any) -> list[Fault]:
    """Fault rules from decoded JSON: a list of objects, each an HTTP or a job fault.

    An object with a ``job`` key is a ``JobFault``, any other an ``HttpFault``.

    Raises:
        ValueError: ``raw`` is not a list of valid rules (the message says which).
    """
    if not isinstance(raw, list):
        raise ValueError("faults must be a list of objects")
    rules: list[Fault] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"fault {index} is not an object")
        model: type[HttpFault] | type[JobFault] = JobFault if "job" in item else HttpFault
        try:
            rules.append(model.model_validate(item))
        except ValidationError as exc:
            raise ValueError(f"fault {index} is invalid: {validation_message(exc)}") from None
    return rules


def parse_fault_json(text: str) -> Fault:
    """One fault rule from a JSON object string (the CLI's ``--fault`` option).

    Raises:
        ValueError: not JSON or not a valid rule.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"fault is not JSON: {exc.msg}") from None
    return parse_faults([raw])[0]


def validation_message(exc: ValidationError) -> str:
    """The first error of ``exc`` as ``field: message``, without the input value."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "rule"
    return f"{where}: {error['msg']}"


#: Where output files are, as Segmind's CDN names them.
DEFAULT_OUTPUTS_URL = "https://images.segmind.com/outputs"
#: The size of a served output file, by output type (bytes).
DEFAULT_OUTPUT_BYTES = {"image": 64 * 1024, "video": 1024 * 1024, "audio": 256 * 1024,
                        "file": 128 * 1024}  # fmt: skip
#: The chunk size of a served output file's body (bytes), unless a fault says otherwise.
OUTPUT_CHUNK_BYTES = 64 * 1024

OutputFaultKind = Literal["status", "redirect", "size", "slow", "truncate"]
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class OutputFault(BaseModel):
    """A fault applied to the next downloads of served output files (``serve_outputs``).

    A rule matches a GET or HEAD of ``/outputs/<request_id>/<keyname>.<ext>`` whose
    ``keyname`` it names (``*``: every file) while its ``count`` lasts (``None``: until
    cleared or reset); the first matching rule applies. ``kind`` is what happens:

    - ``status``: answer ``status`` (400-599, required) with a short plain-text body and
      ``headers`` (e.g. ``Retry-After``). With ``count`` N: the first N downloads fail,
      the next ones succeed (a transient error); without: the file is gone (404).
    - ``redirect``: answer ``status`` (301, 302 default, 303, 307, 308) with
      ``Location: location``; ``{base}`` (the simulator's URL as the client named it),
      ``{path}`` (``/outputs/<request_id>/<name>``), ``{request_id}`` and ``{name}`` in
      it are replaced.
    - ``size``: serve ``size`` bytes (required) instead of the ``output_bytes`` size:
      a huge file. With ``announce_length`` false, without a ``Content-Length`` (chunked):
      the client learns the size only by reading it.
    - ``slow``: sleep ``delay_s`` (required) before each chunk of ``chunk_bytes``.
    - ``truncate``: announce the whole length, send half of it, then cut the connection.

    ``size``, ``announce_length``, ``delay_s`` and ``chunk_bytes`` apply to every kind
    that serves a body (``size``, ``slow``, ``truncate``). The bytes served are always
    a prefix of ``simulator.outputs.output_content`` of the path.

    Raises (on validation):
        pydantic.ValidationError: a kind without what it needs, or a status it cannot use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: OutputFaultKind
    keyname: str = Field(default="*", min_length=1)
    status: int | None = Field(default=None, ge=300, le=599)
    location: str | None = Field(default=None, min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    size: int | None = Field(default=None, ge=0)
    announce_length: bool = True
    delay_s: float | None = Field(default=None, gt=0)
    chunk_bytes: int = Field(default=OUTPUT_CHUNK_BYTES, ge=1, le=16 * 1024 * 1024)
    count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _fits_its_kind(self) -> Self:
        if self.kind == "status" and (self.status is None or self.status < 400):
            raise ValueError("a status fault needs a status from 400 to 599")
        if self.kind == "redirect":
            if self.location is None:
                raise ValueError("a redirect fault needs a location")
            if self.status is not None and self.status not in _REDIRECT_STATUSES:
                raise ValueError("a redirect's status is 301, 302, 303, 307 or 308")
        if self.kind in ("size", "slow", "truncate") and self.status is not None:
            raise ValueError(f"a {self.kind} fault serves the file: it takes no status")
        if self.kind == "size" and self.size is None:
            raise ValueError("a size fault needs a size")
        if self.kind == "slow" and self.delay_s is None:
            raise ValueError("a slow fault needs delay_s")
        return self

    @property
    def action(self) -> str:
        """The name this fault is counted under in ``faults_served``."""
        return f"output:{self.kind}"

    @property
    def answer_status(self) -> int:
        """The status of a ``status`` or ``redirect`` answer (200 for the others)."""
        if self.status is not None:
            return self.status
        return 302 if self.kind == "redirect" else 200


def parse_output_faults(raw: Any) -> list[OutputFault]:
    """Output fault rules from decoded JSON: a list of ``OutputFault`` objects.

    Raises:
        ValueError: ``raw`` is not a list of valid rules (the message says which).
    """
    if not isinstance(raw, list):
        raise ValueError("output_faults must be a list of objects")
    rules: list[OutputFault] = []
    for index, item in enumerate(raw):
        if isinstance(item, OutputFault):
            rules.append(item)
            continue
        if not isinstance(item, dict):
            raise ValueError(f"output fault {index} is not an object")
        try:
            rules.append(OutputFault.model_validate(item))
        except ValidationError as exc:
            raise ValueError(
                f"output fault {index} is invalid: {validation_message(exc)}"
            ) from None
    return rules


def parse_output_fault_json(text: str) -> OutputFault:
    """One output fault rule from a JSON object string (the CLI's ``--output-fault``).

    Raises:
        ValueError: not JSON or not a valid rule.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"output fault is not JSON: {exc.msg}") from None
    return parse_output_faults([raw])[0]


class SimulatorConfig(BaseModel):
    """Everything the simulator does, set at start and overridable at reset.

    Durations (job timelines, retention) are multiplied by ``time_scale``; the rate-limit
    window and injected delays are real seconds. Money is USD.

    Raises (on validation):
        pydantic.ValidationError: a field out of range or an unknown field.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    # SecretStr: the key never shows in a repr, a log line or an exception.
    api_key: SecretStr = SecretStr("sim-key")
    time_scale: float = Field(default=1.0, gt=0)
    seed: int | None = None

    # Rate limiting: fixed windows per API key; 0 means unlimited.
    rpm: int = Field(default=50, ge=0)
    rate_window_s: float = Field(default=60.0, gt=0)
    rate_limit_polls: bool = True
    retry_after: bool = False
    reset_header_format: Literal["iso", "epoch"] = "iso"

    # Money.
    credits: float = Field(default=100.0, ge=0)
    free_credits: float = Field(default=0.0, ge=0)
    default_price_usd: float = Field(default=0.25, ge=0)
    cost_headers: bool = False

    # Jobs.
    strict_workflows: bool = False
    retention_s: float = Field(default=3600.0, gt=0)
    duration_spread: float = Field(default=0.15, ge=0, le=3)
    fail_rate: float = Field(default=0.0, ge=0, le=1)

    # Random faults on every Segmind call, and explicit rules.
    error_rate: float = Field(default=0.0, ge=0, le=1)
    drop_rate: float = Field(default=0.0, ge=0, le=1)
    latency_s: float = Field(default=0.0, ge=0)
    faults: list[Annotated[Fault, Field(union_mode="left_to_right")]] = Field(default_factory=list)

    # Output files: where their URLs point, whether this server serves them, their sizes
    # by output type and the faults of their downloads. outputs_url None: this server's
    # own /outputs with serve_outputs, else Segmind's CDN.
    outputs_url: str | None = None
    serve_outputs: bool = False
    output_bytes: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_OUTPUT_BYTES))
    output_faults: list[OutputFault] = Field(default_factory=list)

    # Serving.
    public_url: str | None = None
    access_log: bool = False
    admin_remote: bool = False

    @field_serializer("api_key", when_used="json")
    def _mask_key(self, value: SecretStr) -> str:
        return mask_secret(value.get_secret_value())

    @field_validator("public_url", "outputs_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("the URL must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("output_bytes")
    @classmethod
    def _check_output_bytes(cls, value: dict[str, int]) -> dict[str, int]:
        for kind, size in value.items():
            if kind not in DEFAULT_OUTPUT_BYTES:
                raise ValueError(f"{kind!r} is not one of image, video, audio, file")
            if size < 0:
                raise ValueError(f"the size of {kind} must be >= 0")
        return value

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("api_key must not be empty")
        return value

    def outputs_base(self, server_url: str | None) -> str:
        """The base of file outputs' URLs: ``outputs_url`` when set, else
        ``<server_url>/outputs`` with ``serve_outputs`` (the URL the client reached this
        server on, or ``public_url``), else Segmind's CDN."""
        if self.outputs_url is not None:
            return self.outputs_url
        if self.serve_outputs and server_url is not None:
            return f"{server_url.rstrip('/')}/outputs"
        return DEFAULT_OUTPUTS_URL

    def with_overrides(self, overrides: dict[str, Any]) -> SimulatorConfig:
        """A copy of this config with ``overrides`` applied and validated.

        ``faults`` (and ``output_faults``) in the overrides replace the initial rules.
        ``host``, ``port`` and
        ``access_log`` cannot change on a running server.

        Raises:
            ValueError: an unknown field, a startup-only field, or an invalid value.
        """
        fixed = STARTUP_ONLY_FIELDS.intersection(overrides)
        if fixed:
            raise ValueError(f"cannot change {', '.join(sorted(fixed))} on a running simulator")
        data = self.model_dump()
        data["api_key"] = self.api_key.get_secret_value()
        data["faults"] = list(self.faults)
        data.update(overrides)
        if "faults" in overrides:
            data["faults"] = parse_faults(overrides["faults"])
        data["output_faults"] = list(self.output_faults)
        if "output_faults" in overrides:
            data["output_faults"] = parse_output_faults(overrides["output_faults"])
        try:
            return SimulatorConfig.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"invalid simulator config: {validation_message(exc)}") from None


def mask_secret(secret: str) -> str:
    """A form of ``secret`` safe to print: stars and, for long secrets, the last 4 characters.

    Secrets under 12 characters are masked entirely.
    """
    if len(secret) < 12:
        return "*" * 8
    return f"{'*' * 8}{secret[-4:]}"
