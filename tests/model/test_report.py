"""The per-budget report agrees with the stock the model holds."""

from __future__ import annotations

import io
from collections import Counter

from costtrace.contract.records import decode_record
from costtrace.model.replay import replay
from costtrace.model.report import report
from costtrace.ops.sample import encode_event, generate_events


def test_outstanding_per_budget_is_the_open_stock_and_debt_is_suspense() -> None:
    lines = [encode_event(e) for e in generate_events(4000, 300, seed=5)]
    out = io.BytesIO()
    from costtrace.model.state import MemoryStore

    store = MemoryStore()
    summary = replay(lines, out, store)
    rep = report(decode_record(line) for line in out.getvalue().splitlines())
    stock: Counter[str] = Counter()
    for head in store.accounts().values():
        for b in head.open:
            stock[b.budget_id] += b.remaining
    assert {k: v.outstanding for k, v in rep.budgets.items() if v.outstanding} == dict(+stock)
    assert rep.debt == summary.debt_outstanding > 0
    assert rep.rejections == summary.rejections
    assert all(line.transferred_net == 0 for line in rep.budgets.values())
    assert rep.records == summary.records
