"""Statements and traces as a person reads them (an aligned table) or a tool does (CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from costtrace.contract.records import SUSPENSE
from costtrace.finance.statement import COLUMNS, Line, Statement

FORMATS = ("table", "csv", "json")


def to_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return out.getvalue()


def statement_rows(statement: Statement) -> list[dict[str, Any]]:
    """One row per budget, the merchants' rows after their budget's (merchant `*` marks a budget's own)."""
    merchants: dict[str, list[Line]] = {}
    for line in statement.merchants:
        merchants.setdefault(line.budget_id, []).append(line)
    rows: list[dict[str, Any]] = []
    for line in statement.lines:
        row = line.as_dict()
        if statement.merchants:
            row["merchant_id"] = "*"
        rows.append(row)
        for m in merchants.get(line.budget_id, []):
            rows.append(m.as_dict(merchant=True))
    return rows


def statement_columns(statement: Statement) -> list[str]:
    return ["budget_id", *(["merchant_id"] if statement.merchants else []), *COLUMNS]


def statement_csv(statement: Statement) -> str:
    return to_csv(statement_rows(statement), statement_columns(statement))


def statement_table(statement: Statement) -> str:
    """Aligned columns, the debt line named as such, totals last; amounts with thousands separators."""
    head = (
        f"Settlement statement, posted {statement.period.start} to {statement.period.end} (UTC, end excluded)"
        + ("" if statement.closed else "  [OPEN: the period has not ended, figures may still change]")
    )
    columns = statement_columns(statement)
    rows = statement_rows(statement)
    total = statement.totals.as_dict()
    total["budget_id"] = "TOTAL"
    if statement.merchants:
        total["merchant_id"] = ""
    cells = [[_cell(k, row) for k in columns] for row in [*rows, total]]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i < 1 + bool(statement.merchants) else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True)))  # fmt: skip

    lines = [head, "", fmt(columns), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in cells[:-1]]
    lines += [fmt(["-" * w for w in widths]), fmt(cells[-1])]
    lines += [
        "",
        "closing = opening + issued - consumed - trueups + refunded - transferred_out + transferred_in;",
        f"{SUSPENSE}: debt not yet paid by any budget (its closing is minus the debt); trueups: debt paid "
        "later;",
        "adjustments: of the period's movements, the net amount for events from before the period.",
    ]
    if statement.merchants:
        lines.append("merchant *: the budget's own line; the lines below it split its movements by merchant.")
    return "\n".join(lines) + "\n"


def _cell(column: str, row: Mapping[str, Any]) -> str:
    value = row.get(column)
    if column == "merchant_id" and value is None and "opening" not in row:
        return "(none)"  # a merchant line of orders without one
    if value is None:
        return ""
    if column == "budget_id" and value == SUSPENSE:
        return f"{SUSPENSE} (debt)"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Any list of rows as aligned text (numbers right-aligned)."""
    cells = [[_cell(k, row) for k in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(row.get(c), int) for row in rows) for c in columns]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()  # fmt: skip

    return "\n".join([fmt(columns), fmt(["-" * w for w in widths]), *(fmt(r) for r in cells)]) + "\n"


MOVEMENT_COLUMNS = (
    "kind", "batch_id", "budget_id", "amount", "order_id", "refund_id", "transfer_id", "merchant_id",
    "counterparty", "event_id", "posted_at",
)  # fmt: skip
BATCH_COLUMNS = ("batch_id", "budget_id", "issued_at", "age_days", "amount", "remaining")
BUDGET_SHARE_COLUMNS = ("budget_id", "consumed", "trueups", "refunded", "net")
