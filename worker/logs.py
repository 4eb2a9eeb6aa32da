"""Structured logging: one structlog pipeline for the service's events and its libraries'.

The pipeline logs with structlog (``log.info("submit.accepted", request_id=...)``); Dramatiq,
pika and httpx log with the standard library. ``configure_logging`` puts one handler on the
root logger whose formatter is a ``structlog.stdlib.ProcessorFormatter``: structlog's events
reach it through ``logging`` (``wrap_for_formatter``), stdlib records through its
``foreign_pre_chain``, and both end in the same processors and the same renderer. So every
line has the same shape (one JSON object per line, or a readable line on a terminal), and no
record can bypass the redaction of secrets by coming from a library.

Each line names its job: ``LogContext`` (a Dramatiq middleware) binds the message's fields to
structlog's contextvars while a message is processed, ``bind_job`` adds what the pipeline
learns later (workflow, Segmind's id), and ``merge_contextvars`` runs in both chains, so even
Dramatiq's own lines about a message (a failure, a retry) carry them.

``redact_secrets`` is the last processor before the renderer: by then the traceback has been
rendered to text (``exception``) and every field is in the event dict, so nothing the
renderer prints escapes it, and nothing added after it could reintroduce a secret.

``configure_logging`` is idempotent: the CLI's parent process calls it, then each worker
process Dramatiq forks calls it again (importing ``worker.main``) after Dramatiq put its own
``basicConfig`` handler on a pipe in place of ``sys.stderr``. Each call replaces whatever is
on the root logger with exactly one handler on the current stream, and structlog does not
cache loggers, so the latest call wins everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, MutableMapping
from enum import Enum
from typing import Any, Final, Literal, TextIO
from urllib.parse import unquote, urlsplit

import dramatiq
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from producers.redaction import Redactor
from producers.wire import POLL_ACTOR, SUBMIT_ACTOR
from worker.settings import Settings, SettingsError

LogFormat = Literal["json", "console"]

#: The longest text bound from a message's arguments (a producer controls them).
_MAX_FIELD_CHARS: Final = 200
#: Containers nested deeper than this (or cyclic) are checked through their text instead.
_MAX_DEPTH: Final = 32
#: Library loggers quieted unless the level is DEBUG. httpx logs a line per request (the
#: pipeline logs each call's outcome itself); queues are checked with a passive declare
#: first, so pika's warning for the channel a missing queue closes is routine.
LIBRARY_LEVELS: Final[dict[str, int]] = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "pika": logging.WARNING,
    "pika.channel": logging.ERROR,
}
#: Keys ProcessorFormatter adds for its own use: not log data.
_FORMATTER_META: Final = frozenset({"_record", "_from_structlog"})


def plain_enums(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Render enum members by their value (``status=COMPLETED``, not the member's repr)."""
    for key, value in event.items():
        if isinstance(value, Enum):
            event[key] = value.value
    return event


def add_pid(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Add ``pid``: a worker runs several processes, whose lines interleave."""
    event["pid"] = os.getpid()
    return event


def resolve_format(setting: Literal["auto", "json", "console"], stream: TextIO) -> LogFormat:
    """The format for ``stream``: ``auto`` is console on a terminal and JSON otherwise."""
    if setting == "json":
        return "json"
    if setting == "console":
        return "console"
    if setting == "auto":
        return "console" if _isatty(stream) else "json"
    raise ValueError(f"unknown log format {setting!r} (auto, json or console)")


def redact_secrets(secrets: Iterable[str]) -> Processor:
    """A processor replacing every occurrence of each secret with ``[redacted]``
    (``producers.redaction``'s rule).

    It rewrites every ``str`` in the event dict: values and keys, recursively inside dicts,
    lists, tuples and sets. Any other object whose ``str`` or ``repr`` shows a secret (an
    exception, a custom object) is replaced by its redacted ``str``, since the renderer
    would otherwise print it. The caller's own nested objects are never modified: changed
    containers are copies.

    Empty secrets and secrets shorter than ``producers.redaction.MIN_SECRET_LEN`` are
    ignored (see there).
    """
    text = Redactor(secrets)
    shows_secret = text.shows_secret

    def opaque(value: object) -> object:
        try:
            shown = str(value)
            leaks = shows_secret(shown) or shows_secret(repr(value))
        except Exception:
            # The renderer would fail on it too (JSONRenderer's default=str): name it instead.
            return f"<unprintable {type(value).__name__}>"
        return text(shown) if leaks else value

    def scrub(value: object, depth: int) -> object:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return text(value)
        if depth >= _MAX_DEPTH:
            return opaque(value)
        if isinstance(value, dict):
            pairs = [(scrub(k, depth + 1), scrub(v, depth + 1)) for k, v in value.items()]
            changed = any(
                nk is not k or nv is not v
                for (nk, nv), (k, v) in zip(pairs, value.items(), strict=True)
            )
            return dict(pairs) if changed else value
        if isinstance(value, list | tuple | set | frozenset):
            items = [scrub(item, depth + 1) for item in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            if isinstance(value, list):
                return items
            if isinstance(value, tuple):
                return tuple(items)
            return frozenset(items) if isinstance(value, frozenset) else set(items)
        return opaque(value)

    def processor(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
        if not text:
            return event
        return {
            key: value if key in _FORMATTER_META else scrub(value, 0)
            for key, value in ((text(k) if isinstance(k, str) else k, v) for k, v in event.items())
        }

    return processor


def secrets_of(settings: Settings) -> list[str]:
    """The secrets a worker's logs must never show (to pass to ``configure_logging``).

    The API key when one is configured and readable, and the password of every URL in
    ``AMQP_URL`` (several, separated by ``;``) and ``REDIS_URL``, both as written in the URL
    (percent-encoded) and decoded, and ``REDIS_SENTINEL_PASSWORD``. Order is kept;
    duplicates are dropped.
    """
    found: list[str] = []
    if settings.segmind_api_key is not None:
        # Even when api_key() refuses it (say, both variables are set), it is in memory.
        found.append(settings.segmind_api_key.get_secret_value().strip())
    if settings.api_key_configured:
        # Unreadable: the worker refuses to start and says why (without the key).
        with contextlib.suppress(SettingsError, ValueError):
            found.append(settings.api_key().get_secret_value())
    urls = [*settings.amqp_url.get_secret_value().split(";"), settings.redis_url.get_secret_value()]
    for url in urls:
        try:
            password = urlsplit(url.strip()).password
        except ValueError:
            continue  # not a URL the clients could use either
        if password:
            found.extend((password, unquote(password)))
    if settings.redis_sentinel_password is not None:
        found.append(settings.redis_sentinel_password.get_secret_value())
    return list(dict.fromkeys(secret for secret in found if secret))


def configure_logging(
    *,
    fmt: LogFormat = "json",
    level: str | int = "INFO",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Route structlog's events and the standard library's records to one handler.

    Idempotent: every call replaces the root logger's handlers (Dramatiq's ``basicConfig``
    ones, an earlier call's) with exactly one, writing to ``stream``.

    Args:
        fmt: ``json`` (one object per line) or ``console`` (readable; colored when
            ``stream`` is a terminal).
        level: the root logger's level (a name like ``"INFO"`` or a number). Below DEBUG
            httpx, httpcore and pika are quieted (see ``LIBRARY_LEVELS``).
        secrets: texts never to print (see ``secrets_of`` and ``redact_secrets``).
        stream: where lines go; ``sys.stderr`` as it is at call time by default (in a
            Dramatiq worker process, the pipe Dramatiq put there).

    Raises:
        ValueError: an unknown format or level.
    """
    out = sys.stderr if stream is None else stream
    number = _level_number(level)
    renderer: Processor
    if fmt == "json":
        # default=str: a value JSON cannot encode is shown, not a reason to lose the line.
        renderer = structlog.processors.JSONRenderer(default=str)
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(out))
    else:
        raise ValueError(f"unknown log format {fmt!r} (json or console)")

    shared = _shared_processors()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets(secrets),  # last before the renderer: it sees everything printed
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    for name, quiet_level in LIBRARY_LEVELS.items():
        # NOTSET at DEBUG undoes an earlier call's quieting (and Dramatiq's pika=CRITICAL).
        logging.getLogger(name).setLevel(quiet_level if number > logging.DEBUG else logging.NOTSET)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # A forked worker process reconfigures: a cached logger would keep the old setup.
        cache_logger_on_first_use=False,
    )


def _shared_processors() -> list[Processor]:
    """The steps structlog's events and stdlib records share, before redaction."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        add_pid,
        plain_enums,
        # The traceback as text in "exception", so redaction sees it (and a structured or
        # locals-showing traceback cannot print a frame's secret).
        structlog.processors.format_exc_info,
    ]


class LogContext(dramatiq.Middleware):
    """Binds each message's fields to structlog's contextvars while it is processed, so
    every line logged during it (the pipeline's and Dramatiq's own) names the job.

    Binds ``message_id``, ``actor`` and, when the arguments hold them, ``request_id`` and
    ``workflow``. Add it first to the broker's middleware: after-hooks run in reverse
    order, so the fields are still bound while the others (Retries) log.
    """

    def before_process_message(self, broker: object, message: object) -> None:
        structlog.contextvars.clear_contextvars()
        try:
            fields = _message_fields(message)
        except Exception:
            # A message this cannot read is still processed (and rejected by its actor).
            fields = {}
        structlog.contextvars.bind_contextvars(**fields)

    def after_process_message(
        self,
        broker: object,
        message: object,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message


def bind_job(**fields: object) -> None:
    """Bind the fields that are not None to every later line of this message's processing
    (``bind_job(workflow=..., segmind_request_id=...)`` once the ledger tells them)."""
    structlog.contextvars.bind_contextvars(
        **{key: value for key, value in fields.items() if value is not None}
    )


def _message_fields(message: object) -> dict[str, str]:
    fields: dict[str, str] = {}
    _put(fields, "message_id", getattr(message, "message_id", None))
    actor = getattr(message, "actor_name", None)
    _put(fields, "actor", actor)
    args = getattr(message, "args", None)
    first = args[0] if isinstance(args, tuple | list) and args else None
    if actor == SUBMIT_ACTOR and isinstance(first, dict):
        _put(fields, "request_id", first.get("request_id"))
        _put(fields, "workflow", first.get("workflow"))
    elif actor == POLL_ACTOR:
        _put(fields, "request_id", first)
    return fields


def _put(fields: dict[str, str], key: str, value: object) -> None:
    if isinstance(value, str):
        fields[key] = value[:_MAX_FIELD_CHARS]


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
