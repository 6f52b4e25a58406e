"""costtrace.fleet.internals: its fixes around faust's consumer, and the libraries it reaches into.

The fixes: no stream event before its seek, no fetch of paused partitions, no
partition left past records faust dropped, the hand-over of fetched messages
without tasks, the allocator's messages without a stream, commits at the
hold's commit point. The libraries: each
attribute the module replaces or reads must still exist and, where its
meaning can be read from the library's source, still mean what the fix
relies on. A failure there means: read the library's change before pinning
the new version (constraints.txt, pyproject.toml, `TESTED`).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import ANY

import pytest
from aiokafka.structs import OffsetAndMetadata
from faust.types import TP
from mode import Service
from mode.services import WaitResults

from costtrace.fleet import internals
from costtrace.fleet.fence import MARKER_KEY, marker_value, writer_headers
from costtrace.fleet.internals import (
    TESTED,
    TOUCHED,
    ConsumerGuards,
    Hold,
    Touch,
    UntestedVersions,
    WriterFence,
    check_versions,
    fast_hand_over,
)
from costtrace.fleet.merge import LogMerge

STREAM, OTHER, CHANGELOG = TP("p.issued", 0), TP("p.issued", 1), TP("app-state-changelog", 0)


class Consumer:
    """The two calls faust's recovery makes, in its order: resume, then seek."""

    def __init__(self) -> None:
        self.active: set[TP] = set()
        self.calls: list[str] = []
        self.seek_done = asyncio.Event()
        self.assigned = {STREAM, CHANGELOG}
        self._committed_offset: dict[TP, int | None] = {}
        self.positions: dict[TP, int] = {}

    def resume_partitions(self, tps: Any) -> None:
        self.active |= set(tps)
        self.calls.append(f"resume {sorted(tp.topic for tp in tps)}")

    async def perform_seek(self) -> None:
        self.calls.append(f"seek while active={sorted(tp.topic for tp in self.active)}")
        await self.seek_done.wait()

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.positions.update(partitions)

    def assignment(self) -> set[TP]:
        return self.assigned

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        self.fetching, self.timeout = active_partitions, timeout
        await asyncio.sleep(0)
        return {tp: [] for tp in active_partitions}


async def test_stream_partitions_resume_only_after_the_seek() -> None:
    consumer = Consumer()
    ConsumerGuards(consumer, lambda tp: tp.topic.endswith("-changelog"))

    consumer.resume_partitions({STREAM, OTHER, CHANGELOG})
    assert consumer.active == {CHANGELOG}  # changelogs resume at once (recovery reads them)
    seek = asyncio.ensure_future(consumer.perform_seek())
    await asyncio.sleep(0)
    assert consumer.active == {CHANGELOG}, "a stream partition was fetched before its seek"
    consumer.seek_done.set()
    await seek
    # OTHER was revoked meanwhile (not in the assignment): it stays paused
    assert consumer.active == {CHANGELOG, STREAM}
    assert consumer.calls[1] == "seek while active=['app-state-changelog']"


async def test_the_consumer_thread_fetches_a_snapshot_of_the_active_partitions() -> None:
    consumer = Consumer()
    ConsumerGuards(consumer, lambda tp: tp.topic.endswith("-changelog"))
    active = {CHANGELOG}
    fetch = asyncio.ensure_future(consumer._getmany(active_partitions=active, timeout=1.0))
    await asyncio.sleep(0)
    active.discard(CHANGELOG)  # recovery pauses the changelog while the fetch waits
    assert await fetch == {CHANGELOG: []}
    assert consumer.fetching == {CHANGELOG}, "an emptied set reads as every partition in aiokafka"


async def test_a_fetch_waits_briefly_so_partitions_resumed_meanwhile_are_read_at_once() -> None:
    consumer = Consumer()
    ConsumerGuards(consumer, lambda tp: tp.topic.endswith("-changelog"))
    await consumer._getmany(active_partitions={CHANGELOG}, timeout=1.0)  # faust's fetch loop asks 1 s
    assert consumer.timeout == internals.FETCH_WAIT < 1.0


async def test_stream_partitions_the_group_never_committed_are_read_again_from_their_beginning() -> None:
    consumer = Consumer()
    ConsumerGuards(consumer, lambda tp: tp.topic.endswith("-changelog"))
    consumer.assigned = {STREAM, OTHER, CHANGELOG}
    consumer._committed_offset = {STREAM: 7}  # OTHER: never committed; CHANGELOG: recovery's business
    consumer.seek_done.set()
    await consumer.perform_seek()
    assert consumer.positions == {OTHER: 0}


class Fetching(Service):
    """A mode service with a consumer's `suspend_flow`; counts the calls of mode's own `wait_first`."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.slow_paths = 0
        slow = self.wait_first

        async def counted(*coros: Any, timeout: Any = None) -> Any:
            self.slow_paths += 1
            return await slow(*coros, timeout=timeout)

        self.wait_first = counted  # type: ignore[method-assign]
        fast_hand_over(self)


async def test_a_hand_over_that_finishes_at_once_takes_no_task_and_closes_the_flow_wait() -> None:
    consumer = Fetching()

    async def put(value: int) -> int:
        return value * 2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = await consumer.wait_first(put(21), consumer.suspend_flow.wait())
        gc.collect()
    assert got == WaitResults([ANY], [42], False)
    assert consumer.slow_paths == 0
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_a_hand_over_that_waits_goes_on_as_before_and_gives_its_result() -> None:
    consumer = Fetching()
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)  # full: the hand-over waits for room

    async def put(value: int) -> str:
        await queue.put(value)
        await asyncio.sleep(0)  # and suspends once more after its first wait
        return "put"

    waiting = asyncio.ensure_future(consumer.wait_first(put(7), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert queue.get_nowait() == 0
    got = await asyncio.wait_for(waiting, 1)
    assert got.results == ["put"] and not got.stopped
    assert queue.get_nowait() == 7
    assert consumer.slow_paths == 1


async def test_a_waiting_hand_over_is_cancelled_when_the_flow_is_suspended() -> None:
    consumer = Fetching()
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)
    cleaned: list[str] = []

    async def put(value: int) -> None:
        try:
            await queue.put(value)
        finally:
            cleaned.append("finally")

    waiting = asyncio.ensure_future(consumer.wait_first(put(7), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()  # a rebalance starts: faust stops handing over
    got = await asyncio.wait_for(waiting, 1)
    await asyncio.sleep(0)  # the cancelled hand-over runs its cleanup
    assert got.results == [True]  # the flow's wait won
    assert cleaned == ["finally"]
    assert queue.qsize() == 1 and queue.get_nowait() == 0  # the event was not put


async def test_a_failing_hand_over_raises_on_either_path() -> None:
    consumer = Fetching()

    async def fail_at_once() -> None:
        raise ValueError("at once")

    async def fail_later() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("later")

    for coro, message in ((fail_at_once(), "at once"), (fail_later(), "later")):
        try:
            await consumer.wait_first(coro, consumer.suspend_flow.wait())
        except ValueError as exc:
            assert str(exc) == message
        else:
            raise AssertionError("the hand-over's error was lost")
    assert consumer.slow_paths == 1


class CommittedConsumer:
    """What `Hold.start` reads of faust's consumer: the generation, the committed offsets, the log starts."""

    def __init__(self, committed: dict[TP, OffsetAndMetadata], earliest: dict[TP, int]) -> None:
        self.app = SimpleNamespace(consumer_generation_id=2)
        coordinator = SimpleNamespace(
            fetch_committed_offsets=lambda tps: {t: committed[t] for t in tps if t in committed}
        )
        self._thread = SimpleNamespace(
            _consumer=SimpleNamespace(_coordinator=coordinator), call_thread=self.call
        )
        self.earliest = earliest
        self.asked: list[TP] = []

    async def call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.asked += tps
        return {tp: self.earliest[tp] for tp in tps}


async def test_a_partition_never_committed_starts_where_its_log_starts_not_where_a_stale_record_says() -> (
    None
):
    topics = {"p.opened": 0, "p.issued": 1, "p.transferred": 3}
    merge = LogMerge(topics, "p.credits", 1, 3.0)
    hold = Hold(merge, {*topics, "p.credits"})
    credits, issued, opened = TP("p.credits", 0), TP("p.issued", 0), TP("p.opened", 0)
    transferred = TP("p.transferred", 0)
    committed = {opened: OffsetAndMetadata(7, ""), transferred: OffsetAndMetadata(0, "")}
    hold._consumer = CommittedConsumer(committed, {credits: 3, issued: 0})
    await hold.start({credits, issued, opened, transferred})
    assert sorted(hold._consumer.asked) == sorted([credits, issued])  # only the never committed

    # faust hands over a record it fetched before its seek: later than the log's start, so not taken
    stale = SimpleNamespace(key=b"a", value=b"")
    merge.add("p.credits", 0, 128, 0, [], stale)
    merge.add("p.issued", 0, 40, 0, [], stale)
    assert merge.resync == {("p.credits", 0): 3, ("p.issued", 0): 0}
    assert merge.held == 0
    merge.add("p.issued", 0, 0, 0, [], stale)  # read again from the start: taken
    assert merge.held == 1 and ("p.issued", 0) not in merge.resync


class Flow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


async def test_the_allocators_messages_go_to_its_callback_none_of_a_stale_generation_or_stopped_flow() -> (
    None
):
    def stream_handler(tp: TP, channels: Any) -> str:
        return f"stream {tp.topic}"

    conductor = SimpleNamespace(_build_handler=stream_handler)
    app: Any = SimpleNamespace(topics=conductor, flow_control=Flow(), consumer_generation_id=3)
    taken: list[int] = []

    async def take(message: Any) -> None:
        taken.append(message.offset)

    internals.deliver_directly(app, {"p.issued"}, take)
    assert conductor._build_handler(TP("p.other", 0), set()) == "stream p.other"  # others: faust's streams
    direct = conductor._build_handler(TP("p.issued", 0), set())
    await direct(SimpleNamespace(offset=1, generation_id=3))
    await direct(SimpleNamespace(offset=2, generation_id=2))  # fetched before the rebalance: left out
    app.flow_control.active = False  # partitions being reassigned
    await direct(SimpleNamespace(offset=3, generation_id=3))
    app.flow_control.active = True
    await direct(SimpleNamespace(offset=4, generation_id=3))
    assert taken == [1, 4]


def test_a_commit_considers_every_partition_the_hold_owns_though_none_was_acked() -> None:
    topics = {"p.issued": 1, "p.transferred": 3, "p.consumed": 4}
    merge = LogMerge(topics, "p.credits", 2, 3.0)
    merge.assign({(t, p): (0, None) for t in [*topics, "p.credits"] for p in (0, 1)}, 0.0)
    consumer: Any = SimpleNamespace(
        _new_offset=lambda tp: None,
        # acked: another topic's partition
        _filter_tps_with_pending_acks=lambda topics=None: iter([] if topics else [TP("other", 0)]),
    )
    Hold(merge, {*topics, "p.credits"}).attach(consumer)
    every = set(consumer._filter_tps_with_pending_acks())
    assert every == {TP("other", 0), *(TP(t, p) for t, p in merge.owned())}
    assert TP("p.issued", 1) in every and TP("p.credits", 1) in every
    assert set(consumer._filter_tps_with_pending_acks({"p.consumed"})) == {
        TP("p.consumed", 0),
        TP("p.consumed", 1),
    }


REPO = Path(__file__).resolve().parents[2]


def owner_of(touch: Touch) -> Any:
    module, _, name = touch.owner.partition(":")
    return getattr(importlib.import_module(module), name)


def source_of(obj: Any) -> str:
    return inspect.getsource(obj)


def instance_attributes(cls: type) -> set[str]:
    """Attributes a class's methods (or its bases') set on `self`."""
    found: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in {"faust", "mode", "aiokafka", "asyncio"}:
            try:
                found |= set(re.findall(r"self\.(\w+)\s*(?::[^=\n]+)?=[^=]", source_of(klass)))
            except (OSError, TypeError):
                continue
            found |= set(getattr(klass, "__annotations__", {}))
    return found


@pytest.mark.parametrize("touch", TOUCHED, ids=lambda t: f"{t.owner}.{t.attribute}")
def test_every_attribute_touched_still_exists(touch: Touch) -> None:
    cls = owner_of(touch)
    exists = hasattr(cls, touch.attribute) or touch.attribute in instance_attributes(cls)
    assert exists, f"{touch.owner} has no {touch.attribute} ({touch.meaning})"
    if touch.replaced and hasattr(cls, touch.attribute):
        assert callable(getattr(cls, touch.attribute)), f"{touch.attribute} is replaced by a function"


def test_the_installed_versions_are_the_tested_ones_and_others_are_refused() -> None:
    from costtrace.cli.main import unavailable

    check_versions()  # the environment the tests run in is the one pinned
    with pytest.raises(UntestedVersions, match=r"aiokafka 0\.99\.0 \(tested: 0\.14\.0\)") as refused:
        check_versions(lambda name: "0.99.0" if name == "aiokafka" else TESTED[name])
    said = unavailable(refused.value)  # a worker says it in one line, not a traceback
    assert said is not None and said.startswith("aiokafka 0.99.0 (tested: 0.14.0): ") and "\n" not in said
    pins = dict(
        line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line
    )
    pyproject = (REPO / "pyproject.toml").read_text()
    for name, tested in TESTED.items():
        assert pins[name] == tested, name
        assert f'"{name}=={tested}"' in pyproject, name


def method(owner: str, name: str) -> Any:
    return getattr(owner_of(Touch(owner, name, False, "")), name)


CONSUMER = "faust.transport.consumer:Consumer"


def test_messages_are_handed_over_with_wait_first_of_the_callback_and_the_flow() -> None:
    # fast_hand_over runs the first coroutine itself: it must be the callback, the second the flow's wait
    drain = source_of(method(CONSUMER, "_drain_messages"))
    assert re.search(r"self\.wait_first\(\s*callback\(message\),\s*self\.suspend_flow\.wait\(\)", drain)


def test_commits_flush_the_producer_first_and_go_to_new_offset() -> None:
    commit = source_of(method(CONSUMER, "_commit_offsets"))
    assert "self.app.producer.flush()" in commit  # flush_after: the outbox hands over before any commit
    assert list(inspect.signature(method(CONSUMER, "_new_offset")).parameters) == ["self", "tp"]
    assert "_new_offset(" in source_of(owner_of(Touch(CONSUMER, "", False, "")))


def test_recovery_resumes_streams_only_through_resume_partitions_then_seeks() -> None:
    from faust.tables.recovery import Recovery

    for name in ("_resume_streams", "on_recovery_completed"):
        body = source_of(getattr(Recovery, name))
        assert body.index("consumer.resume_partitions(") < body.index("consumer.perform_seek()"), name


def test_the_fetch_takes_active_partitions_and_a_timeout() -> None:
    params = inspect.signature(method("faust.transport.drivers.aiokafka:Consumer", "_getmany")).parameters
    assert {"active_partitions", "timeout"} <= set(params)
    thread = source_of(
        owner_of(Touch("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "", False, ""))
    )
    assert "self._create_worker_consumer(" in thread


def test_aiokafka_reads_the_fetch_settings_at_start() -> None:
    start = source_of(method("aiokafka.consumer.consumer:AIOKafkaConsumer", "start"))
    assert "self._fetch_min_bytes" in start and "self._fetch_max_wait_ms" in start


def test_the_monitor_is_added_as_a_sensor_by_on_init_dependencies() -> None:
    assert "self.sensors.add(self.monitor)" in source_of(method("faust.app.base:App", "on_init_dependencies"))


def test_rocksdb_partitions_open_through_open_for_partition_into_dbs() -> None:
    body = source_of(method("faust.stores.rocksdb:Store", "_db_for_partition"))
    assert "self._dbs[partition] = self._open_for_partition(partition)" in body


def test_changelog_records_reach_rocksdb_only_through_apply_changelog_batch_after_the_marks() -> None:
    from faust.tables.base import Collection
    from faust.tables.recovery import Recovery

    # recovery and standbys write through the table, which hands each batch to its store
    assert "self.data.apply_changelog_batch(" in source_of(Collection.apply_changelog_batch)
    recovery = inspect.getsource(Recovery)
    assert recovery.count("table.apply_changelog_batch(") == 2 and ".data." not in recovery
    # the assignment awaits the tables' rebalance (where WriterFence marks) before anything else of theirs,
    # and recovery reads the changelogs' ends later, in its own task, never in its on_rebalance
    assigned = source_of(method("faust.app.base:App", "_on_partitions_assigned"))
    assert "self.tables.on_rebalance" in assigned
    assert "_build_highwaters" not in source_of(Recovery.on_rebalance)
    restart = recovery[recovery.index("async def _restart_recovery") :]
    assert "_build_highwaters" in restart[: restart.index("\n    async def ", 10)]
    manager = source_of(method("faust.tables.manager:TableManager", "on_rebalance"))
    assert "self.recovery.on_rebalance" in manager
    # verify() runs on on_rebalance_complete: sent once active recovery ended, before the streams are sought
    done = source_of(Recovery.on_recovery_completed)
    assert done.index("on_rebalance_complete.send()") < done.index("consumer.perform_seek()")
    assert recovery.count("on_rebalance_complete.send()") == 2  # and in _resume_streams: no tables at all


def _fenced_store(tmp_path: Path) -> tuple[Any, WriterFence, list[int]]:
    import faust

    app = faust.App("fence-test", store="rocksdb://", datadir=str(tmp_path))
    table = app.Table("state", partitions=2, key_type=bytes, value_type=bytes)
    skipped: list[int] = []
    changelog = "fence-test-state-changelog"
    fence = WriterFence(app, table.data, changelog, _nothing, lambda g: None, skipped.append)
    fence.install()
    return table.data, fence, skipped


async def _nothing() -> None:
    return None


def _changelog_event(partition: int, offset: int, key: bytes, value: bytes, writer: int | None) -> Any:
    tp = TP("fence-test-state-changelog", partition)
    headers = writer_headers(writer)
    return SimpleNamespace(message=SimpleNamespace(tp=tp, partition=partition, offset=offset, key=key,
                                                   value=value, headers=headers))  # fmt: skip


def test_a_restore_into_rocksdb_skips_a_stale_writer_and_keeps_the_marker(tmp_path: Path) -> None:
    rocks, fence, skipped = _fenced_store(tmp_path)
    batch = [
        _changelog_event(0, 0, MARKER_KEY, marker_value(4), None),
        _changelog_event(0, 1, b"h1:a", b"4", 4),
        _changelog_event(1, 0, b"h1:b", b"untouched", 2),  # another partition, no marker yet
        _changelog_event(0, 2, MARKER_KEY, marker_value(6), None),
        _changelog_event(0, 3, b"h1:a", b"6", 6),
        _changelog_event(0, 4, b"h1:a", b"stale", 4),
        _changelog_event(0, 5, MARKER_KEY, marker_value(4), None),  # the stale writer's own late marker
    ]
    rocks.apply_changelog_batch(batch, None, None)
    db0, db1 = rocks._db_for_partition(0), rocks._db_for_partition(1)
    assert db0.get(b"h1:a") == b"6" and db0.get(MARKER_KEY) == b"6"
    assert db1.get(b"h1:b") == b"untouched"
    assert skipped == [2]
    # the persisted offset passes what was skipped: a clean restart does not read it again
    assert rocks.persisted_offset(TP("fence-test-state-changelog", 0)) == 5
    # an incremental restore, after a rebalance, starts from the marker the DB holds
    fence.fence.forget()
    rocks.apply_changelog_batch([_changelog_event(0, 6, b"h1:a", b"stale again", 4)], None, None)
    assert db0.get(b"h1:a") == b"6" and skipped == [2, 1]


def test_a_topic_decodes_with_its_schemas_compile() -> None:
    from faust.topics import Topic

    assert "self.schema.compile(" in source_of(Topic)


def test_each_partitions_callback_comes_from_build_handler_and_commits_go_by_pending_acks() -> None:
    conductor = "faust.transport.conductor:Conductor"
    assert "self._build_handler(tp," in source_of(method(conductor, "_update_callback_map"))
    assert "get_callback_for_tp(message.tp)" in source_of(method(conductor, "_compile_message_handler"))
    assert "self._filter_tps_with_pending_acks(topics)" in source_of(method(CONSUMER, "force_commit"))
    # what a stream leaves out, and so does deliver_directly
    stream = source_of(method("faust.streams:Stream", "_py_aiter"))
    assert "not self.app.flow_control.is_active()" in stream
    assert "message.generation_id != self.app.consumer_generation_id" in stream


def test_the_spinner_is_optional() -> None:
    worker = source_of(owner_of(Touch("faust.worker:Worker", "", False, "")))
    assert "if self.spinner" in worker  # None: faust skips it (and its DEBUG root logger)


FAUST_PRIVATE = re.compile(
    r"(?<!self)\.(_committed_offset|_acked|_acked_index|_gap|_read_offset|_active_partitions|_thread"
    r"|_new_offset|_getmany|_new_consumer|_ensure_producer|_db_for_partition|_dbs|_open_for_partition"
    r"|_wakeup_next|_coordinator|_subscription|_fetch_min_bytes|_fetch_max_wait_ms|_create_worker_consumer)\b"
)


def test_no_other_module_reaches_into_the_libraries() -> None:
    package = REPO / "costtrace"
    elsewhere = {
        f"{path.relative_to(REPO)}:{n}"
        for path in package.rglob("*.py")
        if path != Path(internals.__file__)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FAUST_PRIVATE.search(line)
    }
    assert not elsewhere


def test_nothing_that_does_not_run_faust_imports_it() -> None:
    modules = [
        "costtrace.cli", "costtrace.fleet.sink", "costtrace.fleet.settings", "costtrace.storage.db",
        "costtrace.ops.dlq", "costtrace.ops.reconcile", "costtrace.ops.audit", "costtrace.ops.archive",
        "costtrace.ops.migrate", "costtrace.ops.repartition", "costtrace.ops.topics",
        "costtrace.model.replay", "costtrace.contract.letters",
    ]  # fmt: skip
    code = (
        f"import sys, {', '.join(modules)}; print(sorted(m for m in sys.modules if m in ('faust', 'mode')))"
    )
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, check=True, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_on_first_start_is_awaited_before_the_apps_services_start() -> None:
    from mode.services import Service

    body = source_of(Service._actually_start)
    assert body.index("await self.on_first_start()") < body.index("await child.maybe_start()")
