"""What the allocator produces, batched per partition and handed to Kafka in two steps.

Each event appends its state's changelog records and its outputs to open
record batches (aiokafka's `BatchBuilder`: no future, no task per message;
docs/performance.md). `hand_over()` sends every
batch added so far: first the changelog's, and waits until Kafka has them,
then the outputs'. So Kafka never holds an output before the state that
explains it, and a batch of a partition always goes after the ones before it
(one hand-over at a time, and within it a partition's batches one after
another, so none goes once one before it has failed). It runs every `linger`
seconds, when too much is waiting, and before faust commits offsets (the
allocator wraps the producer's flush), so an offset is committed only after
what its events produced is in Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from costtrace._native import partition_for
from costtrace.fleet.fence import WRITER_HEADER

_KNOWN_KEYS = 100_000  # keys whose partition an outbox remembers, per topic
# most bytes a record without headers adds to a batch beyond its key and value
# (attributes, and the varints of its length, offset and time deltas, key and
# value lengths, header count)
_RECORD_OVERHEAD = 32
# and at most this for the writer header every changelog record carries (costtrace/fleet/fence.py):
# its key and value lengths, its key, a generation of up to 11 digits
_WRITER_HEADER_MAX = 2 + len(WRITER_HEADER) + 11
_CHANGELOG_OVERHEAD = _RECORD_OVERHEAD + _WRITER_HEADER_MAX
_BATCH_HEADER = 61  # a record batch's own header (magic v2)
_NO_HEADERS: list[tuple[str, bytes]] = []  # never changed: aiokafka only reads it


def fits_one_batch(size: int, records: int, batch_bytes: int) -> bool:
    """Whether `records` changelog records of `size` key and value bytes in all always fit one batch."""
    return size + _CHANGELOG_OVERHEAD * records + _BATCH_HEADER <= batch_bytes


class Outbox:
    def __init__(
        self,
        producer: Any,
        changelog: str,
        on_failure: Callable[[BaseException], None],
        on_changelog: Callable[[int, int], None] = lambda partition, offset: None,
        batch_bytes: int = 16384,
        before_send: Callable[[], None] = lambda: None,
    ) -> None:
        """`producer`: a started `AIOKafkaProducer` whose batches hold `batch_bytes` (its `max_batch_size`);
        `on_changelog(partition, last offset)` per batch."""
        self._producer = producer
        self._before_send = before_send  # may stop the process (allocator.FreezeGuard)
        self._batch_bytes = batch_bytes
        self._changelog = changelog
        self._on_failure = on_failure
        self._on_changelog = on_changelog
        self._partitions: dict[str, int] = {}
        self._keyed: dict[str, dict[bytes, int]] = {}  # per topic: key -> partition
        # topic -> partition -> (builder, [record count]); nested, so no key is made per record
        self._open: dict[str, dict[int, tuple[Any, list[int]]]] = {}
        self._full: list[tuple[TopicPartition, Any, int]] = []
        self._added = 0  # records added so far
        self._handed = 0  # of those, records Kafka has
        self._running: asyncio.Future[None] | None = None
        self._failed: BaseException | None = None
        # what each changelog record carries: its writer's generation (costtrace/fleet/fence.py)
        self.changelog_headers: list[tuple[str, bytes]] = []

    @property
    def waiting(self) -> int:
        """Records added and not yet in Kafka."""
        return self._added - self._handed

    async def learn(self, topics: list[str]) -> None:
        """Partition counts of the topics outputs are keyed into (before the first `add`)."""
        for topic in topics:
            self._partitions[topic] = len(await self._producer.partitions_for(topic))
            self._keyed[topic] = {}

    def add(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        partition: int | None = None,
    ) -> None:
        """Queue one record; without `partition`, it goes where Kafka's default partitioner puts its key."""
        if partition is None:
            # Kafka's default partitioner (murmur2); an account's partition is worked out once
            known = self._keyed[topic]
            partition = known.get(key)
            if partition is None:
                if len(known) >= _KNOWN_KEYS:
                    known.clear()
                partition = known[key] = partition_for(key, self._partitions[topic])
        builder, count = self._batch(topic, partition)
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            # full (and closed): it goes first, a new one takes this record
            self._seal(topic, partition)
            builder, count = self._batch(topic, partition)
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                raise ValueError(f"a record of {len(value):,} bytes does not fit in a batch for {topic}")
        count[0] += 1
        self._added += 1

    def add_together(self, topic: str, records: list[tuple[bytes, bytes]], partition: int) -> None:
        """Queue records (key, value) that must reach Kafka together: in one record batch.

        Records of the changelog carry `changelog_headers`; others none.

        The broker appends a record batch whole or not at all, so no crash
        leaves some of them in the topic without the others. They go into the
        partition's open batch if they fit, else into a new one. A group
        longer than a batch (see `fits_one_batch`) is split like any records.
        """
        headers = self.changelog_headers if topic == self._changelog else _NO_HEADERS
        need = sum(len(k) + len(v) for k, v in records) + _CHANGELOG_OVERHEAD * len(records)
        builder, count = self._batch(topic, partition)
        if count[0] and builder.size() + need > self._batch_bytes:
            self._seal(topic, partition)
            builder, count = self._batch(topic, partition)
        append = builder.append
        for i, (key, value) in enumerate(records):
            if append(timestamp=None, key=key, value=value, headers=headers) is None:
                # longer than a batch (and the batch now closed): the rest as any records
                count[0] += i
                self._added += i
                for key_, value_ in records[i:]:
                    self.add(topic, key_, value_, headers, partition)
                return
        count[0] += len(records)
        self._added += len(records)

    def _batch(self, topic: str, partition: int) -> tuple[Any, list[int]]:
        """The partition's open batch and its record count; a new one if it has none."""
        open_ = self._open.get(topic)
        if open_ is None:
            open_ = self._open[topic] = {}
        entry = open_.get(partition)
        if entry is None:
            entry = open_[partition] = (self._producer.create_batch(), [0])
        return entry

    def _seal(self, topic: str, partition: int) -> None:
        """Close the partition's open batch: it goes before any later one of the partition."""
        builder, count = self._open[topic].pop(partition)
        builder.close()
        self._full.append((TopicPartition(topic, partition), builder, count[0]))

    async def hand_over(self) -> None:
        """Hand everything added so far to Kafka and wait until Kafka has it."""
        target = self._added
        while self._handed < target:
            if self._failed is not None:
                raise self._failed
            # a finished hand-over counts as none, whether or not its callbacks have run:
            # awaiting a done future does not yield, so waiting for them would spin
            if self._running is None or self._running.done():
                self._running = asyncio.ensure_future(self._send_all())
            # shielded: a cancelled caller (a stopping timer) must not drop batches halfway
            await asyncio.shield(self._running)

    async def _send_all(self) -> None:
        try:
            await self._send_batches()
        except asyncio.CancelledError as exc:  # the loop is closing: nothing commits after this
            self._failed = exc
            raise
        except BaseException as exc:
            self._failed = exc
            self._on_failure(exc)
            raise

    async def _send_batches(self) -> None:
        self._before_send()
        upto = self._added
        batches = list(self._full)
        for topic, open_ in self._open.items():
            batches += [(TopicPartition(topic, p), b, c[0]) for p, (b, c) in open_.items()]
        self._full, self._open = [], {}
        states = [b for b in batches if b[0].topic == self._changelog]
        outputs = [b for b in batches if b[0].topic != self._changelog]
        for group in (states, outputs):
            delivered = await self._send_in_order(group)
            if group is states:
                for (tp, _, count), meta in zip(group, delivered, strict=True):
                    self._on_changelog(tp.partition, meta.offset + count - 1)
        self._handed = upto

    async def _send_in_order(self, group: list[tuple[TopicPartition, Any, int]]) -> list[Any]:
        """Send the batches and return their metadata, in `group`'s order.

        A partition's next batch is given to the producer only once Kafka has
        the one before it. Given both at once, a batch the broker refuses for
        good (too large, say) is dropped while aiokafka sends the next one
        anyway: the partition would hold a hole, later writes without earlier
        ones (seen on Kafka 4: tests/integration/test_outbox.py). aiokafka
        has one batch per partition in flight at a time in any case, so the
        wait costs nothing measurable (docs/fleet.md, "Effectively once" 3).
        """
        chains: dict[TopicPartition, list[int]] = {}
        for i, (tp, _, _) in enumerate(group):
            chains.setdefault(tp, []).append(i)
        delivered: list[Any] = [None] * len(group)

        async def in_turn(indices: list[int]) -> None:
            for i in indices:
                delivered[i] = await (await self._send(group[i]))

        alone: list[tuple[int, asyncio.Future[Any]]] = []  # nearly every partition: no task
        chained = []
        for indices in chains.values():
            if len(indices) == 1:
                alone.append((indices[0], await self._send(group[indices[0]])))
            else:
                chained.append(in_turn(indices))
        await asyncio.gather(*(future for _, future in alone), *chained)
        for i, future in alone:
            delivered[i] = future.result()
        return delivered

    async def _send(self, batch: tuple[TopicPartition, Any, int]) -> Any:
        tp, builder, _ = batch
        builder.close()
        return await self._producer.send_batch(builder, tp.topic, partition=tp.partition)
