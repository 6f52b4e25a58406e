"""docker-compose.yml stays in step with deploy/stack (no Docker engine runs here to try it)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def stack_default(name: str) -> str:
    m = re.search(rf"^{name}=\$\{{{name}:-([^}}]+)\}}", (DEPLOY / "stack").read_text(), re.M)
    assert m, name
    return m.group(1)


def test_compose_uses_the_stacks_ports_versions_and_broker_settings() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "postgres", "redis"}
    kafka_version = re.search(r"<kafka.version>([^<]+)<", (DEPLOY / "kafka" / "pom.xml").read_text())
    assert kafka_version and services["kafka"]["image"] == f"apache/kafka:{kafka_version.group(1)}"
    assert services["kafka"]["ports"] == [
        f"127.0.0.1:{stack_default('KAFKA_PORT')}:{stack_default('KAFKA_PORT')}"
    ]
    assert services["postgres"]["ports"] == [f"127.0.0.1:{stack_default('PG_PORT')}:5432"]
    assert services["redis"]["ports"] == [f"127.0.0.1:{stack_default('REDIS_PORT')}:6379"]
    stack = (DEPLOY / "stack").read_text()
    env = services["kafka"]["environment"]
    for setting in ("num.partitions", "group.initial.rebalance.delay.ms", "auto.create.topics.enable",
                    "log.retention.hours"):  # fmt: skip
        value = re.search(rf"^{re.escape(setting)}=(.+)$", stack, re.M)
        assert value, setting
        assert env["KAFKA_" + setting.upper().replace(".", "_")] == value.group(1), setting
