"""Three Kafka nodes (`KAFKA_NODES=3`): replicated topics, and a broker killed mid-stream loses nothing.

The three-node cluster runs beside the default stack (its own folder and
ports, `STACK_SERVICES=kafka`) and is torn down after the test; PostgreSQL
and Redis are the default stack's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from costtrace.ops.sample import encode_event, generate_events
from costtrace.ops.topics import describe
from dev.demo import stack_env
from tests.integration.fleet import REPO, Fleet, phases

STACK = REPO / "deploy" / "stack"


@dataclass
class Cluster:
    env: dict[str, str]  # deploy/stack's settings for this cluster
    folder: Path

    def run(self, command: str) -> str:
        out = subprocess.run(
            [str(STACK), command], env=self.env, capture_output=True, text=True, check=True, timeout=600
        )
        return out.stdout

    @property
    def bootstrap(self) -> str:
        return stack_env(self.env)["COSTTRACE_KAFKA_BOOTSTRAP"]

    def kill(self, node: int) -> None:
        pid = int((self.folder / "kafka" / f"node{node}" / "pid").read_text())
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(stack: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("kafka3")
    env = {
        **os.environ, "STACK_DIR": str(folder), "STACK_SERVICES": "kafka",
        "KAFKA_NODES": "3", "KAFKA_PORT": os.environ.get("COSTTRACE_TEST_KAFKA3_PORT", "29092"),
    }  # fmt: skip
    c = Cluster(env, folder)
    c.run("up")
    try:
        yield c
    finally:
        c.run("destroy")


def test_a_broker_killed_mid_stream_on_three_nodes_loses_and_doubles_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    fleet = Fleet(
        tmp_path, replication=3, stack={**stack_env(), "COSTTRACE_KAFKA_BOOTSTRAP": cluster.bootstrap}
    )
    fleet.setup()
    fleet.env["COSTTRACE_DEBUG_OFFSETS"] = "1"  # faust's commit bookkeeping in the logs kept on failure
    try:
        described = asyncio.run(
            describe(fleet.settings.kafka_bootstrap, [t.name for t in fleet.catalogue.topics])
        )
        assert {len(p["replicas"]) for t in described for p in t["partitions"]} == {3}
        lines = [encode_event(e) for e in generate_events(1200, 300, seed=17, skew=1.0)]
        fleet.start("allocator-1", "allocator", tmp_path / "state-1")
        fleet.start("allocator-2", "allocator", tmp_path / "state-2")
        fleet.start("sink", "sink")
        parts = phases(lines)
        down, back = len(parts) // 3, 2 * len(parts) // 3
        for i, phase in enumerate(parts):
            fleet.publish(phase)
            if i == down:
                cluster.kill(2)  # partition leaders and maybe a group coordinator move to the others
            if i == back:
                cluster.run("up")  # node 2 again; it catches up with the other two
            fleet.drain(timeout=240)
        fleet.assert_replays(lines, order="file")
    except BaseException:
        keep = REPO / ".stack" / "failed-tests" / f"{fleet.name}-three-nodes"
        shutil.copytree(tmp_path, keep, ignore=shutil.ignore_patterns("state-*"), dirs_exist_ok=True)
        print(f"\nfleet {fleet.name}: logs kept in {keep}")
        raise
    finally:
        fleet.stop_all()
