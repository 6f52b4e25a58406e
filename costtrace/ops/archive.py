"""`costtrace archive --before DATE`: settled orders' records out of the hot table, and out of state.

An order is archived when it was placed before DATE (its refund window has
passed) and it owes nothing on SUSPENSE. Its time is its consume's place in
the log: the record timestamp of the consumed event (`received_at`), which
producers set to the event's `occurred_at` (docs/producers.md), so an order
that occurred in April is archived by `--before` May 1 even when it arrived
in a historical load months later. Its refunds, whenever they came, go with
it. Its records move
to `records_archive` in chunks; each chunk copies, compares count and sum of
amounts of what it copied with what it is about to delete, and only then
deletes the hot rows, in one transaction. The views (`all_records`, `stock`,
`debt`) read both tables, so exports, reports and the reconciler see the same
records before and after. Then each account's state is told, through the
archive topic on the account's own partition, to drop those orders' slices;
a later refund of one is rejected `order_archived`. Re-running finishes
what a killed run left: moved orders not yet told are told.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import asyncpg
import msgspec

from costtrace.fleet.publish import reliable_producer
from costtrace.model.state import Archive
from costtrace.storage.db import RECORD_COLUMNS

CANDIDATES: Final = """
SELECT account_id, order_id
FROM records
WHERE order_id IS NOT NULL
GROUP BY account_id, order_id
HAVING max(received_at) FILTER (WHERE kind = 'consume') < $1
   AND coalesce(sum(amount) FILTER (WHERE batch_id = 'SUSPENSE'), 0) = 0
ORDER BY account_id, order_id
LIMIT $2
"""
# fully spent batches whose order records are archived already: their own records (issue, transfers)
SPENT_BATCHES: Final = """
SELECT h.account_id, h.batch_id
FROM records h
WHERE h.batch_id <> 'SUSPENSE'
GROUP BY h.account_id, h.batch_id
HAVING max(h.received_at) < $1 AND bool_and(h.order_id IS NULL)
   AND (SELECT sum(a.amount) FROM all_records a
        WHERE a.account_id = h.account_id AND a.batch_id = h.batch_id) = 0
ORDER BY 1, 2
LIMIT $2
"""
# the chunk's keys as two parallel arrays
IN_CHUNK: Final = "(account_id, order_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
IN_BATCH_CHUNK: Final = "(account_id, batch_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"


class ArchiveMismatch(RuntimeError):
    """A chunk's copy did not match the rows it was to replace; nothing of that chunk was deleted."""


async def _move_chunk(
    conn: asyncpg.Connection, accounts: list[str], keys: list[str], by_order: bool = True
) -> int:
    """Copy, compare count and sum, delete: one transaction per chunk of orders (or of spent batches)."""
    where = IN_CHUNK if by_order else IN_BATCH_CHUNK
    async with conn.transaction():
        totals = "count(*) AS n, coalesce(sum(amount), 0) AS total"
        source = await conn.fetchrow(f"SELECT {totals} FROM records WHERE {where}", accounts, keys)
        columns = ", ".join(name for name, _ in RECORD_COLUMNS) + ", persisted_at"
        copy = f"INSERT INTO records_archive ({columns}) SELECT {columns} FROM records WHERE {where}"
        copy += " RETURNING amount"
        copied = await conn.fetchrow(f"WITH copied AS ({copy}) SELECT {totals} FROM copied", accounts, keys)
        if (copied["n"], copied["total"]) != (source["n"], source["total"]):
            raise ArchiveMismatch(
                f"chunk of {len(keys)} keys: copied {copied['n']} records summing {copied['total']}, "
                f"hot table has {source['n']} summing {source['total']}; rolled back"
            )
        await conn.execute(f"DELETE FROM records WHERE {where}", accounts, keys)
        if not by_order:
            return int(source["n"])
        await conn.execute(
            """INSERT INTO archived_orders (account_id, order_id, records, amount)
               SELECT r.account_id, r.order_id, count(*), sum(r.amount) FROM records_archive r
               JOIN unnest($1::text[], $2::text[]) AS k(account_id, order_id) USING (account_id, order_id)
               GROUP BY r.account_id, r.order_id
               ON CONFLICT (account_id, order_id) DO NOTHING""",
            accounts, keys,
        )  # fmt: skip
        return int(source["n"])


async def _tell_states(conn: asyncpg.Connection, bootstrap: str, topic: str, **kafka: Any) -> int:
    """One archive message per account with untold orders; marked told once delivered."""
    rows = await conn.fetch(
        "SELECT account_id, order_id FROM archived_orders WHERE NOT state_told ORDER BY 1, 2"
    )
    by_account: dict[str, list[str]] = {}
    for r in rows:
        by_account.setdefault(r["account_id"], []).append(r["order_id"])
    if not by_account:
        return 0
    producer = reliable_producer(bootstrap, **kafka)
    try:
        await producer.start()  # in the try: a start that fails leaves nothing open
        for account, orders in by_account.items():
            await producer.send(topic, msgspec.json.encode(Archive(account, orders)), key=account.encode())
        await producer.flush()
    finally:
        await producer.stop()
    await conn.execute(
        "UPDATE archived_orders SET state_told = true WHERE NOT state_told AND account_id = ANY($1)",
        list(by_account),
    )
    return len(by_account)


async def archive(
    dsn: str, bootstrap: str, topic: str, before: datetime, chunk: int = 1000,
    progress: Callable[[int], None] = lambda n: None, **kafka: Any,
) -> tuple[int, int, int]:  # fmt: skip
    """(orders archived, records moved, accounts told)."""
    conn = await asyncpg.connect(dsn)
    orders = moved = 0
    try:
        while True:
            keys = await conn.fetch(CANDIDATES, before, chunk)
            if not keys:
                break
            accounts, ids = [k["account_id"] for k in keys], [k["order_id"] for k in keys]
            moved += await _move_chunk(conn, accounts, ids)
            orders += len(keys)
            progress(len(keys))
        while True:
            keys = await conn.fetch(SPENT_BATCHES, before, chunk)
            if not keys:
                break
            accounts, ids = [k["account_id"] for k in keys], [k["batch_id"] for k in keys]
            moved += await _move_chunk(conn, accounts, ids, by_order=False)
        told = await _tell_states(conn, bootstrap, topic, **kafka)
        return orders, moved, told
    finally:
        await conn.close()
