"""The baseline the fleet is measured against: the same FIFO work as rows in PostgreSQL, under row locks.

What a team would build first without a stream processor: one transaction per
event; the account's row locked (`SELECT ... FOR UPDATE`, both accounts of a
transfer in a fixed order); its open batches read oldest first, taken from,
written back; records inserted. Events of one account go through one worker
in order (as Kafka's partitions give), `workers` of them side by side over a
pool of connections. Rules as the contract's, simplified where the cost is
the same: debt is paid back from the next issuance, refunds reverse the
order's slices newest first, no idempotency table. Not part of the product:
a yardstick for `bench.fleet_bench`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import msgspec

from costtrace._native import partition_for

TABLES = """
DROP TABLE IF EXISTS pg_batches, pg_accounts, pg_slices, pg_records;
CREATE TABLE pg_accounts (account text PRIMARY KEY, debt bigint NOT NULL DEFAULT 0);
CREATE TABLE pg_batches (
    account text, batch_id text, budget text, issued_at text, remaining bigint,
    PRIMARY KEY (account, batch_id)
);
CREATE INDEX pg_batches_open ON pg_batches (account, issued_at, batch_id) WHERE remaining > 0;
CREATE TABLE pg_slices (account text, order_id text, seq int, batch_id text, taken bigint);
CREATE INDEX pg_slices_by_order ON pg_slices (account, order_id, seq);
CREATE TABLE pg_records (account text, event_id text, kind text, batch_id text, amount bigint);
"""

_decode = msgspec.json.Decoder()


async def _lock(conn: asyncpg.Connection, *accounts: str) -> None:
    for account in sorted(set(accounts)):  # one order for every worker: no deadlock
        await conn.execute("INSERT INTO pg_accounts (account) VALUES ($1) ON CONFLICT DO NOTHING", account)
        await conn.fetchval("SELECT debt FROM pg_accounts WHERE account = $1 FOR UPDATE", account)


async def _take(conn: asyncpg.Connection, account: str, amount: int) -> list[tuple[str, str, str, int]]:
    """FIFO from the account's open batches: (batch, budget, issued_at, taken) each."""
    rows = await conn.fetch(
        "SELECT batch_id, budget, issued_at, remaining FROM pg_batches WHERE account = $1 AND remaining > 0"
        " ORDER BY issued_at, batch_id FOR UPDATE",
        account,
    )
    slices = []
    for r in rows:
        if amount == 0:
            break
        take = min(amount, r["remaining"])
        await conn.execute(
            "UPDATE pg_batches SET remaining = remaining - $3 WHERE account = $1 AND batch_id = $2",
            account, r["batch_id"], take,
        )  # fmt: skip
        slices.append((r["batch_id"], r["budget"], r["issued_at"], take))
        amount -= take
    return slices


async def _apply(conn: asyncpg.Connection, ev: dict[str, Any]) -> None:
    kind, account, eid = ev["type"], ev["account_id"], ev["event_id"]
    record = "INSERT INTO pg_records VALUES ($1, $2, $3, $4, $5)"
    if kind in ("issued", "opened"):
        await _lock(conn, account)
        await conn.execute(
            "INSERT INTO pg_batches VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            account, ev["batch_id"], ev.get("budget_id") or "LEGACY", ev["occurred_at"], ev["amount"],
        )  # fmt: skip
        await conn.execute(record, account, eid, "issue", ev["batch_id"], ev["amount"])
        debt = await conn.fetchval("SELECT debt FROM pg_accounts WHERE account = $1", account)
        if debt:  # paid back from the open stock
            paid = sum(t for *_, t in await _take(conn, account, debt))
            await conn.execute("UPDATE pg_accounts SET debt = debt - $2 WHERE account = $1", account, paid)
            await conn.execute(record, account, eid, "trueup", "SUSPENSE", paid)
    elif kind == "consumed":
        await _lock(conn, account)
        slices = await _take(conn, account, ev["amount"])
        for seq, (batch, _, _, taken) in enumerate(slices):
            slice_ = (account, ev["order_id"], seq, batch, taken)
            await conn.execute("INSERT INTO pg_slices VALUES ($1, $2, $3, $4, $5)", *slice_)
            await conn.execute(record, account, eid, "consume", batch, -taken)
        short = ev["amount"] - sum(t for *_, t in slices)
        if short:
            await conn.execute("UPDATE pg_accounts SET debt = debt + $2 WHERE account = $1", account, short)
            await conn.execute(record, account, eid, "consume", "SUSPENSE", -short)
    elif kind == "refunded":
        await _lock(conn, account)
        left = ev["amount"]
        of_order = "SELECT seq, batch_id, taken FROM pg_slices WHERE account = $1 AND order_id = $2"
        for r in await conn.fetch(of_order + " ORDER BY seq DESC", account, ev["order_id"]):
            back = min(left, r["taken"])
            if back <= 0:
                break
            await conn.execute(
                "UPDATE pg_batches SET remaining = remaining + $3 WHERE account = $1 AND batch_id = $2",
                account, r["batch_id"], back,
            )  # fmt: skip
            await conn.execute(record, account, eid, "refund", r["batch_id"], back)
            left -= back
    elif kind == "transferred":
        to = ev["to_account_id"]
        if to == account:
            return
        await _lock(conn, account, to)
        for batch, budget, issued_at, taken in await _take(conn, account, ev["amount"]):
            new = f"{account}/{ev['transfer_id']}/{batch}"
            await conn.execute(
                "INSERT INTO pg_batches VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                to, new, budget, issued_at, taken,
            )  # fmt: skip
            await conn.execute(record, account, eid, "transfer_out", batch, -taken)
            await conn.execute(record, to, eid, "transfer_in", new, taken)


async def run(dsn: str, lines: list[bytes], workers: int = 4) -> float:
    """Apply `lines` (event JSON) with `workers` in parallel; events per second."""
    events = []
    for line in lines:
        try:
            ev = _decode.decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue
        if isinstance(ev, dict) and isinstance(ev.get("account_id"), str) and ev.get("type"):
            events.append(ev)
    queues: list[list[dict[str, Any]]] = [[] for _ in range(workers)]
    for ev in events:
        queues[partition_for(ev["account_id"].encode(), workers)].append(ev)
    pool = await asyncpg.create_pool(dsn, min_size=workers, max_size=workers)
    try:
        async with pool.acquire() as conn:
            await conn.execute(TABLES)

        async def work(queue: list[dict[str, Any]]) -> None:
            async with pool.acquire() as conn:
                for ev in queue:
                    try:
                        async with conn.transaction():
                            await _apply(conn, ev)
                    except (KeyError, TypeError, asyncpg.DataError):
                        continue  # not an event this baseline takes: the fleet rejects it

        started = time.perf_counter()
        await asyncio.gather(*(work(q) for q in queues))
        return len(lines) / (time.perf_counter() - started)
    finally:
        await pool.close()
