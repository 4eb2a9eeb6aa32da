"""``segmind-queue spend``: the spend by tenant and by day, from the real Redis."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
from typer.testing import CliRunner

from console.cli import app
from console.spend import parse_since
from worker.spend import DailySpend
from worker.store import RedisStore

runner = CliRunner()
DAY = 86400.0


@pytest.fixture
def spend(redis_url: str, namespace: str) -> Iterator[DailySpend]:
    store = RedisStore.from_url(redis_url)
    prefix = f"{namespace}-spend-{secrets.token_hex(3)}"
    now = time.time()
    for at, cost, tenant in (
        (now - 2 * DAY, 1.0, "acme"),
        (now - DAY, 0.5, "acme"),
        (now - DAY, 0.25, "beta"),
        (now, 0.1, "beta"),
        (now, 0.2, "default"),
    ):
        DailySpend(store, prefix, clock=_at(at)).add(cost, tenant)
    yield DailySpend(store, prefix)
    for key in store.keys(f"{prefix}:"):
        store.delete(key)
    store.close()


def _at(moment: float) -> Callable[[], float]:
    return lambda: moment


def _spend(spend: DailySpend, redis_url: str, *args: str) -> Any:
    env = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": spend.prefix, "SEGMIND_API_KEY": None}
    return runner.invoke(app, ["spend", *args], env=env)


def test_today_by_tenant_by_default(spend: DailySpend, redis_url: str) -> None:
    shown = _spend(spend, redis_url)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("tenant\tusd (since ")
    assert lines[1:] == ["default\t$0.2000", "beta\t$0.1000", "total\t$0.3000"]


def test_since_adds_up_the_days_by_tenant_or_by_day(spend: DailySpend, redis_url: str) -> None:
    by_tenant = json.loads(_spend(spend, redis_url, "--since", "2d", "--json").stdout)
    assert by_tenant["usd"] == {
        "acme": pytest.approx(1.5),
        "beta": pytest.approx(0.35),
        "default": pytest.approx(0.2),
    }
    by_day = json.loads(_spend(spend, redis_url, "--by", "day", "--since", "1d", "--json").stdout)
    assert list(by_day["usd"].values()) == [pytest.approx(0.75), pytest.approx(0.3)]


def test_a_bad_since_is_refused() -> None:
    today = date(2026, 12, 3)
    assert parse_since("3d", today) == date(2026, 11, 30)
    assert parse_since("2026-12-01", today) == date(2026, 12, 1)
    for bad in ("yesterday", "2026-12-04", "999d"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad, today)
