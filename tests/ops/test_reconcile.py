"""The ledger file the reconciler compares with (CSV or JSON, integers only, clear errors), and what a run
reports: each finding named, whether a ledger was compared, what was re-driven."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from costtrace.ops.reconcile import RunResult, parse_ledger


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


def _mismatches(n: int) -> RunResult:
    details: list[tuple[str, str | None, dict[str, Any]]] = [
        ("balance_mismatch", f"a{i}", {"account_id": f"a{i}", "traced": 40 + i, "ledger": 60})
        for i in range(n)
    ]
    return RunResult(
        "mismatches", run_id=7, mismatches=n, findings={"balance_mismatch": n},
        actions={"replayed_parked_letters": {"a1": 2}}, ledger_accounts=n, details=details,
    )  # fmt: skip


def test_a_run_names_each_mismatching_account_with_both_amounts_up_to_the_limit() -> None:
    lines = _mismatches(5).describe(limit=3)
    assert lines[0] == "run 7: mismatches"
    assert "  balance_mismatch: 5" in lines
    assert "    a0: traced 40, ledger 60 (traced - ledger = -20)" in lines
    assert "    a2: traced 42, ledger 60 (traced - ledger = -18)" in lines
    assert not any(line.startswith("    a3:") for line in lines)
    assert "    ... and 2 more (reconcile_findings, run_id 7)" in lines
    assert "  re-drove 2 parked letter(s) of a1 to Kafka: reconcile again once applied" in lines


def test_the_json_report_has_whole_counts_and_findings_up_to_the_limit() -> None:
    report = _mismatches(5).as_json(limit=2)
    assert report["findings"] == {"balance_mismatch": 5}
    assert [d["account_id"] for d in report["details"]] == ["a0", "a1"]
    assert report["details"][1] == {
        "kind": "balance_mismatch",
        "account_id": "a1",
        "traced": 41,
        "ledger": 60,
    }
    assert report["ledger_compared"] is True and report["re_driven"] == {"a1": 2}
    assert len(_mismatches(5).as_json()["details"]) == 5


def test_no_ledger_loaded_is_said_not_taken_for_agreement() -> None:
    ok = RunResult("ok", run_id=3, ledger_accounts=0)
    assert ok.describe() == [
        "run 3: ok (no ledger loaded: no balance was compared; `costtrace ledger load FILE`)"
    ]
    assert ok.as_json()["ledger_compared"] is False
    compared = RunResult("ok", run_id=4, ledger_accounts=9)
    assert compared.describe() == ["run 4: ok"]


def test_mismatches_with_nothing_parked_say_so() -> None:
    result = _mismatches(1)
    result.actions = {"replayed_parked_letters": {}}
    assert result.describe()[-1] == "  no parked letters of the mismatching accounts to re-drive"
    assert RunResult("skipped", why="another reconciler holds the lock").describe() == [
        "skipped: another reconciler holds the lock"
    ]
