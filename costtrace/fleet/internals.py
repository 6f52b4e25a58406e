"""Every place costtrace reaches into faust, mode or aiokafka beyond their public API.

faust's guarantees stop short of what the allocator needs (docs/faust.md
says where, from faust's source and seen on the broker); each fix here
replaces or reads an attribute that a release may change without notice. So
they live in this one module, installed by one call per app (`install`),
which first checks that the installed versions are the ones tested
(`TESTED`, pinned in pyproject.toml and constraints.txt).
`TOUCHED` lists every attribute replaced or read, with what it must mean;
tests/fleet/test_internals.py checks each against the installed libraries.
Nothing that does not run faust imports this module (or faust).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final, cast

import faust
from aiokafka.structs import OffsetAndMetadata
from faust.types import TP
from mode.services import WaitResults
from rocksdict import WriteOptions

from costtrace.fleet.fence import MARKER_KEY, Fence, marker_value
from costtrace.fleet.merge import LogMerge

log = logging.getLogger(__name__)

# the versions every touch below was read in and tested with
TESTED: Final = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


class UntestedVersions(RuntimeError):
    """The installed faust, mode or aiokafka is not the version costtrace was tested with."""


def check_versions(installed: Callable[[str], str] | None = None) -> None:
    """Refuse to run on versions other than `TESTED`: the touches below may no longer hold."""

    def installed_version(name: str) -> str:
        try:
            return (installed or version)(name)
        except PackageNotFoundError:
            return "not installed"

    wrong = {name: installed_version(name) for name in TESTED if installed_version(name) != TESTED[name]}
    if wrong:
        found = ", ".join(f"{name} {v} (tested: {TESTED[name]})" for name, v in sorted(wrong.items()))
        raise UntestedVersions(
            f"{found}: costtrace.fleet.internals reaches into these libraries and was tested only with "
            "the versions in constraints.txt; install those (pip install -c constraints.txt)"
        )


@dataclass(frozen=True)
class Touch:
    """One attribute of faust, mode or aiokafka that costtrace replaces or reads, and why."""

    owner: str  # "module:Class" (or "module:function")
    attribute: str
    replaced: bool
    meaning: str


TOUCHED: Final = (
    Touch("faust.worker:Worker", "spinner", True, "None: no spinner, which sets the root logger to DEBUG"),
    Touch("faust.app.base:App", "_new_consumer", True, "makes the app's consumer, once, lazily"),
    Touch("faust.app.base:App", "on_init_dependencies", True, "adds the monitor to app.sensors"),
    Touch("faust.app.base:App", "on_first_start", True,
          "mode's hook, awaited before the app's services (consumer, tables' recovery) start"),
    Touch("faust.app.base:App", "monitor", False, "the Monitor sensor on_init_dependencies adds"),
    Touch("faust.transport.consumer:Consumer", "resume_partitions", True,
          "the only call that resumes stream partitions during recovery"),
    Touch("faust.transport.consumer:Consumer", "perform_seek", True, "seeks every partition to its commit"),
    Touch("faust.transport.consumer:Consumer", "_getmany", True,
          "fetches (active_partitions, timeout) in the consumer thread"),
    Touch("faust.transport.consumer:Consumer", "wait_first", True,
          "how _drain_messages hands each message over (callback, suspend_flow.wait())"),
    Touch("faust.transport.consumer:Consumer", "_new_offset", True, "the offset a commit of tp goes to"),
    Touch("faust.transport.consumer:Consumer", "_filter_tps_with_pending_acks", True,
          "the partitions a commit considers (faust: those with acked messages)"),
    Touch("faust.transport.consumer:Consumer", "_committed_offset", False,
          "tp -> last committed offset, set at assignment and after each commit"),
    Touch("faust.transport.consumer:Consumer", "_acked", False, "tp -> offsets acked, emptied by a commit"),
    Touch("faust.transport.consumer:Consumer", "_acked_index", False, "tp -> the same, as a set"),
    Touch("faust.transport.consumer:Consumer", "_gap", False, "tp -> offsets skipped"),
    Touch("faust.transport.consumer:Consumer", "_read_offset", False, "tp -> last offset handed over"),
    Touch("faust.transport.consumer:Consumer", "_active_partitions", False, "partitions fetched"),
    Touch("faust.transport.consumer:Consumer", "_stopped", False, "set once the consumer stops"),
    Touch("faust.transport.consumer:Consumer", "_crashed", False, "set once the consumer crashes"),
    Touch("faust.transport.drivers.aiokafka:Consumer", "_thread", False, "its consumer thread"),
    Touch("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_create_worker_consumer", True,
          "makes aiokafka's consumer before it starts"),
    Touch("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_consumer", False,
          "aiokafka's consumer, once made"),
    Touch("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "call_thread", False,
          "runs a coroutine on the consumer thread's loop"),
    Touch("faust.transport.drivers.aiokafka:Producer", "_ensure_producer", False,
          "aiokafka's producer, started by faust"),
    Touch("faust.transport.drivers.aiokafka:Producer", "flush", True,
          "awaited by Consumer._commit_offsets before it commits"),
    Touch("faust.stores.rocksdb:Store", "_open_for_partition", True, "opens one partition's DB"),
    Touch("faust.stores.rocksdb:Store", "_db_for_partition", False, "the open DB of a partition"),
    Touch("faust.stores.rocksdb:Store", "_dbs", False, "partition -> open DB"),
    Touch("faust.stores.rocksdb:Store", "apply_changelog_batch", True,
          "recovery's (and standbys') only way to write changelog records into the partition DBs"),
    Touch("faust.app.base:App", "on_rebalance_complete", False,
          "a signal sent once active recovery has ended, before the stream partitions are sought"),
    Touch("faust.tables.manager:TableManager", "on_rebalance", True,
          "awaited at each assignment before recovery reads the changelogs' ends"),
    Touch("faust.assignor.partition_assignor:PartitionAssignor", "assigned_actives", False,
          "the partitions (changelogs included) this member owns in the current generation"),
    Touch("faust.serializers.schemas:Schema", "compile", True, "how a channel decodes a message"),
    Touch("faust.transport.conductor:Conductor", "_build_handler", True,
          "the callback the consumer's fetch loop awaits for each message of a topic partition"),
    Touch("faust.app.base:App", "flow_control", False, "suspended while partitions are being reassigned"),
    Touch("faust.app.base:App", "consumer_generation_id", False, "the group generation now"),
    Touch("aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetch_min_bytes", False,
          "read by start() to build its fetcher"),
    Touch("aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetch_max_wait_ms", False,
          "read by start() to build its fetcher"),
    Touch("aiokafka.consumer.consumer:AIOKafkaConsumer", "commit", True, "commits {tp: OffsetAndMetadata}"),
    Touch("aiokafka.consumer.consumer:AIOKafkaConsumer", "_coordinator", False,
          "its group coordinator (fetch_committed_offsets)"),
    Touch("aiokafka.consumer.consumer:AIOKafkaConsumer", "_subscription", False,
          "its subscription state (debug listing only)"),
)  # fmt: skip


def before_services(app: faust.App, start: Callable[[], Awaitable[Any]]) -> None:
    """Await `start` as the app starts, before any of its services: the consumer, the tables' recovery.

    faust starts an app's tasks (`@app.task`) only once its tables are
    recovered, which after a lost volume takes as long as the changelog is
    big: the health server must answer before that, or a probe kills the pod
    mid-recovery.
    """
    first_start = app.on_first_start

    async def on_first_start() -> None:
        await first_start()
        await start()

    app.on_first_start = on_first_start  # type: ignore[method-assign]


def committed_offsets(consumer: Any) -> dict[TP, int | None]:
    """faust's own record of the group's commits: live, updated at each assignment and commit."""
    return cast(dict[TP, int | None], consumer._committed_offset)


def partition_db(rocks: Any) -> Callable[[int], Any]:
    """faust's RocksDB store's DB of one partition (opened on first use)."""
    return cast(Callable[[int], Any], rocks._db_for_partition)


def open_partitions(rocks: Any) -> Mapping[int, Any]:
    """The partitions whose DB faust's RocksDB store holds open now."""
    return cast(Mapping[int, Any], rocks._dbs)


def kafka_producer(producer: Any) -> Any:
    """aiokafka's producer inside faust's (started by faust)."""
    return producer._ensure_producer()


def flush_after(producer: Any, first: Callable[[], Awaitable[None]]) -> None:
    """faust flushes its producer before it commits offsets (`Consumer._commit_offsets`): run `first` then."""
    flush = producer.flush

    async def flush_after_first() -> None:
        await first()
        await flush()

    producer.flush = flush_after_first


def describe_offsets(consumer: Any, topics: set[str]) -> str:
    """faust's own commit bookkeeping per partition, to diagnose commits that stop (debug only)."""
    client = getattr(consumer._thread, "_consumer", None)  # aiokafka's, in faust's consumer thread
    assignment = client._subscription.subscription.assignment if client is not None else None
    rows = []
    for tp in sorted(consumer.assignment()):
        if tp.topic in topics:
            acked = consumer._acked.get(tp) or []
            span = f"{min(acked)}..{max(acked)}#{len(acked)}" if acked else "-"
            active = "active" if tp in (consumer._active_partitions or ()) else "paused"
            st = assignment.state_value(tp) if assignment is not None else None
            fetch = "-" if st is None else f"{st._status.name}@{st._position} paused={st.paused}"
            rows.append(f"{tp.topic}/{tp.partition} committed={consumer._committed_offset.get(tp)} "
                        f"read={consumer._read_offset.get(tp)} acked={span} {active} {fetch}")  # fmt: skip
    return f"flow={consumer.flow_active} " + " | ".join(rows)


def describe_fetch(consumer: Any, tp: TP) -> str:
    """What faust and aiokafka know of one partition's reading (debug only)."""
    client = consumer._thread._consumer
    subs = client._subscription.subscription.assignment
    st = subs.state_value(tp) if subs is not None else None
    return (
        f"read={consumer._read_offset.get(tp)} active={tp in (consumer._active_partitions or ())} "
        f"paused={None if st is None else st.paused} pos={None if st is None else st._position} "
        f"hw={consumer.highwater(tp)}"
    )


def run_worker(app: faust.App, loglevel: str, **options: Any) -> None:
    """Run a faust app in this process until it stops (faust.Worker), without faust's spinner.

    faust's terminal spinner sets the root logger to DEBUG
    (`Worker._setup_spinner_handler`), so every library's debug call builds a
    log record that is then dropped (measured: docs/performance.md).
    """
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, **options)
    worker.spinner = None
    worker.execute_from_commandline()


FETCH_WAIT = 0.1  # the longest one fetch of faust's waits for records (faust: 1 s)


class ConsumerGuards:
    """Fixes around faust's consumer: three for events read before faust is ready for them, one for speed.

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
    4. Start at once after the seek. faust's fetch waits up to a second for
       records of the partitions active when it began; the stream
       partitions resumed after the seek wait behind it: a second of every
       start and every rebalance (seen in `bench.fleet_bench`). Here a fetch
       waits at most `FETCH_WAIT`.

    The first three seen on the broker (docs/fleet.md, "Effectively once", 7).
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
        # faust waits up to a second for records of the partitions active when it asked, and stream
        # partitions resumed meanwhile (after a start's or a rebalance's seek) wait behind it
        timeout = min(timeout, FETCH_WAIT)
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


def fast_hand_over(consumer: Any) -> None:
    """Hand each fetched message over without four new tasks when nothing waits.

    faust's fetch loop hands every message over with `wait_first(callback(message),
    suspend_flow.wait())` (`Consumer._drain_messages`), and mode's `wait_first`
    makes a task of each, adds two for the service's stopped and crashed
    events, and runs an `asyncio.wait`: a large share of the allocator's CPU
    per event (docs/performance.md), although the callback almost always
    finishes at once (it puts the event on its stream's queue; the
    allocator's `take`, see `deliver_directly`, applies what the hold lets
    go). Here the first coroutine is run up to its first suspension; if it
    finishes there, that is the result `wait_first` would give; if it waits
    (a full stream queue, a hand-over to Kafka, flow control), the rest of it
    goes to mode's `wait_first` with the others, as before, so a rebalance
    still interrupts it. The original path also whenever the consumer is
    stopped, crashed or suspending its flow.
    """
    original: Callable[..., Awaitable[WaitResults]] = consumer.wait_first
    stopped, crashed, suspend_flow = consumer._stopped, consumer._crashed, consumer.suspend_flow

    async def wait_first(*coros: Any, timeout: Any = None) -> WaitResults:
        first = coros[0] if coros else None
        if not isinstance(first, Coroutine) or stopped.is_set() or crashed.is_set() or suspend_flow.is_set():
            return await original(*coros, timeout=timeout)
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
    cost the allocator time for nothing. faust still keeps the offsets
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
        self.sources = sources  # every topic the allocator reads (the credits topic included)
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
        pending = consumer._filter_tps_with_pending_acks

        def with_pending_acks(topics: Any = None) -> Any:
            # faust commits the partitions whose messages were acked; the hold's are never acked
            # (`deliver_directly`): each of them may have a commit point past its last commit
            tps = set(pending(topics))
            for topic, partition in self.merge.owned():
                if topics is None or topic in topics or TP(topic, partition) in topics:
                    tps.add(TP(topic, partition))
            return iter(tps)

        consumer._filter_tps_with_pending_acks = with_pending_acks

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


def _metadata(stashed: tuple[int, str] | None, offset: int) -> str:
    """The order time worked out for exactly this offset; none for another."""
    return stashed[1] if stashed is not None and stashed[0] == offset else ""


def guard_consumer(
    app: faust.App,
    fetch_min_bytes: int = 1,
    fetch_max_wait: float = 0.5,
    hold: Hold | None = None,
) -> None:
    """Wrap the consumer faust creates (lazily, on its own loop) for this app.

    Also sets what faust does not expose: how much a fetch waits for.
    """
    new_consumer = app._new_consumer

    def _new_consumer() -> Any:
        consumer: Any = new_consumer()
        ConsumerGuards(consumer, lambda tp: tp.topic in app.tables.changelog_topics, hold)
        fast_hand_over(consumer)
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


class RawBytes(faust.Schema[bytes, bytes]):
    """Keys and values as Kafka has them, without a codec per message.

    faust's `raw` serializer still looks its codec up in the app's registry
    for the key and again for the value of every message; a schema's `compile` is faust's own place to decode.
    """

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, default_propagate: bool = False, **handlers: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


RAW: dict[str, Any] = {"schema": RawBytes()}


def without_write_ahead_log(rocks: Any) -> None:
    """Open every partition DB of faust's RocksDB store `rocks` with RocksDB's write-ahead log off.

    The log buys nothing here and costs a file write per write batch
    (docs/performance.md). Without it, a process that
    ends without closing a DB loses the writes since the last memtable flush,
    all of them and nothing else: the DB is then a prefix of what was written,
    and faust's persisted offset (written to the same DB, the same way) never
    says more than the data under it, so recovery from the changelog completes
    it. A kill empties the folder anyway (costtrace/fleet/lifecycle.py); a DB whose
    handle is closed (faust drops them at a clean stop) is flushed first.
    """
    open_db = rocks._open_for_partition
    options = WriteOptions()
    options.disable_wal = True  # type: ignore[assignment]  # a property; the stub says a method

    def _open_for_partition(partition: int) -> Any:
        db = open_db(partition)
        db.set_write_options(options)
        return db

    rocks._open_for_partition = _open_for_partition


def deliver_directly(app: faust.App, topics: set[str], handle: Callable[[Any], Awaitable[None]]) -> None:
    """Hand each fetched message of `topics` to `handle`, not to a stream: no event, queue or ack.

    faust's fetch loop awaits one callback per message, which puts an event
    on each subscribed stream's queue, for an agent to take off again; that
    path was most of what the allocator spent on a message besides applying
    it (docs/performance.md). The allocator's hold does all a stream did for
    it (the order, the commit point, the seeks after a gap) and needs only
    the message. As a stream does, a message read while partitions are being
    reassigned, or fetched in a generation before the current one, is left
    out (the hold reads its partition again from where it is).
    """
    conductor: Any = app.topics
    build = conductor._build_handler
    flow_control = app.flow_control

    async def direct(message: Any) -> None:
        if not flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            return
        await handle(message)

    def _build_handler(tp: TP, channels: Any) -> Any:
        return direct if tp.topic in topics else build(tp, channels)

    conductor._build_handler = _build_handler


def install(
    app: faust.App,
    *,
    fetch_min_bytes: int = 1,
    fetch_max_wait: float = 0.5,
    hold: Hold | None = None,
    rocks: Any = None,
    fence: WriterFence | None = None,
) -> None:
    """Every fix of this module on one app, before it starts: the one call the fleet's apps make.

    Checks the installed versions, wraps the consumer faust will create
    (`guard_consumer`), leaves out faust's monitor, and, for the allocator's
    RocksDB store `rocks`, turns RocksDB's write-ahead log off and fences
    its changelog (`fence`).
    """
    check_versions()
    guard_consumer(app, fetch_min_bytes, fetch_max_wait, hold)
    without_monitor(app)
    if rocks is not None:
        without_write_ahead_log(rocks)
    if fence is not None:
        fence.install()


class WriterFence:
    """The changelog fence (costtrace/fleet/fence.py) on faust: markers at assignment, filtered restores.

    - At each assignment, before faust's recovery reads the changelogs'
      ends (`TableManager.on_rebalance`), the member hands its outbox over
      (`before_marking`), takes the new generation for its own changelog
      records (`on_generation`), and writes a marker to each changelog
      partition it now owns, waiting until Kafka has them all.
    - Recovery and standbys write changelog records to RocksDB only through
      `Store.apply_changelog_batch`, which here drops the records the fence
      does not admit (the persisted offset still moves past them).
    - Once the owned partitions are restored (faust's `on_rebalance_complete`,
      sent when active recovery ends and before the streams resume), each
      must end on this member's marker; one that ends on another (the group
      was deleted and numbers its generations from 1 again) gets a forced
      marker (`verify`). Not earlier: faust also seeks while it restores, and
      a marker taken before the records ahead of it would fence them out.
    """

    def __init__(
        self,
        app: faust.App,
        rocks: Any,
        changelog: str,
        before_marking: Callable[[], Awaitable[None]],
        on_generation: Callable[[int], None],
        on_skipped: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.app, self.rocks, self.changelog = app, rocks, changelog
        self.before_marking, self.on_generation, self.on_skipped = before_marking, on_generation, on_skipped
        self.fence = Fence(self._stored)
        self.generation: int | None = None

    def _stored(self, partition: int) -> bytes | None:
        return cast(bytes | None, self.rocks._db_for_partition(partition).get(MARKER_KEY))

    def owned(self) -> list[int]:
        actives = self.app.assignor.assigned_actives()
        return sorted(tp.partition for tp in actives if tp.topic == self.changelog)

    def install(self) -> None:
        tables: Any = self.app.tables
        rebalance = tables.on_rebalance

        async def on_rebalance(
            assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0
        ) -> None:
            self.fence.forget()  # recovery may read the partitions from another place now
            if generation_id == self.app.consumer_generation_id:  # else faust skips this one too
                await self.mark(generation_id)
            await rebalance(assigned, revoked, newly_assigned, generation_id)

        tables.on_rebalance = on_rebalance

        async def restored(sender: Any, **kwargs: Any) -> None:
            await self.verify()

        self.app.on_rebalance_complete.connect(restored)  # type: ignore[arg-type]
        apply = self.rocks.apply_changelog_batch
        set_persisted = self.rocks.set_persisted_offset
        admits = self.fence.admits

        def apply_changelog_batch(batch: Any, to_key: Any, to_value: Any) -> None:
            admitted: list[Any] = []
            ends: dict[TP, int] = {}
            seen = 0
            for event in batch:
                seen += 1
                m = event.message
                ends[m.tp] = m.offset if m.tp not in ends else max(m.offset, ends[m.tp])
                if admits(m.partition, m.key, m.value, m.headers):
                    admitted.append(event)
            skipped = seen - len(admitted)
            apply(admitted, to_key, to_value)
            for tp, offset in ends.items():  # past what was skipped too
                set_persisted(tp, offset)
            if skipped:
                log.warning("restore: %d changelog record(s) of a stale writer skipped", skipped)
                self.on_skipped(skipped)

        self.rocks.apply_changelog_batch = apply_changelog_batch

    async def mark(self, generation: int) -> None:
        """This member's marker on every changelog partition it owns, in Kafka before anything else of its."""
        await self.before_marking()
        self.generation = generation
        self.on_generation(generation)
        partitions = self.owned()
        if partitions:
            await self._send(partitions, marker_value(generation))
            log.info("changelog: generation %d marked on %d partition(s)", generation, len(partitions))

    async def verify(self) -> None:
        if self.generation is None or self.generation != self.app.consumer_generation_id:
            return  # a rebalance began since: its own marks come
        wrong = [p for p in self.owned() if self.fence.current(p) != self.generation]
        if not wrong:
            return
        log.warning(
            "changelog partitions %s end on another generation's marker (%s), not this member's %d "
            "(the consumer group was started over?): forcing this one",
            wrong, [self.fence.current(p) for p in wrong], self.generation,
        )  # fmt: skip
        value = marker_value(self.generation, forced=True)
        await self._send(wrong, value)
        for p in wrong:
            self.rocks._db_for_partition(p).put(MARKER_KEY, value)
            self.fence.set(p, self.generation)

    async def _send(self, partitions: list[int], value: bytes) -> None:
        producer = kafka_producer(self.app.producer)
        sent = [await producer.send(self.changelog, value, key=MARKER_KEY, partition=p) for p in partitions]
        await asyncio.gather(*sent)
