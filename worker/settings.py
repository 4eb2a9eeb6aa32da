"""The worker's settings, read from the environment.

Every setting is an environment variable named after its field in upper case, with no prefix
(``segmind_api_url`` is ``SEGMIND_API_URL``). This is one class that grows: add new settings
here as fields with a default and a docstring line.

The Segmind API key comes from ``SEGMIND_API_KEY`` or, for Docker and Kubernetes secrets,
from the file named by ``SEGMIND_API_KEY_FILE``. It is held as a ``SecretStr`` and only
materialized into the ``x-api-key`` header by the client; it never appears in a repr, a log
line or an exception message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from producers import wire
from producers.topology import DEFAULT_DELIVERY_LIMIT, QueueType, Topology
from producers.wire import DEFAULT_AMQP_URL
from worker.outputs.policy import DEFAULT_FETCH_HOSTS, parse_fetch_hosts

API_KEY_ENV: Final = "SEGMIND_API_KEY"
API_KEY_FILE_ENV: Final = "SEGMIND_API_KEY_FILE"
DEFAULT_API_URL: Final = "https://api.segmind.com"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
#: Segmind keeps a generation's record about an hour; a job must end well before that.
SEGMIND_RETENTION_S: Final = 3600.0
#: RabbitMQ closes a channel whose delivery stays unacked 30 minutes (consumer_timeout), and
#: Dramatiq holds a delayed message unacked until it is due: every delay stays under this.
MAX_DELAY_S: Final = 1500.0
#: The longest a ledger write (one Redis command) takes before it fails the step:
#: ``RedisStore``'s connect and command timeouts (5 s each), tried twice (retry on timeout).
LEDGER_WRITE_BOUND_S: Final = 20.0
#: The longest a confirmed publish takes on a connection that must be opened again: pika's
#: stack timeout, which bounds a whole connection handshake (15 s by default; the result
#: publisher sets 10 s). A broker that stays down fails the step, which is redelivered and
#: resumed from the ledger: no shutdown timeout has to wait for it.
PUBLISH_BOUND_S: Final = 15.0
# A queue name Dramatiq and RabbitMQ both accept (Dramatiq appends ".DQ" and ".XQ").
_QUEUE_NAME: Final = r"^[A-Za-z0-9_-][A-Za-z0-9._:-]{0,200}$"
#: A secret file larger than this is not an API key; refuse it instead of reading it all.
_MAX_KEY_FILE_BYTES: Final = 64 * 1024


class SettingsError(ValueError):
    """A setting is missing or unusable. The message never contains a secret."""


class MissingApiKeyError(SettingsError):
    """Neither ``SEGMIND_API_KEY`` nor ``SEGMIND_API_KEY_FILE`` is set."""


class ApiKeyFileError(SettingsError):
    """``SEGMIND_API_KEY_FILE`` names a file that cannot be read."""


class InvalidApiKeyError(SettingsError):
    """The key is set but unusable: empty, or not sendable as a header, or set twice."""


class Settings(BaseSettings):
    """Worker settings (environment variables, upper-cased field names, no prefix).

    Attributes:
        segmind_api_key: the API key (``SEGMIND_API_KEY``); read it with ``api_key()``.
        segmind_api_key_file: a file holding the key (``SEGMIND_API_KEY_FILE``), for
            Docker/Kubernetes secrets; surrounding whitespace is stripped.
        segmind_api_url: the API's base URL: http or https, no path, query or credentials.
            Poll URLs are followed only when they point at this scheme, host and port.
        segmind_connect_timeout_s: seconds to establish a connection.
        segmind_read_timeout_s: seconds to wait for each read from the socket.
        segmind_write_timeout_s: seconds to wait for each write to the socket.
        segmind_pool_timeout_s: seconds to wait for a free connection from the pool.
        segmind_total_timeout_s: wall-clock seconds for a whole call, checked as the body
            arrives; bounds a server that trickles bytes just fast enough to beat the read
            timeout.
        segmind_max_response_bytes: the largest successful response body read; larger is
            the ``response_too_large`` error.
        segmind_max_rate_limit_wait_s: the longest wait taken from a 429's headers; a
            larger requested wait is clamped to it.
        amqp_url: RabbitMQ (``amqp://`` or ``amqps://``); several URLs separated by ``;``
            are tried in turn (a cluster's nodes: a worker whose node dies goes on with
            the next).
        amqp_queue_type: the type of every queue the service declares, ``classic`` or
            ``quorum`` (``producers.topology``).
        amqp_delivery_limit: on quorum queues, the deliveries a message gets before it is
            dead-lettered (``x-delivery-limit``); held delayed messages are refreshed
            before they reach it.
        redis_url: Redis, for the submit ledger (``redis://`` or ``rediss://``), or its
            Sentinels: ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``
            (``rediss+sentinel://`` for TLS; ``worker.store.redis_client``).
        redis_sentinel_password: the Sentinels' own password, when they have one (the
            URL's password is the Redis servers').
        ledger_min_replicas: the Redis replicas that must acknowledge the ledger write
            guarding a POST (``SUBMITTING``, and the record of Segmind's answer) before the
            POST is sent (Redis ``WAIT``); 0 does not wait.
        ledger_replica_timeout_s: the longest one ``WAIT`` for those replicas takes.
        redis_key_prefix: the prefix of every Redis key the service writes.
        requests_queue: the queue producers publish requests to.
        polls_queue: the queue of the poll actor.
        cancels_queue: the queue of cancel messages (``segmind-queue cancel``).
        results_dead_letter_queue: where a result goes that its reply queue refused.
        segmind_min_poll_interval_s: the shortest time between two polls of one job
            (Segmind asks for 7 s).
        segmind_job_deadline_s: seconds from submission after which a job that has not
            ended is TIMED_OUT, unless its request sets ``deadline_s``; under Segmind's
            one-hour retention.
        segmind_submit_max_retries: how many times a submit answered 429 or a transient
            error that certainly did not reach Segmind is retried before the job FAILS.
        segmind_retry_base_s: the scale of the exponential backoff (full jitter) between
            retries of a submit and between polls that failed.
        segmind_retry_cap_s: the longest backoff delay.
        segmind_resubmit_unknown_outcome: when a submit's outcome is unknown (the worker
            died mid-POST, or a 504 or a read timeout answered it), POST again instead of
            ending the job FAILED with ``submit_outcome_unknown``. A second POST may be a
            second charge: off by default.
        ledger_ttl_s: how long the ledger remembers a request after it ended, so that a
            duplicate published within this time is not paid for again.
        segmind_rate_limit_per_minute: the calls per minute the account allows (Segmind:
            5 on Free, 50 on Pro), for the whole fleet: the ceiling of the shared rate.
        segmind_rate_limiter_enabled: take a token from the fleet's bucket in Redis before
            every call (off: call at once and only retry after a 429, the baseline).
        segmind_rate_limit_window_s: the window Segmind counts calls in (a minute); a 429
            measures the limit from the calls granted in it.
        segmind_adaptive_polling: place polls where completion becomes likely, learned from
            finished jobs (off: poll every ``segmind_min_poll_interval_s``).
        segmind_time_scale: the time scale of a simulated Segmind (the demo, tests and
            benchmarks run it faster): the catalog's expected durations are multiplied by
            it. 1 against the real API.
        segmind_credit_floor_usd: new submits wait while the balance, less the price of the
            jobs in flight, would fall below this (0: no floor).
        segmind_daily_spend_cap_usd: new submits wait while today's spend (UTC) plus the
            price of the jobs in flight would pass this (0: no cap).
        segmind_budget_wait_s: how long a request waits for budget (floor or cap) after it
            was published before it ends REJECTED ``budget_exhausted``.
        segmind_credits_interval_s: how often the fleet reads the account's credits (one
            call per interval for all workers); 0 never reads them.
        tenants_file: a TOML file of the tenants' weights, daily caps, credit
            reservations and rate shares (``worker.tenants``), read again when it changes.
        fair_admission: when submits wait for the rate, give the tokens to the tenants in
            turn (off: whoever asks first, the FIFO-like baseline).
        tenant_labels_max: how many tenants get a ``tenant`` metric label of their own
            (per worker process); the others are counted as ``other``.
        output_store: where COMPLETED jobs' files are copied before the result is
            published: ``file:///path`` or ``s3://bucket/prefix`` (unset: not copied).
        output_fetch_hosts: the hosts files are downloaded from (comma-separated: a host,
            ``*.domain``, or ``http://host:port`` to allow plain http there).
        output_allow_private: download from private, loopback and link-local addresses too.
        output_max_bytes: the largest file copied; a larger one stays at Segmind's URL.
        output_connect_timeout_s: seconds to connect to an output host.
        output_read_timeout_s: seconds to wait for each read from an output host.
        output_store_retries: how many times a copy that failed for a passing reason is
            tried again (with backoff) before the output is left at Segmind's URL.
        progress_interval_s: the least time between two ``polled`` progress messages of
            one request (requests with ``progress: true``).
        metrics_host: the address the metrics endpoint listens on.
        metrics_port: the port of the metrics endpoint (``/metrics``).
        metrics_refresh_s: how often each worker process reads the fleet gauges (jobs in
            flight, reserved credits, queue depths) from Redis and RabbitMQ.
        worker_heartbeat_timeout_s: a worker process whose heartbeat (written every 2 s
            by a thread of its own, busy or not) is older than this is wedged: ``/healthz``
            answers 503.
        log_format: ``json`` (one JSON object per line), ``console`` (readable), or
            ``auto``: console on a terminal, JSON otherwise.
        log_level: the lowest level logged (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``).
    """

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
        # A rejected value (say, a URL with credentials) must not be echoed in the error.
        hide_input_in_errors=True,
    )

    segmind_api_key: SecretStr | None = None
    segmind_api_key_file: Path | None = None
    segmind_api_url: str = DEFAULT_API_URL
    segmind_connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    segmind_read_timeout_s: float = Field(default=30.0, gt=0, le=600)
    segmind_write_timeout_s: float = Field(default=10.0, gt=0, le=600)
    segmind_pool_timeout_s: float = Field(default=5.0, gt=0, le=300)
    segmind_total_timeout_s: float = Field(default=60.0, gt=0, le=1800)
    segmind_max_response_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    segmind_max_rate_limit_wait_s: float = Field(default=600.0, ge=0, le=MAX_DELAY_S)
    amqp_url: SecretStr = SecretStr(DEFAULT_AMQP_URL)
    amqp_queue_type: QueueType = QueueType.CLASSIC
    amqp_delivery_limit: int = Field(default=DEFAULT_DELIVERY_LIMIT, ge=2, le=1_000_000)
    redis_url: SecretStr = SecretStr(DEFAULT_REDIS_URL)
    redis_sentinel_password: SecretStr | None = None
    ledger_min_replicas: int = Field(default=0, ge=0, le=100)
    ledger_replica_timeout_s: float = Field(default=1.0, gt=0, le=60)
    redis_key_prefix: str = Field(default="segmind-queue", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    requests_queue: str = Field(default=wire.DEFAULT_REQUESTS_QUEUE, pattern=_QUEUE_NAME)
    polls_queue: str = Field(default=wire.DEFAULT_POLLS_QUEUE, pattern=_QUEUE_NAME)
    cancels_queue: str = Field(default=wire.DEFAULT_CANCELS_QUEUE, pattern=_QUEUE_NAME)
    results_dead_letter_queue: str = Field(
        default=wire.DEFAULT_RESULTS_DEAD_LETTER_QUEUE, pattern=_QUEUE_NAME
    )
    segmind_min_poll_interval_s: float = Field(default=7.0, gt=0, le=MAX_DELAY_S)
    segmind_job_deadline_s: float = Field(default=2700.0, gt=0, le=SEGMIND_RETENTION_S)
    segmind_submit_max_retries: int = Field(default=8, ge=0, le=1000)
    segmind_retry_base_s: float = Field(default=2.0, gt=0, le=MAX_DELAY_S)
    segmind_retry_cap_s: float = Field(default=120.0, gt=0, le=MAX_DELAY_S)
    segmind_resubmit_unknown_outcome: bool = False
    ledger_ttl_s: int = Field(default=7 * 24 * 3600, ge=3600)
    segmind_rate_limit_per_minute: float = Field(default=50.0, gt=0, le=100_000)
    segmind_rate_limiter_enabled: bool = True
    segmind_rate_limit_window_s: float = Field(default=60.0, gt=0, le=3600)
    segmind_adaptive_polling: bool = True
    segmind_time_scale: float = Field(default=1.0, gt=0, le=1)
    segmind_credit_floor_usd: float = Field(default=0.0, ge=0)
    segmind_daily_spend_cap_usd: float = Field(default=0.0, ge=0)
    segmind_budget_wait_s: float = Field(default=3600.0, ge=0, le=7 * 24 * 3600)
    segmind_credits_interval_s: float = Field(default=60.0, ge=0, le=86_400)
    tenants_file: Path | None = None
    fair_admission: bool = True
    tenant_labels_max: int = Field(default=50, ge=1, le=10_000)
    output_store: str | None = None
    output_fetch_hosts: str = DEFAULT_FETCH_HOSTS
    output_allow_private: bool = False
    output_max_bytes: int = Field(default=1024**3, gt=0)
    output_connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    output_read_timeout_s: float = Field(default=60.0, gt=0, le=600)
    output_store_retries: int = Field(default=6, ge=0, le=100)
    progress_interval_s: float = Field(default=10.0, ge=0, le=MAX_DELAY_S)
    # Every interface: Prometheus scrapes the worker from another host or container.
    metrics_host: str = "0.0.0.0"  # noqa: S104
    metrics_port: int = Field(default=9191, ge=1, le=65535)
    metrics_refresh_s: float = Field(default=15.0, gt=0, le=3600)
    worker_heartbeat_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("segmind_api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        return normalize_api_url(value)

    @field_validator("segmind_api_key")
    @classmethod
    def _blank_key_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty SEGMIND_API_KEY= in a compose file means "not set", not "an empty key".
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("output_store", mode="before")
    @classmethod
    def _blank_store_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("output_store")
    @classmethod
    def _check_output_store(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme == "file" and parts.path.startswith("/") and not parts.query:
                return value
            if parts.scheme == "s3" and parts.netloc and not parts.username and not parts.query:
                return value
            raise ValueError("expected file:///absolute/path or s3://bucket[/prefix]")
        return value

    @field_validator("output_fetch_hosts")
    @classmethod
    def _check_fetch_hosts(cls, value: str) -> str:
        parse_fetch_hosts(value)
        return value

    @field_validator("segmind_api_key_file", "tenants_file", mode="before")
    @classmethod
    def _blank_path_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("amqp_queue_type", mode="before")
    @classmethod
    def _queue_type_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("redis_sentinel_password")
    @classmethod
    def _blank_secret_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value() else value

    def redis_sentinel_secret(self) -> str | None:
        """``REDIS_SENTINEL_PASSWORD`` in clear, for the Redis client only (or ``None``)."""
        password = self.redis_sentinel_password
        return password.get_secret_value() if password is not None else None

    @property
    def topology(self) -> Topology:
        """How the service's queues are declared (``AMQP_QUEUE_TYPE``,
        ``AMQP_DELIVERY_LIMIT``)."""
        return Topology(self.amqp_queue_type, self.amqp_delivery_limit)

    @property
    def submit_lease_s(self) -> float:
        """The longest a submit's POST can take: past it, a SUBMITTING record is abandoned.

        Every phase of a call is bounded by its own timeout and the body by the total one;
        a worker that has not recorded a POST's outcome within their sum (plus a grace for
        the ledger write) died in the middle of it.
        """
        return (
            self.segmind_pool_timeout_s
            + self.segmind_connect_timeout_s
            + self.segmind_write_timeout_s
            + self.segmind_read_timeout_s
            + self.segmind_total_timeout_s
            + 5.0
        )

    @property
    def longest_step_s(self) -> float:
        """The longest one message (a step) can take, in seconds: the worker's default
        shutdown timeout.

        A step is one Segmind call, ledger writes and one confirmed publish (the next poll
        or the result). The call is bounded by the sum of its phase timeouts (pool, connect,
        write, read) and the total one (the body); a ledger write by
        ``LEDGER_WRITE_BOUND_S`` (a stalled Redis command fails the step); the publish by
        ``PUBLISH_BOUND_S`` (one reconnection). Waiting this long on SIGTERM lets every
        call that has started end and be recorded, so no POST is left with an unknown
        outcome; a step cut later (Redis or RabbitMQ down) is redelivered and resumed from
        the ledger. With ``LEDGER_MIN_REPLICAS``, the two guarded ledger writes each wait
        up to ``LEDGER_REPLICA_TIMEOUT_S`` more.
        """
        replicas_s = 2 * self.ledger_replica_timeout_s if self.ledger_min_replicas else 0.0
        return replicas_s + (
            self.segmind_pool_timeout_s
            + self.segmind_connect_timeout_s
            + self.segmind_write_timeout_s
            + self.segmind_read_timeout_s
            + self.segmind_total_timeout_s
            + LEDGER_WRITE_BOUND_S
            + PUBLISH_BOUND_S
        )

    @property
    def api_key_configured(self) -> bool:
        """Whether a key source is set (the key itself is read by ``api_key()``)."""
        return self.segmind_api_key is not None or self.segmind_api_key_file is not None

    def api_key(self) -> SecretStr:
        """The API key, from ``SEGMIND_API_KEY`` or the file named by ``SEGMIND_API_KEY_FILE``.

        The file is read on every call, so a rotated secret is picked up by the next client.

        Raises:
            MissingApiKeyError: neither variable is set.
            ApiKeyFileError: the file cannot be read, is too large or is not UTF-8 text.
            InvalidApiKeyError: both variables are set (ambiguous), or the key is empty or
                holds spaces, line breaks, control or non-ASCII characters.
            Messages name the variable and the path, never the key or the file's contents.
        """
        if self.segmind_api_key is not None and self.segmind_api_key_file is not None:
            raise InvalidApiKeyError(
                f"both {API_KEY_ENV} and {API_KEY_FILE_ENV} are set; set only one of them"
            )
        if self.segmind_api_key is not None:
            return checked_api_key(self.segmind_api_key, API_KEY_ENV)
        if self.segmind_api_key_file is not None:
            return _read_key_file(self.segmind_api_key_file)
        raise MissingApiKeyError(
            f"no Segmind API key: set {API_KEY_ENV} to the key, or {API_KEY_FILE_ENV} to "
            "the path of a file that holds it"
        )


def normalize_api_url(value: str) -> str:
    """``value`` checked as an API base URL, without its trailing slash.

    Raises:
        ValueError: not an http(s) URL with a host, or it has a path beyond ``/``, a query,
            a fragment, or credentials.
    """
    url = value.strip()
    try:
        parts = urlsplit(url)
        port = parts.port  # parses the port: raises ValueError when it is not a number
    except ValueError:
        raise ValueError("SEGMIND_API_URL is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("SEGMIND_API_URL must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would show up in every repr and log line of the URL.
        raise ValueError("SEGMIND_API_URL must not contain credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            "SEGMIND_API_URL must be the API's base URL only, like https://api.segmind.com "
            "(no path, query or fragment)"
        )
    del port
    return url.rstrip("/")


# The raw key is only ever a local of functions that return: a frame that raises holds it in
# SecretStr form only, so tracebacks rendered with their locals (rich, structlog's dev
# renderer) cannot show it.


def _read_key_file(path: Path) -> SecretStr:
    secret, problem = _load_key_file(path)
    if secret is None:
        raise ApiKeyFileError(problem)
    return checked_api_key(secret, f"{API_KEY_FILE_ENV} {path}")


def _load_key_file(path: Path) -> tuple[SecretStr | None, str]:
    """``(the file's stripped text, "")`` or ``(None, why it cannot be read)``."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return None, f"cannot read {API_KEY_FILE_ENV} {path}: {reason}"
    if len(raw) > _MAX_KEY_FILE_BYTES:
        return None, (
            f"{API_KEY_FILE_ENV} {path} is larger than {_MAX_KEY_FILE_BYTES} bytes; "
            "it should hold only the key"
        )
    try:
        return SecretStr(raw.decode("utf-8").strip()), ""
    except UnicodeDecodeError:
        return None, f"{API_KEY_FILE_ENV} {path} is not UTF-8 text"


def checked_api_key(key: SecretStr, source: str) -> SecretStr:
    """``key`` without surrounding whitespace, if it can be sent as a header value.

    Args:
        key: the key.
        source: where it came from, for the message (a variable name, a path).

    Raises:
        InvalidApiKeyError: the key is empty or has characters a header cannot carry. A key
            with spaces or control characters (a pasted line break, a file with two lines)
            would be rejected by the HTTP library with an error that quotes the header
            value; it is checked here, where the message names the source, not the key.
    """
    stripped = SecretStr(key.get_secret_value().strip())
    problem = _key_problem(stripped.get_secret_value())
    if problem:
        raise InvalidApiKeyError(f"{source} {problem}")
    return stripped


def _key_problem(key: str) -> str:
    if not key:
        return "holds no API key (it is empty)"
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in key):
        return (
            "holds an unusable API key: it contains spaces, line breaks, control or "
            "non-ASCII characters"
        )
    return ""
