"""Session fixtures shared by every test: one local Segmind simulator over a real socket.

- ``simulator`` (session): a ``RunningSimulator`` on 127.0.0.1 (ephemeral port), API key
  ``SIM_API_KEY``, time scale 0.002 (a 60 s job takes 0.12 s), no rate limit, $1000 of
  credits, seed 1234.
- ``sim`` (function): the same simulator, reset first (no jobs, counters, faults or
  overrides left by another test). Tests change it with ``sim.reset(rpm=..., ...)`` and
  ``sim.add_faults({...})``, and read ``sim.stats()`` / ``sim.jobs()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from simulator.config import SimulatorConfig
from simulator.testing import RunningSimulator, run_simulator

SIM_API_KEY = "sim-test-key-0123456789abcdef"


def simulator_test_config() -> SimulatorConfig:
    """The config of the session simulator."""
    return SimulatorConfig(
        api_key=SecretStr(SIM_API_KEY),
        time_scale=0.002,
        rpm=0,
        credits=1000.0,
        seed=1234,
    )


@pytest.fixture(scope="session")
def simulator() -> Iterator[RunningSimulator]:
    """One simulator for the whole session (see the module docstring)."""
    with run_simulator(simulator_test_config()) as running:
        yield running


@pytest.fixture
def sim(simulator: RunningSimulator) -> RunningSimulator:
    """The session simulator, reset to its base config for this test."""
    simulator.reset()
    return simulator


# Fixtures that start real services; a test that uses one is an integration test.
_SERVICE_FIXTURES = frozenset({"simulator", "sim"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real service ``integration`` (``make unit`` skips them)."""
    for item in items:
        if _SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
