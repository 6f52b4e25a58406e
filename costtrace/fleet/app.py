"""The faust apps: the allocator (the model on RocksDB) and the PostgreSQL sink.

Run with `costtrace worker --role allocator|sink`. Both apps use faust's
at-least-once processing; docs/fleet.md says why `exactly_once` is not used
and how the allocator makes delivery effectively once.

The allocator does not let faust send its table's changelog. faust queues
table writes in a producer buffer whose flush gives up after 0.1 s with
messages still queued (`ProducerBuffer.flush_atmost`), and commits offsets
after that flush: an offset could be committed before its state or records
left the process. Instead, for each event the allocator (1) puts the state into
the local RocksDB (one write batch), (2) adds the state's changelog records
and then (3) the event's outputs to its `Outbox` (costtrace/fleet/outbox.py), which
hands them to Kafka in batches, changelog first, every `producer_linger`
seconds and before every commit: faust's commit waits until Kafka has
everything its events produced. Any failed send stops the process before a
commit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import faust
import msgspec
import redis.asyncio as aioredis
from faust.types import TP
from redis.exceptions import RedisError

from costtrace._native import partition_for
from costtrace.fleet.allocator import Allocator, FreezeGuard, Message, StopOnSendError
from costtrace.fleet.fence import writer_headers
from costtrace.fleet.internals import (
    RAW,
    Hold,
    WriterFence,
    before_services,
    committed_offsets,
    deliver_directly,
    describe_fetch,
    describe_offsets,
    flush_after,
    install,
    kafka_producer,
    open_partitions,
    partition_db,
)
from costtrace.fleet.merge import (
    ANNOUNCE_HEADER,
    WATERMARK_HEADER,
    LogMerge,
    announcement_message,
    watermark_message,
)
from costtrace.fleet.metrics import Health, Metrics, lag_of, serve
from costtrace.fleet.outbox import Outbox, fits_one_batch
from costtrace.fleet.settings import Settings, fleet_catalogue, kafka_ssl_context
from costtrace.fleet.state import AccountsHeld, PartitionTable, TableStore
from costtrace.fleet.switch import SwitchHolder, switch_key
from costtrace.model.order import RANK, OrderKey
from costtrace.model.state import Settled

log = logging.getLogger(__name__)


def broker_credentials(settings: Settings) -> Any:
    """faust's form of the Kafka security settings (its clients take them from here); None: plaintext."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(settings) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username, password=settings.kafka_sasl_secret(),
        mechanism=settings.kafka_sasl_mechanism, ssl_context=context,
    )  # fmt: skip


def _base_config(settings: Settings, app_id: str) -> dict[str, Any]:
    return {
        "id": app_id,
        "broker": [f"kafka://{b}" for b in settings.kafka_bootstrap.split(",")],
        "broker_credentials": broker_credentials(settings),
        "processing_guarantee": "at_least_once",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication,
        # our topics come from `costtrace topics create` (the worker refuses to start
        # without them); faust still declares its own internal assignor topic
        "topic_allow_declare": True,
        "broker_commit_interval": settings.commit_interval,
        "producer_linger": settings.producer_linger,
        "producer_max_batch_size": settings.producer_batch_bytes,
        "producer_acks": -1,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.session_timeout,
        "broker_heartbeat_interval": min(3.0, settings.session_timeout / 5),
        "broker_request_timeout": max(90.0, settings.session_timeout * 2),
        "web_enabled": False,
        "stream_buffer_maxsize": settings.stream_buffer_maxsize,
        "datadir": str(settings.state_dir),
    }


_transfer = msgspec.json.Decoder()


def credit_destination(value: bytes, partitions: int) -> tuple[int, bytes] | None:
    """Where a transfer's credit goes: its receiver's partition and account; None when it names none."""
    try:
        event = _transfer.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    to = event.get("to_account_id") if isinstance(event, dict) else None
    if not isinstance(to, str) or not to:
        return None
    account = to.encode()
    return partition_for(account, partitions), account


def observe(
    app: faust.App,
    settings: Settings,
    role: str,
    group: str,
    topics: set[str],
    ready: Callable[[], str | None],
) -> Metrics:
    """Serve the worker's metrics and health, and keep its lag and rebalance metrics current."""
    metrics = Metrics()
    metrics.info.labels(role, group).set(1)
    joined = asyncio.Event()

    def alive() -> str | None:
        if app.crashed:
            return f"crashed: {app.crash_reason!r}"
        return "stopping" if app.should_stop else None

    def ready_once_joined() -> str | None:
        if not joined.is_set():
            return "not yet joined its consumer group"
        return ready() or ("rebalancing" if app.rebalancing else None)

    async def _assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        metrics.rebalances.labels(group).inc()
        joined.set()

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]

    async def _serve() -> None:
        await serve(metrics, Health(alive, ready_once_joined), settings.http_host, settings.http_port)

    before_services(app, _serve)  # answers from the first second: "recovering tables", not silence

    if os.environ.get("COSTTRACE_DEBUG_OFFSETS"):

        @app.timer(2.0)  # type: ignore[untyped-decorator]
        async def _bookkeeping() -> None:
            log.warning("OFFSETS %s", describe_offsets(app.consumer, topics))

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def _lag() -> None:
        consumer: Any = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in topics]
        high = {(tp.topic, tp.partition): consumer.highwater(tp) for tp in tps}
        committed = committed_offsets(consumer)
        done = {(tp.topic, tp.partition): committed.get(tp) for tp in tps}
        metrics.set_lag(group, lag_of(high, done))

    return metrics


class CreditCommits:
    """Which credits of each sender a partition will never read again (the model's settled positions).

    A credit's position is its sender's transfer's (`costtrace.fleet.allocator.credit_position`);
    it is settled once the offset it was read at on the credits partition is
    committed. One sender's credits come in order on both counts.
    """

    def __init__(self, credits_topic: str, committed: dict[TP, int | None] | None = None) -> None:
        self._topic = credits_topic
        self._committed: dict[TP, int | None] = {} if committed is None else committed
        self._applied: dict[
            tuple[int, int], deque[tuple[int, int]]
        ] = {}  # (receiver, sender) -> (read at, t)
        self._settled: dict[tuple[int, int], int] = {}

    def bind(self, committed: dict[TP, int | None]) -> None:
        """faust's own record of its commits (once its consumer exists)."""
        self._committed = committed

    def applied(self, receiver: int, sender: int, read_at: int, transfer_offset: int) -> None:
        self._applied.setdefault((receiver, sender), deque()).append((read_at, transfer_offset))

    def settled(self, receiver: int, sender: int) -> int | None:
        committed = self._committed.get(TP(self._topic, receiver))
        applied = self._applied.get((receiver, sender))
        while applied and committed is not None and applied[0][0] < committed:
            self._settled[(receiver, sender)] = applied.popleft()[1] + 1
        return self._settled.get((receiver, sender))

    def clear(self) -> None:
        self._applied.clear()
        self._settled.clear()


class Committed:
    """What the group has committed of one partition's sources: positions it never reads again.

    The model's `Settled`, read only when the model asks (an account with
    outputs kept), from faust's own record of its commits; credits by sender
    (`CreditCommits`).
    """

    __slots__ = ("_committed", "_credits", "_tps")

    def __init__(
        self, tps: dict[str, TP], committed: dict[TP, int | None], credits: CreditCommits | None = None
    ) -> None:
        self._tps = tps  # source ("topic:partition") -> its TP
        self._committed = committed
        self._credits = credits

    def get(self, source: str, /) -> int | None:
        tp = self._tps.get(source)
        if tp is not None:
            return self._committed.get(tp)
        if self._credits is not None and "/" in source:  # "credits:receiver/sender"
            receiver, _, sender = source.rpartition(":")[2].partition("/")
            return self._credits.settled(int(receiver), int(sender))
        return None


# records the allocator lets wait for a hand-over before it waits itself
MAX_WAITING = 20_000
RELEASE_BATCH = 500  # events applied before the event loop runs again (`apply_released`)
# watermark messages on the credits topic (costtrace/fleet/merge.py)
WATERMARK_KEY = b""
WATERMARK_HEADERS = [(WATERMARK_HEADER, b"1")]
ANNOUNCEMENT_HEADERS = [(ANNOUNCE_HEADER, b"1")]


class AllocatorStep:
    """What the allocator does with each message it applies (`bench.allocator_bench` runs it without faust).

    The model on the message's partition (RocksDB) and the metrics, then the
    outbox: the changelog records of the event's state, then its outputs.
    """

    def __init__(
        self,
        local: PartitionTable,
        store: TableStore,
        allocator: Allocator,
        metrics: Metrics,
        outbox: Outbox,
        changelog: str,
        held: AccountsHeld,
        settled_for: Callable[[int], Settled],
        credit_commits: CreditCommits | None = None,
    ) -> None:
        self.local, self.store, self.allocator, self.metrics = local, store, allocator, metrics
        self.outbox, self.changelog, self.held, self.settled_for = outbox, changelog, held, settled_for
        self.credit_commits = credit_commits
        self._created = store.created

    def __call__(self, m: Any, order: OrderKey | None = None, late: bool = False) -> None:
        """`m`: a faust message; `order`: its place in the log order, `late`: after later ones (LogMerge)."""
        partition = m.partition
        local, outbox = self.local, self.outbox
        local.use(partition)
        msg = Message.of(m)
        handled = self.allocator.handle(msg, self.settled_for(partition), order, late)
        if self.credit_commits is not None and order is not None and order.credit:
            self.credit_commits.applied(partition, order.partition, msg.offset, order.offset)
        self.metrics.count(handled, msg.attempt)
        created = self.store.created
        if created != self._created:
            self._created = created
            self.held.created(partition)
        if local.pending:
            for group in local.pending:  # each one event's writes (or an account's repair)
                outbox.add_together(self.changelog, group, partition)
            local.pending = []
        for out in handled.outputs:
            outbox.add(out.topic, out.key, out.value, out.headers)


# the collector's thresholds for an allocator (Python's: 700, 10, 10)
GC_THRESHOLDS = (10_000, 20, 50)


def fewer_collections() -> None:
    """Collect garbage less often in an allocator that holds many events.

    The hold keeps every event it has read and not applied, tens of thousands
    under a backlog, and each full collection walks all of them, which
    Python's thresholds make frequent (docs/performance.md, "The log order,
    faster"). What exists once the worker runs (modules, faust's app) is never
    garbage, and leaves the collections for good (`gc.freeze`).
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def allocator_app(settings: Settings) -> faust.App:
    cat = fleet_catalogue(settings)
    app = faust.App(
        **_base_config(settings, settings.app_id),
        store="rocksdb://",
        table_standby_replicas=settings.standby_replicas,
    )
    table = app.Table("state", partitions=settings.partitions, key_type=bytes, value_type=bytes)
    ranks = {cat.input_for(kind): rank for kind, rank in RANK.items() if kind != "archive"}
    merge = LogMerge(
        {**ranks, cat.archive: RANK["archive"]}, cat.credits, settings.partitions, settings.max_idle,
        settings.hold_limit, lambda m: credit_destination(m.value, settings.partitions),
    )  # fmt: skip
    hold = Hold(merge, set(cat.allocator_sources))
    credit_commits = CreditCommits(cat.credits)
    rocks: Any = table.data  # faust's RocksDB store: one DB per partition
    changelog = table.changelog_topic.get_topic_name()
    outbox: Outbox | None = None

    async def before_marking() -> None:
        if outbox is not None:  # every record of the generation before goes before the marker
            await outbox.hand_over()

    def on_generation(new: int) -> None:
        if outbox is not None:
            outbox.changelog_headers = writer_headers(new)

    fence = WriterFence(app, rocks, changelog, before_marking, on_generation,
                        lambda skipped: metrics.stale_changelog.inc(skipped))  # fmt: skip
    install(app, fetch_min_bytes=settings.fetch_min_bytes, fetch_max_wait=settings.fetch_max_wait,
            hold=hold, rocks=rocks, fence=fence)  # fmt: skip
    source = app.topic(*cat.allocator_sources, **RAW)
    local = PartitionTable(partition_db(rocks))
    batch_bytes = settings.producer_batch_bytes
    # an event's writes that fit one record batch go to the changelog in one (Outbox.add_together)
    store = TableStore(local, together=lambda size, records: fits_one_batch(size, records, batch_bytes))
    stop = StopOnSendError()
    # a member is expired a session timeout after its last heartbeat, which went at most a fifth of
    # it before a freeze began: a freeze of 0.6 of it stops the process before any harm
    freeze = FreezeGuard(settings.session_timeout * 0.6)
    persisted: dict[int, int] = {}  # partition -> last changelog offset delivered
    kept: dict[int, int] = {}  # partition -> last offset written as faust's persisted offset

    def ready() -> str | None:
        tables: Any = app.tables
        if app.in_recovery or not tables.recovery.completed.is_set():
            return "recovering tables"
        return None

    metrics = observe(app, settings, "allocator", settings.app_id, set(cat.allocator_sources), ready)
    held = AccountsHeld(partition_db(rocks))
    # kept beside the state folder, which is emptied after an unclean exit
    switch = SwitchHolder(settings.state_dir.with_name(settings.state_dir.name + ".switch.json"))
    redis_client = aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=1.0, socket_connect_timeout=1.0
    )

    def show_switch() -> None:
        merge.only_openings = not switch.current.on  # off: the hold keeps all but opening balances
        metrics.tracing_on.set(1 if switch.current.on else 0)
        metrics.tracing_node.set((switch.current.node_ns or 0) / 1e9)

    show_switch()

    async def read_switch() -> None:
        try:
            raw = await redis_client.get(switch_key(settings.topic_prefix))
        except (RedisError, OSError) as exc:
            metrics.switch_read_failures.inc()
            log.warning("tracing switch not read (%r); going on with: %s", exc, switch.current.describe())
            return
        try:
            switch.update(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            metrics.switch_read_failures.inc()
            log.error("tracing switch unreadable (%r); going on with: %s", exc, switch.current.describe())
        show_switch()

    @app.timer(settings.switch_poll)  # type: ignore[untyped-decorator]
    async def _read_switch() -> None:
        await read_switch()

    def on_changelog(partition: int, offset: int) -> None:
        if offset > persisted.get(partition, -1):
            persisted[partition] = offset

    async def open_outbox() -> Outbox:
        """Once the producer runs: its batches, and faust's commits wait for them."""
        box = Outbox(kafka_producer(app.producer), changelog, stop, on_changelog, batch_bytes, freeze.check)
        box.changelog_headers = writer_headers(fence.generation)  # the member's, once assigned
        await box.learn([cat.allocations, cat.credits, cat.dead_letters])
        flush_after(app.producer, box.hand_over)  # faust's commits wait for the outbox
        return box

    @app.task  # type: ignore[untyped-decorator]
    async def _linger() -> None:
        while True:
            await asyncio.sleep(settings.producer_linger)
            if outbox is not None and outbox.waiting:
                await outbox.hand_over()

    @app.task  # type: ignore[untyped-decorator]
    async def _awake() -> None:
        """Notices a freeze of the whole process even when nothing is sent (FreezeGuard)."""
        while True:
            freeze.check()
            await asyncio.sleep(0.05)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def _keep_persisted() -> None:
        """Lets a clean restart resume recovery here, not at offset 0 (a RocksDB write: once a second)."""
        open_dbs = open_partitions(rocks)  # never reopen a revoked partition's DB: faust may still hold it
        for partition, offset in list(persisted.items()):
            if partition in open_dbs and kept.get(partition) != offset:
                rocks.set_persisted_offset(TP(changelog, partition), offset)
                kept[partition] = offset

    async def _assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        local.forget()  # recovery writes the partitions it restores behind the table's back
        store.forget_repairs()
        held.forget()

    async def _revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        # faust reads every partition again from its commit after a rebalance; the hold
        # starts over then (Hold.start)
        merge.clear()
        credit_commits.clear()
        # faust drops a revoked partition's DB without closing it; a handle kept here
        # would hold its lock when the partition comes back and faust opens it again
        local.db = None
        for tp in revoked:  # co-partitioned: an input partition goes with its state's
            persisted.pop(tp.partition, None)
            kept.pop(tp.partition, None)

    @app.timer(15.0)  # type: ignore[untyped-decorator]
    async def _accounts() -> None:
        partitions = {tp.partition for tp in app.consumer.assignment() if tp.topic in cat.inputs}
        metrics.accounts.set(held.count(partitions))

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]

    step: AllocatorStep | None = None

    def announce() -> None:
        """The credits to come of the transfers read so far, one message per receiving partition."""
        assert outbox is not None
        to: dict[int, list[tuple[bytes, OrderKey]]] = {}
        for receiver, account, key in merge.announcements:
            to.setdefault(receiver, []).append((account, key))
        for receiver, credits in to.items():
            value = announcement_message(credits)
            outbox.add(cat.credits, WATERMARK_KEY, value, ANNOUNCEMENT_HEADERS, receiver)
        merge.announcements.clear()

    def apply_released(partition: int | None = None) -> bool:
        """Apply what the hold lets go (one partition's, or all), in the log order; whether more may be due.

        At most `RELEASE_BATCH` at a time: the caller lets the event loop run
        (hand-overs, fetches, the hold's timers) before it asks again, not
        after the tens of thousands a backlog's start can release at once.
        """
        if step is None or (partition is not None and partition not in merge.groups):
            return False
        released = merge.release(time.monotonic(), partition, RELEASE_BATCH)
        if released and merge.announcements:  # a transfer's credit goes after its announcement
            announce()
        try:
            for held_message in released:
                step(held_message.message, held_message.key, held_message.late)
        finally:
            local.flush()  # before the event loop runs anything that may read RocksDB
        return len(released) >= RELEASE_BATCH

    @app.task  # type: ignore[untyped-decorator]
    async def _order() -> None:
        """What lets held events go without a new message: the broker's end offsets, time, watermarks."""
        consumer: Any = app.consumer
        forced, watermarks_at, described_at, resynced_at, swept_at = 0, 0.0, 0.0, 0.0, 0.0
        resynced: dict[tuple[str, int], int] = {}
        now_s = time.monotonic
        while True:
            await asyncio.sleep(settings.order_tick)
            if step is None or outbox is None or not merge.groups or not consumer.flow_active:
                continue
            try:
                if (
                    now_s() - swept_at >= 1.0
                ):  # every partition's end: which have data faust does not hand over
                    swept_at = now_s()
                    asked_seq, asked_latest = merge.as_of(now_s(), settings.end_grace)
                    ends = await consumer.highwaters(*(TP(t, p) for t, p in merge.owned()))
                    merge.confirm_ends({(tp.topic, tp.partition): o for tp, o in ends.items()}, asked_seq,
                                       asked_latest)  # fmt: skip
                    for where, offset in merge.stalled(now_s(), settings.order_tick * 100).items():
                        merge.resync.setdefault(where, offset)
                for (topic, partition), offset in list(merge.resync.items()):
                    if resynced.get((topic, partition)) == offset and now_s() - resynced_at < 1.0:
                        continue
                    resynced[(topic, partition)], resynced_at = offset, now_s()
                    tp = TP(topic, partition)
                    start = (await consumer.earliest_offsets(tp)).get(tp, 0)
                    if start > offset:
                        merge.restart_at(topic, partition, start)
                    log.info("hold: %s read again from %s", tp, max(start, offset))
                    await consumer.seek(tp, max(start, offset))
                    merge.resynced(topic, partition, max(start, offset))
                starts = merge.wanted_starts()
                if starts:
                    merge.set_starts(
                        {(tp.topic, tp.partition): o for tp, o in (await consumer.earliest_offsets(
                            *(TP(t, p) for t, p in starts))).items()}
                    )  # fmt: skip
                wanted = merge.wanted_ends()
                if wanted:
                    asked_seq, asked_latest = merge.as_of(now_s(), settings.end_grace)
                    ends = await consumer.highwaters(*(TP(t, p) for t, p in wanted))
                    merge.confirm_ends({(tp.topic, tp.partition): o for tp, o in ends.items()}, asked_seq,
                                       asked_latest)  # fmt: skip
            except Exception as exc:  # the broker busy or gone: the hold waits, at most max_idle
                log.warning("end offsets not read: %r", exc)
            if not consumer.flow_active or not merge.groups:  # a rebalance began meanwhile
                continue
            while apply_released() and consumer.flow_active:
                await asyncio.sleep(0)
            now = time.monotonic()
            if now - watermarks_at >= settings.watermark_interval:
                watermarks_at = now
                if merge.announcements:  # ahead of any watermark past them (costtrace/fleet/merge.py)
                    announce()
                moved = merge.changed_watermarks()
                if moved:
                    value = watermark_message(moved)
                    for receiver in range(settings.partitions):
                        outbox.add(cat.credits, WATERMARK_KEY, value, WATERMARK_HEADERS, receiver)
            metrics.held_events.set(merge.held)
            if merge.held and now - described_at >= 10.0:
                described_at = now
                for line in merge.waiting_for():
                    log.info("hold: %s", line)
                if os.environ.get("COSTTRACE_DEBUG_OFFSETS"):
                    for partition, group in merge.groups.items():
                        for topic, source in group.topics.items():
                            tp = TP(topic, partition)
                            log.info("DEBUG %s next=%s held=%s end=%s %s", tp, source.next_offset,
                                     len(source.held), source.end, describe_fetch(consumer, tp))  # fmt: skip
            if merge.forced != forced:
                metrics.forced_releases.inc(merge.forced - forced)
                forced = merge.forced

    async def take(m: Any) -> None:
        """One fetched message: into the hold, and apply what that lets go (`deliver_directly`)."""
        try:
            merge.add(m.topic, m.partition, m.offset, int(m.timestamp * 1000), m.headers, m, time.monotonic())
            while True:
                more = apply_released(m.partition)
                if outbox is not None and outbox.waiting > MAX_WAITING:
                    await outbox.hand_over()
                if not more:
                    break
                await asyncio.sleep(0)
        except asyncio.CancelledError:  # a rebalance's suspension won the race: the hold keeps the rest
            raise
        except BaseException as exc:
            # the state of an event may be applied with its changelog or outputs not handed
            # over: stop, and let the restart read it again
            stop(exc)
            raise

    deliver_directly(app, set(cat.allocator_sources), take)

    @app.agent(source, name="allocator")
    async def allocate(stream: faust.StreamT[bytes]) -> None:
        """Sets up the step once the app runs; the messages come to `take`, never to this stream."""
        nonlocal outbox, step
        if outbox is None:
            outbox = await open_outbox()
        await read_switch()  # before any event: the timer's first read may come after the first events
        allocator = Allocator(
            store, cat.credits, cat.allocations, cat.dead_letters, archive_topic=cat.archive,
            skips=lambda event_type, occurred_ns: switch.current.skips(event_type, occurred_ns),
            partitions=settings.partitions,
        )  # fmt: skip
        committed = committed_offsets(app.consumer)
        settled_of: dict[int, Committed] = {}
        credit_commits.bind(committed)

        def settled_for(partition: int) -> Committed:
            settled = settled_of.get(partition)
            if settled is None:
                tps = {f"{t}:{partition}": TP(t, partition) for t in cat.allocator_sources}
                settled = settled_of[partition] = Committed(tps, committed, credit_commits)
            return settled

        step = AllocatorStep(
            local, store, allocator, metrics, outbox, changelog, held, settled_for, credit_commits
        )
        fewer_collections()
        async for _ in stream:  # subscribes faust to the topics; nothing ever comes here
            raise AssertionError("the allocator's messages go to the hold directly")

    return app
