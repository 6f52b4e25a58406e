"""The historical node's opening events (costtrace migrate), without a broker."""

from __future__ import annotations

import json

import pytest

from costtrace.ops.migrate import opening_events


def test_one_opening_per_positive_balance_at_the_node_in_the_files_order() -> None:
    events = opening_events("2026-03-01T00:00:00+01:00", [("b", 5), ("z", 0), ("a", 7)], budget="OLD")
    assert [account for account, _ in events] == ["b", "a"]
    first = json.loads(events[0][1])
    assert first == {
        "event_id": "opening@2026-02-28T23:00:00Z", "type": "opened", "account_id": "b",
        "occurred_at": "2026-02-28T23:00:00Z", "batch_id": "opening@2026-02-28T23:00:00Z", "budget_id": "OLD",
        "amount": 5,
    }  # fmt: skip


def test_a_negative_balance_is_refused_since_an_opening_cannot_carry_debt() -> None:
    with pytest.raises(ValueError, match=r"^2 account\(s\) have a negative balance at T"):
        opening_events("2026-03-01T00:00:00Z", [("a", -1), ("b", 3), ("c", -2)])


def test_the_node_must_be_an_instant() -> None:
    with pytest.raises(ValueError):
        opening_events("yesterday", [("a", 1)])
