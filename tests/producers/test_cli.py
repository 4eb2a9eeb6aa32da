"""The command line's catalog and schema commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from producers.catalog import WORKFLOWS_FILE_ENV
from producers.cli import app

runner = CliRunner()


def test_workflows_prints_the_catalog_as_a_table() -> None:
    result = runner.invoke(app, ["workflows"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for name, workflow_id, price in [
        ("scene-script", "670d2cb6f552c2dfdc9172e3-v2", "$4.9731"),
        ("stock-video", "67c6b3b9f6cf2bb5a9b16b3e-v8", "$0.6676"),
        ("character-video", "68628fe34727e611dfa219b4-v4", "$3.9674"),
        ("sketch-maker", "66cec9a38aeef98f887211f1-v1", "$0.1006"),
    ]:
        line = next(line for line in result.output.splitlines() if f" {name} " in line)
        assert workflow_id in line
        assert price in line
    assert "674 s" in result.output


def test_workflows_verbose_lists_types_and_defaults() -> None:
    result = runner.invoke(app, ["workflows", "-v"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "seed" in result.output
    assert "integer" in result.output
    assert "1323456" in result.output


def test_workflows_reports_a_broken_user_file(tmp_path: Path) -> None:
    bad = tmp_path / "w.json"
    bad.write_text("{")
    result = runner.invoke(app, ["workflows"], env={WORKFLOWS_FILE_ENV: str(bad)})
    assert result.exit_code == 2
    assert "is not JSON" in result.output


def test_workflows_includes_the_user_file(tmp_path: Path) -> None:
    extra = tmp_path / "w.json"
    extra.write_text(
        json.dumps(
            {"workflows": [{"name": "upscale", "workflow_id": "aaaaaaaaaaaaaaaaaaaaaaaa-v3"}]}
        )
    )
    result = runner.invoke(
        app, ["workflows"], env={WORKFLOWS_FILE_ENV: str(extra), "COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "aaaaaaaaaaaaaaaaaaaaaaaa-v3" in result.output
    assert "6 workflows" in result.output


@pytest.mark.parametrize("name", ["request.schema.json", "result.schema.json"])
def test_schemas_prints_both_schemas(name: str) -> None:
    result = runner.invoke(app, ["schemas"])
    assert result.exit_code == 0
    assert f"# {name}" in result.output
