"""The day's spend: one total per UTC day, added by the pipeline and read by the monitor."""

from __future__ import annotations

import pytest

from worker.spend import DailySpend, spend_key
from worker.store import MemoryStore

DAY = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def test_each_utc_day_has_its_own_key() -> None:
    assert spend_key("p", DAY) == "p:spend:2027-01-15"
    assert spend_key("p", DAY + 86_400) == "p:spend:2027-01-16"


def test_costs_add_up_within_a_day_and_start_again_the_next() -> None:
    now = [DAY]
    spend = DailySpend(MemoryStore(), "p", clock=lambda: now[0])
    assert spend.today() == 0.0
    spend.add(0.10)
    assert spend.add(0.25) == pytest.approx(0.35)
    assert spend.today() == pytest.approx(0.35)
    now[0] = DAY + 86_400
    assert spend.today() == 0.0
    spend.add(1.0)
    assert spend.today() == pytest.approx(1.0)
    now[0] = DAY
    assert spend.today() == pytest.approx(0.35)


def test_the_fleet_shares_the_total_through_the_store() -> None:
    store = MemoryStore()
    DailySpend(store, "p", clock=lambda: DAY).add(0.5)
    assert DailySpend(store, "p", clock=lambda: DAY).today() == pytest.approx(0.5)
