"""A running fleet serves every metric the dashboard and alerts use, with the right counts;
a real Prometheus scrapes it and evaluates the alert rules without error."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from costtrace.ops.sample import encode_event, generate_events
from tests.deploy.test_observability import PROM, alert_rules, used_metrics
from tests.integration.fleet import Fleet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def eventually(
    check: Callable[[], Any], timeout: float = 60.0, show: Callable[[], Any] = lambda: None
) -> Any:
    """`check()` once it is true; `show()` says what was there instead when it never is."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {show()}")
        time.sleep(0.5)


def test_a_running_fleet_serves_every_metric_the_dashboard_and_alerts_use(fleet: Fleet) -> None:
    ports = {
        "allocator": free_port(),
        "sink": free_port(),
        "compensator": free_port(),
        "reconciler": free_port(),
        "api": free_port(),  # the read API (costtrace/api): its own metrics, on its one port
    }
    fleet.env["COSTTRACE_RETRY_REASONS"] = "[]"  # every dead letter parked at once: counts stay exact
    fleet.start("allocator", "allocator", fleet.tmp / "state", http_port=ports["allocator"])
    fleet.start("sink", "sink", http_port=ports["sink"])
    fleet.start("compensator", "compensator", http_port=ports["compensator"])
    fleet.start_command("reconciler", ["reconcile", "--every", "2"], http_port=ports["reconciler"])
    fleet.start_command("api", ["api", "--port", str(ports["api"])])
    lines = [encode_event(e) for e in generate_events(600, 80, seed=3, skew=1.0)]
    fleet.publish(lines)  # whole: in the log order, no event is late and nothing is re-driven
    fleet.drain()

    def health(path: str) -> list[tuple[int, str]]:
        return [get(f"http://127.0.0.1:{port}{path}") for port in ports.values()]

    assert eventually(lambda: health("/readyz") == [(200, "ok\n")] * 5, show=lambda: health("/readyz"))
    assert health("/livez") == [(200, "ok\n")] * 5
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert get(f"http://127.0.0.1:{ports['api']}/v1/statement?from={today}&to=2100-01-01")[0] == 200

    records = fleet.export()
    letters = sum(fleet.dead_letters().values())

    def settled() -> dict[str, list[tuple[dict[str, str], float]]]:
        got: dict[str, list[tuple[dict[str, str], float]]] = {}
        for port in ports.values():
            for name, samples in scrape(port).items():
                got.setdefault(name, []).extend(samples)
        # the sink counts after its commit; the lag gauges are refreshed every 5 s
        assert total(got, "costtrace_sink_rows_total", table="records") == len(records)
        assert total(got, "costtrace_consumer_lag_messages") == 0
        # counted every 15 s: each account with records has state on the allocator
        assert total(got, "costtrace_accounts_held") == len({r["account_id"] for r in records})
        assert total(got, "costtrace_compensations_total", outcome="parked") == letters
        # counted every 30 s from PostgreSQL
        assert total(got, "costtrace_parked_letters") == letters
        assert total(got, "costtrace_reconcile_runs_total", status="ok") >= 1
        return got

    got = eventually(settled)
    missing = used_metrics() - {"up"} - got.keys()
    assert not missing, f"used by deploy/ but not served: {sorted(missing)}"
    inputs = total(got, "costtrace_events_total") - total(got, "costtrace_events_total", type="credit")
    assert inputs == len(lines)
    assert total(got, "costtrace_records_total") == len(records)
    assert total(got, "costtrace_dead_letters_total") == letters > 0
    assert total(got, "costtrace_rejections_total") == letters
    assert total(got, "costtrace_end_to_end_latency_seconds_count", clock="broker") == len(records)
    assert total(got, "costtrace_worker_ready") == len(ports) - 1  # every worker; the API has /readyz only
    assert total(got, "costtrace_api_requests_total", route="/v1/statement", status="200") == 1

    prometheus_scrapes_the_fleet_and_evaluates_the_rules(fleet.tmp, ports, len(lines))


def prometheus_scrapes_the_fleet_and_evaluates_the_rules(
    tmp: Path, ports: dict[str, int], n_inputs: int
) -> None:
    web = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROM / "alerts.yml")],
        "scrape_configs": [
            {"job_name": f"costtrace-{role}", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for role, port in ports.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = f"http://127.0.0.1:{web}/api/v1"
    try:

        def query(q: str) -> list[Any]:
            status, body = get(f"{api}/query?query={urllib.parse.quote(q)}")
            assert status == 200, body
            return list(json.loads(body)["data"]["result"])

        up = eventually(lambda: len(r := query("up == 1")) == len(ports) and r, show=lambda: query("up"))
        assert {s["metric"]["job"] for s in up} == {f"costtrace-{role}" for role in ports}
        events = eventually(
            lambda: query('sum(costtrace_events_total{type!="credit"})'), show=lambda: query("up")
        )
        assert float(events[0]["value"][1]) == n_inputs

        def active(rules: list[dict[str, Any]]) -> dict[str, str]:
            return {r["name"]: r["state"] for r in rules if r["state"] != "inactive"}

        def rules_settled() -> list[dict[str, Any]]:
            _, body = get(f"{api}/rules")
            rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
            evaluated = rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules)
            # a drained fleet fires nothing but its parked letters (pending: they must wait 15 min);
            # before the reconciler's first run is scraped, its staleness is pending for a moment too
            return rules if evaluated and active(rules) == {"CosttraceParkedLetters": "pending"} else []

        rules = eventually(rules_settled, show=lambda: get(f"{api}/rules")[1][:3000])
        assert len(rules) == len(alert_rules())
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
