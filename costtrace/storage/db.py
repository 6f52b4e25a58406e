"""PostgreSQL: migrations (Alembic), idempotent batch writes (asyncpg), export."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import asyncpg

from costtrace.contract.records import SUSPENSE

log = logging.getLogger(__name__)

MIGRATIONS: Final = Path(__file__).parent / "migrations"

# (column, PostgreSQL type) in the order the sink builds its rows
RECORD_COLUMNS: Final = (
    ("record_id", "text"), ("event_id", "text"), ("kind", "text"), ("account_id", "text"),
    ("batch_id", "text"), ("budget_id", "text"), ("amount", "bigint"), ("order_id", "text"),
    ("refund_id", "text"), ("transfer_id", "text"), ("merchant_id", "text"), ("step", "bigint"),
    ("seq", "integer"), ("source", "text"), ("received_at", "timestamptz"), ("occurred_at", "timestamptz"),
)  # fmt: skip
DEAD_LETTER_COLUMNS: Final = (
    ("source_topic", "text"), ("source_partition", "integer"), ("source_offset", "bigint"),
    ("event_id", "text"), ("account_id", "text"), ("reason", "text"), ("detail", "text"),
    ("message_key", "bytea"), ("payload", "bytea"), ("payload_size", "bigint"),
    ("message_timestamp", "timestamptz"), ("attempt", "integer"), ("dead_lettered_at", "timestamptz"),
    ("origin", "text"),
)  # fmt: skip
REJECT_COLUMNS: Final = (
    ("topic", "text"), ("partition", "integer"), ('"offset"', "bigint"), ("destination", "text"),
    ("reason", "text"), ("message_key", "bytea"), ("value", "bytea"), ("headers", "bytea"),
)  # fmt: skip


def insert_sql(table: str, columns: Sequence[tuple[str, str]]) -> str:
    """One round trip per batch: each column as an array, unnested; rows already held are dropped."""
    cols = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(columns, 1))
    return f"INSERT INTO {table} ({cols}) SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"


def _post_records() -> str:
    """Insert records (those held already are dropped) and add what was inserted to the day summaries.

    One statement, so one transaction: the summaries count exactly the rows
    inserted, whatever crashes or repeats (docs/finance.md). A record is
    posted on the UTC day of its `persisted_at`: now, or the last parameter
    when given (tests and the benchmark post on chosen days). Summary rows
    are added to in key order, so two sinks never wait on each other's rows
    in opposite orders.
    """
    cols = ", ".join(name for name, _ in RECORD_COLUMNS)
    arrays = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(RECORD_COLUMNS, 1))
    at = f"coalesce(${len(RECORD_COLUMNS) + 1}::timestamptz, now())"
    return f"""
        WITH posted AS (
            INSERT INTO records ({cols}, persisted_at) SELECT *, {at} FROM unnest({arrays})
            ON CONFLICT DO NOTHING
            RETURNING budget_id, merchant_id, kind, amount,
                      (persisted_at AT TIME ZONE 'UTC')::date AS posted_on,
                      (coalesce(occurred_at, received_at, persisted_at) AT TIME ZONE 'UTC')::date
                      AS occurred_on
        ), budgets AS (
            INSERT INTO budget_days AS d
            SELECT posted_on, budget_id, kind, occurred_on, sum(amount), count(*) FROM posted
            GROUP BY posted_on, budget_id, kind, occurred_on ORDER BY posted_on, budget_id, kind, occurred_on
            ON CONFLICT (posted_on, budget_id, kind, occurred_on)
            DO UPDATE SET amount = d.amount + excluded.amount, records = d.records + excluded.records
        )
        INSERT INTO merchant_days AS m
        SELECT posted_on, budget_id, coalesce(merchant_id, ''), kind, occurred_on, sum(amount), count(*)
        FROM posted WHERE kind IN ('consume', 'trueup', 'refund')
        GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (posted_on, budget_id, merchant_id, kind, occurred_on)
        DO UPDATE SET amount = m.amount + excluded.amount, records = m.records + excluded.records
    """


POST_RECORDS: Final = _post_records()
INSERT_DEAD_LETTERS: Final = insert_sql("dead_letters", DEAD_LETTER_COLUMNS)
INSERT_REJECTS: Final = insert_sql("sink_rejects", REJECT_COLUMNS)

# SQLSTATE classes (https://www.postgresql.org/docs/current/errcodes-appendix.html)
DATA_CLASSES: Final = frozenset({"22", "23"})  # data exception, integrity constraint violation
TRANSIENT_CLASSES: Final = frozenset({"08", "40", "53", "55", "57", "58"})
TRANSIENT_ERRORS: Final = (TimeoutError, OSError, asyncpg.InterfaceError)


class RowsRefused(Exception):
    """PostgreSQL refused a write for the data it holds: the same write will always fail."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


def fault_of(exc: BaseException) -> str:
    """Whose fault a failed write is: "data" (never retried), "transient" (retried), or "bug" (stop)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.PostgresError) and isinstance(sqlstate, str):
        if sqlstate[:2] in DATA_CLASSES:
            return "data"
        if sqlstate[:2] in TRANSIENT_CLASSES:
            return "transient"
        return "bug"
    if isinstance(exc, TRANSIENT_ERRORS):
        return "transient"
    return "bug"


def sqlalchemy_url(dsn: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    return dsn


def migrate(dsn: str) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn))
    command.upgrade(cfg, "head")


class Database:
    """A pool that waits for PostgreSQL and retries writes until they commit."""

    def __init__(self, dsn: str, *, max_backoff: float = 5.0) -> None:
        self.dsn = dsn
        self.max_backoff = max_backoff
        self._pool: asyncpg.Pool | None = None
        self.retries = 0

    async def pool(self) -> asyncpg.Pool:
        backoff = 0.1
        while self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=60)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("PostgreSQL not reachable (%r); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def execute(self, sql: str, *args: Any) -> None:
        """Run one idempotent statement in a transaction, retrying until it commits.

        A refusal for the data (`fault_of`) raises `RowsRefused` at once; any
        other error that is not transient is raised as it is.
        """
        backoff = 0.1
        while True:
            try:
                pool = await self.pool()
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(sql, *args)
                return
            except Exception as exc:
                fault = fault_of(exc)
                if fault == "data":
                    raise RowsRefused(exc) from exc
                if fault != "transient":
                    raise
                self.retries += 1
                log.warning("write to PostgreSQL failed (%r); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def write(self, sql: str, columns: Sequence[Sequence[Any]]) -> None:
        """One batch insert of rows given as columns (see `insert_sql`)."""
        await self.execute(sql, *columns)

    async def debt_outstanding(self) -> int:
        """Debt on SUSPENSE over every account (from the day summaries: no scan of the records)."""
        pool = await self.pool()
        sql = "SELECT coalesce(sum(amount), 0) FROM budget_days WHERE budget_id = $1"
        return -int(await pool.fetchval(sql, SUSPENSE))

    async def parked_letters(self) -> int:
        pool = await self.pool()
        return int(await pool.fetchval("SELECT count(*) FROM parked_letters WHERE status = 'parked'"))

    async def write_records(self, rows: Sequence[Sequence[Any]], posted_at: datetime | None = None) -> None:
        """Post records (rows of `RECORD_COLUMNS`); `posted_at`: their posting time (default: now)."""
        if rows:
            await self.execute(POST_RECORDS, *zip(*rows, strict=True), posted_at)

    async def write_dead_letters(self, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.write(INSERT_DEAD_LETTERS, list(zip(*rows, strict=True)))

    async def write_rejects(self, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.write(INSERT_REJECTS, list(zip(*rows, strict=True)))


async def iter_records(dsn: str) -> AsyncIterator[asyncpg.Record]:
    """Every persisted record, each account's in replay's order."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            query = (
                "SELECT record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id,"
                " refund_id, transfer_id, merchant_id FROM all_records ORDER BY account_id, step, seq"
            )
            async for row in conn.cursor(query, prefetch=5000):
                yield row
    finally:
        await conn.close()
