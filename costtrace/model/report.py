"""Finance's short report over records: per budget, issued, consumed, refunded, outstanding."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from costtrace.contract.records import SUSPENSE, Kind, Record, Rejection


@dataclass
class BudgetLine:
    issued: int = 0
    consumed: int = 0  # consume and trueup records on the budget's batches
    refunded: int = 0
    transferred_net: int = 0  # always 0 across all accounts: transfers never move budgets

    @property
    def outstanding(self) -> int:
        return self.issued - self.consumed + self.refunded + self.transferred_net


@dataclass
class Report:
    budgets: dict[str, BudgetLine] = field(default_factory=dict)
    debt: int = 0  # on SUSPENSE: spent coins no budget has paid for yet
    rejections: Counter[str] = field(default_factory=Counter)
    records: int = 0

    def add(self, rec: Record | Rejection) -> None:
        self.records += 1
        if isinstance(rec, Rejection):
            self.rejections[rec.reason] += 1
            return
        if rec.batch_id == SUSPENSE:
            self.debt -= rec.amount
            return
        line = self.budgets.setdefault(rec.budget_id, BudgetLine())
        kind = rec.kind
        if kind in (Kind.ISSUE, Kind.OPEN):
            line.issued += rec.amount
        elif kind in (Kind.CONSUME, Kind.TRUEUP):
            line.consumed -= rec.amount
        elif kind == Kind.REFUND:
            line.refunded += rec.amount
        else:
            line.transferred_net += rec.amount

    def lines(self) -> list[str]:
        out = [f"{'budget':18s}{'issued':>14s}{'consumed':>14s}{'refunded':>14s}{'outstanding':>14s}"]
        for budget in sorted(self.budgets):
            b = self.budgets[budget]
            out.append(f"{budget:18s}{b.issued:14,d}{b.consumed:14,d}{b.refunded:14,d}{b.outstanding:14,d}")
        out.append(f"{'debt on SUSPENSE':18s}{self.debt:>56,d}")
        out.append(f"rejections: {sum(self.rejections.values())}")
        out += [f"  {reason}: {n}" for reason, n in sorted(self.rejections.items())]
        return out


def report(records: Iterable[Record | Rejection]) -> Report:
    rep = Report()
    for rec in records:
        rep.add(rec)
    return rep


def differences(a: Report, b: Report) -> list[str]:
    """Where two reports of the same day disagree: per budget and column, debt, rejections by reason."""
    out = []
    for budget in sorted(set(a.budgets) | set(b.budgets)):
        x, y = a.budgets.get(budget, BudgetLine()), b.budgets.get(budget, BudgetLine())
        for column in ("issued", "consumed", "refunded", "outstanding"):
            if getattr(x, column) != getattr(y, column):
                out.append(f"{budget} {column}: {getattr(x, column):,} against {getattr(y, column):,}")
    if a.debt != b.debt:
        out.append(f"debt on SUSPENSE: {a.debt:,} against {b.debt:,}")
    for reason in sorted(set(a.rejections) | set(b.rejections)):
        if a.rejections[reason] != b.rejections[reason]:
            out.append(f"rejections {reason}: {a.rejections[reason]:,} against {b.rejections[reason]:,}")
    return out
