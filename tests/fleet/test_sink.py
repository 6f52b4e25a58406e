"""The sink's batches in memory: rows first, offsets after, and only offsets of rows PostgreSQL holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from costtrace.contract.letters import INLINE_PAYLOAD_MAX
from costtrace.fleet.allocator import Allocator, Message
from costtrace.fleet.metrics import Metrics
from costtrace.fleet.settings import Settings, fleet_catalogue
from costtrace.fleet.sink import Sink, dead_letter_row
from costtrace.model.state import MemoryStore
from costtrace.storage.db import RowsRefused
from tests.model.helpers import consumed, issued

SETTINGS = Settings(topic_prefix="t", sink_app_id="t-sink")
CAT = fleet_catalogue(SETTINGS)
INPUT = f"{SETTINGS.topic_prefix}.consumed"
RECORDS, LETTERS = TopicPartition(CAT.allocations, 0), TopicPartition(CAT.dead_letters, 1)


@dataclass
class Kafka:
    """A message as aiokafka's consumer gives it."""

    topic: str
    partition: int
    offset: int
    value: bytes
    headers: list[tuple[str, bytes]]
    key: bytes | None = b"alice"


def outputs(*raw: bytes) -> list[Kafka]:
    """What the allocator sends for these input events, as the sink reads it back."""
    allocator = Allocator(MemoryStore(), CAT.credits, CAT.allocations, CAT.dead_letters, clock_ms=lambda: 5)
    out: list[Kafka] = []
    for offset, value in enumerate(raw):
        for o in allocator.handle(Message(INPUT, 0, offset, b"alice", value, 1_000)).outputs:
            tp = RECORDS if o.topic == CAT.allocations else LETTERS
            out.append(Kafka(tp.topic, tp.partition, len(out), o.value, o.headers))
    return out


def records_and_a_letter() -> tuple[list[Kafka], list[Kafka]]:
    """Two records (an issue, a consume) and the dead letter of the order consumed again."""
    msgs = outputs(issued("b1", 5), consumed("o1", 3), consumed("o1", 3))
    return [m for m in msgs if m.topic == RECORDS.topic], [m for m in msgs if m.topic == LETTERS.topic]


@dataclass
class Consumer:
    batches: list[dict[TopicPartition, list[Kafka]]]
    stopping: asyncio.Event
    assigned: set[TopicPartition] = field(default_factory=lambda: {RECORDS, LETTERS})
    refuse: bool = False
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Kafka]]:
        if not self.batches:
            self.stopping.set()
            return {}
        return self.batches.pop(0)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.refuse:
            raise CommitFailedError("rebalanced")
        self.log.append("commit")
        self.commits.append({tp: o.offset for tp, o in offsets.items()})


@dataclass
class Database:
    log: list[str]
    fail: bool = False
    retries: int = 0
    records: list[tuple[Any, ...]] = field(default_factory=list)
    letters: list[tuple[Any, ...]] = field(default_factory=list)
    rejects: list[tuple[Any, ...]] = field(default_factory=list)
    refuses: Callable[[tuple[Any, ...]], bool] = lambda row: False  # PostgreSQL refuses such rows
    statements: int = 0

    async def write_records(self, rows: list[tuple[Any, ...]]) -> None:
        self.statements += 1
        if self.fail:
            raise RuntimeError("a bug")
        if any(self.refuses(r) for r in rows):  # the whole statement fails, as in a transaction
            raise RowsRefused(ValueError("invalid byte sequence for encoding UTF8: 0x00"))
        self.log.append(f"records {len(rows)}")
        self.records += rows

    async def write_dead_letters(self, rows: list[tuple[Any, ...]]) -> None:
        self.log.append(f"dead_letters {len(rows)}")
        self.letters += rows

    async def write_rejects(self, rows: list[tuple[Any, ...]]) -> None:
        self.log.append(f"rejects {len(rows)}")
        self.rejects += rows


def sink(batches: list[dict[TopicPartition, list[Kafka]]]) -> tuple[Sink, Consumer, Database, asyncio.Event]:
    stopping = asyncio.Event()
    consumer = Consumer(batches, stopping)
    db = Database(consumer.log)
    return Sink(SETTINGS, consumer, db, Metrics()), consumer, db, stopping  # type: ignore[arg-type]


async def test_rows_are_written_before_the_offsets_after_them_are_committed() -> None:
    records, letters = records_and_a_letter()
    s, consumer, db, stopping = sink([{RECORDS: records[:1]}, {RECORDS: records[1:], LETTERS: letters}])
    await s.run(stopping)
    assert consumer.log == ["records 1", "commit", "records 1", "dead_letters 1", "commit"]
    assert consumer.commits == [{RECORDS: 1}, {RECORDS: 2, LETTERS: 3}]  # each partition's last offset + 1
    assert [r[2] for r in db.records] == ["issue", "consume"]
    assert [(r[5], r[0], r[2]) for r in db.letters] == [("duplicate_order", INPUT, 2)]
    assert [r[11] for r in db.records] == [1, 2]  # the account's step, from the allocator's header
    assert s.membership.committed == {RECORDS: 2, LETTERS: 3}


async def test_a_batch_that_fails_to_write_is_never_committed() -> None:
    s, consumer, db, stopping = sink([{RECORDS: outputs(issued("b1", 5))}])
    db.fail = True
    with pytest.raises(RuntimeError):
        await s.run(stopping)
    assert consumer.commits == []


async def test_offsets_of_partitions_no_longer_held_are_not_committed() -> None:
    records, letters = records_and_a_letter()
    s, consumer, db, stopping = sink([{RECORDS: records, LETTERS: letters}])
    consumer.assigned = {RECORDS}  # a rebalance took the dead letters' partition meanwhile
    await s.run(stopping)
    assert consumer.commits == [{RECORDS: 2}]
    assert len(db.letters) == 1  # written all the same; their new owner's copy is dropped by the key


async def test_a_commit_a_rebalance_refuses_is_left_to_the_new_owner() -> None:
    s, consumer, db, stopping = sink([{RECORDS: outputs(issued("b1", 5))}])
    consumer.refuse = True
    await s.run(stopping)  # no crash: the rows are in, and will be dropped when read again
    assert len(db.records) == 1
    assert s.membership.committed == {}


async def test_an_unreadable_message_is_kept_aside_and_its_offset_still_committed() -> None:
    good = outputs(issued("b1", 5))[0]
    bad = Kafka(RECORDS.topic, 0, 1, b"{not a record", good.headers, key=None)
    s, consumer, db, stopping = sink([{RECORDS: [good, bad]}])
    await s.run(stopping)
    assert len(db.records) == 1
    [reject] = db.rejects
    assert reject[:4] == (RECORDS.topic, 0, 1, "records") and reject[5:7] == (None, b"{not a record")
    assert reject[4].startswith("unreadable: DecodeError")
    assert msgspec.msgpack.decode(reject[7]) == [[k, v] for k, v in good.headers]
    assert consumer.commits == [{RECORDS: 2}]
    assert s.metrics.sink_rejects.labels("records")._value.get() == 1


async def test_rows_postgresql_refuses_are_kept_aside_and_the_rest_written() -> None:
    """One bad row among many: the batch is halved until it is alone; the good ones all land."""
    msgs = outputs(*(issued(f"b{i}", 5 + i) for i in range(9)))
    s, consumer, db, stopping = sink([{RECORDS: msgs}])
    bad = {3, 7}
    db.refuses = lambda row: row[6] - 5 in bad  # by amount: b3 and b7
    await s.run(stopping)
    assert sorted(r[6] - 5 for r in db.records) == [0, 1, 2, 4, 5, 6, 8]
    assert sorted(r[2] for r in db.rejects) == [msgs[3].offset, msgs[7].offset]
    assert all(r[4].startswith("refused by PostgreSQL: ValueError") for r in db.rejects)
    assert db.rejects[0][6] == msgs[3].value  # the message as it was, to look at and send again
    assert consumer.commits == [{RECORDS: 9}]
    assert db.statements <= 1 + 2 * 2 * 4  # about 2 log2(n) statements per refused row


def test_a_dead_letter_row_holds_the_key_and_value_byte_for_byte() -> None:
    value, key = b"acct-g8\t\x00\x01\x02binary\xff", b"\xfe\x00k"
    allocator = Allocator(MemoryStore(), CAT.credits, CAT.allocations, CAT.dead_letters, clock_ms=lambda: 5)
    [letter] = allocator.handle(Message(INPUT, 0, 7, key, value, 1_000)).outputs
    row = dead_letter_row(letter.value)
    assert (row[7], row[8], row[9]) == (key, value, None)
    assert row[5] == "invalid_event"
    utf8 = b'{"event_id":"\x01"}'
    [letter] = allocator.handle(Message(INPUT, 0, 8, None, utf8, 1_000)).outputs
    assert dead_letter_row(letter.value)[7:10] == (None, utf8, None)


def test_a_value_too_long_for_its_letter_is_left_out_and_named() -> None:
    value = b"x" * (INLINE_PAYLOAD_MAX + 1)
    allocator = Allocator(MemoryStore(), CAT.credits, CAT.allocations, CAT.dead_letters, clock_ms=lambda: 5)
    [letter] = allocator.handle(Message(INPUT, 2, 9, b"k", value, 1_000)).outputs
    assert len(letter.value) < 2_000
    row = dead_letter_row(letter.value)
    assert row[:3] == (INPUT, 2, 9) and row[7:10] == (b"k", None, len(value))
