"""The ``simulator`` command: it serves on the port it prints, never prints the key,
and refuses bad options.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO

import httpx
import pytest
import typer
from typer.testing import CliRunner

from simulator import SimulatorExtraMissingError, require_server
from simulator.cli import simulator_command

KEY = "cli-test-key-0123456789abcdef"
RUN_COMMAND = (
    "import typer; from simulator.cli import simulator_command; typer.run(simulator_command)"
)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUN_COMMAND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The lines of ``stream`` as they come, read by a daemon thread."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.fixture
def served() -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    """A simulator started by the command (key from the environment) on a free port:
    its URL, what it printed first, and the process.
    """
    process = start(
        "--port", "0", "--rpm", "0", "--time-scale", "0.01",
        "--fault", '{"endpoint": "credits", "status": 502, "count": 1}',
        "--serve-outputs", "--output-bytes", "video=5000",
        "--output-fault", '{"kind": "status", "status": 503, "count": 1}',
        env={"SEGMIND_SIMULATOR_API_KEY": KEY},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = lines_of(process.stdout).get(timeout=20)
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert found, first
        yield found.group(1), first, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_command_serves_with_the_key_from_the_environment(
    served: tuple[str, str, subprocess.Popen[str]],
) -> None:
    url, first, process = served
    assert KEY not in first
    assert "********" in first
    headers = {"x-api-key": KEY}
    # The --fault rule given at start applies once.
    assert httpx.get(f"{url}/v1/get-user-credits", headers=headers).status_code == 502
    credits = httpx.get(f"{url}/v1/get-user-credits", headers=headers)
    assert credits.json() == {"credits": 100.0, "free-credits": 0.0}
    assert httpx.get(f"{url}/v1/get-user-credits").status_code == 401
    config = httpx.get(f"{url}/_sim/config").json()
    assert config["serve_outputs"] is True
    assert config["output_bytes"]["video"] == 5000
    assert config["output_bytes"]["image"] == 64 * 1024
    faults = httpx.get(f"{url}/_sim/faults").json()
    assert faults["output_faults"] == [
        {"kind": "status", "keyname": "*", "status": 503, "count": 1, "remaining": 1}
    ]
    process.terminate()
    _, err = process.communicate(timeout=10)
    assert KEY not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", '{"endpoint": "poll"}'], "fault 0 is invalid"),
        (["--fault", "not json"], "not JSON"),
        (["--rpm", "-1"], "rpm"),
        (["--api-key", " "], "api_key"),
        (["--reset-header-format", "unix"], "reset-header-format"),
        (["--output-fault", '{"kind": "slow"}'], "output fault 0 is invalid"),
        (["--output-fault", "not json"], "not JSON"),
        (["--output-bytes", "video"], "TYPE=BYTES"),
        (["--output-bytes", "movie=5"], "movie"),
        (["--outputs-url", "ftp://x"], "http"),
    ],
)
def test_bad_options_are_refused_before_serving(args: list[str], message: str) -> None:
    app = typer.Typer()
    app.command()(simulator_command)
    result = CliRunner().invoke(app, ["--port", "0", "--api-key", KEY, *args])
    assert result.exit_code == 2
    assert message in result.output
    assert KEY not in result.output


def test_without_the_simulator_extra_the_command_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "uvicorn" else real(name, *rest),
    )
    with pytest.raises(SimulatorExtraMissingError, match=r"segmind-queue\[simulator\]"):
        require_server()
    app = typer.Typer()
    app.command()(simulator_command)
    result = CliRunner().invoke(app, ["--port", "0", "--api-key", KEY])
    assert result.exit_code == 2
    assert "the simulator needs uvicorn: pip install 'segmind-queue[simulator]'" in result.output
