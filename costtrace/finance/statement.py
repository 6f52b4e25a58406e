"""The settlement statement: per budget, what its batches gave, what was spent of them, what is left.

Pure: built from *flows*, the sums of record amounts by budget (and
merchant) and kind, split by when the sink posted them (before the period,
within it) and, of those within it, how much is for events from before it
(adjustments). `costtrace.finance.queries` reads flows from PostgreSQL's
summary tables; `flows_of_records` makes them from records in memory, as
the tests do from replay's records.

Which period a record belongs to is the UTC day the sink *posted* it
(`records.persisted_at`), not the event's time: a closed period's statement
never changes, and an event that arrives late shows up in the period it
arrived in, counted again under `adjustments` (docs/finance.md).

Every line holds `closing = opening + issued - consumed - trueups + refunded
- transferred_out + transferred_in`: the sum of all its records' amounts.
`trueups` is debt paid later: on a real budget, what its batches paid for
orders that had run into debt; on the SUSPENSE line the same amounts leave
the debt (negative). `net_consumed = consumed + trueups - refunded`: what
orders cost the budget, net of refunds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import date
from typing import NamedTuple

from costtrace.contract.records import SUSPENSE, Kind

# each flow kind's column, and the sign that makes the column positive for a real budget
_COLUMN = {
    Kind.ISSUE.value: ("issued", 1),
    Kind.OPEN.value: ("issued", 1),
    Kind.CONSUME.value: ("consumed", -1),
    Kind.TRUEUP.value: ("trueups", -1),
    Kind.REFUND.value: ("refunded", 1),
    Kind.TRANSFER_OUT.value: ("transferred_out", -1),
    Kind.TRANSFER_IN.value: ("transferred_in", 1),
}


# what orders cost, which merchant lines split (issuances and transfers belong to no merchant)
ORDER_KINDS = frozenset({Kind.CONSUME.value, Kind.TRUEUP.value, Kind.REFUND.value})


class Period(NamedTuple):
    """Days posted from `start` (included) to `end` (excluded), UTC."""

    start: date
    end: date

    def check(self) -> Period:
        if self.end <= self.start:
            raise ValueError(f"the period ends ({self.end}) on or before it starts ({self.start})")
        return self


class Flow(NamedTuple):
    """Sums of record amounts of one budget (and merchant: None for none) and kind."""

    budget_id: str
    merchant_id: str | None
    kind: str
    before: int  # posted before the period
    within: int  # posted within it
    prior: int  # of `within`, for events from before the period


@dataclass
class Line:
    """One budget's (or one budget and merchant's) line; amounts in the coin's smallest unit."""

    budget_id: str
    merchant_id: str | None = None
    opening: int | None = 0  # None on a merchant's line: stock belongs to the budget
    issued: int = 0
    consumed: int = 0
    trueups: int = 0
    refunded: int = 0
    transferred_out: int = 0
    transferred_in: int = 0
    closing: int | None = 0
    adjustments: int = 0  # of the movements above, the net amount for events before the period

    @property
    def net_consumed(self) -> int:
        return self.consumed + self.trueups - self.refunded

    @property
    def is_debt(self) -> bool:
        return self.budget_id == SUSPENSE

    def add(self, flow: Flow) -> None:
        column, sign = _COLUMN[flow.kind]
        setattr(self, column, getattr(self, column) + sign * flow.within)
        self.adjustments += flow.prior
        if self.opening is not None and self.closing is not None:
            self.opening += flow.before
            self.closing += flow.before + flow.within

    def as_dict(self, merchant: bool = False) -> dict[str, object]:
        """`merchant`: a merchant's line, whose `merchant_id` is kept even when None (orders without one)."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["net_consumed"] = self.net_consumed
        if merchant:  # what orders cost, split by merchant: no stock, issuances or transfers
            for name in ("opening", "closing", "issued", "transferred_out", "transferred_in"):
                del out[name]
        else:
            del out["merchant_id"]
        return out


COLUMNS = (
    "opening", "issued", "consumed", "trueups", "refunded", "net_consumed", "transferred_out",
    "transferred_in", "closing", "adjustments",
)  # fmt: skip


@dataclass
class Statement:
    period: Period
    lines: list[Line]  # per budget, by budget id, SUSPENSE (the debt) last
    merchants: list[Line] = field(default_factory=list)  # per budget and merchant, when asked
    closed: bool = True  # False: the period is not over, or was too recently

    @property
    def totals(self) -> Line:
        total = Line("TOTAL")
        for line in self.lines:
            for name in COLUMNS:
                if name != "net_consumed":
                    setattr(total, name, (getattr(total, name) or 0) + (getattr(line, name) or 0))
        return total

    def as_dict(self) -> dict[str, object]:
        return {
            "from": self.period.start.isoformat(),
            "to": self.period.end.isoformat(),
            "closed": self.closed,
            "lines": [line.as_dict() for line in self.lines],
            "merchants": [line.as_dict(merchant=True) for line in self.merchants],
            "totals": {k: v for k, v in self.totals.as_dict().items() if k != "budget_id"},
        }


def build(
    period: Period,
    budget_flows: Iterable[Flow],
    merchant_flows: Iterable[Flow] | None = None,
    closed: bool = True,
) -> Statement:
    """The statement of these flows: budget lines always, merchant lines when `merchant_flows` are given.

    A budget with nothing before the period's end has no line; one whose
    lines are all zero in the period still has one when it holds stock (its
    opening and closing).
    """
    lines: dict[str, Line] = {}
    for flow in budget_flows:
        if flow.kind in _COLUMN:
            lines.setdefault(flow.budget_id, Line(flow.budget_id)).add(flow)
    by_merchant: dict[tuple[str, str | None], Line] = {}
    for flow in merchant_flows or ():
        if flow.kind in _COLUMN and flow.within:
            key = (flow.budget_id, flow.merchant_id)
            line = by_merchant.setdefault(key, Line(flow.budget_id, flow.merchant_id, None, closing=None))
            line.add(flow)
    return Statement(
        period,
        sorted(lines.values(), key=_line_order),
        sorted(by_merchant.values(), key=lambda line: (*_line_order(line), line.merchant_id or "")),
        closed,
    )


def _line_order(line: Line) -> tuple[bool, str]:
    return (line.is_debt, line.budget_id)


class Posted(NamedTuple):
    """What `flows_of_records` needs of a record: its budget, merchant, kind, amount, and its two days."""

    budget_id: str
    merchant_id: str | None
    kind: str
    amount: int
    posted_on: date
    occurred_on: date


def flows_of_records(records: Iterable[Posted], period: Period) -> tuple[list[Flow], list[Flow]]:
    """Budget flows, and merchant flows of what orders cost, of records in memory (as the summaries hold)."""
    budgets: dict[tuple[str, str], list[int]] = {}
    merchants: dict[tuple[str, str | None, str], list[int]] = {}
    for r in records:
        if r.posted_on >= period.end:
            continue
        before = r.posted_on < period.start
        prior = not before and r.occurred_on < period.start
        sums = budgets.setdefault((r.budget_id, r.kind), [0, 0, 0])
        sums[0 if before else 1] += r.amount
        sums[2] += r.amount if prior else 0
        if not before and r.kind in ORDER_KINDS:
            msums = merchants.setdefault((r.budget_id, r.merchant_id, r.kind), [0, 0, 0])
            msums[1] += r.amount
            msums[2] += r.amount if prior else 0
    return (
        [Flow(b, None, k, *s) for (b, k), s in budgets.items()],
        [Flow(b, m, k, *s) for (b, m, k), s in merchants.items()],
    )
