"""What keeping the statement's day summaries costs the sink: records posted with them and without.

Replay's records of a sample day, posted in batches as the sink posts them
(one statement per batch, each in its own transaction), into two fresh
databases side by side, in alternating pairs: once with the sink's statement
(`POST_RECORDS`: the records and, from what was inserted, the day
summaries), once with a plain insert of the records alone (what the sink did
before). Prints records/s of each and their ratio per pair.

    python -m bench.posting_bench [--events 100000] [--batch 1000] [--pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from typing import Any

import asyncpg
import msgspec

from costtrace.model.replay import replay
from costtrace.ops.sample import encode_event, generate_events
from costtrace.storage.db import POST_RECORDS, RECORD_COLUMNS, insert_sql, migrate
from dev.demo import stack_env
from dev.harness import create_database

PLAIN = insert_sql("records", RECORD_COLUMNS)


def sample_rows(events: int) -> list[tuple[Any, ...]]:
    out = io.BytesIO()
    replay((encode_event(e) for e in generate_events(events, events // 20, seed=3)), out)
    rows = []
    for step, line in enumerate(out.getvalue().splitlines()):
        r = msgspec.json.decode(line)
        if r["kind"] == "rejected":
            continue
        rows.append((
            r["record_id"], r["event_id"], r["kind"], r["account_id"], r["batch_id"], r["budget_id"],
            r["amount"], r.get("order_id"), r.get("refund_id"), r.get("transfer_id"), r.get("merchant_id"),
            step, 0, "bench", None, None,
        ))  # fmt: skip
    return rows


async def post(dsn: str, rows: list[tuple[Any, ...]], batch: int, with_summaries: bool) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE records, budget_days, merchant_days")
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            columns = list(zip(*rows[i : i + batch], strict=True))
            async with conn.transaction():
                if with_summaries:
                    await conn.execute(POST_RECORDS, *columns, None)
                else:
                    await conn.execute(PLAIN, *columns)
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    admin = stack_env()["COSTTRACE_POSTGRES_DSN"]
    rows = sample_rows(args.events)
    dsn = asyncio.run(create_database(admin, "bench_posting", fresh=True))
    migrate(dsn)
    print(f"{len(rows):,} records of {args.events:,} events, in batches of {args.batch:,}")
    ratios = []
    for pair in range(args.pairs):
        plain = asyncio.run(post(dsn, rows, args.batch, with_summaries=False))
        summed = asyncio.run(post(dsn, rows, args.batch, with_summaries=True))
        ratios.append(summed / plain)
        print(f"pair {pair + 1}: records alone {plain:,.0f}/s, with the day summaries {summed:,.0f}/s "
              f"({summed / plain:.2f}x)")  # fmt: skip
    print(f"median ratio: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
