"""The sink: allocation records and dead letters into PostgreSQL, in batches, idempotently.

A plain aiokafka consumer, not a faust agent: the sink holds no state and
needs none of faust's machinery, whose per-message path (tasks, queues, acks)
was most of its CPU (docs/performance.md, "Fleet"). Each batch is what one
`getmany` hands over (up to `COSTTRACE_SINK_BATCH` messages, as soon as any
arrive), and its offsets are committed only after PostgreSQL has committed
its rows. PostgreSQL down or slow: the write is retried until it commits
(`Database.execute`), and nothing is committed meanwhile. Any other failure
ends the process before a commit, so the batch is read again on restart,
where the primary keys (record id; dead letter's source position) drop what
is already stored. A commit refused because a rebalance took the partitions
away is harmless for the same reason: their new owner reads them again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from costtrace.contract.letters import DeadLetter, printable
from costtrace.contract.records import Record
from costtrace.fleet.metrics import Health, Metrics, lag_of, serve
from costtrace.fleet.settings import Settings, fleet_catalogue, kafka_client_options
from costtrace.storage.db import DEAD_LETTER_COLUMNS, Database, RowsRefused

log = logging.getLogger(__name__)

_record = msgspec.json.Decoder(Record)
_letter = msgspec.json.Decoder(DeadLetter)
_headers = msgspec.msgpack.Encoder()
DEAD_LETTER_REASON = [name for name, _ in DEAD_LETTER_COLUMNS].index("reason")
# how long a stopping sink lets a batch in progress finish (PostgreSQL may be down)
STOP_GRACE_SECONDS = 10.0

Headers = Sequence[tuple[str, bytes]]


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def record_row(value: bytes, headers: Headers) -> tuple[Any, ...]:
    """A record message as a `records` row (columns of costtrace.storage.db.RECORD_COLUMNS)."""
    r = _record.decode(value)
    h = dict(headers)
    seq = int(r.record_id.rsplit("-", 1)[1])
    received = h.get("costtrace-received-ms")
    occurred = h.get("costtrace-occurred-ms")
    return (
        r.record_id, r.event_id, r.kind, r.account_id, r.batch_id, r.budget_id, r.amount,
        r.order_id, r.refund_id, r.transfer_id, r.merchant_id,
        int(h["costtrace-step"]), seq, h["costtrace-source"].decode(),
        _at(int(received)) if received else None, _at(int(occurred)) if occurred else None,
    )  # fmt: skip


def dead_letter_row(value: bytes, headers: Headers = ()) -> tuple[Any, ...]:
    d = _letter.decode(value)
    return (
        d.topic,
        d.partition,
        d.offset,
        d.event_id,
        d.account_id,
        d.reason,
        d.detail,
        d.key_bytes,
        d.payload_bytes,
        d.payload_size,
        _at(d.message_timestamp_ms),
        d.attempt,
        _at(d.dead_lettered_at_ms),
        d.origin,
    )


def reject_row(m: Any, destination: str, reason: str) -> tuple[Any, ...]:
    """A `sink_rejects` row: the message as it is, and why its row was not written."""
    headers = _headers.encode([[name, value] for name, value in m.headers]) if m.headers else None
    return (m.topic, m.partition, m.offset, destination, printable(reason), m.key, m.value or b"", headers)


def rows(
    messages: Iterable[Any], convert: Callable[[bytes, Headers], tuple[Any, ...]], destination: str
) -> tuple[list[Any], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(messages, their rows) of those that convert, and reject rows for those that do not.

    A message the allocator could not have written (say, a hand-made one) is kept as it is.
    """
    kept, out, rejects = [], [], []
    for m in messages:
        try:
            row = convert(m.value, m.headers or ())
        except (
            msgspec.DecodeError,
            msgspec.ValidationError,
            KeyError,
            ValueError,
            IndexError,
            TypeError,
        ) as exc:
            log.error("unreadable message at %s:%s@%s kept in sink_rejects: %r", m.topic, m.partition,
                      m.offset, exc)  # fmt: skip
            rejects.append(reject_row(m, destination, f"unreadable: {type(exc).__name__}: {exc}"))
            continue
        kept.append(m)
        out.append(row)
    return kept, out, rejects


def latencies(headers: Iterable[Headers], now_ms: int) -> tuple[list[float], list[float]]:
    """Seconds from each record's event time, and from its input's broker time, to `now_ms`."""
    by_event: list[float] = []
    by_broker: list[float] = []
    for hs in headers:
        for name, raw in hs:
            if name == "costtrace-occurred-ms":
                out = by_event
            elif name == "costtrace-received-ms":
                out = by_broker
            else:
                continue
            if raw and raw.isdigit():  # set by the allocator; anything else is not a time
                out.append(max(0.0, (now_ms - int(raw)) / 1000))
    return by_event, by_broker


class Membership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Where the sink stands in its group: joined, rebalancing, and what it has committed."""

    def __init__(self, metrics: Metrics, group: str) -> None:
        self._metrics = metrics
        self._group = group
        self.joined = False
        self.rebalancing = False
        self.committed: dict[TopicPartition, int] = {}  # of the partitions held now

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.rebalancing = True

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.committed = {}
        self.joined, self.rebalancing = True, False
        self._metrics.rebalances.labels(self._group).inc()

    def ready(self) -> str | None:
        if not self.joined:
            return "not yet joined its consumer group"
        return "rebalancing" if self.rebalancing else None


class Sink:
    """One sink process: batches from Kafka into PostgreSQL, then their offsets committed."""

    def __init__(
        self, settings: Settings, consumer: AIOKafkaConsumer, db: Database, metrics: Metrics
    ) -> None:
        cat = fleet_catalogue(settings)
        self.records_topic, self.dead_letters_topic = cat.allocations, cat.dead_letters
        self.consumer = consumer
        self.db = db
        self.metrics = metrics
        self.batch = settings.sink_batch
        self.membership = Membership(metrics, settings.sink_app_id)
        self.group = settings.sink_app_id
        self._retries = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Until `stopping` is set: each batch written, then committed."""
        consumer = self.consumer
        while not stopping.is_set():
            got = await consumer.getmany(timeout_ms=500, max_records=self.batch)
            if got:
                await self.persist(got)
                await self.commit({tp: ms[-1].offset + 1 for tp, ms in got.items() if ms})

    async def persist(self, got: dict[TopicPartition, list[Any]]) -> None:
        """Write a batch's records and dead letters; returns once PostgreSQL has committed both.

        Rows PostgreSQL refuses for their data go to `sink_rejects` instead
        (`_write_or_set_aside`), so that no message a producer sent can stop the sink.
        """
        records = [m for tp, ms in got.items() if tp.topic == self.records_topic for m in ms]
        letters = [m for tp, ms in got.items() if tp.topic == self.dead_letters_topic for m in ms]
        rejects: list[tuple[Any, ...]] = []
        if records:
            kept, batch, unread = rows(records, record_row, "records")
            rejects += unread
            rejects += await self._write_or_set_aside("records", kept, batch, self.db.write_records)
            by_event, by_broker = latencies((m.headers or () for m in records), int(time.time() * 1000))
            for clock, seconds in (("event", by_event), ("broker", by_broker)):
                histogram = self.metrics.end_to_end.labels(clock)
                for s in seconds:
                    histogram.observe(s)
        if letters:
            kept, batch, unread = rows(letters, dead_letter_row, "dead_letters")
            rejects += unread
            rejects += await self._write_or_set_aside("dead_letters", kept, batch, self.db.write_dead_letters)
            for row in batch:
                self.metrics.dead_letters.labels(row[DEAD_LETTER_REASON]).inc()
        if rejects:
            await self.db.write_rejects(rejects)
            for row in rejects:
                self.metrics.sink_rejects.labels(row[3]).inc()

    async def _write_or_set_aside(
        self,
        table: str,
        messages: list[Any],
        batch: list[tuple[Any, ...]],
        write: Callable[[list[tuple[Any, ...]]], Awaitable[None]],
    ) -> list[tuple[Any, ...]]:
        """Write `batch`; if PostgreSQL refuses it for its data, write all but the rows it refuses.

        Halves are tried in turn (about 2 log2(n) statements per refused row),
        so the good rows around a bad one still land. Returns reject rows for
        the refused ones.
        """
        try:
            await self._write(table, batch, write)
            return []
        except RowsRefused as refused:
            if len(batch) == 1:
                m = messages[0]
                log.error("PostgreSQL refused the %s row of %s:%s@%s, kept in sink_rejects: %s",
                          table, m.topic, m.partition, m.offset, refused)  # fmt: skip
                return [reject_row(m, table, f"refused by PostgreSQL: {refused}")]
        half = len(batch) // 2
        return [
            *await self._write_or_set_aside(table, messages[:half], batch[:half], write),
            *await self._write_or_set_aside(table, messages[half:], batch[half:], write),
        ]

    async def _write(
        self,
        table: str,
        batch: list[tuple[Any, ...]],
        write: Callable[[list[tuple[Any, ...]]], Awaitable[None]],
    ) -> None:
        if not batch:
            return
        started = time.monotonic()
        await write(batch)
        m = self.metrics
        m.sink_batch_seconds.labels(table).observe(time.monotonic() - started)
        m.sink_batch_rows.labels(table).observe(len(batch))
        m.sink_rows.labels(table).inc(len(batch))
        m.sink_last_commit.set(time.time())
        m.sink_retries.inc(self.db.retries - self._retries)
        self._retries = self.db.retries

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit what PostgreSQL holds; a commit a rebalance refuses leaves it to the new owner."""
        held = self.consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in held}
        if not offsets:
            return
        try:
            await self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # rows are in PostgreSQL; whoever holds the partitions now reads them again, and
            # the primary keys drop them
            log.warning("offsets not committed (%r): the batch will be read again", exc)
            return
        self.membership.committed.update(offsets)

    async def refresh_lag(self) -> None:
        """Lag per held partition: the broker's high watermark minus the committed offset."""
        consumer, committed = self.consumer, self.membership.committed
        held = consumer.assignment()
        for tp in held - committed.keys():
            committed[tp] = await consumer.committed(tp) or 0
        high = {(tp.topic, tp.partition): consumer.highwater(tp) for tp in held}
        done = {(tp.topic, tp.partition): committed.get(tp) for tp in held}
        self.metrics.set_lag(self.group, lag_of(high, done))

    async def refresh_debt(self) -> None:
        """Outstanding debt of every account, from what PostgreSQL holds (the `debt` view)."""
        try:
            self.metrics.debt.set(await self.db.debt_outstanding())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("debt not read from PostgreSQL: %r", exc)


async def _every(seconds: float, action: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await action()
        except Exception:  # a gauge must never stop the sink
            log.warning("periodic %s failed", getattr(action, "__name__", action), exc_info=True)


async def run_sink(settings: Settings) -> None:
    """The sink process: serves its metrics and health, runs until SIGTERM or SIGINT."""
    metrics = Metrics()
    metrics.info.labels("sink", settings.sink_app_id).set(1)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        group_id=settings.sink_app_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RoundRobinPartitionAssignor,),
        fetch_min_bytes=settings.fetch_min_bytes,
        fetch_max_wait_ms=int(settings.fetch_max_wait * 1000),
        session_timeout_ms=int(settings.session_timeout * 1000),
        heartbeat_interval_ms=int(min(3.0, settings.session_timeout / 5) * 1000),
        request_timeout_ms=int(max(90.0, settings.session_timeout * 2) * 1000),
        **kafka_client_options(settings),
    )
    db = Database(settings.postgres_dsn.get_secret_value())
    sink = Sink(settings, consumer, db, metrics)
    consumer.subscribe([sink.records_topic, sink.dead_letters_topic], listener=sink.membership)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop() -> None:
        if not stopping.is_set():
            log.info("stopping: the batch in progress is finished first")
            stopping.set()
            # PostgreSQL may be down and the batch never finish: nothing is committed then
            loop.call_later(STOP_GRACE_SECONDS, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    def alive() -> str | None:
        return "stopping" if stopping.is_set() else None

    runner = await serve(
        metrics, Health(alive, sink.membership.ready), settings.http_host, settings.http_port
    )
    await consumer.start()
    chores = [
        asyncio.ensure_future(_every(5.0, sink.refresh_lag)),
        asyncio.ensure_future(_every(30.0, sink.refresh_debt)),
    ]
    try:
        await sink.run(stopping)
    finally:
        for chore in chores:
            chore.cancel()
        await consumer.stop()
        await db.close()
        await runner.cleanup()


def main(settings: Settings, loglevel: str) -> int:
    """`costtrace worker --role sink`: 0 after a requested stop; an error ends it with 1, uncommitted."""
    logging.basicConfig(
        level=loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )
    try:
        asyncio.run(run_sink(settings))
    except asyncio.CancelledError:
        log.warning("stopped with a batch in progress: it is read again on restart")
        return 0
    except Exception:
        log.critical("sink failed; nothing past its last written batch was committed", exc_info=True)
        return 1
    return 0
