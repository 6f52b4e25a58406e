"""Property-based tests: the contract's invariants hold after every event of random logs."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costtrace.contract.records import SUSPENSE, Record
from costtrace.model.allocation import Status, apply_credit, apply_event
from costtrace.model.state import MemoryStore, Namespace, Position

ACCOUNTS = ("alice", "bob", "carol")
IDS = tuple(f"x{i}" for i in range(6))
ZONES = ("Z", "+02:00", "-05:30")


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["issued", "opened", "consumed", "consumed", "refunded", "transferred"]))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    ev: dict[str, Any] = {
        "event_id": draw(st.sampled_from(IDS + tuple(f"e{i}" for i in range(40)))),
        "type": kind,
        "account_id": draw(st.sampled_from(ACCOUNTS)),
        "occurred_at": f"2026-03-01T{hour:02d}:{minute:02d}:00{draw(st.sampled_from(ZONES))}",
        "amount": draw(st.integers(1, 12)),
    }
    if kind in ("issued", "opened"):
        ev["batch_id"] = draw(st.sampled_from(IDS))
        if kind == "issued" or draw(st.booleans()):
            ev["budget_id"] = draw(st.sampled_from(["B1", "B2", "B3"]))
    elif kind == "consumed":
        ev["order_id"] = draw(st.sampled_from(IDS))
        if draw(st.booleans()):
            ev["merchant_id"] = "m1"
    elif kind == "refunded":
        ev["refund_id"] = draw(st.sampled_from(IDS))
        ev["order_id"] = draw(st.sampled_from(IDS))
    else:
        ev["transfer_id"] = draw(st.sampled_from(IDS))
        ev["to_account_id"] = draw(st.sampled_from(ACCOUNTS))
    return ev


logs = st.lists(events(), min_size=1, max_size=60)


class Checker:
    """Applies a log like replay and checks every invariant after each event."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.records: list[Record] = []
        self.ledger: Counter[str] = Counter()  # balance from accepted events alone
        self.orders: dict[tuple[str, str], int] = {}

    def apply(self, ev: dict[str, Any]) -> None:
        out = apply_event(self.store, msgspec.json.encode(ev))
        new = list(out.records)
        for credit in out.credits:
            new += apply_credit(self.store, credit).records
        if out.status is Status.APPLIED:
            self._ledger(ev)
        else:
            assert not new, "a rejected or repeated event yields no allocation records"
        self.records += new
        self.check()

    def _ledger(self, ev: dict[str, Any]) -> None:
        acct, amount = ev["account_id"], ev["amount"]
        kind = ev["type"]
        if kind in ("issued", "opened", "refunded"):
            self.ledger[acct] += amount
        elif kind == "consumed":
            self.ledger[acct] -= amount
            self.orders[(acct, ev["order_id"])] = amount
        else:
            self.ledger[acct] -= amount
            self.ledger[ev["to_account_id"]] += amount

    def check(self) -> None:
        by_account: Counter[str] = Counter()
        by_order: Counter[tuple[str, str]] = Counter()
        refunds: Counter[tuple[str, str]] = Counter()
        by_budget: Counter[str] = Counter()
        transfers_by_budget: Counter[str] = Counter()
        for r in self.records:
            by_account[r.account_id] += r.amount
            if r.kind in ("consume", "trueup"):
                assert r.order_id is not None
                by_order[(r.account_id, r.order_id)] += r.amount
            if r.kind == "refund":
                assert r.order_id is not None
                refunds[(r.account_id, r.order_id)] += r.amount
            if r.batch_id != SUSPENSE:
                by_budget[r.budget_id] += r.amount
            if r.kind in ("transfer_out", "transfer_in"):
                transfers_by_budget[r.budget_id] += r.amount
        outstanding: Counter[str] = Counter()
        for acct in ACCOUNTS:
            state = self.store.account(acct)
            head = state.head
            stock, debt = head.stock(), head.debt()
            # stock minus debt = sum of records = the ledger's balance
            assert stock - debt == by_account[acct] == self.ledger[acct]
            assert not (debt and stock), "debt and open stock at once"
            assert head.open == sorted(head.open), "open batches out of FIFO order"
            for b in head.open:
                info = state.batches.get(b.batch_id)
                assert info is not None
                assert 0 < b.remaining <= info.amount
                assert (info.issued_ns, info.budget_id) == (b.issued_ns, b.budget_id)
                outstanding[b.budget_id] += b.remaining
            orders = [state.orders.get(d.order_id) for d in head.debts]
            assert sum(o.suspense for o in orders if o is not None) == debt
        for key, amount in self.orders.items():
            assert by_order[key] == -amount, "consume records (with trueups) = -order amount"
            assert 0 <= refunds[key] <= amount
        # per budget: what is recorded on its batches is what is still outstanding;
        # transfers move coins between accounts, never between budgets
        assert +by_budget == +outstanding
        assert all(v == 0 for v in transfers_by_budget.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs)
def test_invariants_hold_after_every_event(log: list[dict[str, Any]]) -> None:
    checker = Checker()
    for ev in log:
        checker.apply(ev)


def _replay_records(log: list[dict[str, Any]]) -> list[bytes]:
    store = MemoryStore()
    out = []
    for ev in log:
        o = apply_event(store, msgspec.json.encode(ev))
        out += [msgspec.json.encode(r) for r in o.records]
        if o.rejection is not None:
            out.append(msgspec.json.encode(o.rejection))
        for c in o.credits:
            out += [msgspec.json.encode(r) for r in apply_credit(store, c).records]
    return out


@settings(max_examples=150, deadline=None)
@given(logs, st.data())
def test_redelivery_after_a_crash_gives_the_same_records(
    log: list[dict[str, Any]], data: st.DataObject
) -> None:
    """At-least-once delivery: any prefix read again gives back exactly the first outputs.

    Events are read from one source at offsets 0..n-1; after some point the
    reader "crashes" and resumes from an earlier offset (its last commit),
    keeping the state it had (RocksDB ahead of the commit). Outputs of the
    re-read events are the ones the first read produced, credits included,
    and the receivers (which dedupe credits by origin) end up the same.
    """
    expected = _replay_records(log)
    store = MemoryStore()
    emitted: dict[int, list[bytes]] = {}
    crash_at = data.draw(st.integers(0, len(log)))
    resume_from = data.draw(st.integers(0, crash_at))

    def read(i: int) -> list[bytes]:
        o = apply_event(store, msgspec.json.encode(log[i]), Position("events:0", i))
        got = [msgspec.json.encode(r) for r in o.records]
        if o.rejection is not None:
            got.append(msgspec.json.encode(o.rejection))
        for c in o.credits:
            # credits travel through their own topic; a re-sent credit is deduped
            got += [msgspec.json.encode(r) for r in apply_credit(store, c).records]
        return got

    for i in range(crash_at):
        emitted[i] = read(i)
    for i in range(resume_from, len(log)):
        again = read(i)
        if i in emitted:
            # what comes back on redelivery is what the first read gave, minus
            # credits the receiver had already taken (their records were emitted then)
            first_without_credit_records = emitted[i][: len(again)]
            assert again == first_without_credit_records
        else:
            emitted[i] = again
    assert [line for i in range(len(log)) for line in emitted[i]] == expected


@given(logs)
@settings(max_examples=100, deadline=None)
def test_same_log_same_records(log: list[dict[str, Any]]) -> None:
    assert _replay_records(log) == _replay_records(log)


def test_state_round_trips_exactly_through_its_serialised_form() -> None:
    """What the native model stores, msgspec's types decode, and encode again to the same bytes."""
    from costtrace.model.state import HEADER_PREFIX, decode_header, decode_value, encode_value

    checker = Checker()
    for i in range(30):
        checker.apply(
            {
                "event_id": f"i{i}",
                "type": "issued",
                "account_id": "alice",
                "occurred_at": f"2026-03-01T10:{i:02d}:00.123456789+01:00",
                "batch_id": f"b{i}",
                "budget_id": "B1",
                "amount": 3,
            }
        )
        checker.apply(
            {
                "event_id": f"c{i}",
                "type": "consumed",
                "account_id": "alice",
                "occurred_at": "2026-03-01T10:00:00Z",
                "order_id": f"o{i}",
                "amount": 2,
                "merchant_id": "m",
            }
        )
    checker.apply(
        {
            "event_id": "t",
            "type": "transferred",
            "account_id": "alice",
            "occurred_at": "2026-03-01T10:00:00Z",
            "transfer_id": "t",
            "to_account_id": "bob",
            "amount": 1,
        }
    )
    checker.apply(
        {
            "event_id": "r",
            "type": "refunded",
            "account_id": "alice",
            "occurred_at": "2026-03-01T10:00:00Z",
            "refund_id": "r",
            "order_id": "o3",
            "amount": 1,
        }
    )
    raw = (
        b'{"event_id":"p","type":"consumed","account_id":"alice","occurred_at":"2026-03-01T10:00:00Z",'
        b'"order_id":"big","amount":1000}'
    )
    assert apply_event(checker.store, raw, Position("consumed:3", 17)).status is Status.APPLIED
    seen: defaultdict[Namespace | None, int] = defaultdict(int)
    for key, raw in checker.store.items():
        if key.startswith(HEADER_PREFIX):
            assert encode_value(decode_header(raw)) == raw
            seen[None] += 1
        else:
            ns = Namespace(key[0])
            assert encode_value(decode_value(ns, raw)) == raw
            seen[ns] += 1
    assert set(seen) == {None, *Namespace}
