"""The alert rules, their promtool unit tests, runbooks and the Grafana dashboard, checked offline.

A running fleet serving every metric used here is tests/integration/test_metrics.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.grafana import dashboard

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
RUNBOOK_BASE = "https://github.com/costtrace/costtrace/blob/main/"
METRIC = re.compile(r"\b(costtrace_[a-z0-9_]+|up)\b(?!\s*\()")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(dashboard.OUT.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def metric_names(exprs: list[str]) -> set[str]:
    """The metric names a set of PromQL expressions reads (label names and functions aside)."""
    names = set()
    for expr in exprs:
        no_labels = re.sub(r"\{[^}]*\}", "", expr)
        no_grouping = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", no_labels)
        names |= set(METRIC.findall(no_grouping))
    return names


def used_metrics() -> set[str]:
    return metric_names([r["expr"] for r in alert_rules()] + dashboard_exprs())


def test_promtool_checks_the_rules_and_runs_their_unit_tests(stack: None) -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", "alerts.yml"], cwd=PROM, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"], cwd=PROM, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alert_has_a_unit_test_a_summary_a_description_and_a_runbook_in_the_repo() -> None:
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")}
    for rule in alert_rules():
        name = rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        assert notes["runbook_url"] == f"{RUNBOOK_BASE}docs/runbooks/{name}.md"
        assert (REPO / "docs" / "runbooks" / f"{name}.md").read_text().startswith(f"# {name}\n")
        assert name in tested, f"{name} has no promtool test in which it fires"


def test_the_dashboard_file_is_what_its_code_builds() -> None:
    assert dashboard.OUT.read_text() == dashboard.render(), "run `python -m deploy.grafana.dashboard`"


def test_the_dashboard_answers_the_three_questions() -> None:
    doc = json.loads(dashboard.OUT.read_text())
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows == ["Is it keeping up?", "Is anything failing?", "Is the money right?"]
    assert {
        "costtrace_consumer_lag_messages",
        "costtrace_dead_letters_total",
        "costtrace_debt_outstanding_coins",
    } <= (metric_names(dashboard_exprs()))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (group) (costtrace_consumer_lag_messages{topic=~"x"}) > 5',
            {"costtrace_consumer_lag_messages"},
        ),
        ("histogram_quantile(0.5, sum by (le) (rate(costtrace_a_bucket[5m])))", {"costtrace_a_bucket"}),
        ('up{job=~"costtrace.*"} == 0 and on () costtrace_b', {"up", "costtrace_b"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names([expr]) == names
