"""Small builders for hand-worked model tests: events as the contract's JSON."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

from costtrace.contract.records import Record, Rejection
from costtrace.model.allocation import Outcome, Status, apply_credit, apply_event
from costtrace.model.state import MemoryStore

_ids = itertools.count(1)
T0 = "2026-03-01T10:00:00Z"


def ev(type_: str, account: str = "alice", at: str = T0, event_id: str | None = None, **fields: Any) -> bytes:
    body = {
        "event_id": event_id or f"ev-{next(_ids)}",
        "type": type_,
        "account_id": account,
        "occurred_at": at,
        **fields,
    }
    return msgspec.json.encode(body)


def issued(
    batch: str, amount: int, budget: str = "B1", at: str = T0, account: str = "alice", **kw: Any
) -> bytes:
    return ev("issued", account, at, batch_id=batch, budget_id=budget, amount=amount, **kw)


def consumed(order: str, amount: int, account: str = "alice", **kw: Any) -> bytes:
    return ev("consumed", account, order_id=order, amount=amount, **kw)


def refunded(refund: str, order: str, amount: int, account: str = "alice", **kw: Any) -> bytes:
    return ev("refunded", account, refund_id=refund, order_id=order, amount=amount, **kw)


def transferred(transfer: str, to: str, amount: int, account: str = "alice", **kw: Any) -> bytes:
    return ev("transferred", account, transfer_id=transfer, to_account_id=to, amount=amount, **kw)


class Ledger:
    """Applies events like replay does and keeps every record, for assertions."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.records: list[Record | Rejection] = []

    def apply(self, raw: bytes) -> Outcome:
        out = apply_event(self.store, raw)
        self.records += out.records
        if out.rejection is not None:
            self.records.append(out.rejection)
        for credit in out.credits:
            self.records += apply_credit(self.store, credit).records
        return out

    def moves(self, raw: bytes) -> list[tuple[str, str, str, int]]:
        """Apply one event; its records (with the credit's) as (kind, account, batch, amount)."""
        before = len(self.records)
        out = self.apply(raw)
        assert out.status is Status.APPLIED, (out.status, out.detail)
        return [
            (r.kind, r.account_id, r.batch_id, r.amount)
            for r in self.records[before:]
            if isinstance(r, Record)
        ]

    def reject(self, raw: bytes | str) -> str:
        out = apply_event(self.store, raw)
        assert out.status is Status.REJECTED and out.rejection is not None, out
        assert not out.records
        return out.rejection.reason

    def open_batches(self, account: str = "alice") -> list[tuple[str, int]]:
        return [(b.batch_id, b.remaining) for b in self.store.account(account).head.open]

    def debt(self, account: str = "alice") -> int:
        return self.store.account(account).head.debt()
