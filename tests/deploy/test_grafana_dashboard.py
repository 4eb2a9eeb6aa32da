"""The Grafana dashboard and provisioning in deploy/grafana: well formed, consistent with each
other, and in step with docs/metrics.md (every metric used is documented, every documented
metric is shown)."""

from __future__ import annotations

import itertools
import re
from typing import Any

from tests.deploy.queries import (
    DASHBOARD_PATH,
    REPO_ROOT,
    alert_queries,
    dashboard_panels,
    dashboard_queries,
    load_dashboard,
    load_file,
)

GRAFANA = REPO_ROOT / "deploy" / "grafana"
DATASOURCES_PATH = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER_PATH = GRAFANA / "provisioning" / "dashboards" / "segmind-queue.yml"
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"

# Where a compose file (or `docker run -v`) mounts the deploy directories in Grafana's image.
MOUNTS = {
    "deploy/grafana/provisioning": "/etc/grafana/provisioning",
    "deploy/grafana/dashboards": "/var/lib/grafana/dashboards",
}

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}

# Panels allowed to ignore the workflow variable or $__rate_interval, and why.
ACCOUNT_WIDE = {"Time to empty"}  # the balance is the account's: so must the burn rate be
RANGE_WINDOWS = {"Time to empty": {"1h"}}  # the same burn rate as the credit alerts

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_METRIC_ROW = re.compile(r"^\|\s*`((?:segmind|dramatiq)_\w+)`\s*\|\s*([^|]+?)\s*\|\s*([^|]*?)\s*\|")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')
_NAME = re.compile(r"\b((?:segmind|dramatiq)_[a-zA-Z0-9_]+)\b")
# A metric with its optional matchers: name{...}.
_SELECTOR = re.compile(r"\b((?:segmind|dramatiq)_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?")
_RANGE = re.compile(r"\[([^\]]+)\]")


def _documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's tables: name -> (type, labels)."""
    documented: dict[str, tuple[str, set[str]]] = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        match = _METRIC_ROW.match(line)
        if match:
            labels = {label.strip() for label in match.group(3).split(",") if label.strip()}
            documented[match.group(1)] = (match.group(2), labels)
    assert documented, f"no metric tables found in {METRICS_DOC}"
    return documented


def _base_name(name: str, documented: dict[str, tuple[str, set[str]]]) -> str:
    """The documented metric a series name belongs to (a histogram's _bucket/_sum/_count)."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and documented.get(base, ("",))[0] == "histogram":
            return base
    return name


def _metric_names(expr: str) -> set[str]:
    return set(_NAME.findall(_STRING.sub('""', expr)))


def _targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (panel, target)
        for panel in dashboard_panels(load_dashboard())
        for target in panel.get("targets", [])
    ]


def _variable(name: str) -> dict[str, Any]:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert name in variables, f"no dashboard variable {name!r}"
    variable: dict[str, Any] = variables[name]
    return variable


def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "segmind-queue"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36


def test_variables() -> None:
    datasource = _variable("datasource")
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    workflow = _variable("workflow")
    assert workflow["type"] == "query"
    assert workflow["datasource"] == DATASOURCE_REF
    assert workflow["definition"] == "label_values(segmind_jobs_total, workflow)"
    assert workflow["query"]["query"] == workflow["definition"]
    assert workflow["includeAll"] is True
    assert workflow["multi"] is True
    # "All" must also match workflows not seen yet, and workflow="unknown".
    assert workflow["allValue"] == ".*"


def test_panel_ids_are_unique() -> None:
    panels = load_dashboard()["panels"]
    ids = [p["id"] for p in panels] + [p["id"] for row in panels for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"


def test_panels_read_the_datasource_variable() -> None:
    panels = dashboard_panels(load_dashboard())
    assert panels
    for panel in panels:
        assert panel.get("datasource") == DATASOURCE_REF, panel["title"]
        assert panel.get("targets"), f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE_REF) == DATASOURCE_REF, panel["title"]


def test_targets_are_complete() -> None:
    for panel in dashboard_panels(load_dashboard()):
        ref_ids = [target.get("refId") for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: duplicate refIds"
        for target in panel["targets"]:
            where = f"{panel['title']} {target.get('refId')}"
            assert target.get("refId"), where
            assert target.get("expr", "").strip(), where
            assert target.get("legendFormat", "").strip(), where


def test_legends_name_labels_the_query_keeps() -> None:
    for panel, target in _targets():
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            assert re.search(rf"\bby \([^)]*\b{label}\b", target["expr"]), (
                f"{panel['title']} {target['refId']}: legend uses {label}, the query drops it"
            )


def test_layout_has_no_overlaps() -> None:
    panels = load_dashboard()["panels"]
    boxes = []
    for panel in panels:
        grid = panel.get("gridPos")
        assert grid is not None, f"{panel['title']} has no gridPos"
        assert grid["x"] >= 0, panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        boxes.append((panel["title"], grid))
    for (a, ga), (b, gb) in itertools.combinations(boxes, 2):
        apart = (
            ga["x"] + ga["w"] <= gb["x"]
            or gb["x"] + gb["w"] <= ga["x"]
            or ga["y"] + ga["h"] <= gb["y"]
            or gb["y"] + gb["h"] <= ga["y"]
        )
        assert apart, f"panels {a!r} and {b!r} overlap"


def test_panels_sit_under_their_row() -> None:
    panels = load_dashboard()["panels"]
    assert panels[0]["type"] == "row", "the first panel is not a row"
    rows = [i for i, panel in enumerate(panels) if panel["type"] == "row"]
    for start, end in itertools.pairwise([*rows, len(panels)]):
        top = panels[start]["gridPos"]["y"] + 1
        bottom = panels[end]["gridPos"]["y"] if end < len(panels) else None
        for panel in panels[start + 1 : end]:
            grid = panel["gridPos"]
            assert grid["y"] >= top, f"{panel['title']} is above its row"
            if bottom is not None:
                assert grid["y"] + grid["h"] <= bottom, f"{panel['title']} runs into the next row"


def test_queries_filter_by_workflow() -> None:
    documented = _documented()
    for panel, target in _targets():
        if panel["title"] in ACCOUNT_WIDE:
            continue
        for name, matchers in _SELECTOR.findall(target["expr"]):
            _, labels = documented.get(_base_name(name, documented), ("", set()))
            if "workflow" in labels:
                assert 'workflow=~"$workflow"' in matchers, (
                    f"{panel['title']} {target['refId']}: {name} is not filtered by $workflow"
                )


def test_rates_use_the_rate_interval() -> None:
    for panel, target in _targets():
        allowed = {"$__rate_interval", "$__range"} | RANGE_WINDOWS.get(panel["title"], set())
        for window in _RANGE.findall(_STRING.sub('""', target["expr"])):
            assert window in allowed, f"{panel['title']} {target['refId']}: window [{window}]"


def test_metrics_used_are_documented() -> None:
    documented = _documented()
    doc_text = METRICS_DOC.read_text(encoding="utf-8")
    for query in dashboard_queries() + alert_queries():
        for name in _metric_names(query.expr):
            base = _base_name(name, documented)
            if name.startswith("segmind_"):
                assert base in documented, f"{query.source}: {name} is not in docs/metrics.md"
            else:  # Dramatiq's own are named in the text; a histogram by its base name
                dramatiq_base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert f"`{dramatiq_base}`" in doc_text, f"{query.source}: {name} undocumented"


def test_documented_metrics_are_on_the_dashboard() -> None:
    documented = _documented()
    shown = {
        _base_name(name, documented)
        for query in dashboard_queries()
        for name in _metric_names(query.expr)
    }
    assert set(documented) - shown == set(), "documented metrics that no panel shows"


def test_datasource_provisioning_matches_the_dashboard() -> None:
    datasources = load_file(DATASOURCES_PATH)["datasources"]
    assert len(datasources) == 1
    (datasource,) = datasources
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    # The dashboard's default datasource is the provisioned one.
    assert _variable("datasource")["current"]["value"] == datasource["uid"]


def test_dashboard_provider_loads_the_shipped_dashboards() -> None:
    providers = load_file(PROVIDER_PATH)["providers"]
    assert len(providers) == 1
    (provider,) = providers
    assert provider["type"] == "file"
    assert provider["options"]["path"] == MOUNTS["deploy/grafana/dashboards"]
    assert DASHBOARD_PATH.parent == REPO_ROOT / "deploy/grafana/dashboards"
    # Grafana reads <provisioning>/datasources and <provisioning>/dashboards.
    provisioning = REPO_ROOT / "deploy/grafana/provisioning"
    assert DATASOURCES_PATH.parent == provisioning / "datasources"
    assert PROVIDER_PATH.parent == provisioning / "dashboards"


# A volume "<host dir>:<container dir>[:ro]" that mounts a grafana directory.
_VOLUME = re.compile(
    r"([^\s\"':]*grafana/(?:dashboards|provisioning))/?"  # host directory
    r":(/[^\s\"':]*[^\s\"':/])"  # container directory
)


def test_compose_mounts_match_the_provisioning() -> None:
    # No compose file ships yet; when one does, it must mount where the provider looks.
    skip = {".git", ".venv", "node_modules"}
    for compose in sorted(REPO_ROOT.rglob("*compose*.y*ml")):
        if skip.intersection(compose.relative_to(REPO_ROOT).parts):
            continue
        for line in compose.read_text(encoding="utf-8").splitlines():
            match = _VOLUME.search(line.split("#", 1)[0])
            if match:
                source = (compose.parent / match.group(1)).resolve().relative_to(REPO_ROOT)
                assert MOUNTS.get(source.as_posix()) == match.group(2), f"{compose}: {line}"
