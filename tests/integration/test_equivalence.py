"""The fleet gives the log's answer whatever the arrival order: exactly replay of its topics.

Published whole: a backlog every topic of which is read at its own pace, so
that refunds overtake their orders and consumptions their issuances unless
the fleet puts them in order. Then the same while the workers run, with an
allocator killed and the group rebalanced twice on the way. Each time the
fleet's records and rejections are replay's of the log in the fleet's order
(`costtrace.model.order.fleet_order`), no event was late, and `costtrace audit`,
which replays the topics themselves, finds PostgreSQL exact.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import asyncpg

from costtrace.ops.sample import encode_event, generate_events
from tests.integration.fleet import REPO, Fleet, by_account


def sample(n: int, accounts: int, seed: int) -> list[bytes]:
    return [encode_event(e) for e in generate_events(n, accounts, seed, skew=1.0)]


def assert_exact(fleet: Fleet, lines: list[bytes]) -> None:
    expected = fleet.assert_replays(lines)
    assert sum(map(len, expected.values())) > 1000  # the log exercises the model
    kinds = {r["kind"] for rs in expected.values() for r in rs}
    assert kinds >= {"consume", "trueup", "refund", "transfer_in"}
    assert fleet.late_events() == 0
    audit = fleet.audit()
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "PostgreSQL holds exactly" in audit.stdout


def test_a_log_published_whole_before_the_workers_start(fleet: Fleet) -> None:
    lines = sample(3000, 400, seed=11)
    fleet.publish(lines)
    fleet.start("allocator-1", "allocator", fleet.tmp / "state-1")
    fleet.start("allocator-2", "allocator", fleet.tmp / "state-2")
    fleet.start("sink", "sink")
    fleet.drain(timeout=300)
    assert_exact(fleet, lines)

    # replay of the topics writes the fleet's records, rejections included
    out = subprocess.run(
        [sys.executable, "-m", "costtrace.cli", "replay", "--from-topics", "-o", "-"],
        env=fleet.env, capture_output=True, check=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    replayed = [json.loads(line) for line in out.stdout.splitlines()]
    assert by_account([r for r in replayed if r["kind"] != "rejected"]) == by_account(fleet.export())
    assert sum(r["kind"] == "rejected" for r in replayed) == sum(fleet.dead_letters().values())

    # one row changed behind the fleet's back: the audit names its account, and fails
    tamper = (
        "UPDATE records SET amount = amount + 1 WHERE record_id = (SELECT min(record_id) FROM records)"
        " RETURNING account_id"
    )
    [changed] = asyncio.run(_execute(fleet.dsn, tamper))
    audit = fleet.audit()
    assert audit.returncode == 1, audit.stdout + audit.stderr
    assert "accounts that differ: 1" in audit.stdout and f"  {changed['account_id']}: " in audit.stdout


async def _execute(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_a_log_published_while_the_workers_run_with_a_kill_and_rebalances(fleet: Fleet) -> None:
    lines = sample(4000, 400, seed=12)
    fleet.start("allocator-1", "allocator", fleet.tmp / "state-1")
    fleet.start("allocator-2", "allocator", fleet.tmp / "state-2")
    fleet.start("sink", "sink")
    time.sleep(3)  # the workers have joined: the log arrives while they run
    publisher = threading.Thread(target=fleet.publish, args=(lines,))
    publisher.start()
    time.sleep(1.0)
    fleet.kill("allocator-1")  # mid-stream, events held; its partitions wait for the session timeout
    time.sleep(2.0)
    fleet.start("allocator-1", "allocator", fleet.tmp / "state-1")  # a rebalance: back with its folder
    time.sleep(3.0)
    fleet.start("allocator-3", "allocator", fleet.tmp / "state-3")  # and another one
    publisher.join(timeout=300)
    assert not publisher.is_alive()
    fleet.drain(timeout=300)
    assert_exact(fleet, lines)
