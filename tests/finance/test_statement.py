"""The statement from flows, by hand: every column, the debt line, adjustments, merchants, formats."""

from __future__ import annotations

import csv
import io
import json
from datetime import date

import pytest

from costtrace.finance import formats
from costtrace.finance.statement import Period, Posted, build, flows_of_records

MARCH = Period(date(2026, 3, 1), date(2026, 4, 1))
FEB, MAR, APR = date(2026, 2, 20), date(2026, 3, 10), date(2026, 4, 2)


def posted(budget: str, kind: str, amount: int, on: date, occurred: date | None = None,
           merchant: str | None = None) -> Posted:  # fmt: skip
    return Posted(budget, merchant, kind, amount, on, occurred or on)


# an account's story: 100 from acme in February; in March an order of 130 (100 from acme, 30 of debt),
# 50 from beta pays the debt back, 20 refunded (from the trueup slice first: beta), 10 sent away from beta;
# in April, a consume that belongs to the next statement
RECORDS = [
    posted("acme", "issue", 100, FEB),
    posted("acme", "consume", -100, MAR, merchant="m1"),
    posted("SUSPENSE", "consume", -30, MAR, merchant="m1"),
    posted("beta", "issue", 50, MAR),
    posted("beta", "trueup", -30, MAR, merchant="m1"),
    posted("SUSPENSE", "trueup", 30, MAR, merchant="m1"),
    posted("beta", "refund", 20, MAR, merchant="m1"),
    posted("beta", "transfer_out", -10, MAR),
    posted("beta", "transfer_in", 10, MAR),  # received on another account, same budget
    posted("acme", "consume", -5, APR, merchant="m2"),
]


def march(by_merchant: bool = False) -> tuple[dict[str, dict[str, object]], dict[str, object]]:
    budgets, merchants = flows_of_records(RECORDS, MARCH)
    s = build(MARCH, budgets, merchants if by_merchant else None)
    return {line.budget_id: line.as_dict() for line in s.lines}, s.as_dict()


def test_each_budget_s_columns_and_the_debt_line_last() -> None:
    lines, whole = march()
    assert list(lines) == ["acme", "beta", "SUSPENSE"]
    assert lines["acme"] == {
        "budget_id": "acme", "opening": 100, "issued": 0, "consumed": 100, "trueups": 0, "refunded": 0,
        "transferred_out": 0, "transferred_in": 0, "closing": 0, "adjustments": 0, "net_consumed": 100,
    }  # fmt: skip
    beta = lines["beta"]
    assert (beta["opening"], beta["issued"], beta["trueups"], beta["refunded"]) == (0, 50, 30, 20)
    assert (beta["transferred_out"], beta["transferred_in"], beta["closing"]) == (10, 10, 40)
    assert beta["net_consumed"] == 10  # 30 paid for the order's debt, 20 of it refunded
    debt = lines["SUSPENSE"]
    assert (debt["consumed"], debt["trueups"], debt["closing"], debt["net_consumed"]) == (30, -30, 0, 0)
    # what orders cost, net: 130 taken, 20 refunded; the debt's trueups move cost, they add none
    assert whole["totals"]["net_consumed"] == 110  # type: ignore[index]


def test_closing_is_opening_plus_the_movements_on_every_line() -> None:
    for line in build(MARCH, *flows_of_records(RECORDS, MARCH)).lines:
        moved = (line.issued - line.consumed - line.trueups + line.refunded
                 - line.transferred_out + line.transferred_in)  # fmt: skip
        assert line.closing == (line.opening or 0) + moved


def test_a_late_event_posts_in_the_period_it_arrived_as_an_adjustment() -> None:
    late = [*RECORDS, posted("acme", "refund", 7, APR, occurred=MAR, merchant="m1")]
    april = Period(date(2026, 4, 1), date(2026, 5, 1))
    b, m = flows_of_records(late, april)
    line = {x.budget_id: x for x in build(april, b, m).lines}["acme"]
    assert (line.refunded, line.consumed, line.adjustments) == (7, 5, 7)
    assert {x.budget_id: x for x in build(MARCH, *flows_of_records(late, MARCH)).lines}["acme"].refunded == 0


def test_merchant_lines_split_what_orders_cost_and_nothing_else() -> None:
    _, whole = march(by_merchant=True)
    merchants = whole["merchants"]
    assert merchants == [
        {"budget_id": "acme", "merchant_id": "m1", "consumed": 100, "trueups": 0, "refunded": 0,
         "adjustments": 0, "net_consumed": 100},
        {"budget_id": "beta", "merchant_id": "m1", "consumed": 0, "trueups": 30, "refunded": 20,
         "adjustments": 0, "net_consumed": 10},
        {"budget_id": "SUSPENSE", "merchant_id": "m1", "consumed": 30, "trueups": -30,
         "refunded": 0, "adjustments": 0, "net_consumed": 0},
    ]  # fmt: skip


def test_a_period_must_end_after_it_starts() -> None:
    with pytest.raises(ValueError, match="ends"):
        Period(date(2026, 3, 1), date(2026, 3, 1)).check()


def test_csv_json_and_table_say_the_same() -> None:
    budgets, merchants = flows_of_records(RECORDS, MARCH)
    s = build(MARCH, budgets, merchants, closed=False)
    rows = list(csv.DictReader(io.StringIO(formats.statement_csv(s))))
    assert [(r["budget_id"], r["merchant_id"]) for r in rows] == [
        ("acme", "*"), ("acme", "m1"), ("beta", "*"), ("beta", "m1"), ("SUSPENSE", "*"),
        ("SUSPENSE", "m1"),
    ]  # fmt: skip
    assert rows[2]["closing"] == "40" and rows[3]["net_consumed"] == "10"
    assert json.loads(formats.to_json(s.as_dict()))["closed"] is False
    text = formats.statement_table(s)
    assert "OPEN" in text and "SUSPENSE (debt)" in text
    total = next(line for line in text.splitlines() if line.startswith("TOTAL"))
    assert total.split()[-2] == "40"  # closing over every budget: beta's 40, the rest spent
