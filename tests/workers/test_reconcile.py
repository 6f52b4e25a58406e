"""The ledger file the reconciler compares with: CSV or JSON, integers only, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from workers.reconcile import parse_ledger


def test_csv_and_json_give_the_same_balances() -> None:
    csv_text = "account_id,balance,as_of\nann,60,2026-03-01T00:00:00Z\nbo,-5,\n"
    ann = '{"account_id": "ann", "balance": 60, "as_of": "2026-03-01T00:00:00Z"}'
    bo = '{"account_id": "bo", "balance": -5}'
    json_text = f"[{ann}, {bo}]"
    jsonl_text = f"{ann}\n{bo}\n"
    expected = [("ann", 60, datetime(2026, 3, 1, tzinfo=UTC)), ("bo", -5, None)]
    assert parse_ledger("l.csv", csv_text) == expected
    assert parse_ledger("l.json", json_text) == expected
    assert parse_ledger("l.jsonl", jsonl_text) == expected


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("l.csv", "account_id,balance\nann,60.5\n", "l.csv line 2: balance must be an integer"),
        ("l.json", '[{"account_id": "ann", "balance": 6.0}]', "item 1: balance must be an integer"),
        ("l.json", '[{"account_id": "ann", "balance": true}]', "item 1: balance must be an integer"),
        ("l.csv", "account,amount\nann,1\n", "needs a header with account_id and balance"),
        ("l.csv", "account_id,balance\nann,1\nann,2\n", "account 'ann' appears twice"),
        ("l.json", '[{"account_id": "", "balance": 1}]', "account_id must be a non-empty string"),
        ("l.csv", "account_id,balance,as_of\nann,1,yesterday\n", "as_of is not an ISO 8601 time"),
        ("l.json", "[{", "not JSON"),
    ],
)
def test_bad_ledger_files_are_refused_with_where_and_why(name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ledger(name, text)
