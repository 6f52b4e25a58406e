"""Archiving on the real stack: settled orders leave the hot table in checked chunks, every view and
export stays the same, and the account's state refuses a late refund of an archived order."""

from __future__ import annotations

from datetime import UTC, datetime

from costtrace.fleet.state import account_of_key
from tests.integration.fleet import Fleet, by_account, replay
from tests.integration.test_compensation import event, query
from tests.integration.test_switch import run


def test_archived_orders_leave_the_hot_table_and_their_state(fleet: Fleet) -> None:
    log = [
        event(event_id="i1", type="issued", account_id="ann", batch_id="b1", budget_id="B1", amount=100),
        event(event_id="c1", type="consumed", account_id="ann", order_id="o1", amount=60),
        event(event_id="i2", type="issued", account_id="cy", batch_id="b2", budget_id="B2", amount=30),
        event(event_id="c3", type="consumed", account_id="cy", order_id="o3", amount=30),  # spends b2 fully
        event(event_id="c2", type="consumed", account_id="bo", order_id="o9", amount=25),  # all debt: kept
    ]
    refund = event(event_id="r1", type="refunded", account_id="ann", refund_id="f1", order_id="o1", amount=10)
    fleet.start("allocator", "allocator", fleet.tmp / "state")
    fleet.start("sink", "sink")
    for line in [*log, refund]:
        fleet.publish([line])
        fleet.drain()
    expected, _ = replay([*log, refund])
    stock_before = query(fleet, "SELECT * FROM stock ORDER BY account_id, batch_id")
    debt_before = query(fleet, "SELECT * FROM debt")
    hot_before = query(fleet, "SELECT count(*) AS n FROM records")[0]["n"]

    out = run(fleet, "archive", "--before", "2999-01-01", "--chunk", "1")
    # o1 (its consume and refund), o3 (its consume), then b2, spent: its issue record
    assert "archived 2 order(s), 4 record(s); told 2 account(s)' state" in out
    assert query(fleet, "SELECT count(*) AS n FROM records")[0]["n"] == hot_before - 4
    assert query(fleet, "SELECT order_id, records, amount FROM archived_orders ORDER BY 1") == [
        {"order_id": "o1", "records": 2, "amount": -50},
        {"order_id": "o3", "records": 1, "amount": -30},
    ]
    assert query(fleet, "SELECT kind FROM records WHERE account_id = 'cy'") == []
    assert query(fleet, "SELECT kind FROM records WHERE account_id = 'ann' ORDER BY kind") == [
        {"kind": "issue"}
    ]
    assert by_account(fleet.export()) == expected  # exports read both tables
    assert query(fleet, "SELECT * FROM stock ORDER BY account_id, batch_id") == stock_before
    assert query(fleet, "SELECT * FROM debt") == debt_before
    assert "archived 0 order(s), 0 record(s); told 0" in run(fleet, "archive", "--refund-window", "0s")
    fleet.drain()  # the accounts' states have read the archive topic before the late refund comes

    late = event(event_id="r2", type="refunded", account_id="ann", refund_id="f2", order_id="o1", amount=5)
    fleet.publish([late])
    fleet.drain()
    assert query(fleet, "SELECT reason FROM dead_letters WHERE event_id = 'r2'") == [
        {"reason": "order_archived"}
    ]
    assert query(fleet, "SELECT 1 FROM records WHERE event_id = 'r2'") == []


def test_orders_are_archived_by_when_they_occurred_not_when_they_arrived(fleet: Fleet) -> None:
    """A historical load published today: April's order goes with `--before` May 1, its May refund with it."""
    log = [
        event(event_id="i1", type="issued", account_id="ann", batch_id="b1", budget_id="B1", amount=100,
              occurred_at="2026-04-01T09:00:00Z"),
        event(event_id="c1", type="consumed", account_id="ann", order_id="o1", amount=60,
              occurred_at="2026-04-10T09:00:00Z"),
        event(event_id="c2", type="consumed", account_id="ann", order_id="o2", amount=10,
              occurred_at="2026-05-10T09:00:00Z"),
        event(event_id="r1", type="refunded", account_id="ann", refund_id="f1", order_id="o1", amount=5,
              occurred_at="2026-05-20T09:00:00Z"),
    ]  # fmt: skip
    fleet.start("allocator", "allocator", fleet.tmp / "state")
    fleet.start("sink", "sink")
    fleet.publish(log)  # each record stamped with its event's time, as the producer docs ask
    fleet.drain()
    assert len(query(fleet, "SELECT 1 FROM records WHERE order_id IS NOT NULL")) == 3

    assert "archived 1 order(s), 2 record(s)" in run(fleet, "archive", "--before", "2026-05-01")
    assert query(fleet, "SELECT order_id, records, amount FROM archived_orders") == [
        {"order_id": "o1", "records": 2, "amount": -55}
    ]
    # the refund window counts from when o2 occurred: a window ending after May 10 takes it
    window = (datetime.now(UTC) - datetime(2026, 5, 15, tzinfo=UTC)).days
    assert "archived 1 order(s), 1 record(s)" in run(fleet, "archive", "--refund-window", f"{window}d")
    assert query(fleet, "SELECT order_id FROM archived_orders ORDER BY 1") == [
        {"order_id": "o1"}, {"order_id": "o2"}
    ]  # fmt: skip


def latest_state(fleet: Fleet) -> dict[bytes, bytes]:
    """The allocators' state as the changelog holds it: the last value of every key."""
    return {key: value for _, key, value, _ in fleet.changelog()}


def test_an_accounts_state_keeps_outputs_only_while_they_are_in_flight(fleet: Fleet) -> None:
    """Outputs kept for redelivery go once committed: of 3 waves of 60 events, a wave's worth at most."""
    fleet.start("allocator", "allocator", fleet.tmp / "state")
    fleet.start("sink", "sink")
    fleet.publish(
        [event(event_id="i", type="issued", account_id="ann", batch_id="b", budget_id="B", amount=10**6)]
    )
    fleet.drain()  # topics give no order between each other: the stock is there before the orders
    for wave in range(3):
        fleet.publish(
            [
                event(
                    event_id=f"c{wave}-{n}",
                    type="consumed",
                    account_id="ann",
                    order_id=f"o{wave}-{n}",
                    amount=1,
                )
                for n in range(60)
            ]
        )
        fleet.drain()
    assert query(fleet, "SELECT count(*) AS n FROM records WHERE account_id = 'ann'") == [{"n": 181}]
    state = latest_state(fleet)
    outputs = [k for k in state if k.startswith(b"6") and account_of_key(k) == "ann"]
    orders = [k for k in state if k.startswith(b"1") and account_of_key(k) == "ann"]
    assert len(orders) == 180  # the check can see every kind of entry
    assert 1 <= len(outputs) <= 61, f"{len(outputs)} outputs kept for 181 events"
