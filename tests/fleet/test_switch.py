"""The tracing switch and the historical node's opening balances."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from costtrace.fleet.allocator import Allocator, Message
from costtrace.fleet.switch import Switch, SwitchHolder, encode_switch
from costtrace.model.allocation import Status
from costtrace.model.state import MemoryStore
from costtrace.ops.migrate import canonical_instant, checkpoint_key, opening_events
from tests.model.helpers import consumed, issued

NODE = "2026-03-01T00:00:00Z"


def test_on_with_a_node_skips_what_occurred_at_or_before_it_except_opening_balances() -> None:
    sw = Switch.of(True, NODE)
    node = sw.node_ns
    assert node is not None
    assert sw.skips("consumed", node) and sw.skips("issued", node - 1)
    assert not sw.skips("consumed", node + 1)
    assert not sw.skips("opened", node - 1) and not sw.skips("credit", node - 1)
    off = Switch.of(False, None)
    assert not off.skips("consumed", node + 10**12)  # off holds events (the allocator's hold), never skips
    assert not Switch().skips("refunded", 0)  # not set: everything is traced


def test_the_allocator_skips_by_the_switch_without_touching_state() -> None:
    sw = Switch.of(True, NODE)
    store = MemoryStore()
    allocator = Allocator(store, "credits", "allocations", "dead-letters", skips=sw.skips)
    before = allocator.handle(
        Message("p.issued", 0, 0, b"alice", issued("b0", 5, at="2026-02-28T23:59:59Z"), 1)
    )
    after = allocator.handle(
        Message("p.issued", 0, 1, b"alice", issued("b1", 5, at="2026-03-01T00:00:01Z"), 1)
    )
    assert before.outcome.status is Status.SKIPPED and before.outputs == []
    assert after.outcome.status is Status.APPLIED
    # the skipped batch was never added: a consume of 7 takes 5 from b1 and leaves 2 of debt
    taken = allocator.handle(
        Message("p.consumed", 0, 2, b"alice", consumed("o1", 7, at="2026-03-02T00:00:00Z"), 1)
    )
    assert [(r.batch_id, r.amount) for r in taken.outcome.records] == [("b1", -5), ("SUSPENSE", -2)]


def test_a_retry_is_never_skipped() -> None:
    sw = Switch.of(True, NODE)
    allocator = Allocator(MemoryStore(), "credits", "allocations", "dead-letters", skips=sw.skips)
    retried = allocator.handle(
        Message("p.issued", 0, 0, b"alice", issued("b0", 5, at="2026-02-28T23:59:59Z"), 1, 2, "p.issued:0:7")
    )
    assert retried.outcome.status is Status.APPLIED


def test_a_worker_keeps_the_last_switch_it_read_across_restarts(tmp_path: Path) -> None:
    saved = tmp_path / "state.switch.json"
    first = SwitchHolder(saved)
    assert not first.known and first.current == Switch()
    assert first.update(encode_switch(Switch.of(True, NODE))) is True
    assert first.update(encode_switch(Switch.of(True, NODE))) is False
    restarted = SwitchHolder(saved)  # Redis down at start: goes on with the saved one
    assert restarted.known and restarted.current == Switch.of(True, NODE)
    assert restarted.update(None) is True and restarted.current == Switch()  # key deleted: on


def test_opening_events_are_fixed_by_the_node_and_the_account() -> None:
    events = opening_events(NODE, [("ann", 70), ("bo", 0), ("cy", 5)])
    assert [a for a, _ in events] == ["ann", "cy"]  # nothing to open for a zero balance
    body = msgspec.json.decode(events[0][1])
    assert body == {
        "event_id": f"opening@{NODE}", "type": "opened", "account_id": "ann", "occurred_at": NODE,
        "batch_id": f"opening@{NODE}", "budget_id": "LEGACY", "amount": 70,
    }  # fmt: skip
    assert opening_events(NODE, [("ann", 70), ("bo", 0), ("cy", 5)]) == events
    assert checkpoint_key(NODE, events) == checkpoint_key(NODE, list(events))
    assert checkpoint_key(NODE, events) != checkpoint_key(NODE, events[:1])
    with pytest.raises(ValueError):
        opening_events("yesterday", [("ann", 1)])


def test_a_node_written_three_ways_is_one_node_with_one_opening_per_account() -> None:
    spellings = ["2026-03-01T00:00:00Z", "2026-03-01T00:00:00+00:00", "2026-03-01T01:00:00+01:00"]
    assert {canonical_instant(t) for t in spellings} == {"2026-03-01T00:00:00Z"}
    assert len({tuple(opening_events(t, [("h9", 10)])) for t in spellings}) == 1
    assert canonical_instant("2026-02-28T23:59:59.250-00:30") == "2026-03-01T00:29:59.25Z"
    assert canonical_instant("2026-03-01T00:00:00.000000001Z") == "2026-03-01T00:00:00.000000001Z"
