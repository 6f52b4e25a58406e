"""A deterministic generator of realistic event logs.

Skewed activity (a few accounts are very busy), every event type, producers
in several time zones, back-dated batches, and a small share of the trouble
a real log has: exact repeats, conflicting repeats, refunds of unknown
orders, over-refunds, short transfers and lines that are not events at all.
The same seed always gives the same log.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import msgspec

BUDGETS: Final = ("acme-marketing", "acme-ops", "beta-growth", "gamma-sales", "delta-loyalty")
_ZONES: Final = tuple(timezone(timedelta(minutes=m)) for m in (0, 60, 120, -300, -480, 330, 540))
_START: Final = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class _Account:
    balance: int = 0
    batches: int = 0
    orders: list[tuple[str, int]] = field(default_factory=list)  # (order_id, unrefunded)
    seq: int = 0


def _stamp(at: datetime, rng: random.Random) -> str:
    local = at.astimezone(rng.choice(_ZONES))
    return local.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate_events(
    n_events: int, n_accounts: int, seed: int = 1, skew: float = 2.5
) -> Iterator[dict[str, Any]]:
    """Yield `n_events` events as dicts (a few deliberately broken ones as strings in `_raw`).

    `skew` shapes activity: account index = n * random() ** skew, so 1 is
    uniform and larger values make a few accounts very busy.
    """
    rng = random.Random(seed)
    accounts: dict[str, _Account] = {}
    now = _START
    last: dict[str, Any] | None = None
    for _ in range(n_events):
        now += timedelta(milliseconds=rng.randint(1, 400))
        acct_id = f"acct-{int(n_accounts * rng.random() ** skew):06d}"
        acct = accounts.setdefault(acct_id, _Account())
        acct.seq += 1
        base = {"event_id": f"{acct_id}-e{acct.seq}", "account_id": acct_id}
        roll = rng.random()
        if roll < 0.006 and last is not None:
            yield dict(last)  # producer retry: exact repeat
            continue
        if roll < 0.008 and last is not None:
            yield {**last, "amount": last.get("amount", 1) + 1}  # conflicting repeat
            continue
        if roll < 0.010:
            yield {"_raw": rng.choice(['{"type": "consumed", "amount": ', "not json", '{"type":"gift"}'])}
            continue
        stamp = _stamp(now, rng)
        if acct.batches == 0 or roll < 0.28 or (acct.balance <= 0 and roll < 0.5):
            acct.batches += 1
            amount = rng.choice((100, 500, 1_000, 5_000, 20_000))
            issued_at = now - timedelta(days=rng.randint(1, 30)) if rng.random() < 0.05 else now
            ev = {
                **base,
                "type": "opened" if acct.batches == 1 and rng.random() < 0.1 else "issued",
                "occurred_at": _stamp(issued_at, rng),
                "batch_id": f"{acct_id}-b{acct.batches}",
                "budget_id": rng.choice(BUDGETS),
                "amount": amount,
            }
            if ev["type"] == "opened" and rng.random() < 0.5:
                del ev["budget_id"]
            acct.balance += amount
        elif roll < 0.72 or not acct.orders:
            amount = max(1, int(rng.expovariate(1 / 400)))
            order_id = f"{acct_id}-o{acct.seq}"
            ev = {**base, "type": "consumed", "occurred_at": stamp, "order_id": order_id, "amount": amount}
            if rng.random() < 0.7:
                ev["merchant_id"] = f"m-{rng.randint(1, 50)}"
            acct.orders.append((order_id, amount))
            acct.balance -= amount
        elif roll < 0.86:
            i = rng.randrange(len(acct.orders))
            order_id, left = acct.orders[i]
            if rng.random() < 0.03:
                order_id, amount = f"{acct_id}-missing", 1
            elif rng.random() < 0.03:
                amount = left + 1
            else:
                amount = left if rng.random() < 0.5 else max(1, left // 2)
                acct.orders[i] = (order_id, left - amount)
                acct.balance += amount
            ev = {
                **base,
                "type": "refunded",
                "occurred_at": stamp,
                "refund_id": f"{acct_id}-r{acct.seq}",
                "order_id": order_id,
                "amount": max(amount, 1),
            }
        else:
            to = f"acct-{int(n_accounts * rng.random() ** skew):06d}"
            amount = max(1, acct.balance // rng.choice((2, 3, 5))) if acct.balance > 0 else 7
            ev = {
                **base,
                "type": "transferred",
                "occurred_at": stamp,
                "transfer_id": f"{acct_id}-t{acct.seq}",
                "to_account_id": to,
                "amount": amount,
            }
            if to != acct_id and amount <= acct.balance:
                acct.balance -= amount
                accounts.setdefault(to, _Account()).balance += amount
        last = ev
        yield ev


def encode_event(ev: dict[str, Any]) -> bytes:
    raw = ev.get("_raw")
    return raw.encode() if isinstance(raw, str) else msgspec.json.encode(ev)


def write_log(path: str, n_events: int, n_accounts: int, seed: int = 1) -> None:
    with open(path, "wb") as f:
        for ev in generate_events(n_events, n_accounts, seed):
            f.write(encode_event(ev) + b"\n")
