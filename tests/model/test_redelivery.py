"""What the model keeps for redelivery: every unsettled position's outputs, and no more."""

from __future__ import annotations

from costtrace.model.allocation import Status, apply_event
from costtrace.model.state import MemoryStore, Position
from tests.model.helpers import consumed, issued


def outputs_held(store: MemoryStore, account: str = "alice") -> int:
    outputs = store.account(account).outputs
    assert isinstance(outputs, dict)
    return len(outputs)


def test_settled_outputs_are_let_go_and_their_slots_reused() -> None:
    store = MemoryStore()
    apply_event(store, issued("b1", 1_000_000), Position("s:0", 0))
    for offset in range(1, 1001):
        # the group commits two events behind the reader
        apply_event(store, consumed(f"o{offset}", 1), Position("s:0", offset), {"s:0": offset - 2})
    assert outputs_held(store) <= 3
    kept = store.account("alice").head.kept
    assert sorted(k.offset for k in kept) == [998, 999, 1000] and {k.slot for k in kept} == {0, 1, 2}
    # the unsettled ones still come back whole on redelivery
    again = apply_event(store, consumed("o999", 1), Position("s:0", 999), {"s:0": 998})
    assert again.status is Status.REDELIVERED
    assert [(r.order_id, r.amount) for r in again.records] == [("o999", -1)]


def test_without_commits_every_position_is_kept() -> None:
    store = MemoryStore()
    apply_event(store, issued("b1", 1_000), Position("s:0", 0))
    for offset in range(1, 101):
        apply_event(store, consumed(f"o{offset}", 1), Position("s:0", offset))
    assert outputs_held(store) == 101
    first = apply_event(store, issued("b1", 1_000), Position("s:0", 0))
    assert first.status is Status.REDELIVERED and [r.amount for r in first.records] == [1_000]


def test_each_source_settles_its_own_positions() -> None:
    store = MemoryStore()
    apply_event(store, issued("b1", 1_000), Position("issued:0", 5))
    apply_event(store, consumed("o1", 1), Position("consumed:0", 5), {"issued:0": 0, "consumed:0": 5})
    # offset 5 of `issued` is not settled: only `consumed` reached 5
    assert sorted((k.source, k.offset) for k in store.account("alice").head.kept) == [
        ("consumed:0", 5),
        ("issued:0", 5),
    ]
    apply_event(store, consumed("o2", 1), Position("consumed:0", 6), {"issued:0": 6, "consumed:0": 6})
    assert [(k.source, k.offset) for k in store.account("alice").head.kept] == [("consumed:0", 6)]
    assert outputs_held(store) == 2  # slot 1 lies unused until the next event takes it
