"""The costtrace Grafana dashboard, as code: `python -m deploy.grafana.dashboard` rewrites the JSON.

Three rows answer the three questions an SRE asks: is it keeping up, is
anything failing, is the money right. Every query uses metrics from
costtrace/fleet/metrics.py (and Prometheus' `up`); tests/deploy/test_observability.py
checks that the JSON is what this file builds and that a running fleet serves
each metric.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "costtrace.json"
DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(
    title: str,
    exprs: list[tuple[str, str]],
    unit: str = "short",
    kind: str = "timeseries",
    description: str = "",
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}} if kind != "stat" else {},
        "targets": [
            {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


# fmt: off
ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    ("Is it keeping up?", [
        panel("Consumer lag by group", [("sum by (group) (costtrace_consumer_lag_messages)", "{{group}}")],
              description="Messages after the committed offset. Alerts: CosttraceLagHigh, -Growing."),
        panel("Lag by topic and partition",
              [("sum by (topic, partition) (costtrace_consumer_lag_messages)", "{{topic}}/{{partition}}")]),
        panel("Events per second by type",
              [("sum by (type) (rate(costtrace_events_total[$__rate_interval]))", "{{type}}")], unit="ops"),
        panel("End-to-end latency (to committed row)", [
            ("histogram_quantile(0.5, sum by (le, clock) "
             "(rate(costtrace_end_to_end_latency_seconds_bucket[$__rate_interval])))", "p50, {{clock}} time"),
            ("histogram_quantile(0.99, sum by (le, clock) "
             "(rate(costtrace_end_to_end_latency_seconds_bucket[$__rate_interval])))", "p99, {{clock}} time"),
        ], unit="s"),
        panel("Rows committed per second",
              [("sum by (table) (rate(costtrace_sink_rows_total[$__rate_interval]))", "{{table}}")],
              unit="ops"),
        panel("Sink batch duration p99", [
            ("histogram_quantile(0.99, sum by (le, table) "
             "(rate(costtrace_sink_batch_duration_seconds_bucket[$__rate_interval])))", "{{table}}"),
        ], unit="s"),
    ]),
    ("Is anything failing?", [
        panel("Workers up", [("sum by (job) (up{job=~\"costtrace.*\"})", "{{job}}"),
                             ("sum(costtrace_worker_ready)", "ready")], kind="stat",
              description="Alert: CosttraceWorkerDown, CosttraceWorkerNotReady."),
        panel("Dead letters per minute by reason",
              [("sum by (reason) (rate(costtrace_dead_letters_total[$__rate_interval])) * 60", "{{reason}}")],
              description="Alert: CosttraceDeadLettersGrowing."),
        panel("Rejections per minute by reason",
              [("sum by (reason) (rate(costtrace_rejections_total[$__rate_interval])) * 60", "{{reason}}")],
              description="processing_error is a bug (CosttraceProcessingErrors)."),
        panel("Rebalances (15 min)",
              [("max by (group) (increase(costtrace_rebalances_total[15m]))", "{{group}}")],
              description="Alert: CosttraceRebalanceStorm."),
        panel("Seconds since the last sink commit",
              [("min(time() - costtrace_sink_last_commit_timestamp_seconds)", "sink")], unit="s", kind="stat",
              description="Alert: CosttraceSinkStalled."),
        panel("Parked letters", [("max(costtrace_parked_letters)", "parked")], kind="stat",
              description="Waiting for `costtrace dlq replay|discard`. Alert: CosttraceParkedLetters."),
        panel("Compensations per minute by outcome", [
            ("sum by (outcome) (rate(costtrace_compensations_total[$__rate_interval])) * 60", "{{outcome}}"),
        ]),
        panel("Sink retries (5 min)", [("sum(increase(costtrace_sink_retries_total[5m]))", "retries")],
              description="PostgreSQL down or slow. Alert: CosttraceSinkRetrying."),
    ]),
    ("Is the money right?", [
        panel("Records per second by kind",
              [("sum by (kind) (rate(costtrace_records_total[$__rate_interval]))", "{{kind}}")], unit="ops"),
        panel("Debt outstanding (coins)", [("max(costtrace_debt_outstanding_coins)", "debt")], kind="stat",
              description="Coins consumed without stock and not yet paid back, from PostgreSQL."),
        panel("Reconcile: last run's findings",
              [("max(costtrace_reconcile_mismatches)", "mismatches"),
               ("max(costtrace_reconcile_old_debts)", "old debts")],
              kind="stat", description="Alert: CosttraceReconcileMismatches. Findings: reconcile_findings."),
        panel("Since the last completed reconcile",
              [("time() - max(costtrace_reconcile_last_completed_timestamp_seconds)", "age")], unit="s",
              kind="stat", description="Alert: CosttraceReconcileStale."),
        panel("Accounts held", [("sum(costtrace_accounts_held)", "accounts")], kind="stat"),
        panel("Events by outcome (1 h)",
              [("sum by (outcome) (increase(costtrace_events_total[1h]))", "{{outcome}}")], kind="stat",
              description="redelivered: read again after a crash or rebalance and answered from state."),
    ]),
]
# fmt: on


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for n, (title, row) in enumerate(ROWS):
        panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "id": 100 + n,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        y += 1
        for i, p in enumerate(row):
            width, per_line = 8, 3
            p = {
                **p,
                "id": 100 * (n + 1) + i,
                "gridPos": {"h": 8, "w": width, "x": (i % per_line) * width, "y": y + (i // per_line) * 8},
            }
            panels.append(p)
        y += ((len(row) + 2) // 3) * 8
    return {
        "uid": "costtrace-overview",
        "title": "costtrace",
        "tags": ["costtrace"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
