"""The optional PrometheusRule and Grafana dashboard, rendered with ``helm template``: off by
default, their shape, and every metric (and label) their expressions use is one the operator
exports, read from the operator's own metric definitions (``thpcheck.controller.metrics``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from devtools.cluster.accounts import documents
from tests.chart.chart_kit import ALL_VALUES, CHART, Helm, find
from thpcheck.controller.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
ALERTS = SCHEMA["properties"]["metrics"]["properties"]["prometheusRule"]["properties"][
    "disabledAlerts"]["items"]["enum"]
# The series a family of each type exposes (prometheus_client strips "_total" from counter
# family names).
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "info": ("_info",),
            "enum": ("",)}


def exported() -> tuple[set[str], set[str]]:
    """Series names and label names the operator's /metrics can expose."""
    metrics = Metrics()
    series = {family.name + suffix for family in metrics.registry.collect()
              for suffix in SUFFIXES[family.type]}
    labels = {"le"}  # histogram buckets
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            labels |= set(collector._labelnames)  # the label names each metric was defined with
    return series, labels


# -- a small PromQL reader: metric names and label names, nothing else ------------------------

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_WORD = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used in a PromQL expression."""
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    for matchers in _MATCHERS.findall(text):
        labels |= {m.split("=")[0].split("!")[0].strip() for m in matchers.split(",")
                   if m.strip()}
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    for _, names in _GROUPING.findall(text):
        labels |= {n.strip() for n in names.split(",") if n.strip()}
    text = _GROUPING.sub(" ", text)
    metrics = set()
    for match in _WORD.finditer(text):
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in KEYWORDS:
            metrics.add(match.group())
    return metrics, labels


def test_the_promql_reader() -> None:
    assert promql_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{check=~"$check"}[5m]))) > 1e3 '
        'and on (check) max(b) by (verb) unless c offset 5m') == (
        {"a_bucket", "b", "c"}, {"le", "check", "verb"})
    assert promql_names('sum(x{a="b",c!="d", e=~"f,g"})') == ({"x"}, {"a", "c", "e"})


# -- rendering ---------------------------------------------------------------------------------


def render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    return documents(helm.template(*args))


def monitoring(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "PrometheusRule"
            or (d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))]


def rule_and_dashboard(helm: Helm, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = render(helm, "-f", str(ALL_VALUES), *args)
    configmap = find(docs, "ConfigMap", "thp-checker-dashboard")
    return find(docs, "PrometheusRule"), json.loads(configmap["data"]["thp-checker.json"])


def alerts_of(rule: dict[str, Any]) -> list[dict[str, Any]]:
    (group,) = rule["spec"]["groups"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard query, nested rows included."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets") or []:
                yield panel["title"], target["expr"]
            yield from walk(panel.get("panels") or [])

    yield from walk(dashboard["panels"])


def test_both_are_off_by_default_and_without_metrics(helm: Helm) -> None:
    assert monitoring(render(helm)) == []
    assert monitoring(render(helm, "-f", str(ALL_VALUES), "--set", "metrics.port=0")) == []
    assert len(monitoring(render(helm, "-f", str(ALL_VALUES)))) == 2


def test_the_prometheus_rule(helm: Helm) -> None:
    rule, _ = rule_and_dashboard(helm)
    assert rule["metadata"]["namespace"] == "thp-checker"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = alerts_of(rule)
    assert [a["alert"] for a in alerts] == ALERTS
    severities = {a["alert"]: a["labels"]["severity"] for a in alerts}
    assert severities["ThpCheckAffectedNodesNotMitigated"] == "critical"
    assert severities["ThpCheckPredictionDisagreement"] == "info"
    assert set(severities.values()) == {"critical", "warning", "info"}
    for alert in alerts:
        assert alert["for"] == "30m" and alert["labels"]["team"] == "platform"
        assert set(alert["annotations"]) == {"summary", "description"}
        # Prometheus' own templates reach Prometheus untouched by Helm.
        assert "{{ $value" in alert["annotations"]["description"]
    outdated = next(a for a in alerts if a["alert"] == "ThpCheckResultsOutdated")
    assert outdated["expr"].endswith("(max by (check) (thpcheck_schedule_interval_seconds) * 2)")


def test_alerts_can_be_left_out(helm: Helm) -> None:
    rule, _ = rule_and_dashboard(helm, "--set-json",
                                 'metrics.prometheusRule.disabledAlerts='
                                 '["ThpCheckPredictionDisagreement","ThpCheckResultsOutdated"]')
    assert [a["alert"] for a in alerts_of(rule)] == [
        a for a in ALERTS if a not in ("ThpCheckPredictionDisagreement",
                                       "ThpCheckResultsOutdated")]
    refused = helm.run("template", "r", str(CHART), "--set-json",
                       'metrics.prometheusRule.disabledAlerts=["NoSuchAlert"]', check=False)
    assert refused.returncode != 0 and "disabledAlerts" in refused.stderr


def test_every_metric_and_label_used_is_one_the_operator_exports(helm: Helm) -> None:
    series, labels = exported()
    rule, dashboard = rule_and_dashboard(helm)
    expressions = [(f"alert {a['alert']}", a["expr"]) for a in alerts_of(rule)]
    expressions += [(f"panel {title}", expr) for title, expr in queries(dashboard)]
    used: set[str] = set()
    for where, expr in expressions:
        metrics, label_names = promql_names(expr)
        assert metrics, f"{where}: no metric found in {expr!r}"
        assert metrics <= series, f"{where}: not exported: {sorted(metrics - series)}"
        assert label_names <= labels, f"{where}: no such label: {sorted(label_names - labels)}"
        used |= metrics
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+), *(\w+)\)",
                                         variable["definition"]).groups()  # type: ignore[union-attr]
            assert metric in series and label in labels
    # What the issue asks to alert on and to chart is there.
    assert {"thpcheck_affected_nodes_unmitigated", "thpcheck_oldest_result_age_seconds",
            "thpcheck_schedule_interval_seconds", "thpcheck_results_failed",
            "thpcheck_mitigation_unverified", "thpcheck_nodes", "thpcheck_nodes_mitigated",
            "thpcheck_nodes_cordoned", "thpcheck_check_duration_seconds_bucket"} <= used


def test_a_metric_the_operator_does_not_export_is_caught() -> None:
    series, _ = exported()
    metrics, _ = promql_names("max by (check) (thpcheck_nodes_affected_unmitigated) > 0")
    assert metrics - series == {"thpcheck_nodes_affected_unmitigated"}


def test_the_dashboard(helm: Helm) -> None:
    docs = render(helm, "-f", str(ALL_VALUES))
    configmap = find(docs, "ConfigMap", "thp-checker-dashboard")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    dashboard = json.loads(configmap["data"]["thp-checker.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dashboard["uid"] == "thp-checker"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Nodes by verdict", "Mitigated and cordoned nodes",
            "Check duration per node"} <= titles
    for panel in dashboard["panels"]:
        refs = [t["refId"] for t in panel.get("targets") or []]
        assert len(refs) == len(set(refs)), panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    by_verdict = next(p for p in dashboard["panels"] if p["title"] == "Nodes by verdict")
    assert by_verdict["targets"][0]["expr"] == 'sum by (verdict) (thpcheck_nodes{check=~"$check"})'
    default = render(helm, "--set", "metrics.dashboard.enabled=true")
    assert find(default, "ConfigMap", "thp-checker-dashboard")["metadata"]["namespace"] == \
        "thp-checker"


@pytest.mark.parametrize("name", ALERTS)
def test_every_alert_is_documented(name: str) -> None:
    assert name in (REPO / "docs" / "helm.md").read_text()
