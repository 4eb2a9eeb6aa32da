"""Structured logging: formats, one pipeline for stdlib and structlog, job context, redaction."""

from __future__ import annotations

import io
import json
import logging
from enum import Enum
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import structlog
from pydantic import SecretStr

from producers.redaction import REDACTED
from producers.wire import POLL_ACTOR, SUBMIT_ACTOR
from worker.logs import (
    LogContext,
    bind_job,
    configure_logging,
    redact_secrets,
    resolve_format,
    secrets_of,
)
from worker.settings import Settings

KEY = "sk-TEST-DISTINCTIVE-1234567890"


class TtyStream(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def message(actor: str, *args: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name="q", actor_name=actor, args=args, kwargs={}, options={})


def submit_message() -> dramatiq.Message[Any]:
    return message(SUBMIT_ACTOR, {"request_id": "order-17", "workflow": "stock-video"})


# ---------------------------------------------------------------------------- formats


def test_json_lines_carry_the_standard_keys() -> None:
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    structlog.get_logger("worker.test").info("submit.accepted", polls=3)
    structlog.get_logger("worker.test").debug("not shown at INFO")

    [line] = json_lines(out)
    assert line["event"] == "submit.accepted"
    assert line["level"] == "info"
    assert line["logger"] == "worker.test"
    assert line["timestamp"].endswith("Z")
    assert isinstance(line["pid"], int)
    assert line["polls"] == 3


def test_json_survives_values_it_cannot_encode() -> None:
    class Status(Enum):
        DONE = "COMPLETED"

    out = io.StringIO()
    configure_logging(stream=out)
    structlog.get_logger("t").info("odd", thing=object(), status=Status.DONE)

    [line] = json_lines(out)
    assert line["thing"].startswith("<object object")
    assert line["status"] == "COMPLETED"


def test_console_on_a_terminal_is_readable_not_json() -> None:
    out = TtyStream()
    configure_logging(fmt="console", stream=out)
    structlog.get_logger("t").info("submit.accepted", request_id="order-17")

    text = out.getvalue()
    assert "submit.accepted" in text
    assert "order-17" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_resolve_format() -> None:
    assert resolve_format("auto", TtyStream()) == "console"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", TtyStream()) == "json"
    assert resolve_format("console", io.StringIO()) == "console"
    closed = io.StringIO()
    closed.close()
    assert resolve_format("auto", closed) == "json"


def test_configure_twice_leaves_one_root_handler_on_the_latest_stream() -> None:
    logging.basicConfig(level=logging.DEBUG, stream=io.StringIO())  # Dramatiq's, in a child
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    configure_logging(stream=second)

    assert len(logging.getLogger().handlers) == 1
    structlog.get_logger("t").info("once")
    logging.getLogger("dramatiq").info("stdlib once")
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["once", "stdlib once"]


def test_libraries_are_quieted_unless_debug() -> None:
    configure_logging(level="INFO", stream=io.StringIO())
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("httpcore").level == logging.WARNING
    assert logging.getLogger("pika").level == logging.WARNING
    assert logging.getLogger("pika.channel").level == logging.ERROR

    configure_logging(level="DEBUG", stream=io.StringIO())
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("pika.channel").getEffectiveLevel() == logging.DEBUG


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging(level="LOUD", stream=io.StringIO())


# ---------------------------------------------------------------------- job context


def test_stdlib_lines_share_the_renderer_and_the_job_context() -> None:
    out = io.StringIO()
    configure_logging(stream=out)
    submit = submit_message()
    middleware = LogContext()

    middleware.before_process_message(None, submit)
    bind_job(segmind_request_id="seg-42", workflow=None)
    logging.getLogger("dramatiq.worker").error("Failed to process message %s.", "m")
    structlog.get_logger("worker.pipeline").info("submit.accepted")
    middleware.after_process_message(None, submit, exception=RuntimeError("x"))
    logging.getLogger("dramatiq.worker").info("idle")

    during_stdlib, during_structlog, after = json_lines(out)
    for line in (during_stdlib, during_structlog):
        assert line["request_id"] == "order-17"
        assert line["workflow"] == "stock-video"  # bind_job ignored the None
        assert line["segmind_request_id"] == "seg-42"
        assert line["message_id"] == submit.message_id
        assert line["actor"] == SUBMIT_ACTOR
    assert during_stdlib["event"] == "Failed to process message m."
    assert during_stdlib["logger"] == "dramatiq.worker"
    assert during_stdlib["level"] == "error"
    assert set(during_stdlib) >= {"timestamp", "pid"}
    assert "request_id" not in after


def test_log_context_binds_a_poll_message() -> None:
    LogContext().before_process_message(None, message(POLL_ACTOR, "order-17", 3))
    assert structlog.contextvars.get_contextvars() | {"message_id": "-"} == {
        "message_id": "-",
        "actor": POLL_ACTOR,
        "request_id": "order-17",
    }


def test_log_context_clears_the_previous_message_and_truncates() -> None:
    middleware = LogContext()
    middleware.before_process_message(None, submit_message())
    middleware.before_process_message(None, message(POLL_ACTOR, "x" * 1000, 1))
    bound = structlog.contextvars.get_contextvars()
    assert bound["request_id"] == "x" * 200
    assert "workflow" not in bound

    middleware.after_skip_message(None, submit_message())
    assert structlog.contextvars.get_contextvars() == {}


@pytest.mark.parametrize(
    "args",
    [
        (),
        (None,),
        ("order-17",),
        ({"request_id": 17, "workflow": ["w"]},),
        ({"request_id": {"nested": "x"}},),
        ([1, 2],),
    ],
)
def test_log_context_survives_malformed_submit_args(args: tuple[Any, ...]) -> None:
    LogContext().before_process_message(None, message(SUBMIT_ACTOR, *args))
    bound = structlog.contextvars.get_contextvars()
    assert set(bound) == {"message_id", "actor"}


@pytest.mark.parametrize("args", [(), (17,), ({"request_id": "r"},), (None, None)])
def test_log_context_survives_malformed_poll_args(args: tuple[Any, ...]) -> None:
    LogContext().before_process_message(None, message(POLL_ACTOR, *args))
    assert "request_id" not in structlog.contextvars.get_contextvars()


def test_log_context_survives_an_object_that_is_not_a_message() -> None:
    LogContext().before_process_message(None, object())
    assert structlog.contextvars.get_contextvars() == {}


# -------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_key_never_reaches_the_output(fmt: str) -> None:
    out = TtyStream() if fmt == "console" else io.StringIO()
    configure_logging(fmt="console" if fmt == "console" else "json", secrets=[KEY], stream=out)
    log = structlog.get_logger("worker.pipeline")

    log.info(f"event with {KEY}")
    log.info("field", header=f"x-api-key: {KEY}")
    log.info("nested", request={"headers": {"x-api-key": KEY}, "list": [1, (f"a{KEY}b",)]})
    log.info("dict key", mapping={KEY: "value"})
    log.info("positional %s", KEY)
    logging.getLogger("httpx").warning("sent key %s to %r", KEY, {"k": KEY})
    try:
        raise RuntimeError(f"the key {KEY} was rejected")
    except RuntimeError:
        log.exception("structlog exception")
        logging.getLogger("dramatiq.worker").exception("stdlib exception")

    text = out.getvalue()
    assert KEY not in text
    assert text.count(REDACTED) >= 10  # one per occurrence above
    assert "RuntimeError" in text
    assert "Traceback" in text


def test_redaction_is_the_last_step_of_the_stdlib_records_too() -> None:
    out = io.StringIO()
    configure_logging(secrets=[KEY], stream=out)
    try:
        raise ValueError(KEY)
    except ValueError:
        logging.getLogger("pika").error("closed: %s", KEY, exc_info=True, stack_info=True)

    [line] = json_lines(out)
    assert KEY not in out.getvalue()
    assert line["event"] == f"closed: {REDACTED}"
    assert f"ValueError: {REDACTED}" in line["exception"]


def test_redact_secrets_rules() -> None:
    redact = redact_secrets(["", "abc", "abcd", "abcd1234", "abcd1234"])
    nested = {"inner": ["abcd1234"]}
    event = {
        "event": "x-abcd1234-abcd-abc",
        "nested": nested,
        "tuple": ("abcd",),
        "set": frozenset({"abcd"}),
        "number": 7,
        "none": None,
    }

    out = redact(None, "info", event)
    assert isinstance(out, dict)
    # Longest first: the long secret is redacted whole; three letters are not redacted.
    assert out["event"] == f"x-{REDACTED}-{REDACTED}-abc"
    assert out["nested"] == {"inner": [REDACTED]}
    assert nested == {"inner": ["abcd1234"]}  # the caller's object is not modified
    assert out["tuple"] == (REDACTED,)
    assert out["set"] == frozenset({REDACTED})
    assert out["number"] == 7
    assert out["none"] is None


def test_redact_secrets_checks_other_objects_through_their_text() -> None:
    class Holder:
        def __repr__(self) -> str:
            return f"Holder(key={KEY!r})"

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    plain = object()
    out = redact_secrets([KEY])(
        None,
        "info",
        {"error": ValueError(KEY), "holder": Holder(), "plain": plain, "bad": Unprintable()},
    )
    assert isinstance(out, dict)
    assert out["error"] == REDACTED
    assert KEY not in str(out["holder"])
    assert out["plain"] is plain
    assert out["bad"] == "<unprintable Unprintable>"


def test_redact_secrets_survives_a_cycle() -> None:
    cycle: list[Any] = [KEY]
    cycle.append(cycle)
    out = redact_secrets([KEY])(None, "info", {"cycle": cycle})
    assert isinstance(out, dict)
    assert KEY not in repr(out)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEGMIND_API_KEY", "SEGMIND_API_KEY_FILE", "AMQP_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_secrets_of_names_the_key_and_the_url_passwords() -> None:
    settings = Settings(
        segmind_api_key=SecretStr(KEY),
        amqp_url=SecretStr("amqp://app:p%40ss-one@rabbit-1/%2F;amqps://app:pass-two@rabbit-2/"),
        redis_url=SecretStr("rediss://:redis-pass@redis:6380/0"),
    )
    found = secrets_of(settings)
    assert KEY in found
    assert {"p%40ss-one", "p@ss-one", "pass-two", "redis-pass"} <= set(found)
    assert len(found) == len(set(found))
    assert "app" not in found


@pytest.mark.usefixtures("clean_env")
def test_secrets_of_tolerates_a_missing_or_unreadable_key(tmp_path: Path) -> None:
    assert secrets_of(Settings()) == ["guest"]  # the default AMQP URL's password
    unreadable = Settings(segmind_api_key_file=tmp_path / "missing")
    assert secrets_of(unreadable) == ["guest"]


@pytest.mark.usefixtures("clean_env")
def test_secrets_of_reads_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    assert KEY in secrets_of(Settings(segmind_api_key_file=key_file))
