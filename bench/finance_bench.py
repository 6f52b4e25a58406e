"""Finance's questions at scale: a month's statement over tens of millions of records, and cost traces.

Loads synthetic records into a database of its own with COPY (the schema at
the migration before the day summaries existed), then upgrades it to the
newest migration, which fills the summaries from those records exactly as it
does on a production database; then times, over the real queries
(costtrace/finance/queries.py):
- a month's statement, by budget, and by budget and merchant;
- an order's trace, an account's stock record and a batch's trace, for
  accounts and orders drawn at random.
It prints each figure (median and p99 of the repeats) beside the target.

    python -m bench.finance_bench [--records 50000000] [--keep]

Each account's records follow one story: batches issued from a few of 20
budgets, orders at 500 merchants (some running into debt that a later
batch pays back), refunds, transfers to other accounts. Posted over the 90
days from 2026-02-01, so a month holds about a third of them.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config

from costtrace.finance import queries
from costtrace.finance.statement import Period
from costtrace.storage.db import MIGRATIONS, sqlalchemy_url
from dev.demo import stack_env
from dev.harness import create_database, drop_database

START = datetime(2026, 2, 1, tzinfo=UTC)
DAYS = 90
PER_ACCOUNT = 50  # records
BUDGETS = [f"budget-{i:02d}" for i in range(20)]
MERCHANTS = [f"merchant-{i:03d}" for i in range(500)]
COLUMNS = (
    "record_id", "event_id", "kind", "account_id", "batch_id", "budget_id", "amount", "order_id", "refund_id",
    "transfer_id", "merchant_id", "step", "seq", "source", "received_at", "persisted_at",
)  # fmt: skip
BEFORE_SUMMARIES = "0006"  # records without occurred_at: each event's time is its received_at then


def account_records(i: int, accounts: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    """One account's 50 records, in its order: the shape of a busy agent's month."""
    a = f"acct-{i:08d}"
    t = START + timedelta(seconds=rng.randrange(DAYS * 86400 - 7 * 86400))
    batches = []
    out: list[tuple[str, str, str, int, str | None, str | None, str | None, str | None]] = []
    for b in range(5):
        batch, budget = f"{a}-b{b}", rng.choice(BUDGETS)
        batches.append((batch, budget))
        out.append(("issue", batch, budget, 1000, None, None, None, None))
    for o in range(20):
        batch, budget = batches[o % 5]
        merchant = rng.choice(MERCHANTS)
        order = f"{a}-o{o}"
        out.append(("consume", batch, budget, -40, order, None, None, merchant))
        if o % 10 == 9:  # ran into debt, paid back by a later batch
            out.append(("consume", "SUSPENSE", "SUSPENSE", -10, order, None, None, merchant))
            later, later_budget = batches[(o + 1) % 5]
            out.append(("trueup", later, later_budget, -10, order, None, None, merchant))
            out.append(("trueup", "SUSPENSE", "SUSPENSE", 10, order, None, None, merchant))
        if o % 3 == 0:
            out.append(("refund", batch, budget, 15, order, f"{a}-r{o}", None, merchant))
    while len(out) < PER_ACCOUNT:
        n = len(out)
        batch, budget = batches[n % 5]
        if n % 2:
            out.append(("transfer_out", batch, budget, -5, None, None, f"{a}-t{n}", None))
        else:  # received from another account's batch
            sender = f"acct-{rng.randrange(accounts):08d}"
            out.append(("transfer_in", f"{sender}/{sender}-t{n}/{sender}-b0", budget, 5, None, None,
                        f"{sender}-t{n}", None))  # fmt: skip
    for step, (kind, batch_id, budget_id, amount, order_id, refund_id, transfer_id, shop) in enumerate(
        out, 1
    ):
        t += timedelta(seconds=rng.randrange(1, 12000))
        event = f"{a}-e{step}"
        yield (
            f"{event}-0", event, kind, a, batch_id, budget_id, amount, order_id, refund_id, transfer_id, shop,
            step, 0,
            "bench", t, t + timedelta(seconds=rng.randrange(1, 5)),
        )  # fmt: skip


def every_record(records: int, seed: int) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    accounts = records // PER_ACCOUNT
    for i in range(accounts):
        yield from account_records(i, accounts, rng)


def alembic(dsn: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn))
    command.upgrade(cfg, revision)


async def load(dsn: str, records: int, seed: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        # bulk load as a DBA would: indexes dropped, rows copied, indexes built again
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'records' AND indexname <> 'records_pkey'"
        )
        for ix in indexes:
            await conn.execute(f"DROP INDEX {ix['indexname']}")
        await conn.execute("ALTER TABLE records DROP CONSTRAINT records_pkey")
        started, done = time.perf_counter(), 0
        rows = every_record(records, seed)
        while True:
            chunk = [row for _, row in zip(range(200_000), rows, strict=False)]
            if not chunk:
                break
            await conn.copy_records_to_table("records", records=chunk, columns=COLUMNS)
            done += len(chunk)
            if done % 5_000_000 < 200_000:
                print(
                    f"  {done:,} records copied ({done / (time.perf_counter() - started):,.0f}/s)", flush=True
                )
        print(f"copied {done:,} records in {time.perf_counter() - started:,.0f} s", flush=True)
        started = time.perf_counter()
        await conn.execute("ALTER TABLE records ADD PRIMARY KEY (record_id)")
        for ix in indexes:
            await conn.execute(ix["indexdef"])
        await conn.execute("ANALYZE records")
        print(f"indexes built in {time.perf_counter() - started:,.0f} s", flush=True)
    finally:
        await conn.close()


def timed(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"median {statistics.median(ordered) * 1000:,.1f} ms, p99 {p99 * 1000:,.1f} ms ({len(samples)} runs)"
    )


async def measure(dsn: str, records: int, seed: int) -> None:
    conn = await asyncpg.connect(dsn)
    rng = random.Random(seed + 1)
    accounts = records // PER_ACCOUNT
    try:
        month = Period(date(2026, 3, 1), date(2026, 4, 1))
        in_month = await conn.fetchval(
            "SELECT sum(records) FROM budget_days WHERE posted_on >= $1 AND posted_on < $2",
            month.start,
            month.end,
        )
        summary_rows = await conn.fetchval("SELECT (SELECT count(*) FROM budget_days) + "
                                           "(SELECT count(*) FROM merchant_days)")  # fmt: skip
        print(f"a month ({month.start} to {month.end}) holds {in_month:,} of {records:,} records; "
              f"the day summaries hold {summary_rows:,} rows")  # fmt: skip
        for by_merchant in (False, True):
            samples = []
            for _ in range(7):
                started = time.perf_counter()
                s = await queries.statement(conn, month, by_merchant)
                samples.append(time.perf_counter() - started)
            what = "budget and merchant" if by_merchant else "budget"
            lines = f"{len(s.lines)} lines, {len(s.merchants)} merchant lines"
            print(f"statement of a month by {what} ({lines}): {timed(samples)}  [target: under 2 s]")
        for name, work in (
            ("order trace", lambda a, r: queries.order_trace(conn, a, f"{a}-o{r.randrange(20)}")),
            ("account trace (stock record)", lambda a, r: queries.account_trace(conn, a)),
            ("batch trace", lambda a, r: queries.batch_trace(conn, a, f"{a}-b{r.randrange(5)}")),
        ):
            samples = []
            for _ in range(200):
                account = f"acct-{rng.randrange(accounts):08d}"
                started = time.perf_counter()
                await work(account, rng)
                samples.append(time.perf_counter() - started)
            target = "  [target: under 50 ms]" if name == "order trace" else ""
            print(f"{name}: {timed(samples)}{target}")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="measure the database a --keep run left")
    parser.add_argument("--keep", action="store_true", help="leave the database for another look")
    args = parser.parse_args()
    admin = stack_env()["COSTTRACE_POSTGRES_DSN"]
    name = f"bench_finance_{args.records}"
    dsn = admin.rsplit("/", 1)[0] + f"/{name}"
    if not args.reuse:
        dsn = asyncio.run(create_database(admin, name, fresh=True))
        alembic(dsn, BEFORE_SUMMARIES)
        asyncio.run(load(dsn, args.records, args.seed))
        started = time.perf_counter()
        alembic(dsn, "head")  # the summaries, filled from the records as on a production database
        print(f"migrated to the newest schema (summaries filled) in {time.perf_counter() - started:,.0f} s")
    asyncio.run(measure(dsn, args.records, args.seed))
    if not args.keep and not args.reuse:
        asyncio.run(drop_database(admin, name))


if __name__ == "__main__":
    main()
