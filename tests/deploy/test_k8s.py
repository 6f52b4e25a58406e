"""Every kustomize overlay renders, validates against the Kubernetes schemas offline, and hangs together."""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (REPO / "deploy" / "k8s" / "overlays").iterdir() if p.is_dir())
KUBERNETES = "1.31.0"  # the oldest Kubernetes the manifests support
KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5@v5.5.0"


def kustomize(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize`, or the kustomize module from the Go proxy where kubectl is missing."""
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        cmd = ["go", "run", KUSTOMIZE_MODULE, "build", str(path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(REPO / "deploy" / "k8s" / "overlays" / request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    (cm,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("costtrace-config")
    ]
    return dict(cm["data"])


CUSTOM = {"ScaledObject", "ServiceMonitor"}  # CRDs: no upstream schema offline; checked below


def test_overlays_exist() -> None:
    assert OVERLAYS == ["dev", "prod"]


def test_each_resource_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for doc in docs:
        if doc["kind"] in CUSTOM:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    broken = copy.deepcopy(by_kind(docs, "StatefulSet")["costtrace-allocator"])
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_allocators_keep_their_state_and_stop_cleanly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    sts = by_kind(docs, "StatefulSet")["costtrace-allocator"]
    pod = sts["spec"]["template"]["spec"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config(docs)["COSTTRACE_STATE_DIR"].startswith(mounts[claim["metadata"]["name"]] + "/")
    # longer than a flush and a clean RocksDB close; a killed allocator rebuilds its tables
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # a full restore from the changelog is never cut short by a probe: /livez answers during it
    # (tests/fleet/test_app.py), and the startup probe gives the process an hour to come up
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert pod["securityContext"]["runAsNonRoot"] is True
    pdb = by_kind(docs, "PodDisruptionBudget")["costtrace-allocator"]
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    )


def test_services_select_workloads_and_expose_metrics(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in {"StatefulSet", "Deployment"}
    ]
    for name, svc in by_kind(docs, "Service").items():
        assert any(svc["spec"]["selector"].items() <= labels.items() for labels in pods), name
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}
    for monitor in by_kind(docs, "ServiceMonitor").values():
        selected = [
            s for s in by_kind(docs, "Service").values()
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]  # fmt: skip
        assert len(selected) == 5  # allocator, sink, compensator, reconciler, the read API
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_keda_scales_the_allocator_group_up_to_the_partition_count(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    scaled = by_kind(docs, "ScaledObject")
    if overlay != "prod":
        assert not scaled
        return
    obj = scaled["costtrace-allocator"]
    settings = config(docs)
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    assert obj["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "costtrace-allocator",
    }
    assert obj["spec"]["maxReplicaCount"] == int(settings["COSTTRACE_PARTITIONS"])
    (trigger,) = obj["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == settings["COSTTRACE_APP_ID"]
    assert trigger["metadata"]["bootstrapServers"] == settings["COSTTRACE_KAFKA_BOOTSTRAP"]
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    # KEDA owns the count: an apply that set replicas would reset it and rebalance the group
    assert "replicas" not in by_kind(docs, "StatefulSet")["costtrace-allocator"]["spec"]
    assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
    # scale-down through the HPA's behaviour (cooldownPeriod only applies to scaling to zero)
    assert "cooldownPeriod" not in obj["spec"]
    down = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]


def test_the_reconciler_is_a_singleton_that_never_overlaps_itself(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    deployment = by_kind(docs, "Deployment")["costtrace-reconciler"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # the old pod goes before the new one starts
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["reconcile", "--every"]


def test_archiving_runs_nightly_one_run_at_a_time(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    job = by_kind(docs, "CronJob")["costtrace-archive"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["archive", "--refund-window"]


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every workload's pod template, by workload name (a CronJob's through its job template)."""
    out = {}
    for d in docs:
        if d["kind"] in {"StatefulSet", "Deployment"}:
            out[d["metadata"]["name"]] = d["spec"]["template"]
        elif d["kind"] == "CronJob":
            out[d["metadata"]["name"]] = d["spec"]["jobTemplate"]["spec"]["template"]
    return out


def test_no_worker_reaches_the_kubernetes_api_or_takes_connections_but_on_its_metrics_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    (account,) = by_kind(docs, "ServiceAccount").values()
    assert account["automountServiceAccountToken"] is False
    templates = pod_templates(docs)
    assert len(templates) == 6
    for name, template in templates.items():
        pod = template["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"], name
        assert pod["automountServiceAccountToken"] is False, name
    policies = by_kind(docs, "NetworkPolicy")
    assert set(policies) == {"costtrace-workers", "costtrace-api"}
    policy = policies["costtrace-workers"]
    (selector,) = policy["spec"]["podSelector"]["matchExpressions"]
    workers = {name for name in templates if name != "costtrace-api"}
    assert selector["operator"] == "In" and set(selector["values"]) == workers  # every worker, no other pod
    for name, port in (("costtrace-workers", "COSTTRACE_HTTP_PORT"), ("costtrace-api", "COSTTRACE_API_PORT")):
        assert policies[name]["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policies[name]["spec"]["ingress"]
        ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        assert ports == {("TCP", int(config(docs)[port]))}
    api = templates["costtrace-api"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in api["ports"]} == {int(config(docs)["COSTTRACE_API_PORT"])}
    assert policies["costtrace-api"]["spec"]["podSelector"]["matchLabels"].items() <= (
        templates["costtrace-api"]["metadata"]["labels"].items()
    )


def test_allocators_and_sinks_spread_over_nodes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    templates = pod_templates(docs)
    for name in ("costtrace-allocator", "costtrace-sink", "costtrace-api"):
        template = templates[name]
        (term,) = template["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        own = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        assert own.items() <= template["metadata"]["labels"].items(), name


def test_a_config_change_rolls_the_pods_that_read_it(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    (cm,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("costtrace-config")
    ]
    name = cm["metadata"]["name"]
    assert re.fullmatch(r"costtrace-config-[a-z0-9]{10}", name)  # kustomize's hash of the content
    readers = 0
    for workload, template in pod_templates(docs).items():
        pod = template["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
            assert refs == [name], (workload, container["name"])
            readers += 1
    assert readers >= 7


def test_every_container_init_ones_included_asks_for_resources(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for workload, template in pod_templates(docs).items():
        pod = template["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), (workload, container["name"])
            assert "memory" in resources.get("limits", {}), (workload, container["name"])


def test_every_pod_carries_the_fleets_label(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for workload, template in pod_templates(docs).items():
        assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "costtrace", workload


RUNBOOKS = [*sorted((REPO / "docs" / "runbooks").glob("*.md")), REPO / "docs" / "operations.md"]
KUBECTL = re.compile(r"`(kubectl [^`]+)`")


def kubectl_commands() -> list[tuple[str, str]]:
    """(file, command) of every `kubectl ...` the runbooks and the operations guide tell someone to run."""
    out = []
    for path in RUNBOOKS:
        text = re.sub(r"\s*\n\s*", " ", path.read_text())  # commands wrap across lines
        out += [(path.name, command) for command in KUBECTL.findall(text)]
    return out


@functools.cache
def prod() -> list[dict[str, Any]]:
    return kustomize(REPO / "deploy" / "k8s" / "overlays" / "prod")


def test_the_runbooks_tell_kubectl_commands() -> None:
    assert len(kubectl_commands()) >= 10


@pytest.mark.parametrize(("doc", "command"), kubectl_commands(), ids=lambda v: v[:60])
def test_every_runbook_command_names_what_the_manifests_hold(doc: str, command: str) -> None:
    """Selectors match some pod, and every kind/name or pod, PVC and job name exists in `prod`."""
    docs = prod()
    templates = pod_templates(docs)
    names = {(d["kind"].lower(), d["metadata"]["name"]) for d in docs}
    words = command.split()
    for i, word in enumerate(words):
        if word == "-l":
            key, _, value = words[i + 1].partition("=")
            if "<" in value:
                continue  # a placeholder the reader fills in, checked below for each role
            assert any(t["metadata"]["labels"].get(key) == value for t in templates.values()), command
        kind, slash, name = word.partition("/")
        if (
            slash
            and kind in {"statefulset", "deployment", "cronjob", "scaledobject", "service"}
            and "<" not in name
        ):
            assert (kind, name) in names, command
    for kind, name in re.findall(r"\b(pod|pvc) ([a-z0-9-]+-\d+)\b", command):
        workload = name.removeprefix("state-").rsplit("-", 1)[0]
        assert ("statefulset", workload) in names, command
        if kind == "pvc":
            claims = by_kind(docs, "StatefulSet")[workload]["spec"]["volumeClaimTemplates"]
            assert name.startswith(f"{claims[0]['metadata']['name']}-{workload}-"), command
    if "costtrace-<role>" in command:
        for role in ("allocator", "sink", "compensator"):
            assert any(t["metadata"]["labels"].get("app.kubernetes.io/name") == f"costtrace-{role}"
                       for t in templates.values()), role  # fmt: skip


def test_the_fleet_retries_no_rejection_on_a_timer(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """A timed retry judges an event at another place than the log's: fleet = replay needs none."""
    _, docs = rendered
    assert config(docs)["COSTTRACE_RETRY_REASONS"] == "[]"
