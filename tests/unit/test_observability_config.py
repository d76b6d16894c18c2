"""The Grafana dashboard and the Prometheus alert rules under deploy/observability/ parse, and
every metric they query is one the services export (or one Prometheus or the API server does).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

# Importing the services registers every metric they define in the default registry.
SERVICE_MODULES = (
    "memcached_operator.reconciler.service",
    "memcached_operator.status.service",
    "memcached_operator.watcher.service",
    "memcached_operator.shared.kube.client",
    "memcached_operator.shared.runtime.metrics",
)
for _module in SERVICE_MODULES:
    importlib.import_module(_module)

pytestmark = pytest.mark.unit

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RULES = OBSERVABILITY / "prometheus-rules.yaml"
# Metrics of Prometheus itself and of the API server, not of the operator.
EXTERNAL = {"up", "apiserver_request_total"}
# Metrics of memcached-exporter, the sidecar of a Memcached with spec.monitoring.enabled.
EXPORTER = {
    "memcached_current_bytes",
    "memcached_limit_bytes",
    "memcached_commands_total",
    "memcached_current_connections",
}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase", "deriv",
    "delta", "histogram_quantile", "absent", "vector", "and", "or", "unless", "on", "ignoring",
    "group_left", "group_right", "clamp_min", "label_values", "bool", "offset",
}  # fmt: skip
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def exported_names() -> set[str]:
    """Every sample name the default registry can produce, labelled children or not."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "summary": ("_count", "_sum", "_created", ""),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label names and values taken out)."""
    text = re.sub(r"label_values\(([^,)]+),[^)]*\)", r"\1", expr)  # Grafana: metric, label
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r'"[^"]*"', "", text)  # strings
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    return {
        word
        for word in _IDENTIFIER.findall(text)
        if word not in PROMQL_WORDS and not word.startswith("$") and not word[0].isdigit()
    }


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for variable in doc["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def rule_exprs(doc: dict[str, Any]) -> list[str]:
    return [rule["expr"] for group in doc["spec"]["groups"] for rule in group["rules"]]


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (controller, le) (rate(x_bucket{a="b"}[5m]))) > 10'
        " and max by (name) (deriv(workqueue_depth[15m])) > 0"
    ) == {"x_bucket", "workqueue_depth"}
    assert metric_names("label_values(controller_runtime_active_workers, controller)") == {
        "controller_runtime_active_workers"
    }


def test_dashboard_parses_and_covers_the_pipeline() -> None:
    doc = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"] for p in doc["panels"]).lower()
    for topic in ("reconcile", "depth", "adds", "retries", "events", "duplicate", "dead"):
        assert topic in titles, topic
    assert "status writes" in titles and "api requests" in titles
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    used = set().union(*(metric_names(e) for e in dashboard_exprs(doc)))
    assert used - EXTERNAL - EXPORTER <= exported_names(), used - exported_names()
    assert "controller_runtime_reconcile_total" in used
    # A panel per CR from the exporter's metrics, grouped by the CR's instance label.
    per_cr = [
        t["expr"]
        for p in doc["panels"]
        for t in p.get("targets", [])
        if metric_names(t["expr"]) & EXPORTER
    ]
    assert per_cr and all("app_kubernetes_io_instance" in e for e in per_cr), per_cr


def test_alert_rules_parse_and_query_only_exported_metrics() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["kind"] == "PrometheusRule"
    rules = [rule for group in doc["spec"]["groups"] for rule in group["rules"]]
    alerts = {rule["alert"] for rule in rules}
    assert len(alerts) == len(rules), "alert names must be unique"
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
    used = set().union(*(metric_names(e) for e in rule_exprs(doc)))
    assert used - EXTERNAL <= exported_names(), used - exported_names()
    for name in (
        "controller_runtime_reconcile_errors_total",
        "mcop_dead_lettered_total",
        "workqueue_depth",
        "mcop_events_published_total",
        "up",
    ):
        assert name in used, name
