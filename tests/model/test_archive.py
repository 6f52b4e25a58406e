"""Archiving in the model: an archived order keeps only its id and amounts; a late refund is refused."""

from __future__ import annotations

from costtrace.model.allocation import Status, apply_archive, apply_event
from costtrace.model.state import Archive, MemoryStore, Position
from tests.model.helpers import consumed, issued, refunded


def test_an_archived_order_refuses_refunds_and_keeps_no_slices() -> None:
    store = MemoryStore()
    for raw in (issued("b1", 100), consumed("o1", 60), consumed("o2", 10)):
        apply_event(store, raw)
    out = apply_archive(store, Archive("alice", ["o1", "o-unknown"]))
    assert out.status is Status.APPLIED and out.records == []
    order = store.account("alice").orders.get("o1")
    assert order is not None and order.archived and order.consumes == [] and order.amount == 60
    late = apply_event(store, refunded("f1", "o1", 5))
    assert late.rejection is not None and late.rejection.reason == "order_archived"
    assert apply_event(store, consumed("o1", 5)).rejection.reason == "duplicate_order"  # type: ignore[union-attr]
    assert apply_event(store, refunded("f2", "o2", 5)).status is Status.APPLIED  # not archived


def test_an_order_with_debt_stays_whole_and_archiving_twice_changes_nothing() -> None:
    store = MemoryStore()
    apply_event(store, consumed("o1", 30))  # all on SUSPENSE
    apply_archive(store, Archive("alice", ["o1"]))
    assert not store.account("alice").orders.get("o1").archived  # type: ignore[union-attr]
    apply_event(store, issued("b1", 50))  # pays the debt: the order is settled now
    apply_archive(store, Archive("alice", ["o1"]))
    once = store.account("alice").orders.get("o1")
    apply_archive(store, Archive("alice", ["o1"]), Position("p.archive:0", 7))
    assert store.account("alice").orders.get("o1") == once
    again = apply_archive(store, Archive("alice", ["o1"]), Position("p.archive:0", 7))  # redelivered
    assert again.status is Status.REDELIVERED
