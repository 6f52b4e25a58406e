"""Finance's questions asked of PostgreSQL: the statement's flows and the three cost traces.

Statements read the summary tables the sink keeps with the records
(`budget_days`, `merchant_days`: costtrace/storage/db.py, `POST_RECORDS`), so
a month's statement reads a few thousand rows whatever the number of records.
Traces read the records themselves, archived ones included (`all_records`),
through the account and order indexes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg

from costtrace.contract.records import SUSPENSE, Kind
from costtrace.finance.statement import Flow, Period, Statement, build

# a period is closed once it ended longer ago than the sink's longest write can take
SETTLING = 600.0  # seconds


class NotFound(LookupError):
    """No record names what was asked for."""


_BUDGET_FLOWS = """
    SELECT budget_id, kind,
           coalesce(sum(amount) FILTER (WHERE posted_on < $1), 0) AS before,
           coalesce(sum(amount) FILTER (WHERE posted_on >= $1), 0) AS within,
           coalesce(sum(amount) FILTER (WHERE posted_on >= $1 AND occurred_on < $1), 0) AS prior
    FROM budget_days WHERE posted_on < $2
    GROUP BY budget_id, kind
"""
_MERCHANT_FLOWS = """
    SELECT budget_id, merchant_id, kind, sum(amount) AS within,
           coalesce(sum(amount) FILTER (WHERE occurred_on < $1), 0) AS prior
    FROM merchant_days WHERE posted_on >= $1 AND posted_on < $2
    GROUP BY budget_id, merchant_id, kind
"""


def _midnight(day: Any) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def statement(
    conn: asyncpg.Connection, period: Period, by_merchant: bool = False, now: datetime | None = None
) -> Statement:
    """The settlement statement of `period` (posting days, UTC); `now` decides whether it is closed."""
    period.check()
    flows = [
        Flow(r["budget_id"], None, r["kind"], int(r["before"]), int(r["within"]), int(r["prior"]))
        for r in await conn.fetch(_BUDGET_FLOWS, period.start, period.end)
    ]
    merchants: list[Flow] | None = None
    if by_merchant:
        merchants = [
            Flow(r["budget_id"], r["merchant_id"] or None, r["kind"], 0, int(r["within"]), int(r["prior"]))
            for r in await conn.fetch(_MERCHANT_FLOWS, period.start, period.end)
        ]
    now = now or datetime.now(UTC)
    closed = (now - _midnight(period.end)).total_seconds() >= SETTLING
    return build(period, flows, merchants, closed)


# -- traces ---------------------------------------------------------------------------------------

_RECORD = """record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id, refund_id,
              transfer_id, merchant_id, step, seq, persisted_at, occurred_at"""


class Movement(NamedTuple):
    """One record, as a trace shows it."""

    record_id: str
    event_id: str
    kind: str
    batch_id: str
    budget_id: str
    amount: int
    order_id: str | None
    refund_id: str | None
    transfer_id: str | None
    merchant_id: str | None
    posted_at: datetime
    counterparty: str | None = None  # for a transfer: the account on the other side

    def as_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["posted_at"] = self.posted_at.isoformat()
        return out


def _movement(r: Any, counterparty: str | None = None) -> Movement:
    return Movement(
        r["record_id"], r["event_id"], r["kind"], r["batch_id"], r["budget_id"], int(r["amount"]),
        r["order_id"], r["refund_id"], r["transfer_id"], r["merchant_id"], r["persisted_at"], counterparty,
    )  # fmt: skip


class BudgetShare(NamedTuple):
    """What one budget paid for an order: consumed, trueups (debt paid later), refunded, net."""

    budget_id: str
    consumed: int
    trueups: int
    refunded: int

    @property
    def net(self) -> int:
        return self.consumed + self.trueups - self.refunded

    def as_dict(self) -> dict[str, Any]:
        return {**self._asdict(), "net": self.net}


class OrderTrace(NamedTuple):
    account_id: str
    order_id: str
    merchant_id: str | None
    amount: int  # what the order took
    refunded: int
    on_suspense: int  # still owed: not yet paid by any budget
    budgets: list[BudgetShare]  # real budgets, by budget id
    movements: list[Movement]  # in the account's order

    def as_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["budgets"] = [b.as_dict() for b in self.budgets]
        out["movements"] = [m.as_dict() for m in self.movements]
        return out


async def order_trace(conn: asyncpg.Connection, account_id: str, order_id: str) -> OrderTrace:
    rows = await conn.fetch(
        f"SELECT {_RECORD} FROM all_records WHERE account_id = $1 AND order_id = $2 ORDER BY step, seq",
        account_id, order_id,
    )  # fmt: skip
    if not rows:
        raise NotFound(f"no order {order_id!r} on account {account_id!r}")
    movements = [_movement(r) for r in rows]
    shares: dict[str, list[int]] = {}
    amount = refunded = on_suspense = 0
    merchant = None
    for m in movements:
        merchant = merchant or m.merchant_id
        if m.kind == Kind.CONSUME.value:
            amount -= m.amount
        elif m.kind == Kind.REFUND.value:
            refunded += m.amount
        if m.budget_id == SUSPENSE:
            on_suspense -= m.amount
            continue
        share = shares.setdefault(m.budget_id, [0, 0, 0])
        if m.kind == Kind.CONSUME.value:
            share[0] -= m.amount
        elif m.kind == Kind.TRUEUP.value:
            share[1] -= m.amount
        elif m.kind == Kind.REFUND.value:
            share[2] += m.amount
    budgets = [BudgetShare(b, *s) for b, s in sorted(shares.items())]
    return OrderTrace(account_id, order_id, merchant, amount, refunded, on_suspense, budgets, movements)


class Batch(NamedTuple):
    """One batch of an account's stock record."""

    batch_id: str
    budget_id: str
    issued_at: datetime | None  # None: its issuance carried no event time (written before it was kept)
    amount: int
    remaining: int

    def as_dict(self, at: datetime) -> dict[str, Any]:
        out = self._asdict()
        out["issued_at"] = None if self.issued_at is None else self.issued_at.isoformat()
        out["age_days"] = (
            None if self.issued_at is None else round((at - self.issued_at).total_seconds() / 86400, 2)
        )
        return out


class AccountTrace(NamedTuple):
    account_id: str
    at: datetime
    batches: list[Batch]  # open batches (remaining > 0), in FIFO order
    debt: int
    spent_batches: int  # batches with nothing left

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id, "at": self.at.isoformat(), "debt": self.debt,
            "spent_batches": self.spent_batches, "batches": [b.as_dict(self.at) for b in self.batches],
        }  # fmt: skip


_CREATING = (Kind.ISSUE.value, Kind.OPEN.value, Kind.TRANSFER_IN.value)


async def account_trace(
    conn: asyncpg.Connection, account_id: str, at: datetime | None = None
) -> AccountTrace:
    """The account's stock record as posted at `at` (default: now): its open batches in FIFO order, and debt.

    FIFO is the contract's: by the batch's issuance time, then its id. A
    batch received by transfer keeps its source batch's issuance time,
    found by following the transfer back to the sender's batch.
    """
    at = at or datetime.now(UTC)
    rows = await conn.fetch(
        """SELECT batch_id, budget_id, kind, transfer_id, occurred_at, received_at, amount
           FROM all_records WHERE account_id = $1 AND persisted_at <= $2""",
        account_id, at,
    )  # fmt: skip
    if not rows:
        raise NotFound(f"no records of account {account_id!r}" + (" by then" if at else ""))
    sums: dict[tuple[str, str], list[int]] = {}
    created: dict[str, tuple[str | None, datetime | None]] = {}  # batch -> (transfer id, event time)
    debt = 0
    for r in rows:
        if r["batch_id"] == SUSPENSE:
            debt -= int(r["amount"])
            continue
        s = sums.setdefault((r["batch_id"], r["budget_id"]), [0, 0])
        s[1] += int(r["amount"])
        if r["kind"] in _CREATING:
            s[0] += int(r["amount"])
            created[r["batch_id"]] = (r["transfer_id"], r["occurred_at"] or r["received_at"])
    open_ = [(b, budget, s) for (b, budget), s in sums.items() if s[1] > 0]
    issued = await _issued_at(conn, account_id, {b: created.get(b, (None, None)) for b, _, _ in open_})
    batches = [Batch(b, budget, issued.get(b), s[0], s[1]) for b, budget, s in open_]
    far = datetime.max.replace(tzinfo=UTC)
    batches.sort(key=lambda batch: (batch.issued_at or far, batch.batch_id))
    return AccountTrace(account_id, at, batches, debt, len(sums) - len(open_))


async def _issued_at(
    conn: asyncpg.Connection, account_id: str, batches: dict[str, tuple[str | None, datetime | None]]
) -> dict[str, datetime | None]:
    """Each batch's issuance time: its own event's, or a received one's source batch's (recursively)."""
    out: dict[str, datetime | None] = {}
    # (the account and batch asked about, the account and batch its coins came from, the transfer id)
    todo = []
    for batch, (transfer, time) in batches.items():
        if transfer is None:
            out[batch] = time
        else:
            todo.append((batch, account_id, batch, transfer))
    for _ in range(64):  # a chain of transfers of transfers; never longer in practice
        if not todo:
            break
        sources = await conn.fetch(
            """SELECT account_id, transfer_id, batch_id FROM all_records
               WHERE kind = 'transfer_out' AND transfer_id = ANY($1::text[])""",
            list({t for *_, t in todo}),
        )
        by_received = {f"{s['account_id']}/{s['transfer_id']}/{s['batch_id']}": s for s in sources}
        found = {asked: by_received.get(received) for asked, _, received, _ in todo}
        sent = [s for s in found.values() if s is not None]
        # each source batch's own creating record, for all of them in one query
        origins = {
            (o["account_id"], o["batch_id"]): o
            for o in await conn.fetch(
                """SELECT DISTINCT ON (r.account_id, r.batch_id) r.account_id, r.batch_id, r.transfer_id,
                          coalesce(r.occurred_at, r.received_at) AS at, r.kind
                   FROM all_records r
                   JOIN unnest($1::text[], $2::text[]) AS s(account_id, batch_id) USING (account_id, batch_id)
                   WHERE r.kind IN ('issue', 'open', 'transfer_in')
                   ORDER BY r.account_id, r.batch_id, r.step, r.seq""",
                [s["account_id"] for s in sent], [s["batch_id"] for s in sent],
            )
        }  # fmt: skip
        nxt = []
        for asked, s in found.items():
            origin = None if s is None else origins.get((s["account_id"], s["batch_id"]))
            if s is None or origin is None:  # its sender's records are not here (yet): no time known
                out[asked] = None
            elif origin["kind"] == Kind.TRANSFER_IN.value:
                nxt.append((asked, s["account_id"], s["batch_id"], origin["transfer_id"]))
            else:
                out[asked] = origin["at"]
        todo = nxt
    return out


class BatchTrace(NamedTuple):
    account_id: str
    batch_id: str
    budget_id: str
    amount: int
    remaining: int
    movements: list[Movement]  # this page of them, in the account's order
    next_cursor: str | None  # where the next page starts; None at the end

    def as_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["movements"] = [m.as_dict() for m in self.movements]
        return out


async def batch_trace(
    conn: asyncpg.Connection, account_id: str, batch_id: str, limit: int = 1000, cursor: str | None = None
) -> BatchTrace:
    """Where a batch's coins went: its records in order (a page of `limit`, after `cursor`), with totals."""
    after = _cursor(cursor)
    totals = await conn.fetchrow(
        """SELECT min(budget_id) AS budget_id, count(*) AS n, coalesce(sum(amount), 0) AS remaining,
                  coalesce(sum(amount) FILTER (WHERE kind IN ('issue', 'open', 'transfer_in')), 0) AS amount
           FROM all_records WHERE account_id = $1 AND batch_id = $2""",
        account_id, batch_id,
    )  # fmt: skip
    if totals is None or not totals["n"]:
        raise NotFound(f"no batch {batch_id!r} on account {account_id!r}")
    rows = await conn.fetch(
        f"""SELECT {_RECORD} FROM all_records
            WHERE account_id = $1 AND batch_id = $2 AND (step, seq) > ($3, $4) ORDER BY step, seq LIMIT $5""",
        account_id, batch_id, after[0], after[1], limit + 1,
    )  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    sent = [r["transfer_id"] for r in rows if r["kind"] == Kind.TRANSFER_OUT.value]
    receivers = await _receivers(conn, account_id, batch_id, sent)
    movements = [_movement(r, receivers.get(r["transfer_id"])) for r in rows]
    next_cursor = f"{rows[-1]['step']}.{rows[-1]['seq']}" if more else None
    return BatchTrace(
        account_id, batch_id, totals["budget_id"], int(totals["amount"]), int(totals["remaining"]), movements,
        next_cursor,
    )  # fmt: skip


def _cursor(cursor: str | None) -> tuple[int, int]:
    if cursor is None:
        return (-1, -1)
    step, sep, seq = cursor.partition(".")
    if not sep or not step.lstrip("-").isdigit() or not seq.isdigit():
        raise ValueError(f"parameter 'cursor': {cursor!r} is not a next_cursor this API gave")
    return int(step), int(seq)


async def _receivers(
    conn: asyncpg.Connection, account_id: str, batch_id: str, transfers: list[str]
) -> dict[str, str]:
    """transfer id -> the account that received this batch's coins through it."""
    if not transfers:
        return {}
    received = [f"{account_id}/{t}/{batch_id}" for t in transfers]
    rows = await conn.fetch(
        """SELECT account_id, transfer_id FROM all_records
           WHERE transfer_id = ANY($2::text[]) AND kind = 'transfer_in' AND batch_id = ANY($1::text[])""",
        received, transfers,
    )  # fmt: skip
    return {r["transfer_id"]: r["account_id"] for r in rows}
