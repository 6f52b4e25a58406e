"""`costtrace topics create` is idempotent; a worker refuses co-partitioned topics that disagree."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from tests.integration.fleet import REPO, Fleet


def cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costtrace.cli", *args], env=fleet.env, capture_output=True, text=True,
        cwd=REPO, timeout=120,
    )  # fmt: skip


def test_create_is_idempotent_and_a_worker_refuses_mismatched_partitions(fleet: Fleet) -> None:
    again = cli(fleet, "topics", "create")
    assert again.returncode == 0 and "created 0 topic(s)" in again.stdout
    assert cli(fleet, "topics", "check").returncode == 0

    async def grow_credits() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=fleet.settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_partitions(
                {fleet.catalogue.credits: NewPartitions(total_count=fleet.partitions + 2)}
            )
        finally:
            await admin.close()

    asyncio.run(grow_credits())
    check = cli(fleet, "topics", "check")
    assert check.returncode != 0 and "same partition count" in check.stderr
    worker = cli(fleet, "worker", "--role", "allocator", "--state-dir", str(fleet.tmp / "s"))
    assert worker.returncode != 0
    assert (
        "refusing to start" in worker.stderr
        and f"{fleet.catalogue.credits}={fleet.partitions + 2}" in worker.stderr
    )
