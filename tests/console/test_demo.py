"""``segmind-queue demo`` on local defaults, and its guard against spending real credits."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from rich.console import Console

from console.demo import estimated_cost, run_demo
from producers.catalog import default_catalog


def _results(output: str) -> list[dict[str, Any]]:
    """The JSON results printed by the demo (each an object starting on its own line)."""
    decoder = json.JSONDecoder()
    results = []
    for match in re.finditer(r"^\{", output, re.MULTILINE):
        value, _ = decoder.raw_decode(output, match.start())
        results.append(value)
    return results


def _run_demo_on_the_simulator(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)
    monkeypatch.delenv("SEGMIND_API_KEY_FILE", raising=False)
    out = io.StringIO()
    code = run_demo(time_scale=0.002, yes=False, console=Console(file=out, width=160))
    text = out.getvalue()
    assert code == 0, text
    results = _results(text)
    assert [r["workflow"] for r in results] == [w.name for w in default_catalog()]
    assert all(r["status"] == "COMPLETED" and r["outputs"] for r in results)
    assert all(r["metadata"] == {"demo": r["workflow"]} for r in results)
    # Every file output was kept, where the demo says, and hashes to its sha256.
    kept = re.search(r"Output files are kept in (\S+)\.", text)
    assert kept is not None
    files = [o for r in results for o in r["outputs"] if o["type"] not in ("text", "json")]
    assert files
    for output in files:
        assert output["stored"] is True, output
        assert output["data"].startswith(kept.group(1))
        path = Path(unquote(urlsplit(output["data"]).path))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == output["sha256"]
    assert "5 of 5 workflows completed" in text
    assert "5 submits" in text
    # It said where its metrics were, and ends with them as `segmind-queue status` shows.
    assert re.search(r"Metrics: http://127\.0\.0\.1:\d+/metrics while the demo runs", text)
    for heading in ("Credits (USD", "Jobs by workflow", "Segmind calls: 429 share"):
        assert heading in text
    return text


def test_demo_goes_through_rabbitmq_and_redis_when_they_answer(
    monkeypatch: pytest.MonkeyPatch, amqp_url: str, redis_url: str
) -> None:
    monkeypatch.setenv("AMQP_URL", amqp_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    text = _run_demo_on_the_simulator(monkeypatch)
    assert "RabbitMQ and Redis answer" in text


@pytest.mark.integration
def test_demo_runs_in_process_when_rabbitmq_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A closed local port: what a fresh machine without RabbitMQ looks like.
    monkeypatch.setenv("AMQP_URL", "amqp://guest:guest@127.0.0.1:9/%2F")
    text = _run_demo_on_the_simulator(monkeypatch)
    assert "RabbitMQ does not answer" in text
    assert "in-memory broker" in text


def test_demo_with_a_real_key_spends_nothing_without_consent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The URL is a closed local port: had the demo sent anything, it would have failed.
    monkeypatch.setenv("SEGMIND_API_KEY", "real-key-must-not-be-used-0123")
    monkeypatch.setenv("SEGMIND_API_URL", "http://127.0.0.1:9")
    out = io.StringIO()
    code = run_demo(time_scale=1.0, yes=False, console=Console(file=out, width=300))
    assert code == 2
    assert "Pass --yes" in out.getvalue()
    assert "real-key-must-not-be-used" not in out.getvalue()


def test_estimated_cost_counts_priced_workflows_and_names_the_rest() -> None:
    cost, unpriced = estimated_cost(default_catalog())
    assert cost == pytest.approx(4.9731 + 0.6676 + 3.9674 + 0.1006)
    assert unpriced == ["product-shot"]
