"""Every rule of the contract (docs/contract.md), with hand-worked expectations."""

from __future__ import annotations

import msgspec
import pytest

from costtrace.contract.records import Record
from costtrace.model.allocation import Status, apply_event, event_key
from costtrace.model.state import MemoryStore
from tests.model.helpers import Ledger, consumed, ev, issued, refunded, transferred


@pytest.fixture
def led() -> Ledger:
    return Ledger()


# -- rule 1 and 3: FIFO consumption ---------------------------------------------


def test_consume_4_from_batches_1_2_1_5_leaves_only_the_5(led: Ledger) -> None:
    for i, amount in enumerate([1, 2, 1, 5]):
        led.apply(issued(f"b{i}", amount, at=f"2026-03-01T10:00:0{i}Z"))
    moves = led.moves(consumed("o1", 4))
    assert moves == [
        ("consume", "alice", "b0", -1),
        ("consume", "alice", "b1", -2),
        ("consume", "alice", "b2", -1),
    ]
    assert led.open_batches() == [("b3", 5)]


def test_fifo_orders_by_instant_not_by_arrival_or_text(led: Ledger) -> None:
    # arrives first, but issued later as an instant (10:00Z is after 11:30+02:00)
    led.apply(issued("late", 5, at="2026-03-01T10:00:00Z"))
    led.apply(issued("early", 5, at="2026-03-01T11:30:00+02:00"))  # 09:30Z
    assert led.moves(consumed("o1", 7)) == [
        ("consume", "alice", "early", -5),
        ("consume", "alice", "late", -2),
    ]


def test_back_dated_batch_is_consumed_before_older_arrivals(led: Ledger) -> None:
    led.apply(issued("now", 10, at="2026-03-01T10:00:00Z"))
    led.apply(issued("backdated", 3, at="2026-02-01T00:00:00Z"))
    assert led.moves(consumed("o1", 4)) == [
        ("consume", "alice", "backdated", -3),
        ("consume", "alice", "now", -1),
    ]


def test_ties_on_the_instant_break_by_batch_id_as_a_string(led: Ledger) -> None:
    same = ("2026-03-01T12:00:00+01:00", "2026-03-01T11:00:00Z", "2026-03-01T06:00:00-05:00")
    led.apply(issued("b10", 1, at=same[0]))
    led.apply(issued("b2", 1, at=same[1]))
    led.apply(issued("a9", 1, at=same[2]))
    # string order: "a9" < "b10" < "b2"
    assert [m[2] for m in led.moves(consumed("o1", 3))] == ["a9", "b10", "b2"]


def test_sub_microsecond_instants_are_not_ties(led: Ledger) -> None:
    led.apply(issued("a", 1, at="2026-03-01T10:00:00.0000002Z"))
    led.apply(issued("b", 1, at="2026-03-01T10:00:00.0000001Z"))
    assert [m[2] for m in led.moves(consumed("o1", 2))] == ["b", "a"]


# -- rules 3 and 4: debt on SUSPENSE and its trueup --------------------------------


def test_shortfall_becomes_debt_on_suspense(led: Ledger) -> None:
    led.apply(issued("b1", 3))
    assert led.moves(consumed("o1", 5)) == [
        ("consume", "alice", "b1", -3),
        ("consume", "alice", "SUSPENSE", -2),
    ]
    assert led.debt() == 2
    assert led.open_batches() == []


def test_new_batch_pays_the_oldest_debt_first_with_trueups(led: Ledger) -> None:
    led.apply(consumed("o1", 4))  # debt 4
    led.apply(consumed("o2", 3))  # debt 3
    moves = led.moves(issued("b1", 6, budget="B7"))
    assert moves == [
        ("issue", "alice", "b1", 6),
        ("trueup", "alice", "b1", -4),
        ("trueup", "alice", "SUSPENSE", 4),
        ("trueup", "alice", "b1", -2),
        ("trueup", "alice", "SUSPENSE", 2),
    ]
    trueups = [r for r in led.records if isinstance(r, Record) and r.kind == "trueup"]
    assert [r.order_id for r in trueups] == ["o1", "o1", "o2", "o2"]
    assert all(r.budget_id == "B7" for r in trueups if r.batch_id == "b1")
    assert led.debt() == 1
    assert led.open_batches() == []


def test_trueup_names_the_merchant_of_the_debt_order(led: Ledger) -> None:
    led.apply(consumed("o1", 2, merchant_id="m-9"))
    led.apply(issued("b1", 5))
    trueups = [r for r in led.records if isinstance(r, Record) and r.kind == "trueup"]
    assert {r.merchant_id for r in trueups} == {"m-9"}


def test_account_never_has_debt_and_open_stock(led: Ledger) -> None:
    led.apply(consumed("o1", 10))
    led.apply(issued("b1", 4))
    assert (led.debt(), led.open_batches()) == (6, [])
    led.apply(issued("b2", 8))
    assert (led.debt(), led.open_batches()) == (0, [("b2", 2)])


# -- rule 5: refunds, last in first out ---------------------------------------------


def test_partial_refund_reverses_the_last_consume_slice_first(led: Ledger) -> None:
    led.apply(issued("b1", 2, at="2026-03-01T10:00:00Z"))
    led.apply(issued("b2", 10, at="2026-03-01T10:00:01Z"))
    led.apply(consumed("o1", 5))  # b1 -2, b2 -3
    assert led.moves(refunded("r1", "o1", 4)) == [
        ("refund", "alice", "b2", 3),
        ("refund", "alice", "b1", 1),
    ]
    assert led.open_batches() == [("b1", 1), ("b2", 10)]


def test_refund_reopens_a_spent_batch_at_its_fifo_place(led: Ledger) -> None:
    led.apply(issued("old", 2, at="2026-03-01T09:00:00Z"))
    led.apply(issued("new", 5, at="2026-03-01T10:00:00Z"))
    led.apply(consumed("o1", 2))  # spends "old"
    led.apply(refunded("r1", "o1", 1))
    assert led.open_batches() == [("old", 1), ("new", 5)]
    assert [m[2] for m in led.moves(consumed("o2", 2))] == ["old", "new"]


def test_refund_after_trueups_goes_suspense_then_trueups_newest_first_then_consumes(led: Ledger) -> None:
    led.apply(issued("b0", 2, at="2026-03-01T08:00:00Z"))
    led.apply(consumed("o1", 10))  # b0 -2, SUSPENSE -8
    led.apply(issued("b1", 3, at="2026-03-01T09:00:00Z"))  # trueup 3 from b1
    led.apply(issued("b2", 4, at="2026-03-01T09:30:00Z"))  # trueup 4 from b2; debt 1 left
    assert led.debt() == 1
    moves = led.moves(refunded("r1", "o1", 6))
    assert moves == [
        ("refund", "alice", "SUSPENSE", 1),
        ("refund", "alice", "b2", 4),
        ("refund", "alice", "b1", 1),
    ]
    assert led.debt() == 0
    assert led.open_batches() == [("b1", 1), ("b2", 4)]
    # the rest: what is left of b1's trueup, then the original consume slice
    assert led.moves(refunded("r2", "o1", 4)) == [
        ("refund", "alice", "b1", 2),
        ("refund", "alice", "b0", 2),
    ]
    assert led.reject(refunded("r3", "o1", 1)) == "refund_exceeds_order"


def test_full_refund_of_an_order_in_debt_clears_its_debt(led: Ledger) -> None:
    led.apply(consumed("o1", 5))
    assert led.moves(refunded("r1", "o1", 5)) == [("refund", "alice", "SUSPENSE", 5)]
    assert led.debt() == 0


def test_refund_returned_coins_pay_another_orders_debt(led: Ledger) -> None:
    led.apply(issued("b1", 5))
    led.apply(consumed("o1", 5))  # b1 -5
    led.apply(consumed("o2", 3))  # SUSPENSE -3
    moves = led.moves(refunded("r1", "o1", 4))
    assert moves == [
        ("refund", "alice", "b1", 4),
        ("trueup", "alice", "b1", -3),
        ("trueup", "alice", "SUSPENSE", 3),
    ]
    assert (led.debt(), led.open_batches()) == (0, [("b1", 1)])


def test_refund_records_carry_order_refund_and_merchant(led: Ledger) -> None:
    led.apply(issued("b1", 5))
    led.apply(consumed("o1", 5, merchant_id="shop"))
    led.apply(refunded("r1", "o1", 2))
    rec = led.records[-1]
    assert isinstance(rec, Record)
    assert (rec.kind, rec.order_id, rec.refund_id, rec.merchant_id) == ("refund", "o1", "r1", "shop")


# -- rule 6: transfers ----------------------------------------------------------------


def test_transfer_carries_batches_budgets_and_issue_time(led: Ledger) -> None:
    led.apply(issued("b1", 2, budget="B1", at="2026-03-01T08:00:00Z"))
    led.apply(issued("b2", 5, budget="B2", at="2026-03-01T09:00:00Z"))
    moves = led.moves(transferred("t1", "bob", 4))
    assert moves == [
        ("transfer_out", "alice", "b1", -2),
        ("transfer_out", "alice", "b2", -2),
        ("transfer_in", "bob", "alice/t1/b1", 2),
        ("transfer_in", "bob", "alice/t1/b2", 2),
    ]
    ins = [r for r in led.records if isinstance(r, Record) and r.kind == "transfer_in"]
    assert [(r.budget_id, r.transfer_id) for r in ins] == [("B1", "t1"), ("B2", "t1")]
    # bob's own later batch is newer than the carried ones, which keep their issue time
    led.apply(issued("own", 10, account="bob", at="2026-03-01T08:30:00Z"))
    assert led.open_batches("bob") == [("alice/t1/b1", 2), ("own", 10), ("alice/t1/b2", 2)]


def test_transfer_feeds_the_receivers_debt(led: Ledger) -> None:
    led.apply(issued("b1", 10))
    led.apply(consumed("o9", 3, account="bob"))  # bob owes 3
    moves = led.moves(transferred("t1", "bob", 5))
    assert moves == [
        ("transfer_out", "alice", "b1", -5),
        ("transfer_in", "bob", "alice/t1/b1", 5),
        ("trueup", "bob", "alice/t1/b1", -3),
        ("trueup", "bob", "SUSPENSE", 3),
    ]
    assert (led.debt("bob"), led.open_batches("bob")) == (0, [("alice/t1/b1", 2)])


def test_transfer_rejections(led: Ledger) -> None:
    led.apply(issued("b1", 3))
    assert led.reject(transferred("t1", "alice", 1)) == "self_transfer"
    assert led.reject(transferred("t1", "bob", 4)) == "insufficient_stock"
    led.apply(transferred("t1", "bob", 1))
    assert led.reject(transferred("t1", "carol", 1)) == "duplicate_transfer"
    assert led.open_batches() == [("b1", 2)]


def test_transfer_with_debt_and_no_stock_is_insufficient(led: Ledger) -> None:
    led.apply(consumed("o1", 3))
    assert led.reject(transferred("t1", "bob", 1)) == "insufficient_stock"


def test_child_batch_id_collision_keeps_the_coins(led: Ledger) -> None:
    led.apply(issued("alice/t1/b1", 1, account="bob"))  # a producer used the child form
    led.apply(issued("b1", 4))
    moves = led.moves(transferred("t1", "bob", 4))
    assert moves[-1] == ("transfer_in", "bob", "alice/t1/b1#2", 4)


# -- rejections and rule 7 ------------------------------------------------------------


def test_duplicate_batch_order_refund(led: Ledger) -> None:
    led.apply(issued("b1", 5))
    assert led.reject(issued("b1", 5)) == "duplicate_batch"
    assert led.reject(ev("opened", batch_id="b1", amount=1)) == "duplicate_batch"
    led.apply(consumed("o1", 2))
    assert led.reject(consumed("o1", 2)) == "duplicate_order"
    led.apply(refunded("r1", "o1", 1))
    assert led.reject(refunded("r1", "o1", 1)) == "duplicate_refund"
    assert led.reject(refunded("r2", "nope", 1)) == "unknown_order"
    assert led.reject(refunded("r3", "o1", 2)) == "refund_exceeds_order"


def test_opened_defaults_to_legacy_budget(led: Ledger) -> None:
    led.apply(ev("opened", batch_id="h1", amount=7))
    led.apply(ev("opened", batch_id="h2", amount=1, budget_id="B3"))
    got = [(r.kind, r.budget_id) for r in led.records if isinstance(r, Record)]
    assert got == [("open", "LEGACY"), ("open", "B3")]


def test_exact_repeat_is_ignored_and_different_payload_conflicts(led: Ledger) -> None:
    first = issued("b1", 5, event_id="e1")
    assert led.apply(first).status is Status.APPLIED
    # same fields, other key order and whitespace, plus an unknown extra field
    again = (
        b'{"amount": 5, "budget_id": "B1", "batch_id": "b1", "occurred_at": "2026-03-01T10:00:00Z",'
        b' "account_id": "alice", "type": "issued", "event_id": "e1", "trace": 1}'
    )
    out = apply_event(led.store, again)
    assert (out.status, out.records) == (Status.REPEAT, [])
    assert led.reject(issued("b1", 6, event_id="e1")) == "conflicting_duplicate"
    # the same event id on another account is another event
    assert led.apply(issued("b1", 5, event_id="e1", account="bob")).status is Status.APPLIED


def test_a_rejected_event_is_not_remembered(led: Ledger) -> None:
    refund = refunded("r1", "o1", 2, event_id="e-refund")
    assert led.reject(refund) == "unknown_order"
    led.apply(issued("b1", 5))
    led.apply(consumed("o1", 3))
    # sent again, it is judged again, and now applies
    assert led.apply(refund).status is Status.APPLIED


def test_rejected_event_changes_nothing() -> None:
    from costtrace.model.state import encode_value

    led = Ledger()
    led.apply(issued("b1", 5))
    led.apply(consumed("o1", 3))

    def snapshot() -> bytes:
        state = led.store.account("alice")
        maps = state.entries().values()
        return encode_value([state.head, [sorted(m.items()) for m in maps if isinstance(m, dict)]])

    before = snapshot()
    for raw in (
        transferred("t1", "bob", 3),  # insufficient: 2 open
        refunded("r1", "o1", 4),
        consumed("o1", 1),
        issued("b1", 1),
    ):
        led.reject(raw)
    assert snapshot() == before


# -- records ------------------------------------------------------------------------------


def test_record_ids_are_deterministic_and_sequenced() -> None:
    def run() -> list[str]:
        led = Ledger()
        led.apply(issued("b1", 2, event_id="e1"))
        led.apply(consumed("o1", 5, event_id="e2"))
        return [r.record_id for r in led.records if isinstance(r, Record)]

    ids = run()
    assert ids == run()
    assert ids == [
        f"{event_key('alice', 'e1')}-0",
        f"{event_key('alice', 'e2')}-0",
        f"{event_key('alice', 'e2')}-1",
    ]
    assert event_key("ab", "c") != event_key("a", "bc")


def test_receiver_records_continue_the_transfer_events_sequence(led: Ledger) -> None:
    led.apply(issued("b1", 1, at="2026-03-01T08:00:00Z"))
    led.apply(issued("b2", 1, at="2026-03-01T09:00:00Z"))
    led.apply(transferred("t1", "bob", 2, event_id="tx"))
    ids = [r.record_id for r in led.records[-4:] if isinstance(r, Record)]
    key = event_key("alice", "tx")
    assert ids == [f"{key}-0", f"{key}-1", f"{key}-2", f"{key}-3"]


def test_records_encode_exactly_as_the_contract_describes(led: Ledger) -> None:
    led.apply(issued("b1", 5, event_id="e1"))
    led.apply(consumed("o1", 2, event_id="e2"))
    led.reject(b"not json")
    lines = [msgspec.json.decode(msgspec.json.encode(r)) for r in led.records]
    assert lines[0] == {
        "record_id": f"{event_key('alice', 'e1')}-0",
        "event_id": "e1",
        "kind": "issue",
        "account_id": "alice",
        "batch_id": "b1",
        "budget_id": "B1",
        "amount": 5,
    }
    assert lines[1]["order_id"] == "o1" and "merchant_id" not in lines[1]


def test_a_line_that_is_not_json_is_rejected_with_null_ids() -> None:
    out = apply_event(MemoryStore(), b"{oops")
    assert out.rejection is not None
    assert msgspec.structs.asdict(out.rejection) == {
        "event_id": None,
        "kind": "rejected",
        "account_id": None,
        "reason": "invalid_event",
    }
    assert out.detail
