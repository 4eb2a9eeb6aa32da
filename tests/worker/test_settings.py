"""Worker settings: environment, key file, missing key, bad URLs; the key never shows."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from worker.settings import (
    ApiKeyFileError,
    InvalidApiKeyError,
    MissingApiKeyError,
    Settings,
    SettingsError,
    normalize_api_url,
)

KEY = "sk-DISTINCTIVE-settings-key-7f3a9c"
ENV_NAMES = [
    "SEGMIND_API_KEY",
    "SEGMIND_API_KEY_FILE",
    "SEGMIND_API_URL",
    "SEGMIND_CONNECT_TIMEOUT_S",
    "SEGMIND_READ_TIMEOUT_S",
    "SEGMIND_WRITE_TIMEOUT_S",
    "SEGMIND_POOL_TIMEOUT_S",
    "SEGMIND_TOTAL_TIMEOUT_S",
    "SEGMIND_MAX_RESPONSE_BYTES",
    "SEGMIND_MAX_RATE_LIMIT_WAIT_S",
    "AMQP_URL",
    "REDIS_URL",
    "REDIS_KEY_PREFIX",
    "REQUESTS_QUEUE",
    "POLLS_QUEUE",
    "SEGMIND_MIN_POLL_INTERVAL_S",
    "SEGMIND_JOB_DEADLINE_S",
    "SEGMIND_SUBMIT_MAX_RETRIES",
    "SEGMIND_RETRY_BASE_S",
    "SEGMIND_RETRY_CAP_S",
    "SEGMIND_RESUBMIT_UNKNOWN_OUTCOME",
    "LEDGER_TTL_S",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def assert_no_key(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text)
        assert KEY not in repr(text)
        if isinstance(text, BaseException):
            # As rich or structlog's dev renderer show it: every frame's locals, below the
            # test's own frame.
            tb = text.__traceback__.tb_next if text.__traceback__ is not None else None
            rendered = traceback.TracebackException(type(text), text, tb, capture_locals=True)
            assert KEY not in "".join(rendered.format())


def test_defaults() -> None:
    settings = Settings()
    assert settings.segmind_api_url == "https://api.segmind.com"
    assert settings.segmind_connect_timeout_s == 5.0
    assert settings.segmind_read_timeout_s == 30.0
    assert settings.segmind_max_response_bytes == 8 * 1024 * 1024
    assert settings.segmind_api_key is None
    assert settings.segmind_api_key_file is None
    assert not settings.api_key_configured


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    monkeypatch.setenv("SEGMIND_API_URL", "http://127.0.0.1:8765/")
    monkeypatch.setenv("SEGMIND_CONNECT_TIMEOUT_S", "1.5")
    monkeypatch.setenv("SEGMIND_READ_TIMEOUT_S", "12")
    monkeypatch.setenv("SEGMIND_MAX_RESPONSE_BYTES", "1024")
    settings = Settings()
    assert settings.api_key().get_secret_value() == KEY
    assert settings.api_key_configured
    assert settings.segmind_api_url == "http://127.0.0.1:8765"
    assert settings.segmind_connect_timeout_s == 1.5
    assert settings.segmind_read_timeout_s == 12.0
    assert settings.segmind_max_response_bytes == 1024
    assert_no_key(settings, settings.api_key(), settings.model_dump(), settings.model_dump_json())


def test_key_is_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", f"  {KEY}\n")
    assert Settings().api_key().get_secret_value() == KEY


def test_key_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "segmind_api_key"
    secret.write_text(f"{KEY}\n")
    monkeypatch.setenv("SEGMIND_API_KEY_FILE", str(secret))
    settings = Settings()
    assert settings.api_key_configured
    assert settings.api_key().get_secret_value() == KEY
    assert_no_key(settings, settings.api_key())


def test_key_file_is_reread_so_a_rotated_secret_is_picked_up(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("first-key")
    settings = Settings(segmind_api_key_file=secret)
    assert settings.api_key().get_secret_value() == "first-key"
    secret.write_text("second-key")
    assert settings.api_key().get_secret_value() == "second-key"


def test_missing_key_names_both_variables() -> None:
    with pytest.raises(MissingApiKeyError) as caught:
        Settings().api_key()
    assert "SEGMIND_API_KEY" in str(caught.value)
    assert "SEGMIND_API_KEY_FILE" in str(caught.value)
    assert isinstance(caught.value, SettingsError)


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_blank_key_is_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", value)
    settings = Settings()
    assert settings.segmind_api_key is None
    with pytest.raises(MissingApiKeyError):
        settings.api_key()


def test_blank_key_file_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY_FILE", " ")
    assert Settings().segmind_api_key_file is None
    with pytest.raises(MissingApiKeyError):
        Settings().api_key()


def test_unreadable_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ApiKeyFileError) as caught:
        Settings(segmind_api_key_file=missing).api_key()
    assert str(missing) in str(caught.value)
    assert "SEGMIND_API_KEY_FILE" in str(caught.value)
    with pytest.raises(ApiKeyFileError, match="cannot read"):
        Settings(segmind_api_key_file=tmp_path).api_key()  # a directory


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_key_file_without_permission(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY)
    secret.chmod(0)
    with pytest.raises(ApiKeyFileError, match="Permission denied") as caught:
        Settings(segmind_api_key_file=secret).api_key()
    assert_no_key(caught.value)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", InvalidApiKeyError),
        (b"  \n\n", InvalidApiKeyError),
        (f"{KEY}\nsecond line".encode(), InvalidApiKeyError),
        (f"{KEY} trailing words".encode(), InvalidApiKeyError),
        (b"\xff\xfe" + KEY.encode(), ApiKeyFileError),
        (KEY.encode() * 5000, ApiKeyFileError),
    ],
)
def test_unusable_key_file_never_shows_its_contents(
    tmp_path: Path, content: bytes, error: type[SettingsError]
) -> None:
    secret = tmp_path / "key"
    secret.write_bytes(content)
    with pytest.raises(error) as caught:
        Settings(segmind_api_key_file=secret).api_key()
    assert str(secret) in str(caught.value)
    assert_no_key(caught.value)


@pytest.mark.parametrize("key", [f"{KEY} x", f"{KEY}\x00", f"{KEY}é"])
def test_unusable_env_key_never_shows(key: str) -> None:
    with pytest.raises(InvalidApiKeyError) as caught:
        Settings(segmind_api_key=SecretStr(key)).api_key()
    assert "SEGMIND_API_KEY" in str(caught.value)
    assert_no_key(caught.value)


def test_both_key_sources_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY)
    settings = Settings(segmind_api_key=SecretStr(KEY), segmind_api_key_file=secret)
    with pytest.raises(InvalidApiKeyError, match="only one") as caught:
        settings.api_key()
    assert_no_key(caught.value)


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("https://api.segmind.com", "https://api.segmind.com"),
        ("https://api.segmind.com/", "https://api.segmind.com"),
        ("  http://127.0.0.1:8765/ ", "http://127.0.0.1:8765"),
        ("HTTPS://API.SEGMIND.COM", "HTTPS://API.SEGMIND.COM"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_api_url_is_normalized(url: str, normalized: str) -> None:
    assert normalize_api_url(url) == normalized
    assert Settings(segmind_api_url=url).segmind_api_url == normalized


@pytest.mark.parametrize(
    "url",
    [
        "",
        "api.segmind.com",
        "ftp://api.segmind.com",
        "https://",
        "https://api.segmind.com/v1",
        "https://api.segmind.com/workflows/",
        "https://api.segmind.com?x=1",
        "https://api.segmind.com/#frag",
        "https://user:pass@api.segmind.com",
        "https://api.segmind.com:notaport",
        "https://api.segmind.com:99999",
    ],
)
def test_bad_api_url_is_rejected(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SEGMIND_API_URL", url)
    with pytest.raises(ValidationError, match="SEGMIND_API_URL") as caught:
        Settings()
    assert "pass@" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEGMIND_CONNECT_TIMEOUT_S", "0"),
        ("SEGMIND_READ_TIMEOUT_S", "-1"),
        ("SEGMIND_MAX_RESPONSE_BYTES", "0"),
        ("SEGMIND_READ_TIMEOUT_S", "soon"),
    ],
)
def test_bad_numbers_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_the_key_is_masked_in_every_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMIND_API_KEY", KEY)
    settings = Settings()
    assert_no_key(settings, settings.segmind_api_key, settings.model_dump_json(), vars(settings))


def test_pipeline_defaults() -> None:
    settings = Settings()
    assert settings.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert (settings.requests_queue, settings.polls_queue) == ("segmind.requests", "segmind.polls")
    assert settings.segmind_min_poll_interval_s == 7.0
    assert settings.segmind_job_deadline_s < 3600
    assert not settings.segmind_resubmit_unknown_outcome
    # The longest a POST can take: every timeout of a call, plus a grace.
    assert settings.submit_lease_s == 5 + 5 + 10 + 30 + 60 + 5


def test_broker_urls_with_passwords_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqps://svc:amqp-PASSWORD-42@rabbit.internal:5671/prod")
    monkeypatch.setenv("REDIS_URL", "rediss://:redis-PASSWORD-42@redis.internal:6380/0")
    settings = Settings()
    assert "PASSWORD-42" not in repr(settings)
    assert "PASSWORD-42" not in str(settings.model_dump())
    assert settings.amqp_url.get_secret_value().startswith("amqps://svc:")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEGMIND_JOB_DEADLINE_S", "3601"),  # past Segmind's retention
        ("SEGMIND_MIN_POLL_INTERVAL_S", "0"),
        ("SEGMIND_RETRY_CAP_S", "1801"),  # past RabbitMQ's consumer_timeout
        ("REQUESTS_QUEUE", "bad queue name"),
        ("REDIS_KEY_PREFIX", ""),
    ],
)
def test_unusable_pipeline_settings_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()
