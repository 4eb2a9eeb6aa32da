"""Figures that tests print in pytest's terminal summary (chaos runs, the fuzz).

A test (or a fixture) calls ``record(title, lines)``; the root conftest attaches what was
recorded to the report of the test's teardown, and the process that prints the summary
gathers it from the reports. That is what carries the figures out of pytest-xdist's
worker processes (``make test`` runs two), where a list in the test's own process would
never reach the summary.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

#: The ``user_properties`` key the figures travel under.
KEY: Final = "figures"

#: Sections recorded in this process since the last teardown: (title, lines).
PENDING: list[tuple[str, list[str]]] = []


def record(title: str, lines: Iterable[str]) -> None:
    """Print ``lines`` under ``title`` in the terminal summary."""
    PENDING.append((title, list(lines)))
