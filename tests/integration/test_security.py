"""Kafka with TLS and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512): every client of the fleet connects.

The local stack's broker has authenticated listeners beside its plaintext one (deploy/stack
secure-env): the workers and the operators' commands use those, the test's own clients the
plaintext one, on one cluster.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli.test_cli import cli as run_cli
from tests.integration.fleet import REPO, Fleet
from tests.integration.test_equivalence import sample


def secure() -> dict[str, str]:
    out = subprocess.run(
        [str(REPO / "deploy" / "stack"), "secure-env"], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def settings_for(protocol: str, mechanism: str | None, password_file: Path | None = None) -> dict[str, str]:
    s = secure()
    listener = {"SASL_PLAINTEXT": "KAFKA_SASL_PLAINTEXT", "SASL_SSL": "KAFKA_SASL_SSL", "SSL": "KAFKA_SSL"}
    env = {"COSTTRACE_KAFKA_BOOTSTRAP": s[listener[protocol]], "COSTTRACE_KAFKA_SECURITY_PROTOCOL": protocol}
    if protocol.endswith("SSL"):
        env["COSTTRACE_KAFKA_SSL_CAFILE"] = s["KAFKA_CA"]
    if mechanism is not None:
        env |= {
            "COSTTRACE_KAFKA_SASL_MECHANISM": mechanism,
            "COSTTRACE_KAFKA_SASL_USERNAME": s["KAFKA_SASL_USER"],
        }
        if password_file is None:
            env["COSTTRACE_KAFKA_SASL_PASSWORD"] = s["KAFKA_SASL_PASSWORD"]
        else:
            password_file.write_text(s["KAFKA_SASL_PASSWORD"] + "\n")
            env["COSTTRACE_KAFKA_SASL_PASSWORD_FILE"] = str(password_file)
    return env


def cli(fleet: Fleet, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli({**fleet.env, **env}, *args)


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SSL", None),
    ],
)
def test_operators_commands_connect_with_each_protocol_and_mechanism(
    fleet: Fleet, protocol: str, mechanism: str | None
) -> None:
    env = settings_for(protocol, mechanism)
    checked = cli(fleet, env, "topics", "check")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "topics ok", checked.stdout


def test_a_wrong_password_is_one_line_and_never_shown(fleet: Fleet) -> None:
    env = settings_for("SASL_SSL", "SCRAM-SHA-256") | {"COSTTRACE_KAFKA_SASL_PASSWORD": "not-the-password"}
    done = cli(fleet, env, "topics", "check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("Error: Kafka unavailable (") and len(done.stderr.strip().splitlines()) == 1
    assert "not-the-password" not in done.stdout + done.stderr


def test_the_fleet_over_sasl_ssl_with_a_password_file_gives_replays_records(fleet: Fleet) -> None:
    """Allocator (faust), sink and compensator (aiokafka) and the audit, all on SCRAM over TLS."""
    fleet.env |= settings_for("SASL_SSL", "SCRAM-SHA-512", password_file=fleet.tmp / "kafka-password")
    fleet.start("allocator", "allocator", fleet.tmp / "state-1")
    fleet.start("sink", "sink")
    fleet.start("compensator", "compensator")
    lines = sample(400, 60, seed=7)
    fleet.publish(lines)  # the test's own producer, on the plaintext listener of the same cluster
    fleet.drain()
    fleet.assert_running()
    fleet.assert_replays(lines)
    audit = fleet.audit()
    assert audit.returncode == 0, audit.stdout + audit.stderr
    logs = "".join(p.read_text(errors="replace") for p in fleet.tmp.glob("*.log"))
    assert secure()["KAFKA_SASL_PASSWORD"] not in logs
