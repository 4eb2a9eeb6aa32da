"""The figures the fuzz tests print in pytest's terminal summary.

The options ``--fuzz-requests N`` (hostile messages the end-to-end fuzz publishes) and
``--fuzz-seed S`` (the same seed and count publish the same messages) are registered in
``tests/conftest.py``: ``pytest tests/fuzz --fuzz-requests 10000``.
"""

from __future__ import annotations

import pytest

#: Sections for the terminal summary: (title, lines), appended by the tests.
FIGURES: list[tuple[str, list[str]]] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in FIGURES:
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
