"""What every ``segmind-queue`` command does the same way: one-line errors and warnings on
stderr (no traceback, no secret) and the settings read from the environment."""

from __future__ import annotations

from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from worker.settings import Settings
from worker.store import RedisStore

errors = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``code``."""
    errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print ``warning: <message>`` on stderr."""
    errors.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def load_settings() -> Settings:
    """The settings from the environment; an invalid one exits 2 naming the variable and
    the problem, never the value (it may be a secret)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        fail(f"invalid settings: {problems}")


def open_store(settings: Settings) -> RedisStore:
    """The Redis store of ``REDIS_URL``; a URL redis-py cannot parse exits 2 in one line
    (redis-py's own message may quote the URL, and with it the password)."""
    try:
        return RedisStore.from_url(
            settings.redis_url.get_secret_value(),
            sentinel_password=settings.redis_sentinel_secret(),
        )
    except ValueError:
        fail("REDIS_URL is not a valid redis://, rediss:// or redis+sentinel:// URL")
