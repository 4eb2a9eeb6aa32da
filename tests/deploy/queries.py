"""Every PromQL expression that the shipped dashboard and alert rules run, ready to evaluate.

``dashboard_queries()`` reads deploy/grafana/dashboards/segmind-queue.json and
``alert_queries()`` deploy/prometheus/rules.yml. Grafana's variables in the dashboard's
expressions are replaced by values a plain Prometheus query accepts (``GRAFANA_VARIABLES``);
an expression using any other variable raises ``ValueError``, so a new variable cannot slip
past the tests that evaluate these.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_file(path: Path) -> Any:
    """The YAML document in ``path``."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


DASHBOARD_PATH = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "segmind-queue.json"
RULES_PATH = REPO_ROOT / "deploy" / "prometheus" / "rules.yml"

# "All" workflows and tenants is the variables' allValue; the intervals are what Grafana would
# pick for a short range at the 15 s scrape interval.
GRAFANA_VARIABLES = {
    "workflow": ".*",
    "tenant": ".*",
    "__rate_interval": "1m",
    "__range": "5m",
    "__interval": "15s",
}

# $name, ${name} and ${name:format}.
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


@dataclass(frozen=True)
class Query:
    """One expression: where it comes from (for messages) and its PromQL."""

    source: str
    expr: str


def substitute_variables(expr: str) -> str:
    """``expr`` with Grafana's variables replaced by ``GRAFANA_VARIABLES``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(replace, expr)


def load_dashboard() -> dict[str, Any]:
    """The shipped dashboard's JSON model."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows, including those inside collapsed rows, in dashboard order."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def load_rules() -> list[dict[str, Any]]:
    """Every rule of rules.yml, in file order."""
    document = load_file(RULES_PATH)
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[Query]:
    """Every panel target's expression, variables substituted."""
    return [
        Query(f"panel {panel['title']!r} {target['refId']}", substitute_variables(target["expr"]))
        for panel in dashboard_panels(load_dashboard())
        for target in panel.get("targets", [])
    ]


def alert_queries() -> list[Query]:
    """Every alerting rule's expression."""
    return [
        Query(f"alert {rule['alert']}", rule["expr"].strip())
        for rule in load_rules()
        if "alert" in rule
    ]
