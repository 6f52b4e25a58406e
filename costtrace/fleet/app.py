"""The faust apps: the allocator (the model on RocksDB) and the PostgreSQL sink.

Run with `costtrace worker --role allocator|sink`. Both apps use faust's
at-least-once processing; docs/fleet.md says why `exactly_once` is not used
and how the allocator makes delivery effectively once.

The allocator does not let faust send its table's changelog. faust queues
table writes in a producer buffer whose flush gives up after 0.1 s with
messages still queued (`ProducerBuffer.flush_atmost`), and commits offsets
after that flush: an offset could be committed before its state or records
left the process. Instead, for each event the agent (1) puts the state into
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
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

import faust
import msgspec
import redis.asyncio as aioredis
from aiokafka.structs import OffsetAndMetadata
from faust.types import TP
from mode.services import WaitResults
from redis.exceptions import RedisError

from costtrace._native import partition_for
from costtrace.contract.topics import Catalogue, catalogue
from costtrace.fleet.allocator import Allocator, Message, StopOnSendError
from costtrace.fleet.merge import (
    ANNOUNCE_HEADER,
    WATERMARK_HEADER,
    LogMerge,
    announcement_message,
    watermark_message,
)
from costtrace.fleet.metrics import Health, Metrics, lag_of, serve
from costtrace.fleet.outbox import Outbox, fits_one_batch
from costtrace.fleet.settings import Settings
from costtrace.fleet.state import AccountsHeld, PartitionTable, TableStore, without_write_ahead_log
from costtrace.fleet.switch import SwitchHolder, switch_key
from costtrace.model.order import RANK, OrderKey
from costtrace.model.state import Settled

log = logging.getLogger(__name__)


def run_worker(app: faust.App, loglevel: str, **options: Any) -> None:
    """Run a faust app in this process until it stops (faust.Worker), without faust's spinner.

    faust's terminal spinner sets the root logger to DEBUG
    (`Worker._setup_spinner_handler`), so every library's debug call builds a
    log record that is then dropped: a tenth of the allocator's time (py-spy).
    """
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, **options)
    worker.spinner = None
    worker.execute_from_commandline()


def fleet_catalogue(settings: Settings) -> Catalogue:
    return catalogue(settings.topic_prefix, settings.partitions, settings.app_id, len(settings.retry_delays))


def _base_config(settings: Settings, app_id: str) -> dict[str, Any]:
    return {
        "id": app_id,
        "broker": [f"kafka://{b}" for b in settings.kafka_bootstrap.split(",")],
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


class ConsumerGuards:
    """Three fixes around faust's consumer, each for events read before faust is ready for them.

    1. Seek before streaming. faust's recovery resumes the stream partitions
       and *then* awaits `perform_seek` (`Recovery.on_recovery_completed`,
       `_resume_streams`). Events handled in between are acked and taken out
       of faust's ack list by a commit; the seek then puts back the committed
       offset it read before, and the partition, whose lowest acked offset is
       now far above it, never commits again. Here the resume of stream
       partitions waits for the seek (those two calls are the only places
       faust resumes them).
    2. Fetch only active partitions. faust hands its *live* set of active
       partitions to the consumer thread, and aiokafka's `fetched_records`
       reads an empty set as "every partition". When recovery pauses the
       changelogs while a fetch waits, the set empties, records of paused
       stream partitions come back, and faust drops them (not active) after
       aiokafka counted them consumed. A partition with a committed offset is
       sought back later; one that was never committed lost those events for
       good. Here the consumer thread gets a snapshot of the set.
    3. Rewind partitions the group never committed. faust drops records it
       has fetched when a rebalance starts while it hands them out (flow
       stopped, generation changed) and counts on its seek to the committed
       offsets to read them again; aiokafka's `seek_to_committed` leaves a
       partition without a committed offset where it is, past the dropped
       records, which are then never applied and never committed: the
       partition stalls. Here every such stream partition is sought to its
       beginning after faust's seek (the consumer's `earliest` reset; what
       was applied already comes back as redelivered).

    All three seen on the broker (docs/fleet.md, "Effectively once", 7).
    """

    def __init__(self, consumer: Any, is_changelog: Callable[[TP], bool], hold: Hold | None = None) -> None:
        self._consumer = consumer
        self._is_changelog = is_changelog
        self._hold = hold
        self._resume = consumer.resume_partitions
        self._seek = consumer.perform_seek
        self._fetch = consumer._getmany
        self.deferred: set[TP] = set()
        consumer.resume_partitions = self.resume_partitions
        consumer.perform_seek = self.perform_seek
        consumer._getmany = self.getmany

    def resume_partitions(self, tps: Any) -> None:
        tps = set(tps)
        streams = {tp for tp in tps if not self._is_changelog(tp)}
        self.deferred |= streams
        if tps - streams:
            self._resume(tps - streams)
        if streams:
            log.info("resume of %d stream partition(s) held until they are sought", len(streams))

    async def perform_seek(self) -> None:
        try:
            await self._seek()
            await self._rewind_never_committed()
            if self._hold is not None:  # before any stream partition resumes
                await self._hold.start(self._consumer.assignment())
        finally:
            assigned = self._consumer.assignment()
            deferred, self.deferred = self.deferred & assigned, set()
            if deferred:
                self._resume(deferred)
            log.info("sought; resumed %d stream partition(s) of %d assigned", len(deferred), len(assigned))

    async def _rewind_never_committed(self) -> None:
        committed = self._consumer._committed_offset  # faust's: None for no offset, and for 0
        rewind = [
            tp for tp in self._consumer.assignment() if not self._is_changelog(tp) and not committed.get(tp)
        ]
        if rewind:
            # in faust's consumer thread; below the log start, aiokafka resets to it (earliest)
            await self._consumer.seek_wait(dict.fromkeys(rewind, 0))
            log.info("rewound %d stream partition(s) without a committed offset", len(rewind))

    async def getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        # faust calls this only with a non-empty set (or None for client-only apps)
        snapshot = frozenset(active_partitions) if active_partitions is not None else None
        if snapshot is not None and self._hold is not None:
            crowded = self._hold.crowded()
            if crowded:
                # the hold has plenty of these: fetch the others (an empty set would mean every partition)
                snapshot = snapshot - crowded
                if not snapshot:
                    await asyncio.sleep(min(timeout, 0.05))
                    return {}
        return await self._fetch(active_partitions=snapshot, timeout=timeout)


class _Rest:
    """The rest of a coroutine that has already run up to its first suspension, as an awaitable.

    Passes what the coroutine yielded (the future it waits for) up to the task
    that awaits this, and what the task sends or throws back down, as
    `yield from` would.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _rest(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _Rest(coro, yielded)


class StreamRoom:
    """Whether a stream's queue is full, and a wait until it has drained to its drop mark.

    faust's stream iterator yields to the event loop after every event, so in
    a backlog the fetch loop runs between any two events: it fills the one
    slot just freed and finds the queue full at the next message, whose
    hand-over then suspends (a task and an `asyncio.wait` in faust's
    `on_message`, four more tasks in mode's `wait_first`). Seen on the broker:
    a sixth of all messages took that path, and it cost the allocator about a
    fifth of its CPU. With the room in `fast_hand_over`, the fetch loop waits
    once while the queue is full, until the agent has taken it down to its
    pressure-drop size (mode's: 40%, where faust also fetches a paused
    partition again), then hands over the next thousands on the fast path.
    """

    def __init__(self) -> None:
        self._queue: Any = None
        self._low = 0
        self._drained: asyncio.Future[None] | None = None

    def watch(self, queue: Any) -> None:
        """The stream's queue (a mode `FlowControlQueue`); once, before the stream is iterated."""
        if queue is self._queue:
            return
        self._queue, self._low = queue, queue.pressure_drop_size
        wake = queue._wakeup_next  # asyncio.Queue calls it after every get and put

        def _wakeup_next(waiters: Any) -> None:
            wake(waiters)
            drained = self._drained
            if drained is not None and not drained.done() and queue.qsize() <= self._low:
                drained.set_result(None)

        queue._wakeup_next = _wakeup_next

    def full(self) -> bool:
        return self._queue is not None and bool(self._queue.full())

    async def drained(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()
        await self._drained


def fast_hand_over(consumer: Any, room: StreamRoom | None = None) -> None:
    """Hand each fetched message to the streams without four new tasks when nothing waits.

    faust's fetch loop hands every message over with `wait_first(callback(message),
    suspend_flow.wait())` (`Consumer._drain_messages`), and mode's `wait_first`
    makes a task of each, adds two for the service's stopped and crashed
    events, and runs an `asyncio.wait`: about a third of the allocator's CPU
    per event, although the callback almost always finishes at once (it puts the event
    on its stream's queue). Here the first coroutine is run up to its first
    suspension; if it finishes there, that is the result `wait_first` would
    give; if it waits (a full stream queue, flow control), the rest of it
    goes to mode's `wait_first` with the others, as before. The original path
    also whenever the consumer is stopped, crashed or suspending its flow.

    With a `room` (see `StreamRoom`), a message that finds the stream's queue
    full first waits, with mode's `wait_first` racing the flow's suspension
    as for the callback, until the queue has drained; if the flow is
    suspended meanwhile, the callback is dropped unrun, as mode drops it when
    the suspension wins (faust seeks back to the committed offsets after).
    """
    original: Callable[..., Awaitable[WaitResults]] = consumer.wait_first
    stopped, crashed, suspend_flow = consumer._stopped, consumer._crashed, consumer.suspend_flow

    async def wait_first(*coros: Any, timeout: Any = None) -> WaitResults:
        first = coros[0] if coros else None
        if not isinstance(first, Coroutine) or stopped.is_set() or crashed.is_set() or suspend_flow.is_set():
            return await original(*coros, timeout=timeout)
        if room is not None and room.full():
            drained = room.drained()
            waited = await original(drained, *coros[1:], timeout=timeout)
            if drained not in waited.done or suspend_flow.is_set() or stopped.is_set() or crashed.is_set():
                first.close()
                return waited
            coros = (first, suspend_flow.wait())  # the others were used up waiting
        try:
            yielded = first.send(None)
        except StopIteration as stop:
            _close(coros[1:])
            if stopped.is_set() or crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([first], [stop.value], False)
        except BaseException:
            _close(coros[1:])
            raise
        return await original(_rest(first, yielded), *coros[1:], timeout=timeout)

    consumer.wait_first = wait_first


def _close(others: tuple[Any, ...]) -> None:
    for other in others:
        if isinstance(other, Coroutine):
            other.close()  # never started: closed, it is not reported as never awaited


def without_monitor(app: faust.App) -> None:
    """Leave out faust's `Monitor` sensor, whose per-message statistics nobody reads here.

    Our metrics are our own (costtrace/fleet/metrics.py) and faust's web views are
    off; the monitor's calls for every message in, event in and out, and ack
    were about 4% of the allocator's time. faust still keeps the offsets
    and commits it tracks through it (it calls the monitor directly there).
    """
    init_dependencies = app.on_init_dependencies

    def on_init_dependencies() -> Any:
        dependencies = init_dependencies()
        app.sensors.remove(app.monitor)  # added by faust's own on_init_dependencies
        return dependencies

    app.on_init_dependencies = on_init_dependencies  # type: ignore[method-assign]


class Hold:
    """The allocator's hold (`costtrace.fleet.merge.LogMerge`) wired into faust's consumer.

    faust commits, per topic partition, the offset after the last message its
    agent took; the hold takes messages long before it applies them. So:
    - **Commits go to the hold's commit point** (`Consumer._new_offset`):
      the first message not yet applied, never past it, nor past one faust
      dropped before handing it over (the hold takes each partition's offsets
      only in sequence, and seeks the partition again where faust skipped:
      `LogMerge.resync`). faust's own lists of acked offsets and gaps are
      emptied each time (the hold knows more).
    - **Each commit carries its partition's order time** as the offset's
      metadata, so that whoever reads on from there gives every record the
      same `OrderKey` (as Kafka Streams keeps partition time). The value is
      the one worked out with the offset, in the event loop; faust's consumer
      thread only attaches it.
    - **After every seek the hold starts over** from the committed offsets and
      their metadata (faust reads every partition again from its commit after
      each rebalance, and drops what it had fetched); a partition never
      committed starts at its log's start, asked of the broker before any
      message is taken, since faust can still hand over a record it fetched
      before the seek, which must not pass for the start.
    - **A partition the hold has plenty of is not fetched** (`crowded`) until
      the others have caught up, as Kafka Streams pauses a full partition
      buffer.
    """

    def __init__(self, merge: LogMerge, sources: set[str]) -> None:
        self.merge = merge
        self.sources = sources  # every topic the agent reads (the credits topic included)
        self._consumer: Any = None
        self._commit_metadata: dict[TP, tuple[int, str]] = {}
        self._generation: int | None = None

    def attach(self, consumer: Any) -> None:
        self._consumer = consumer
        original = consumer._new_offset

        def new_offset(tp: TP) -> int | None:
            if tp.topic not in self.sources:
                return cast(int | None, original(tp))
            consumer._acked[tp].clear()
            consumer._acked_index[tp].clear()
            consumer._gap.pop(tp, None)
            point = self.merge.commit_point(tp.topic, tp.partition)
            committed = consumer._committed_offset.get(tp)
            if point is None or (committed is not None and point <= committed):
                return None
            self._commit_metadata[tp] = (point, self.merge.order_metadata(tp.topic, tp.partition))
            return point

        consumer._new_offset = new_offset

    def attach_client(self, client: Any) -> None:
        """aiokafka's consumer, in faust's consumer thread: its commits carry the order time."""
        commit = client.commit
        metadata = self._commit_metadata

        async def commit_with_order_time(offsets: Any = None) -> Any:
            if offsets:
                offsets = {
                    tp: OffsetAndMetadata(o.offset, _metadata(metadata.get(TP(*tp)), o.offset))
                    for tp, o in offsets.items()
                }
            return await commit(offsets)

        client.commit = commit_with_order_time

    async def start(self, assigned: set[TP]) -> None:
        """The partitions faust has just sought to their commits: the hold starts over on them.

        faust may seek again within one generation (its recovery seeks twice),
        while the streams already run: the hold then keeps what it has, and
        drops what faust reads again below where each partition is.
        """
        consumer = self._consumer
        tps = [tp for tp in assigned if tp.topic in self.sources]
        generation = consumer.app.consumer_generation_id
        if generation == self._generation and {tp.partition for tp in tps} == set(self.merge.groups):
            return
        self._generation = generation
        thread = consumer._thread
        committed: dict[Any, Any] = {}
        if tps:
            client = thread._consumer  # aiokafka's, in faust's consumer thread
            committed = await thread.call_thread(client._coordinator.fetch_committed_offsets, tps)
        # never committed: from the log's start, known before any message is taken (faust can hand over
        # records it fetched before its seek; the first to come must not pass for the start)
        never = [tp for tp in tps if committed.get(tp) is None]
        starts: dict[Any, int] = dict(await consumer.earliest_offsets(*never)) if never else {}
        positions: dict[tuple[str, int], tuple[int | None, str | None]] = {}
        for tp in tps:
            done = committed.get(tp)
            where = (tp.topic, tp.partition)
            positions[where] = (starts.get(tp), None) if done is None else (done.offset, done.metadata)
        self.merge.assign(positions, time.monotonic())
        self._commit_metadata.clear()
        log.info("hold: %d partition(s) from their commits", len(self.merge.groups))

    def crowded(self) -> frozenset[TP]:
        return frozenset(TP(t, p) for t, p in self.merge.crowded())


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


def _metadata(stashed: tuple[int, str] | None, offset: int) -> str:
    """The order time worked out for exactly this offset; none for another."""
    return stashed[1] if stashed is not None and stashed[0] == offset else ""


def guard_consumer(
    app: faust.App,
    fetch_min_bytes: int = 1,
    fetch_max_wait: float = 0.5,
    room: StreamRoom | None = None,
    hold: Hold | None = None,
) -> None:
    """Wrap the consumer faust creates (lazily, on its own loop) for this app.

    Also sets what faust does not expose: how much a fetch waits for.
    """
    new_consumer = app._new_consumer

    def _new_consumer() -> Any:
        consumer: Any = new_consumer()
        ConsumerGuards(consumer, lambda tp: tp.topic in app.tables.changelog_topics, hold)
        fast_hand_over(consumer, room)
        if hold is not None:
            hold.attach(consumer)
        thread = consumer._thread
        create = thread._create_worker_consumer

        def create_worker_consumer(transport: Any) -> Any:
            client = create(transport)
            client._fetch_min_bytes = fetch_min_bytes  # read by AIOKafkaConsumer.start
            client._fetch_max_wait_ms = int(fetch_max_wait * 1000)
            if hold is not None:
                hold.attach_client(client)
            return client

        thread._create_worker_consumer = create_worker_consumer
        return consumer

    app._new_consumer = _new_consumer  # type: ignore[method-assign]


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
        return "rebalancing" if app.rebalancing else ready()

    async def _assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        metrics.rebalances.labels(group).inc()
        joined.set()

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]

    @app.task  # type: ignore[untyped-decorator]
    async def _serve() -> None:
        await serve(metrics, Health(alive, ready_once_joined), settings.http_host, settings.http_port)

    if os.environ.get("COSTTRACE_DEBUG_OFFSETS"):

        @app.timer(2.0)  # type: ignore[untyped-decorator]
        async def _bookkeeping() -> None:
            """faust's own commit bookkeeping per partition, to diagnose commits that stop."""
            c: Any = app.consumer
            client = getattr(c._thread, "_consumer", None)  # aiokafka's consumer, in faust's consumer thread
            assignment = client._subscription.subscription.assignment if client is not None else None
            rows = []
            for tp in sorted(c.assignment()):
                if tp.topic in topics:
                    acked = c._acked.get(tp) or []
                    span = f"{min(acked)}..{max(acked)}#{len(acked)}" if acked else "-"
                    active = "active" if tp in (c._active_partitions or ()) else "paused"
                    st = assignment.state_value(tp) if assignment is not None else None
                    fetch = "-" if st is None else f"{st._status.name}@{st._position} paused={st.paused}"
                    rows.append(f"{tp.topic}/{tp.partition} committed={c._committed_offset.get(tp)} "
                                f"read={c._read_offset.get(tp)} acked={span} {active} {fetch}")  # fmt: skip
            log.warning("OFFSETS flow=%s %s", c.flow_active, " | ".join(rows))

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def _lag() -> None:
        consumer: Any = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in topics]
        high = {(tp.topic, tp.partition): consumer.highwater(tp) for tp in tps}
        # faust's own record of this member's committed offsets (set at assignment and at each commit)
        done = {(tp.topic, tp.partition): consumer._committed_offset.get(tp) for tp in tps}
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
# watermark messages on the credits topic (costtrace/fleet/merge.py)
WATERMARK_KEY = b""
WATERMARK_HEADERS = [(WATERMARK_HEADER, b"1")]
ANNOUNCEMENT_HEADERS = [(ANNOUNCE_HEADER, b"1")]


class AllocatorStep:
    """What the allocator's agent does with each message (`bench.allocator_bench` runs it without faust).

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


class RawBytes(faust.Schema[bytes, bytes]):
    """Keys and values as Kafka has them, without a codec per message.

    faust's `raw` serializer still looks its codec up in the app's registry
    for the key and again for the value of every message (about a twentieth
    of an agent's time); a schema's `compile` is faust's own place to decode.
    """

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, default_propagate: bool = False, **handlers: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


RAW: dict[str, Any] = {"schema": RawBytes()}

# the collector's thresholds for an allocator (Python's: 700, 10, 10)
GC_THRESHOLDS = (10_000, 20, 50)


def fewer_collections() -> None:
    """Collect garbage less often in an allocator that holds many events.

    The hold keeps every event it has read and not applied, tens of thousands
    under a backlog, and each full collection walks all of them: with
    Python's thresholds, collections took about a tenth of the allocator's
    CPU on the fleet benchmark's backlog (gc.callbacks; a fiftieth with
    these). What exists once the worker runs (modules, faust's app) is never
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
    room = StreamRoom()
    ranks = {cat.input_for(kind): rank for kind, rank in RANK.items() if kind != "archive"}
    merge = LogMerge(
        {**ranks, cat.archive: RANK["archive"]}, cat.credits, settings.partitions, settings.max_idle,
        settings.hold_limit, lambda m: credit_destination(m.value, settings.partitions),
    )  # fmt: skip
    hold = Hold(merge, set(cat.allocator_sources))
    credit_commits = CreditCommits(cat.credits)
    guard_consumer(app, settings.fetch_min_bytes, settings.fetch_max_wait, room, hold)
    without_monitor(app)
    changelog = table.changelog_topic.get_topic_name()
    source = app.topic(*cat.allocator_sources, **RAW)
    rocks: Any = table.data  # faust's RocksDB store: one DB per partition
    without_write_ahead_log(rocks)
    local = PartitionTable(rocks._db_for_partition)
    batch_bytes = settings.producer_batch_bytes
    # an event's writes that fit one record batch go to the changelog in one (Outbox.add_together)
    store = TableStore(local, together=lambda size, records: fits_one_batch(size, records, batch_bytes))
    stop = StopOnSendError()
    persisted: dict[int, int] = {}  # partition -> last changelog offset delivered
    kept: dict[int, int] = {}  # partition -> last offset written as faust's persisted offset

    def ready() -> str | None:
        tables: Any = app.tables
        if app.in_recovery or not tables.recovery.completed.is_set():
            return "recovering tables"
        return None

    metrics = observe(app, settings, "allocator", settings.app_id, set(cat.allocator_sources), ready)
    held = AccountsHeld(rocks)
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

    outbox: Outbox | None = None

    async def open_outbox() -> Outbox:
        """Once the producer runs: its batches, and faust's commits wait for them."""
        producer: Any = app.producer
        box = Outbox(producer._ensure_producer(), changelog, stop, on_changelog, batch_bytes)
        await box.learn([cat.allocations, cat.credits, cat.dead_letters])
        flush = producer.flush

        async def flush_after_hand_over() -> None:
            # faust flushes its producer before it commits offsets (Consumer._commit_offsets)
            await box.hand_over()
            await flush()

        producer.flush = flush_after_hand_over
        return box

    @app.task  # type: ignore[untyped-decorator]
    async def _linger() -> None:
        while True:
            await asyncio.sleep(settings.producer_linger)
            if outbox is not None and outbox.waiting:
                await outbox.hand_over()

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def _keep_persisted() -> None:
        """Lets a clean restart resume recovery here, not at offset 0 (a RocksDB write: once a second)."""
        open_dbs = rocks._dbs  # never reopen a revoked partition's DB: faust may still hold it
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

    def apply_released(partition: int | None = None) -> None:
        """Apply what the hold lets go (one partition's, or all), in the log order."""
        if step is None:
            return
        released = merge.release(time.monotonic(), partition)
        if released and merge.announcements:  # a transfer's credit goes after its announcement
            announce()
        for held_message in released:
            step(held_message.message, held_message.key, held_message.late)

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
                    asked_seq, asked_latest = merge.seq, merge.latest
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
                    asked_seq, asked_latest = merge.seq, merge.latest
                    ends = await consumer.highwaters(*(TP(t, p) for t, p in wanted))
                    merge.confirm_ends({(tp.topic, tp.partition): o for tp, o in ends.items()}, asked_seq,
                                       asked_latest)  # fmt: skip
            except Exception as exc:  # the broker busy or gone: the hold waits, at most max_idle
                log.warning("end offsets not read: %r", exc)
            if not consumer.flow_active or not merge.groups:  # a rebalance began meanwhile
                continue
            apply_released()
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
                    client = consumer._thread._consumer
                    subs = client._subscription.subscription.assignment
                    for partition, group in merge.groups.items():
                        for topic, source in group.topics.items():
                            tp = TP(topic, partition)
                            st = subs.state_value(tp) if subs is not None else None
                            log.info(
                                "DEBUG %s next=%s held=%s end=%s read=%s active=%s paused=%s pos=%s hw=%s",
                                tp, source.next_offset, len(source.held), source.end,
                                consumer._read_offset.get(tp), tp in (consumer._active_partitions or ()),
                                None if st is None else st.paused, None if st is None else st._position,
                                consumer.highwater(tp),
                            )  # fmt: skip
            if merge.forced != forced:
                metrics.forced_releases.inc(merge.forced - forced)
                forced = merge.forced

    @app.agent(source, name="allocator")
    async def allocate(stream: faust.StreamT[bytes]) -> None:
        nonlocal outbox, step
        if outbox is None:
            outbox = await open_outbox()
        await read_switch()  # before any event: the timer's first read may come after the first events
        allocator = Allocator(
            store, cat.credits, cat.allocations, cat.dead_letters, archive_topic=cat.archive,
            skips=lambda event_type, occurred_ns: switch.current.skips(event_type, occurred_ns),
            partitions=settings.partitions,
        )  # fmt: skip
        consumer: Any = app.consumer
        committed = consumer._committed_offset
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
        room.watch(stream.channel.queue)  # type: ignore[attr-defined]  # a faust Topic, typed as an iterator
        fewer_collections()
        async for event in stream.events():
            try:
                m = event.message
                merge.add(
                    m.topic, m.partition, m.offset, int(m.timestamp * 1000), m.headers, m, time.monotonic()
                )
                apply_released(m.partition)
                if outbox.waiting > MAX_WAITING:
                    await outbox.hand_over()
            except BaseException as exc:
                # faust acks the event after an exception in the agent, whose state
                # may be applied with its changelog or outputs not handed over: stop
                # instead, and let the restart read it again
                stop(exc)
                raise

    return app
