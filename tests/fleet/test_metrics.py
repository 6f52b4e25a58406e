"""What the workers count and serve: outcomes, lag, health endpoints, accounts held."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rocksdict import Options, Rdict

from costtrace.fleet.allocator import Allocator, Message
from costtrace.fleet.metrics import Health, Metrics, lag_of, serve
from costtrace.fleet.sink import latencies
from costtrace.fleet.state import PartitionTable, TableStore, count_headers
from costtrace.model.state import MemoryStore
from tests.model.helpers import consumed, issued


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.scrape().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def message(value: bytes, offset: int, key: bytes = b"alice") -> Message:
    return Message("in.events", 0, offset, key, value, 1_000)


def test_outcomes_records_and_rejections_are_counted_once() -> None:
    metrics = Metrics()
    allocator = Allocator(MemoryStore(), "credits", "allocations", "dead-letters")
    log = [issued("b1", 5), issued("b2", 5), consumed("o1", 7), consumed("o1", 7), b"{not json"]
    for offset, raw in enumerate(log):
        metrics.count(allocator.handle(message(raw, offset)))
    # the consume read again at its own position (a redelivery after a crash)
    metrics.count(allocator.handle(message(log[2], 2)))

    got = samples(metrics)
    assert got[("costtrace_events_total", (("outcome", "applied"), ("type", "issued")))] == 2
    assert got[("costtrace_events_total", (("outcome", "applied"), ("type", "consumed")))] == 1
    assert got[("costtrace_events_total", (("outcome", "redelivered"), ("type", "consumed")))] == 1
    assert got[("costtrace_events_total", (("outcome", "rejected"), ("type", "invalid")))] == 1
    assert got[("costtrace_records_total", (("kind", "issue"),))] == 2
    assert got[("costtrace_records_total", (("kind", "consume"),))] == 2  # 5 from b1, 2 from b2
    # a second consume of the same order (a new event id) is rejected
    assert got[("costtrace_events_total", (("outcome", "rejected"), ("type", "consumed")))] == 1
    assert got[("costtrace_rejections_total", (("reason", "duplicate_order"),))] == 1
    assert got[("costtrace_rejections_total", (("reason", "invalid_event"),))] == 1
    assert sum(v for (n, _), v in got.items() if n == "costtrace_events_total") == 6


def test_a_record_carries_its_event_time_for_the_end_to_end_latency() -> None:
    allocator = Allocator(MemoryStore(), "credits", "allocations", "dead-letters")
    handled = allocator.handle(message(issued("b1", 5, at="2026-01-01T00:00:01Z"), 0))
    headers = dict(handled.outputs[0].headers)
    assert handled.occurred_ms == 1_767_225_601_000
    assert headers["costtrace-occurred-ms"] == b"1767225601000"

    by_event, by_broker = latencies([handled.outputs[0].headers], now_ms=1_767_225_603_500)
    assert by_event == [2.5]
    assert by_broker == [1_767_225_602.5]  # the test message's broker time is 1 s after the epoch


def test_lag_is_high_watermark_minus_committed_and_unknown_partitions_are_left_out() -> None:
    lag = lag_of({("a", 0): 10, ("a", 1): None, ("b", 0): 7}, {("a", 0): 4, ("b", 0): None})
    assert lag == [("a", 0, 6), ("b", 0, 7)]

    metrics = Metrics()
    metrics.set_lag("g", [("a", 0, 6), ("a", 1, 3)])
    metrics.set_lag("g", [("a", 0, 2)])  # partition 1 went to another worker
    got = {k: v for k, v in samples(metrics).items() if k[0] == "costtrace_consumer_lag_messages"}
    assert got == {
        ("costtrace_consumer_lag_messages", (("group", "g"), ("partition", "0"), ("topic", "a"))): 2
    }


async def test_health_endpoints_say_why_they_fail() -> None:
    metrics = Metrics()
    state: dict[str, str | None] = {"alive": None, "ready": "recovering tables"}
    runner = await serve(metrics, Health(lambda: state["alive"], lambda: state["ready"]), "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def get(path: str) -> tuple[int, str]:
                async with http.get(path) as r:
                    return r.status, await r.text()

            assert await get("/livez") == (200, "ok\n")
            assert await get("/readyz") == (503, "recovering tables\n")
            status, body = await get("/metrics")
            assert status == 200 and "costtrace_worker_ready 0.0" in body
            state["ready"] = None
            state["alive"] = "crashed: boom"
            assert await get("/readyz") == (200, "ok\n")
            assert await get("/livez") == (503, "crashed: boom\n")
            assert "costtrace_worker_ready 1.0" in (await get("/metrics"))[1]
    finally:
        await runner.cleanup()


def test_accounts_held_counts_account_headers_on_rocksdb(tmp_path: Path) -> None:
    db = Rdict(str(tmp_path / "p0"), Options(raw_mode=True))  # as faust opens its partition DBs
    try:
        table = PartitionTable(lambda partition: db)
        table.use(0)
        store = TableStore(table)
        allocator = Allocator(store, "credits", "allocations", "dead-letters")
        log = [issued("b1", 5), consumed("o1", 3), issued("b9", 1, account="bob")]
        for offset, raw in enumerate(log):
            key = b"bob" if b'"bob"' in raw else b"alice"
            allocator.handle(message(raw, offset, key))
        allocator.handle(
            message(consumed("o2", 1, account="carol"), 9, b"carol")
        )  # no stock: debt, still held
        table.flush()  # as the allocator does after each round
        assert store.created == 3
        assert count_headers(db) == 3
    finally:
        db.close()


@pytest.mark.parametrize("bad", [b"", b"\xff\xfe", b'{"type": "issued"}'])
def test_bad_input_is_counted_as_invalid_and_dead_lettered(bad: bytes) -> None:
    metrics = Metrics()
    allocator = Allocator(MemoryStore(), "credits", "allocations", "dead-letters")
    handled = allocator.handle(message(bad, 0))
    metrics.count(handled)
    assert [o.topic for o in handled.outputs] == ["dead-letters"]
    assert samples(metrics)[("costtrace_events_total", (("outcome", "rejected"), ("type", "invalid")))] == 1


def test_a_producers_odd_headers_count_as_a_first_attempt() -> None:
    class Raw:
        topic, partition, offset, key, timestamp = "p.issued", 0, 3, b"alice", 1.0
        value = issued("b1", 5)
        headers = (("costtrace-attempt", b"abc"), ("costtrace-origin", b"\xff"))

    msg = Message.of(Raw())
    assert msg.attempt == 1 and msg.origin is None
    handled = Allocator(MemoryStore(), "credits", "allocations", "dead-letters").handle(msg)
    assert handled.outcome.status.value == "applied"
