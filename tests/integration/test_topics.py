"""`costtrace topics create` is idempotent; a worker refuses co-partitioned topics that disagree; a run's
topics and database go with it (dev.harness.remove_run)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from costtrace.fleet.settings import fleet_catalogue
from dev.demo import stack_env
from dev.harness import prepare_run, remove_run
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


def test_removing_a_run_deletes_its_topics_and_database_and_nothing_else(stack: None) -> None:
    env = stack_env()
    name = f"t{uuid.uuid4().hex[:10]}"
    run = prepare_run(env, name, partitions=2)
    # the catalogue's, and one of faust's own that a worker would declare
    mine = [t.name for t in fleet_catalogue(run.settings).topics] + [f"{name}-allocator-__assignor-__leader"]
    other = f"{name}x.opened"  # another run whose name starts like this one's

    async def topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=env["COSTTRACE_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    async def create(*names: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=env["COSTTRACE_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, 1, 1) for n in names])
        finally:
            await admin.close()

    async def databases() -> set[str]:
        conn = await asyncpg.connect(env["COSTTRACE_POSTGRES_DSN"])
        try:
            return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
        finally:
            await conn.close()

    asyncio.run(create(mine[-1], other))
    assert set(mine) | {other} <= asyncio.run(topics()) and name in asyncio.run(databases())
    removed = asyncio.run(remove_run(env, name))
    assert removed == len(mine)
    deadline = time.monotonic() + 30
    while set(mine) & asyncio.run(topics()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = asyncio.run(topics())
    assert not set(mine) & left and other in left
    assert name not in asyncio.run(databases())
    asyncio.run(remove_run(env, f"{name}x"))
