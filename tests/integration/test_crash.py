"""SIGKILL a worker in the middle of a stream: nothing lost, nothing doubled.

The log is a sample prefix (published in phases) and then large phases in
which every account hears from one topic only (many orders; new batches that
pay the debts back; refunds), so a kill lands while hundreds of events are in
flight. The victim is restarted; the fleet must still end with exactly
replay's records and dead letters.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from costtrace.fleet.fence import MARKER_KEY, WRITER_HEADER
from costtrace.ops.sample import encode_event, generate_events
from tests.integration.fleet import Fleet, phases

T = "2026-02-01T12:00:00Z"


def bulk_phases(accounts: list[str], rounds: int) -> list[list[bytes]]:
    enc = msgspec.json.encode
    consume: list[bytes] = []
    issue: list[bytes] = []
    refund: list[bytes] = []
    for r in range(rounds):
        for a in accounts:
            consume.append(
                enc(
                    {
                        "event_id": f"{a}-bc{r}",
                        "type": "consumed",
                        "account_id": a,
                        "occurred_at": T,
                        "order_id": f"{a}-bo{r}",
                        "amount": 700 + r,
                    }
                )
            )
            issue.append(
                enc(
                    {
                        "event_id": f"{a}-bi{r}",
                        "type": "issued",
                        "account_id": a,
                        "occurred_at": f"2026-02-0{2 + r % 7}T00:00:00+01:00",
                        "batch_id": f"{a}-bb{r}",
                        "budget_id": f"bulk-{r % 3}",
                        "amount": 500,
                    }
                )
            )
            refund.append(
                enc(
                    {
                        "event_id": f"{a}-br{r}",
                        "type": "refunded",
                        "account_id": a,
                        "occurred_at": T,
                        "refund_id": f"{a}-brf{r}",
                        "order_id": f"{a}-bo{r}",
                        "amount": 350,
                    }
                )
            )
    return [consume, issue, refund]


@pytest.mark.parametrize(
    "victim",
    ["allocator, same state folder", "allocator, fresh state folder", "sink"],
)
def test_a_killed_worker_loses_and_doubles_nothing(fleet: Fleet, victim: str) -> None:
    prefix = [encode_event(e) for e in generate_events(400, 200, seed=5, skew=1.0)]
    accounts = sorted(
        {msgspec.json.decode(line)["account_id"] for line in prefix if line.startswith(b'{"event_id"')}
    )
    bulk = bulk_phases(accounts, rounds=12)
    kill_phase = {"allocator, same state folder": 0, "allocator, fresh state folder": 1, "sink": 2}[victim]

    fleet.start("allocator-1", "allocator", fleet.tmp / "state-1")
    fleet.start("allocator-2", "allocator", fleet.tmp / "state-2")
    fleet.start("sink", "sink")
    for phase in phases(prefix):
        fleet.publish(phase)
        fleet.drain()

    for i, phase in enumerate(bulk):
        fleet.publish(phase)
        if i == kill_phase:
            time.sleep(0.5)  # mid-stream: a phase takes seconds to process
            name = "sink" if victim == "sink" else "allocator-1"
            fleet.kill(name)
            if victim == "sink":
                fleet.start("sink", "sink")
            else:
                state = fleet.tmp / ("state-1" if "same" in victim else "state-1-fresh")
                fleet.start(name, "allocator", state)
        fleet.drain()

    lines = prefix + [line for phase in bulk for line in phase]
    fleet.assert_replays(lines, order="file")
    if victim == "allocator, same state folder":
        log: Any = (fleet.tmp / "allocator-1.log").read_text(errors="replace")
        assert "was not left cleanly" in log  # the kept RocksDB was not trusted


def _wait_for(fleet: Fleet, name: str, pattern: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, (fleet.tmp / f"{name}.log").read_text(errors="replace")):
        fleet.assert_running()
        assert time.monotonic() < deadline, f"{name} never logged {pattern!r}"
        time.sleep(0.2)


async def _send_late(fleet: Fleet, records: list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=fleet.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        topic = fleet.catalogue.state_changelog
        for partition, key, value, headers in records:
            await producer.send(topic, value, key=key, partition=partition, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


def test_states_a_stale_allocator_sends_after_losing_its_partitions_are_never_restored(fleet: Fleet) -> None:
    """What an allocator frozen past its session does when resumed: it hands over states it held.

    They land in the changelog after the new owner's marker and newer states;
    the next restore must skip them (costtrace/fleet/fence.py), or every
    account they touch goes back in time and later events are judged on the
    old state.
    """
    prefix = [encode_event(e) for e in generate_events(300, 120, seed=8, skew=1.0)]
    accounts = sorted(
        {msgspec.json.decode(line)["account_id"] for line in prefix if line.startswith(b'{"event_id"')}
    )
    bulk = bulk_phases(accounts, rounds=4)
    fleet.start("allocator-1", "allocator", fleet.tmp / "state-1")
    fleet.start("sink", "sink")
    for phase in phases(prefix):
        fleet.publish(phase)
        fleet.drain()
    first = fleet.changelog()
    (writer,) = {dict(h).get(WRITER_HEADER) for _, k, _, h in first if k != MARKER_KEY}  # one generation
    assert writer is not None
    fleet.start("allocator-2", "allocator", fleet.tmp / "state-2")  # a rebalance: new markers
    _wait_for(fleet, "allocator-2", r"changelog: generation (\d+) marked")
    fleet.publish(bulk[0])
    fleet.drain()
    # the old generation's states, sent again after the new owners' markers and states
    stale = [r for r in first if r[1] != MARKER_KEY]
    asyncio.run(_send_late(fleet, stale))
    for name in ("allocator-1", "allocator-2"):  # killed: their folders are emptied, a full restore
        fleet.kill(name)
    fleet.start("allocator-1", "allocator", fleet.tmp / "state-1")
    fleet.start("allocator-2", "allocator", fleet.tmp / "state-2")
    for phase in bulk[1:]:
        fleet.publish(phase)
        fleet.drain()
    fleet.assert_replays(prefix + [line for phase in bulk for line in phase], order="file")
    logs = "".join((fleet.tmp / f"allocator-{i}.log").read_text(errors="replace") for i in (1, 2))
    skipped = sum(int(n) for n in re.findall(r"restore: (\d+) changelog record\(s\) of a stale writer", logs))
    assert skipped >= len(stale)  # each restore of a partition skips them, the standby's too
