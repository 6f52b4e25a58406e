"""The allocator's own work per event, without Kafka: what the agent does between faust and the sockets.

The fleet benchmark's backlog (same generator, seed and accounts) goes
through the agent's own step (`costtrace.fleet.app.AllocatorStep`: the model, the
metrics, the outbox's record batches, handed over every 150 events to a
producer that keeps nothing) on real RocksDB partition DBs opened as faust
opens them (write-ahead log off, as in the fleet). Best of `--repeat`. For
figures that do not move with the machine's load, count instructions:
callgrind with `--repeat 1`, less the same with `--repeat 0` (start-up and
the backlog's generation), is the step's.

    python -m bench.allocator_bench [--events N] [--accounts N] [--repeat K]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.stores.rocksdb import RocksDBOptions
from rocksdict import WriteOptions

from costtrace._native import partition_for
from costtrace.contract.events import EVENT_TYPES
from costtrace.fleet.allocator import Allocator
from costtrace.fleet.app import AllocatorStep, Committed
from costtrace.fleet.metrics import Metrics
from costtrace.fleet.outbox import Outbox, fits_one_batch
from costtrace.fleet.settings import Settings
from costtrace.fleet.state import AccountsHeld, PartitionTable, TableStore
from costtrace.ops.sample import encode_event, generate_events

PARTITIONS = 8
CHANGELOG = "state-changelog"


class _Delivered:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Producer:
    """Record batches as the fleet's producer builds them; sending one only says it was delivered."""

    def __init__(self, batch_bytes: int) -> None:
        self._builder = AIOKafkaProducer(max_batch_size=batch_bytes)  # never started: builds batches only

    def create_batch(self) -> Any:
        return self._builder.create_batch()

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> asyncio.Future[_Delivered]:
        done: asyncio.Future[_Delivered] = asyncio.get_running_loop().create_future()
        done.set_result(_Delivered(0))
        return done


class _Message:
    """The attributes of a faust message the allocator reads."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = topic, partition, offset, key, value
        self.timestamp = 1767225600.0
        self.headers: list[tuple[str, bytes]] = []


def _messages(n_events: int, n_accounts: int) -> list[_Message]:
    """The backlog as the allocator reads it: each event on its type's topic, in its account's partition."""
    topics = {str(cls.__struct_config__.tag) for cls in EVENT_TYPES}
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for event in generate_events(n_events, n_accounts, seed=2, skew=1.0):
        line = encode_event(event)
        kind = event.get("type") if isinstance(event.get("type"), str) else None
        topic = f"costtrace.{kind if kind in topics else 'issued'}"
        account = event.get("account_id")
        key = account.encode() if isinstance(account, str) else b"?"
        p = partition_for(key, PARTITIONS)
        offset = offsets[topic, p] = offsets.get((topic, p), -1) + 1
        out.append(_Message(topic, p, offset, key, line))
    return out


async def _run(messages: list[_Message], folder: Path, linger_every: int) -> float:
    """Seconds for the agent's step on every message (credits are left on the outbox)."""
    settings = Settings()
    write = WriteOptions()
    write.disable_wal = True  # type: ignore[assignment]
    dbs = {}
    for p in range(PARTITIONS):
        dbs[p] = RocksDBOptions().open(folder / str(p))
        dbs[p].set_write_options(write)
    local = PartitionTable(dbs.__getitem__)
    batch = settings.producer_batch_bytes
    store = TableStore(local, lambda size, records: fits_one_batch(size, records, batch))
    allocator = Allocator(store, "costtrace.credits", "costtrace.allocations", "costtrace.dead-letters")
    outbox = Outbox(_Producer(batch), CHANGELOG, lambda exc: None, batch_bytes=batch)
    await outbox.learn(["costtrace.credits", "costtrace.allocations", "costtrace.dead-letters"])
    nothing_settled = Committed({}, {})
    step = AllocatorStep(
        local, store, allocator, Metrics(), outbox, CHANGELOG, AccountsHeld(None), lambda p: nothing_settled
    )
    start = time.perf_counter()
    for i, m in enumerate(messages):
        step(m)
        if i % linger_every == 0:
            local.flush()  # as the allocator does after each round it applies
            await outbox.hand_over()
    local.flush()
    await outbox.hand_over()
    seconds = time.perf_counter() - start
    for db in dbs.values():
        db.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--accounts", type=int, default=6_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    messages = _messages(args.events, args.accounts)
    if not args.repeat:
        return
    with tempfile.TemporaryDirectory() as tmp:
        # the fleet hands over every 25 ms: about 150 events at its rate
        best = min(asyncio.run(_run(messages, Path(tmp) / str(r), 150)) for r in range(args.repeat))
    n = len(messages)
    print(f"{n:,} events over {args.accounts:,} accounts, {PARTITIONS} partitions; best of {args.repeat}")
    print(f"allocator step: {n / best:,.0f} events/s, {best / n * 1e6:.1f} µs per event")


if __name__ == "__main__":
    main()
