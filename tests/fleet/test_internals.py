"""costtrace.fleet.internals against the installed faust, mode and aiokafka.

Each attribute the module replaces or reads must still exist, and where its
meaning can be read from the library's source, still mean what the fix
relies on. A failure here means: read the library's change before pinning
the new version (constraints.txt, pyproject.toml, `TESTED`).
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from costtrace.fleet import internals
from costtrace.fleet.internals import TESTED, TOUCHED, Touch, UntestedVersions, check_versions

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
    check_versions()  # the environment the tests run in is the one pinned
    with pytest.raises(UntestedVersions, match=r"aiokafka 0\.99\.0 \(tested: 0\.14\.0\)"):
        check_versions(lambda name: "0.99.0" if name == "aiokafka" else TESTED[name])
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


def test_a_topic_decodes_with_its_schemas_compile() -> None:
    from faust.topics import Topic

    assert "self.schema.compile(" in source_of(Topic)


def test_the_stream_queue_wakes_through_wakeup_next_and_drops_pressure_at_its_size() -> None:
    from mode.utils.queues import FlowControlQueue

    assert issubclass(FlowControlQueue, __import__("asyncio").Queue)
    assert "self._wakeup_next(" in source_of(FlowControlQueue)
    assert "pressure_drop_size" in FlowControlQueue.__dict__
    assert "size <= pressure_drop_size" in source_of(FlowControlQueue)  # where a paused partition resumes


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
