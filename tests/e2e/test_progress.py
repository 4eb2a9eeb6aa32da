"""Progress events on the real RabbitMQ, Redis and simulator: ``segmind-queue submit --wait
--progress`` through a real worker hears the request's stages before its one result, and
``segmind-queue get`` then shows it COMPLETED with its figures."""

from __future__ import annotations

import json
import uuid
from typing import Any

from typer.testing import CliRunner

from console.cli import app
from producers.contract import Result, Status
from tests.e2e.conftest import Stack

runner = CliRunner()


def _invoke(stack: Stack, *args: str) -> Any:
    env: dict[str, str | None] = {**stack.env(), "SEGMIND_API_KEY": None}
    return runner.invoke(app, list(args), env=env)


def test_submit_wait_progress_shows_the_stages_then_get_shows_the_figures(stack: Stack) -> None:
    request_id = f"progress-{uuid.uuid4().hex[:8]}"
    submitted = _invoke(
        stack,
        "submit",
        "sketch-maker",
        "--input",
        "input_image=https://example.com/cat.png",
        "--request-id",
        request_id,
        "--progress",
        "--wait",
        "--timeout",
        "60",
    )
    assert submitted.exit_code == 0, submitted.output
    published, line = submitted.stdout.splitlines()
    assert published == request_id
    result = Result.model_validate_json(line)  # the one result; progress never on stdout
    assert result.status is Status.COMPLETED
    told = [row for row in submitted.stderr.splitlines() if row.startswith(request_id)]
    assert told[0].startswith(f"{request_id} accepted, state NEW, 0 ahead")
    assert told[1].startswith(f"{request_id} submitted, state SUBMITTED")

    looked_up = _invoke(stack, "get", request_id, "--json")
    assert looked_up.exit_code == 0, looked_up.output
    fields = json.loads(looked_up.stdout)
    assert fields["state"] == "DONE"
    assert fields["result"]["status"] == "COMPLETED"
    assert fields["polls"] == result.polls >= 1
    assert fields["cost_usd"] == result.cost_usd
    assert result.cost_usd is not None
    assert result.cost_usd > 0
    assert fields["segmind_request_id"] == result.segmind_request_id
