"""The allocator's outbox: changelog batches in Kafka before any output, partitions in order."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import RecordMetadata, TopicPartition

from costtrace._native import partition_for
from costtrace.fleet import outbox
from costtrace.fleet.allocator import FreezeGuard
from costtrace.fleet.outbox import Outbox


class Broker:
    """Takes batches like AIOKafkaProducer.send_batch; the test decides when each is delivered."""

    def __init__(self, batch_size: int = 16_384) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, list[bytes]]] = []  # (topic, partition, values), in send order
        self.pending: list[tuple[asyncio.Future[RecordMetadata], TopicPartition, int]] = []
        self.offsets: dict[TopicPartition, int] = {}

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(4))

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        buffer = batch._builder.build()
        values = [r.value for r in DefaultRecordBatch(bytes(buffer))]
        self.sent.append((topic, partition, values))
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self.pending.append((fut, TopicPartition(topic, partition), len(values)))
        return fut

    def deliver(self, error: BaseException | None = None) -> int:
        n = len(self.pending)
        for fut, tp, count in self.pending:
            if error is not None:
                fut.set_exception(error)
                continue
            base = self.offsets.get(tp, 0)
            self.offsets[tp] = base + count
            fut.set_result(RecordMetadata(tp.topic, tp.partition, tp, base, -1, 0, 0))
        self.pending.clear()
        return n


async def until(check: Any) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


async def test_outputs_go_only_after_kafka_has_the_changelog() -> None:
    broker = Broker()
    failures: list[BaseException] = []
    persisted: dict[int, int] = {}
    box = Outbox(broker, "state", failures.append, persisted.__setitem__)
    await box.learn(["records"])
    box.add("state", b"h", b"header-1", [], 2)
    box.add("state", b"e", b"entry-1", [], 2)
    box.add("records", b"alice", b"record-1", [("h", b"1")])
    assert box.waiting == 3
    handing = asyncio.ensure_future(box.hand_over())
    await until(lambda: broker.sent)
    await asyncio.sleep(0.01)
    assert broker.sent == [("state", 2, [b"header-1", b"entry-1"])]  # outputs wait for the changelog
    broker.deliver()
    await until(lambda: len(broker.sent) == 2)
    assert broker.sent[1] == ("records", partition_for(b"alice", 4), [b"record-1"])
    assert not handing.done()  # not handed over until Kafka has the outputs too
    broker.deliver()
    await handing
    assert box.waiting == 0 and persisted == {2: 1} and failures == []


async def test_a_full_batch_goes_before_the_next_of_its_partition() -> None:
    broker = Broker(batch_size=200)
    box = Outbox(broker, "state", lambda exc: None)
    values = [b"v%03d" % i + b"x" * 40 for i in range(20)]
    for v in values:
        box.add("state", b"k", v, [], 0)
    await hand_over_delivering(box, broker)
    assert len(broker.sent) > 1  # several batches
    assert [v for _, _, vs in broker.sent for v in vs] == values


async def test_what_is_added_during_a_hand_over_goes_with_the_next() -> None:
    broker = Broker()
    box = Outbox(broker, "state", lambda exc: None)
    box.add("state", b"k", b"first", [], 0)
    first = asyncio.ensure_future(box.hand_over())
    await until(lambda: broker.pending)
    box.add("state", b"k", b"second", [], 0)
    second = asyncio.ensure_future(box.hand_over())  # waits for the first, then sends "second"
    broker.deliver()
    await first
    await until(lambda: broker.pending)
    assert broker.sent[-1] == ("state", 0, [b"second"])
    broker.deliver()
    await second
    assert box.waiting == 0


async def test_a_failed_batch_is_reported_and_every_later_hand_over_fails() -> None:
    broker = Broker()
    failures: list[BaseException] = []
    box = Outbox(broker, "state", failures.append)
    box.add("state", b"k", b"v", [], 0)
    handing = asyncio.ensure_future(box.hand_over())
    await until(lambda: broker.pending)
    broker.deliver(RuntimeError("broker gone"))
    with pytest.raises(RuntimeError, match="broker gone"):
        await handing
    assert [str(e) for e in failures] == ["broker gone"]
    box.add("state", b"k", b"w", [], 0)
    with pytest.raises(RuntimeError, match="broker gone"):
        await box.hand_over()


async def test_no_batch_of_a_partition_goes_after_one_before_it_failed() -> None:
    """Else the topic could hold later writes without earlier ones (a hole)."""
    broker = Broker(batch_size=200)
    failures: list[BaseException] = []
    box = Outbox(broker, "state", failures.append, batch_bytes=200)
    for i in range(8):
        box.add("state", b"k", b"p0-%d" % i + b"x" * 40, [], 0)  # several batches on partition 0
    box.add("state", b"k", b"p1", [], 1)
    handing = asyncio.ensure_future(box.hand_over())
    await until(lambda: broker.pending)
    await asyncio.sleep(0.01)
    assert sorted(partition for _, partition, _ in broker.sent) == [0, 1]
    (first,) = [entry for entry in broker.pending if entry[1].partition == 0]
    broker.pending.remove(first)
    first[0].set_exception(RuntimeError("too large"))  # partition 0's first batch refused for good
    broker.deliver()  # partition 1's is taken
    with pytest.raises(RuntimeError, match="too large"):
        await handing
    await asyncio.sleep(0.01)
    assert sorted(partition for _, partition, _ in broker.sent) == [0, 1]  # nothing more of partition 0
    assert [str(e) for e in failures] == ["too large"]


async def test_a_partitions_batches_go_one_after_another_in_order() -> None:
    broker = Broker(batch_size=200)
    box = Outbox(broker, "state", lambda exc: None, batch_bytes=200)
    values = [b"v%03d" % i + b"x" * 40 for i in range(12)]
    for v in values:
        box.add("state", b"k", v, [], 3)
    box.add("state", b"k", b"other", [], 2)
    handing = asyncio.ensure_future(box.hand_over())
    in_flight = []
    while not handing.done():
        await asyncio.sleep(0)
        in_flight.append(sum(1 for _, tp, _ in broker.pending if tp.partition == 3))
        broker.deliver()
    await handing
    assert sum(1 for _, p, _ in broker.sent if p == 3) > 1  # several batches
    assert max(in_flight) == 1
    assert [v for _, p, vs in broker.sent if p == 3 for v in vs] == values


def test_keys_go_where_kafkas_default_partitioner_puts_them() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    partitions = list(range(8))
    for key in (b"", b"alice", b"acct-00042", "çå".encode()):
        assert partition_for(key, 8) == DefaultPartitioner()(key, partitions, partitions)


async def test_keyed_records_keep_their_partition_when_the_remembered_keys_are_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox, "_KNOWN_KEYS", 7)
    broker = Broker()
    box = Outbox(broker, "state", lambda exc: None)
    await box.learn(["records"])
    keys = [f"acct-{i}".encode() for i in range(20)]
    for key in keys + keys[::-1]:
        box.add("records", key, key, [])
    handing = asyncio.ensure_future(box.hand_over())
    await until(lambda: broker.sent)
    broker.deliver()
    await handing
    placed = sorted((value, partition) for _, partition, values in broker.sent for value in values)
    assert placed == sorted((key, partition_for(key, 4)) for key in keys * 2)
    assert len({partition for _, partition in placed}) > 1


async def test_a_hand_over_right_after_another_finished_does_not_spin() -> None:
    """The finished hand-over's callbacks may not have run yet: the next must not wait on it.

    Awaiting a done future does not yield to the loop, so a loop that waits for
    those callbacks spins for ever; the alarm breaks such a spin.
    """
    broker = Broker()
    box = Outbox(broker, "state", lambda exc: None)
    box.add("state", b"k", b"first", [], 0)
    first = asyncio.ensure_future(box.hand_over())
    await until(lambda: broker.pending)
    broker.deliver()
    running = box._running
    assert running is not None
    while not running.done():
        await asyncio.sleep(0)
    box.add("state", b"k", b"second", [], 0)  # at once: the first one's callbacks are still queued

    def spinning(signum: int, frame: Any) -> None:
        raise TimeoutError("hand_over spun without yielding")

    previous = signal.signal(signal.SIGALRM, spinning)
    signal.setitimer(signal.ITIMER_REAL, 2.0)

    async def deliver_when_sent() -> None:
        await until(lambda: broker.pending)
        broker.deliver()

    deliverer = asyncio.ensure_future(deliver_when_sent())
    try:
        await box.hand_over()  # inline, in this very step
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    await asyncio.gather(first, deliverer)
    assert [v for _, _, vs in broker.sent for v in vs] == [b"first", b"second"] and box.waiting == 0


async def hand_over_delivering(box: Outbox, broker: Broker) -> None:
    """Hand everything over, with Kafka taking each batch as it comes."""
    handing = asyncio.ensure_future(box.hand_over())
    while not handing.done():
        await asyncio.sleep(0)
        broker.deliver()
    await handing


@pytest.mark.parametrize("batch_size", [300, 1_000, 16_384])
async def test_an_events_writes_go_into_one_batch_whenever_they_fit_one(batch_size: int) -> None:
    broker = Broker(batch_size=batch_size)
    box = Outbox(broker, "state", lambda exc: None, batch_bytes=batch_size)
    groups: list[list[tuple[bytes, bytes]]] = []
    for i in range(60):
        group = [(b"k%d-%d" % (i, j), b"g%02d-%d" % (i, j) + b"x" * (7 * i % 50)) for j in range(1 + i % 5)]
        size = sum(len(k) + len(v) for k, v in group)
        if outbox.fits_one_batch(size, len(group), batch_size):
            groups.append(group)
        box.add_together("state", group, 0)
    await hand_over_delivering(box, broker)
    batches = [values for topic, _, values in broker.sent]
    assert sum(len(b) for b in batches) == sum(1 + i % 5 for i in range(60))
    assert len(batches) > 1 or batch_size == 16_384
    for group in groups:
        values = [v for _, v in group]
        holding = [b for b in batches if values[0] in b]
        assert len(holding) == 1 and all(v in holding[0] for v in values), "a group that fits was split"


async def test_a_group_longer_than_a_batch_is_split_like_any_records() -> None:
    broker = Broker(batch_size=200)
    box = Outbox(broker, "state", lambda exc: None, batch_bytes=200)
    group = [(b"k%d" % j, b"x" * 60) for j in range(6)]
    assert not outbox.fits_one_batch(sum(len(k) + len(v) for k, v in group), len(group), 200)
    box.add_together("state", group, 0)
    await hand_over_delivering(box, broker)
    assert sum(len(values) for _, _, values in broker.sent) == 6 and len(broker.sent) > 1


class Frozen(Exception):
    """What the test's exit raises instead of ending the process."""


async def test_a_process_frozen_past_the_limit_stops_before_it_sends_anything() -> None:
    now = [100.0]
    exits: list[int] = []

    def exit_(code: int) -> None:
        exits.append(code)
        raise Frozen

    guard = FreezeGuard(9.0, exit_, clock=lambda: now[0])
    broker = Broker()
    box = Outbox(broker, "state", lambda exc: None, before_send=guard.check)
    guard.check()  # armed once the app runs
    box.add("state", b"h", b"header-1", [], 0)
    now[0] += 8.9  # a pause shorter than the limit: nothing moved, the hand-over goes on
    handing = asyncio.ensure_future(box.hand_over())
    await until(lambda: broker.sent)
    broker.deliver()
    await handing
    box.add("state", b"h", b"header-2", [], 0)
    now[0] += 9.5  # frozen past it: another allocator may have written newer states since
    with pytest.raises(Frozen):
        await box.hand_over()
    assert exits == [70] and len(broker.sent) == 1


def test_the_guard_arms_with_its_first_check() -> None:
    now = [0.0]
    exits: list[int] = []
    guard = FreezeGuard(1.0, exits.append, clock=lambda: now[0])
    now[0] = 1_000.0  # a long recovery before the app's tasks run: not a freeze
    guard.check()
    now[0] += 0.5
    guard.check()
    assert exits == []
    now[0] += 1.5
    guard.check()
    assert exits == [70]
