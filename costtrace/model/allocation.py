"""The cost-tracing rules of `cost-tracing.md`, applied one event at a time.

This is the only implementation of the rules: offline replay and the fleet's
agents both call `apply_event` and `apply_credit`. It is pure: no Kafka, no
database, no clock; state comes from a `Store` and goes back to it.

Redelivery (the fleet reads at least once): an event read at a `Position`
whose offset the account has already passed is a redelivery, and gets back
the outputs stored for that position, so a crash between applying an event
and publishing its records loses nothing. A producer's repeat (same event,
new position) is an exact repeat and yields nothing, as the contract says.
Stored outputs are let go once the fleet says their position is `settled`
(committed: never read again), so they do not pile up.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final

import msgspec

from costtrace.model.state import (
    AccountState,
    Archive,
    BatchInfo,
    Credit,
    CreditSlice,
    Debt,
    Kept,
    OpenBatch,
    Order,
    Outputs,
    Position,
    Settled,
    Slice,
    Store,
)
from schemas.events import (
    Consumed,
    Event,
    Invalid,
    Issued,
    Opened,
    Refunded,
    Transferred,
    parse_event,
)
from schemas.records import SUSPENSE, Kind, Reason, Record, Rejection, rejection

_ISSUE, _OPEN, _CONSUME, _TRUEUP, _REFUND, _TRANSFER_OUT, _TRANSFER_IN = (
    Kind.ISSUE.value,
    Kind.OPEN.value,
    Kind.CONSUME.value,
    Kind.TRUEUP.value,
    Kind.REFUND.value,
    Kind.TRANSFER_OUT.value,
    Kind.TRANSFER_IN.value,
)


class Status(StrEnum):
    APPLIED = "applied"
    REPEAT = "repeat"  # exact repeat of an applied event: ignored
    REJECTED = "rejected"
    REDELIVERED = "redelivered"  # read again at a position already applied
    SKIPPED = "skipped"  # left out by the fleet's tracing switch (workers/switch.py); never in replay


class Outcome(msgspec.Struct, gc=False):
    """What applying one event (or credit) gave: records, credits or a rejection."""

    status: Status
    account_id: str | None
    records: list[Record]
    credits: list[Credit]
    rejection: Rejection | None = None
    detail: str | None = None  # why, for a rejection
    step: int = 0  # the account's step that made the records: (step, seq) is replay's order

    def outputs(self) -> Outputs:
        return Outputs(self.records, self.credits, self.rejection, self.step)


def event_key(account_id: str, event_id: str) -> str:
    """A short, unambiguous id of (account, event): the stem of its record ids."""
    data = f"{len(account_id)}:{account_id}{event_id}".encode()
    return hashlib.blake2b(data, digest_size=12).hexdigest()


class _Rejected(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Change:
    """One event's effect on one account: the records it makes, and the helpers that move coins."""

    __slots__ = ("account_id", "event_id", "head", "key", "records", "seq", "state")

    def __init__(self, state: AccountState, account_id: str, key: str, seq: int, event_id: str) -> None:
        self.state = state
        self.head = state.head
        self.account_id = account_id
        self.records: list[Record] = []
        self.key = key
        self.seq = seq
        self.event_id = event_id

    def record(
        self,
        kind: str,
        batch_id: str,
        budget_id: str,
        amount: int,
        order_id: str | None = None,
        refund_id: str | None = None,
        transfer_id: str | None = None,
        merchant_id: str | None = None,
    ) -> None:
        self.records.append(
            Record(
                f"{self.key}-{self.seq}",
                self.event_id,
                kind,
                self.account_id,
                batch_id,
                budget_id,
                amount,
                order_id,
                refund_id,
                transfer_id,
                merchant_id,
            )
        )
        self.seq += 1

    # -- batches -------------------------------------------------------------

    def add_batch(self, batch_id: str, budget_id: str, issued_ns: int, amount: int) -> None:
        self.state.batches[batch_id] = BatchInfo(budget_id, issued_ns, amount)
        insort(self.head.open, OpenBatch(issued_ns, batch_id, budget_id, amount))

    def give_back(self, batch_id: str, amount: int) -> None:
        """Return coins to a batch, re-opening it at its FIFO place if it was spent."""
        info = self.state.batches.get(batch_id)
        assert info is not None, f"slice on unknown batch {batch_id!r}"
        open_ = self.head.open
        # budget "" sorts before any real budget id, so this lands on the batch itself
        i = bisect_left(open_, OpenBatch(info.issued_ns, batch_id, "", 0))
        if i < len(open_) and open_[i].batch_id == batch_id:
            open_[i].remaining += amount
        else:
            open_.insert(i, OpenBatch(info.issued_ns, batch_id, info.budget_id, amount))

    def take(
        self,
        amount: int,
        kind: str,
        order_id: str | None = None,
        transfer_id: str | None = None,
        merchant_id: str | None = None,
    ) -> tuple[list[OpenBatch], int]:
        """Take `amount` from the front of FIFO; return (slices taken, shortfall)."""
        open_ = self.head.open
        taken: list[OpenBatch] = []
        left = amount
        spent = 0
        for b in open_:
            take = b.remaining if b.remaining <= left else left
            self.record(kind, b.batch_id, b.budget_id, -take, order_id, None, transfer_id, merchant_id)
            taken.append(OpenBatch(b.issued_ns, b.batch_id, b.budget_id, take))
            b.remaining -= take
            left -= take
            if b.remaining:
                break
            spent += 1
            if not left:
                break
        if spent:
            del open_[:spent]
        return taken, left

    # -- debt ----------------------------------------------------------------

    def pay_down(self) -> None:
        """Rule 4: while there is debt and open stock, pay the oldest debt FIFO."""
        head = self.head
        debts, open_ = head.debts, head.open
        while debts and open_:
            debt, batch = debts[0], open_[0]
            y = debt.amount if debt.amount <= batch.remaining else batch.remaining
            oid = debt.order_id
            order = self.state.orders.get(oid)
            assert order is not None, f"debt of unknown order {oid!r}"
            mid = order.merchant_id
            self.record(_TRUEUP, batch.batch_id, batch.budget_id, -y, oid, None, None, mid)
            self.record(_TRUEUP, SUSPENSE, SUSPENSE, y, oid, None, None, mid)
            order.suspense -= y
            order.trueups.append(Slice(batch.batch_id, batch.budget_id, y))
            self.state.orders[oid] = order
            debt.amount -= y
            batch.remaining -= y
            if not debt.amount:
                del debts[0]
            if not batch.remaining:
                del open_[0]

    def settle_debt(self, order_id: str, amount: int) -> None:
        debts = self.head.debts
        for i, debt in enumerate(debts):
            if debt.order_id == order_id:
                debt.amount -= amount
                if not debt.amount:
                    del debts[i]
                return
        raise AssertionError(f"order {order_id!r} has no debt slice")  # pragma: no cover


# -- the rules, one per event type; each checks everything before it changes anything


def _issue(ch: _Change, ev: Issued | Opened, kind: str) -> Credit | None:
    if ch.state.batches.get(ev.batch_id) is not None:
        raise _Rejected(Reason.DUPLICATE_BATCH, f"batch {ev.batch_id!r} is already on this account")
    budget_id = ev.budget_id
    assert budget_id is not None  # Opened defaults it
    ch.add_batch(ev.batch_id, budget_id, ev.occurred_ns, ev.amount)
    ch.record(kind, ev.batch_id, budget_id, ev.amount)
    return None


def _issued(ch: _Change, ev: Any) -> Credit | None:
    return _issue(ch, ev, _ISSUE)


def _opened(ch: _Change, ev: Any) -> Credit | None:
    return _issue(ch, ev, _OPEN)


def _consumed(ch: _Change, ev: Consumed) -> Credit | None:
    oid, mid = ev.order_id, ev.merchant_id
    orders = ch.state.orders
    if orders.get(oid) is not None:
        raise _Rejected(Reason.DUPLICATE_ORDER, f"order {oid!r} was already consumed")
    order = Order(ev.amount, mid)
    taken, shortfall = ch.take(ev.amount, _CONSUME, oid, None, mid)
    order.consumes = [Slice(b.batch_id, b.budget_id, b.remaining) for b in taken]
    if shortfall:
        ch.record(_CONSUME, SUSPENSE, SUSPENSE, -shortfall, oid, None, None, mid)
        order.suspense = shortfall
        ch.head.debts.append(Debt(oid, shortfall))
    orders[oid] = order
    return None


def _refunded(ch: _Change, ev: Refunded) -> Credit | None:
    rid, oid = ev.refund_id, ev.order_id
    state = ch.state
    if state.refunds.get(rid) is not None:
        raise _Rejected(Reason.DUPLICATE_REFUND, f"refund {rid!r} was already applied")
    order = state.orders.get(oid)
    if order is None:
        raise _Rejected(Reason.UNKNOWN_ORDER, f"order {oid!r} has not been consumed on this account")
    if order.archived:
        raise _Rejected(Reason.ORDER_ARCHIVED, f"order {oid!r} is archived: past its refund window")
    unrefunded = order.amount - order.refunded
    if ev.amount > unrefunded:
        raise _Rejected(
            Reason.REFUND_EXCEEDS_ORDER,
            f"refund of {ev.amount} exceeds the {unrefunded} left unrefunded of order {oid!r}",
        )
    mid = order.merchant_id
    left = ev.amount
    # last in, first out: SUSPENSE, then trueup slices, then consume slices
    if order.suspense:
        s = left if left <= order.suspense else order.suspense
        ch.record(_REFUND, SUSPENSE, SUSPENSE, s, oid, rid, None, mid)
        order.suspense -= s
        ch.settle_debt(oid, s)
        left -= s
    for stack in (order.trueups, order.consumes):
        while left and stack:
            sl = stack[-1]
            t = left if left <= sl.amount else sl.amount
            ch.record(_REFUND, sl.batch_id, sl.budget_id, t, oid, rid, None, mid)
            ch.give_back(sl.batch_id, t)
            sl.amount -= t
            left -= t
            if not sl.amount:
                stack.pop()
    assert left == 0, "an order's slices always cover what is left unrefunded"
    order.refunded += ev.amount
    state.orders[oid] = order
    state.refunds[rid] = oid
    return None


def _transferred(ch: _Change, ev: Transferred) -> Credit | None:
    tid = ev.transfer_id
    if ev.to_account_id == ev.account_id:
        raise _Rejected(Reason.SELF_TRANSFER, "to_account_id equals account_id")
    if ch.state.transfers.get(tid) is not None:
        raise _Rejected(Reason.DUPLICATE_TRANSFER, f"transfer {tid!r} was already applied")
    stock = ch.head.stock()
    if stock < ev.amount:
        raise _Rejected(
            Reason.INSUFFICIENT_STOCK, f"transfer of {ev.amount} exceeds the open stock of {stock}"
        )
    taken, _ = ch.take(ev.amount, _TRANSFER_OUT, None, tid)
    ch.state.transfers[tid] = ev.event_id
    slices = [CreditSlice(b.batch_id, b.budget_id, b.issued_ns, b.remaining) for b in taken]
    return Credit(ev.account_id, ev.event_id, tid, ev.to_account_id, ch.seq, slices)


_RULES: Final[dict[type, Callable[[_Change, Any], Credit | None]]] = {
    Issued: _issued,
    Opened: _opened,
    Consumed: _consumed,
    Refunded: _refunded,
    Transferred: _transferred,
}


# -- entry points


def _recall(state: AccountState, account_id: str, position: Position) -> Outcome:
    """The outputs a redelivered event gave when it was first applied."""
    stored = None
    for kept in state.head.kept:
        if kept.offset == position.offset and kept.source == position.source:
            stored = state.outputs.get(str(kept.slot))
            break
    if stored is None:
        return Outcome(Status.REDELIVERED, account_id, [], [])
    return Outcome(
        Status.REDELIVERED, account_id, stored.records, stored.credits, stored.rejection, step=stored.step
    )


def _finish(
    store: Store,
    state: AccountState,
    account_id: str,
    outcome: Outcome,
    position: Position | None,
    changed: bool,
    settled: Settled | None = None,
) -> Outcome:
    """In the fleet, remember the position and what it gave; then hand the changes to the store.

    Outputs of settled positions are never asked for again: their slots are
    dropped from the header, and the next event's outputs reuse the lowest
    free slot, so no entry is ever deleted (no tombstones on the changelog).
    """
    if position is not None:
        head = state.head
        head.marks[position.source] = position.offset
        if settled is not None and head.kept:
            head.kept = [k for k in head.kept if k.offset >= (settled.get(k.source) or 0)]
        if outcome.records or outcome.credits or outcome.rejection is not None:
            used = {k.slot for k in head.kept}
            slot = 0
            while slot in used:
                slot += 1
            head.kept.append(Kept(position.source, position.offset, slot))
            state.outputs[str(slot)] = outcome.outputs()
        changed = True
    if changed:
        store.commit(account_id, state)
    return outcome


def _reject(
    store: Store,
    state: AccountState,
    ev: Event,
    reason: Reason,
    detail: str,
    position: Position | None,
    settled: Settled | None,
) -> Outcome:
    rej = rejection(ev.event_id, ev.account_id, reason)
    outcome = Outcome(Status.REJECTED, ev.account_id, [], [], rej, detail)
    return _finish(store, state, ev.account_id, outcome, position, False, settled)


def _already_read(state: AccountState, position: Position) -> bool:
    return state.head.marks.get(position.source, -1) >= position.offset


def apply_event(
    store: Store,
    event: Event | Invalid | bytes | str,
    position: Position | None = None,
    settled: Settled | None = None,
) -> Outcome:
    """Apply one input event (raw JSON or parsed) to its account.

    The fleet passes where it read the event (`position`) and what it has
    committed (`settled`); replay passes neither.
    """
    ev = parse_event(event) if isinstance(event, (bytes, str)) else event
    if isinstance(ev, Invalid):
        # depends on the payload alone, so a redelivery gives the same answer
        rej = rejection(ev.event_id, ev.account_id, Reason.INVALID_EVENT)
        return Outcome(Status.REJECTED, ev.account_id, [], [], rej, ev.detail)
    account_id = ev.account_id
    state = store.account(account_id)
    if position is not None and _already_read(state, position):
        return _recall(state, account_id, position)
    prior = state.events.get(ev.event_id)
    if prior is not None:
        if prior == ev:
            repeat = Outcome(Status.REPEAT, account_id, [], [])
            return _finish(store, state, account_id, repeat, position, False, settled)
        detail = f"event {ev.event_id!r} was applied before with a different payload"
        return _reject(store, state, ev, Reason.CONFLICTING_DUPLICATE, detail, position, settled)
    ch = _Change(state, account_id, event_key(account_id, ev.event_id), 0, ev.event_id)
    try:
        credit = _RULES[type(ev)](ch, ev)
    except _Rejected as rej:
        return _reject(store, state, ev, rej.reason, rej.detail, position, settled)
    ch.pay_down()
    # a sender with stock has no debt, so pay_down added nothing after the credit's seq
    assert credit is None or credit.seq == ch.seq
    state.events[ev.event_id] = ev
    state.head.steps += 1
    credits = [credit] if credit is not None else []
    outcome = Outcome(Status.APPLIED, account_id, ch.records, credits, step=state.head.steps)
    return _finish(store, state, account_id, outcome, position, True, settled)


def apply_archive(
    store: Store, archive: Archive, position: Position | None = None, settled: Settled | None = None
) -> Outcome:
    """Drop the slices of archived orders (the fleet's `costtrace archive`); records nothing.

    An order with debt still on SUSPENSE is kept whole: its trueups are yet to
    come. Archiving an order twice changes nothing.
    """
    account_id = archive.account_id
    state = store.account(account_id)
    if position is not None and _already_read(state, position):
        return _recall(state, account_id, position)
    changed = False
    for oid in archive.order_ids:
        order = state.orders.get(oid)
        if order is None or order.archived or order.suspense:
            continue
        state.orders[oid] = Order(order.amount, order.merchant_id, order.refunded, archived=True)
        changed = True
    done = Outcome(Status.APPLIED, account_id, [], [])
    return _finish(store, state, account_id, done, position, changed, settled)


def apply_credit(
    store: Store, credit: Credit, position: Position | None = None, settled: Settled | None = None
) -> Outcome:
    """Apply the receiving half of a transfer to `credit.to_account_id` (rule 6).

    Each slice becomes a batch `{sender}/{transfer_id}/{source batch_id}` with
    the source's budget and issue time. Should the receiver already hold a
    batch of that id (only possible if a producer issued one of that form),
    the first free `#2`, `#3`, ... suffix is used, so the coins are never lost.
    """
    account_id = credit.to_account_id
    state = store.account(account_id)
    if position is not None and _already_read(state, position):
        return _recall(state, account_id, position)
    key = event_key(credit.origin_account_id, credit.event_id)
    if state.credits.get(key) is not None:
        repeat = Outcome(Status.REPEAT, account_id, [], [])
        return _finish(store, state, account_id, repeat, position, False, settled)
    ch = _Change(state, account_id, key, credit.seq, credit.event_id)
    tid = credit.transfer_id
    batches = state.batches
    for sl in credit.slices:
        child = batch_id = f"{credit.origin_account_id}/{tid}/{sl.source_batch_id}"
        n = 2
        while batches.get(batch_id) is not None:
            batch_id = f"{child}#{n}"
            n += 1
        ch.add_batch(batch_id, sl.budget_id, sl.issued_ns, sl.amount)
        ch.record(_TRANSFER_IN, batch_id, sl.budget_id, sl.amount, None, None, tid)
    state.credits[key] = tid
    ch.pay_down()
    state.head.steps += 1
    outcome = Outcome(Status.APPLIED, account_id, ch.records, [], step=state.head.steps)
    return _finish(store, state, account_id, outcome, position, True, settled)
