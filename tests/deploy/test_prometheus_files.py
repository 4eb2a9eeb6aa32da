"""The Prometheus config and alert rules in deploy/prometheus: promtool accepts them and
their unit tests pass, and every alert is tested both firing and silent."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import prometheus_tool
from tests.deploy.queries import REPO_ROOT, RULES_PATH, alert_queries, load_file, load_rules

RULES_TEST_PATH = RULES_PATH.with_name("rules.test.yml")


def _run_promtool(*args: str) -> str:
    completed = subprocess.run(
        [prometheus_tool("promtool"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "deploy/prometheus/prometheus.yml"),
        ("check", "rules", "deploy/prometheus/rules.yml"),
        ("test", "rules", "deploy/prometheus/rules.test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts(args: tuple[str, ...]) -> None:
    _run_promtool(*args)


def test_promtool_sees_every_rule_this_suite_reads() -> None:
    # Proves the YAML reader of tests/deploy finds the rules promtool finds.
    output = _run_promtool("check", "rules", "deploy/prometheus/rules.yml")
    match = re.search(r"SUCCESS: (\d+) rules found", output)
    assert match is not None, output
    assert int(match.group(1)) == len(load_rules()) == len(alert_queries())


def test_every_alert_has_severity_and_says_what_to_do() -> None:
    names = [rule["alert"] for rule in load_rules()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in load_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name} has no summary"
        assert annotations.get("description", "").strip(), f"{name} has no description"


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in load_file(RULES_TEST_PATH)["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            (firing if expected else silent).add(check["alertname"])
            for alert in expected:
                # Checking the annotations proves the templates render.
                assert set(alert.get("exp_annotations", {})) == {"summary", "description"}, (
                    f"{check['alertname']} at {check['eval_time']}: check both annotations"
                )
    names = {rule["alert"] for rule in load_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent (exp_alerts: [])"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"
