"""The reconciler: the contract's invariants checked in PostgreSQL, and traced balances against the ledger.

One run: take the fleet-wide Redis lock (with expiry, renewed while the run
lasts), record the run, check, store every finding, then act: the parked
dead letters of each account whose balance disagrees with the ledger are
replayed first, since a parked event is the likeliest cause. A second
reconciler waits or skips; a run whose lock is lost (expired, taken, Redis
gone) stops at once and says so; without Redis no run starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import LockError, RedisError

from costtrace.fleet.metrics import Health, Metrics, serve
from costtrace.fleet.settings import Settings
from costtrace.ops.dlq import Filter, replay

log = logging.getLogger(__name__)

LOCK_KEY: Final = "costtrace:reconcile:lock"  # the default fleet's (prefix `costtrace`)


def lock_key(prefix: str) -> str:
    """The fleet's reconcile lock in Redis, under its topic prefix like its switch."""
    return f"{prefix}:reconcile:lock"


# kind -> (SQL, description); each row becomes one finding
CHECKS: Final[dict[str, tuple[str, str]]] = {
    "batch_bounds": (
        """SELECT account_id, batch_id, amount, remaining FROM stock
           WHERE amount IS NULL OR remaining < 0 OR remaining > amount""",
        "per batch: 0 <= remaining <= amount",
    ),
    "order_overrefunded": (
        """SELECT account_id, order_id,
                  coalesce(-sum(amount) FILTER (WHERE kind = 'consume'), 0) AS consumed,
                  coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0) AS refunded
           FROM all_records WHERE order_id IS NOT NULL GROUP BY account_id, order_id
           HAVING coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0)
                > coalesce(-sum(amount) FILTER (WHERE kind = 'consume'), 0)""",
        "per order: refunds never exceed what was consumed",
    ),
    "debt_with_stock": (
        """SELECT d.account_id, d.debt, sum(s.remaining) AS stock FROM debt d JOIN stock s USING (account_id)
           WHERE s.remaining > 0 GROUP BY d.account_id, d.debt""",
        "no account has both debt and open stock",
    ),
    "budget_transfer_imbalance": (
        """SELECT budget_id, sum(amount) AS net FROM all_records WHERE kind IN ('transfer_in', 'transfer_out')
           GROUP BY budget_id HAVING sum(amount) <> 0""",
        "transfers move coins between accounts, never between budgets (a credit in flight shows here too)",
    ),
}
BALANCES: Final = """
WITH traced AS (SELECT account_id, sum(amount) AS balance FROM all_records GROUP BY account_id)
SELECT coalesce(t.account_id, l.account_id) AS account_id,
       coalesce(t.balance, 0) AS traced, coalesce(l.balance, 0) AS ledger
FROM traced t FULL JOIN ledger_balances l USING (account_id)
WHERE coalesce(t.balance, 0) <> coalesce(l.balance, 0)
ORDER BY 1
"""
OLD_DEBT: Final = """
SELECT account_id, order_id, -sum(amount) AS debt, min(received_at) AS since
FROM all_records WHERE batch_id = 'SUSPENSE' GROUP BY account_id, order_id
HAVING sum(amount) < 0 AND min(received_at) < now() - $1::interval
ORDER BY since
"""


class LockLost(RuntimeError):
    """The reconcile lock expired or was taken while a run held it."""


@dataclass
class RunResult:
    status: str  # ok | mismatches | lost_lock | skipped
    run_id: int | None = None
    mismatches: int = 0
    old_debts: int = 0
    findings: dict[str, int] = field(default_factory=dict)
    actions: dict[str, Any] = field(default_factory=dict)
    why: str = ""
    ledger_accounts: int = 0  # balances in the ledger; 0: none loaded, none compared
    # (kind, account_id, detail) of every finding, in the order found
    details: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)

    def describe(self, limit: int = 20) -> list[str]:
        """What the run found, for a person: each kind's count, then up to `limit` of its findings."""
        if self.status == "skipped":
            return [f"skipped: {self.why}"]
        outcome = self.status
        if not self.ledger_accounts:
            outcome += " (no ledger loaded: no balance was compared; `costtrace ledger load FILE`)"
        lines = [f"run {self.run_id}: {outcome}"]
        details = self._up_to(limit)
        for kind, n in sorted(self.findings.items()):
            lines.append(f"  {kind}: {n}")
            shown = [(a, d) for k, a, d in details if k == kind]
            for account, detail in shown:
                lines.append(f"    {account or '-'}: {_said(kind, detail)}")
            if n > len(shown):
                lines.append(
                    f"    ... and {n - len(shown):,} more (reconcile_findings, run_id {self.run_id})"
                )
        redriven = self.actions.get("replayed_parked_letters", {})
        for account, n in sorted(redriven.items()):
            lines.append(
                f"  re-drove {n} parked letter(s) of {account} to Kafka: reconcile again once applied"
            )
        if self.mismatches and not redriven:
            lines.append("  no parked letters of the mismatching accounts to re-drive")
        return lines

    def as_json(self, limit: int | None = None) -> dict[str, Any]:
        """The run for tools: counts whole, findings up to `limit` per kind (all with None)."""
        details = [{"kind": k, "account_id": a, **d} for k, a, d in self._up_to(limit)]
        return {
            "run_id": self.run_id, "status": self.status, "why": self.why or None,
            "ledger_compared": self.ledger_accounts > 0, "ledger_accounts": self.ledger_accounts,
            "findings": dict(sorted(self.findings.items())), "details": details,
            "re_driven": self.actions.get("replayed_parked_letters", {}),
        }  # fmt: skip

    def _up_to(self, limit: int | None) -> list[tuple[str, str | None, dict[str, Any]]]:
        """The findings, the first `limit` of each kind (all with None), in the order found."""
        seen: Counter[str] = Counter()
        out = []
        for kind, account, detail in self.details:
            seen[kind] += 1
            if limit is None or seen[kind] <= limit:
                out.append((kind, account, detail))
        return out


def _said(kind: str, detail: dict[str, Any]) -> str:
    """One finding in words: a balance mismatch as its two amounts and their difference."""
    if kind == "balance_mismatch":
        traced, ledger = detail.get("traced", 0), detail.get("ledger", 0)
        return f"traced {traced:,}, ledger {ledger:,} (traced - ledger = {traced - ledger:+,})"
    return ", ".join(f"{k} {v}" for k, v in detail.items() if k != "account_id")


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _jsonable(row: asyncpg.Record) -> dict[str, Any]:
    """A row for a finding's detail: times as ISO 8601; sums of coins (numeric) as integers."""

    def plain(v: Any) -> Any:
        if isinstance(v, Decimal):
            return int(v)
        return v.isoformat() if hasattr(v, "isoformat") else v

    return {k: plain(v) for k, v in row.items()}


Finding = tuple[str, str | None, str]  # kind, account_id, detail (JSON)


async def _checks(conn: asyncpg.Connection, debt_age: timedelta) -> tuple[list[Finding], int, int]:
    """Every finding; the number of ledger mismatches and of old debts."""
    findings: list[Finding] = []
    for kind, (sql, _) in CHECKS.items():
        for row in await conn.fetch(sql):
            findings.append((kind, row.get("account_id"), json.dumps(_jsonable(row))))
    mismatches = 0
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM ledger_balances)"):
        for row in await conn.fetch(BALANCES):
            findings.append(("balance_mismatch", row["account_id"], json.dumps(_jsonable(row))))
            mismatches += 1
    old = await conn.fetch(OLD_DEBT, debt_age)
    for row in old:
        findings.append(("old_debt", row["account_id"], json.dumps(_jsonable(row))))
    return findings, mismatches, len(old)


async def _run(
    dsn: str, bootstrap: str, holder: str, debt_age: timedelta, before_actions: Callable[[], Awaitable[None]]
) -> RunResult:
    conn = await asyncpg.connect(dsn)
    try:
        start = "INSERT INTO reconcile_runs (started_at, status, holder) VALUES (now(), 'running', $1)"
        run_id = await conn.fetchval(start + " RETURNING run_id", holder)
        result = RunResult("running", run_id)
        try:
            findings, result.mismatches, result.old_debts = await _checks(conn, debt_age)
            await conn.executemany(
                "INSERT INTO reconcile_findings (run_id, kind, account_id, detail) VALUES ($1, $2, $3, $4)",
                [(run_id, *f) for f in findings],
            )
            for kind, account, detail in findings:
                result.findings[kind] = result.findings.get(kind, 0) + 1
                result.details.append((kind, account, json.loads(detail)))
            result.ledger_accounts = await conn.fetchval("SELECT count(*) FROM ledger_balances")
            await before_actions()
            mismatched = sorted({a for kind, a, _ in findings if kind == "balance_mismatch" and a})
            replayed = {}
            for account in mismatched:
                sent = (
                    await replay(dsn, bootstrap, Filter(account=account), by=f"reconcile run {run_id}")
                ).sent
                if sent:
                    replayed[account] = sent
            result.actions = {"replayed_parked_letters": replayed}
            result.status = "mismatches" if result.mismatches or len(findings) > result.old_debts else "ok"
        except asyncio.CancelledError:
            result.status = "lost_lock"
            raise
        finally:
            status = result.status if result.status != "running" else "failed"
            await asyncio.shield(
                conn.execute(
                    """UPDATE reconcile_runs SET finished_at = now(), status = $2,
                       accounts = (SELECT count(*) FROM ledger_balances), mismatches = $3, old_debts = $4,
                       actions = $5 WHERE run_id = $1""",
                    run_id,
                    status,
                    result.mismatches,
                    result.old_debts,
                    json.dumps(result.actions),
                )
            )
        return result
    finally:
        await conn.close()


async def reconcile(
    dsn: str,
    redis_url: str,
    bootstrap: str,
    *,
    wait: bool = False,
    lock_ttl: float = 30.0,
    debt_age: timedelta = timedelta(days=30),
    holder: str | None = None,
    before_actions: Callable[[], Awaitable[None]] = lambda: asyncio.sleep(0),
    key: str = LOCK_KEY,
) -> RunResult:
    """One run under the fleet-wide lock; `wait` for a running one to finish, or skip."""
    holder = holder or holder_name()
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    lock = client.lock(key, timeout=lock_ttl, blocking=wait, blocking_timeout=None, thread_local=False)
    try:
        try:
            if not await lock.acquire(token=holder.encode()):
                return RunResult("skipped", why="another reconciler holds the lock")
        except (RedisError, OSError) as exc:
            return RunResult("skipped", why=f"Redis unavailable ({exc!r}): no lock, no run")
        lost = asyncio.Event()

        async def renew() -> None:
            while True:
                await asyncio.sleep(lock_ttl / 3)
                try:
                    await lock.reacquire()
                except (LockError, RedisError, OSError) as exc:
                    log.error("reconcile lock lost (%r): stopping the run", exc)
                    lost.set()
                    return

        renewal = asyncio.create_task(renew())
        run = asyncio.create_task(_run(dsn, bootstrap, holder, debt_age, before_actions))
        stop = asyncio.create_task(lost.wait())
        try:
            await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
            if lost.is_set() and not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                raise LockLost(f"the reconcile lock ({key}) was lost; the run stopped")
            return run.result()
        finally:
            for task in (renewal, stop):
                task.cancel()
            with contextlib.suppress(LockError, RedisError, OSError):
                await lock.release()  # expired or taken: nothing of ours to release
    finally:
        await client.aclose()


async def load_ledger(dsn: str, rows: list[tuple[str, int, Any]], replace: bool = False) -> tuple[int, int]:
    """The accounting service's balances (account_id, balance, as_of), in one transaction.

    Each account in `rows` gets its balance from them; the ledger's other
    accounts keep theirs, or with `replace` are removed (the file is then the
    whole ledger). Returns (balances loaded, other accounts kept or removed).
    """
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            accounts = [account for account, _, _ in rows]
            others = "SELECT count(*) FROM ledger_balances WHERE NOT (account_id = ANY($1::text[]))"
            other = int(await conn.fetchval(others, accounts))
            if replace:
                await conn.execute("DELETE FROM ledger_balances")
            await conn.executemany(
                """INSERT INTO ledger_balances (account_id, balance, as_of) VALUES ($1, $2, $3)
                   ON CONFLICT (account_id) DO UPDATE SET balance = EXCLUDED.balance, as_of = EXCLUDED.as_of,
                   loaded_at = now()""",
                rows,
            )
        return len(rows), other
    finally:
        await conn.close()


def parse_ledger(name: str, text: str) -> list[tuple[str, int, datetime | None]]:
    """The accounting service's export: CSV (`account_id,balance[,as_of]`, with that header), or JSON (a list
    of objects, or one object per line) with the same fields. Balances are integers, never floats."""
    rows: list[tuple[str, int, datetime | None]] = []

    def add(where: str, account: Any, balance: Any, as_of: Any) -> None:
        if not isinstance(account, str) or not account:
            raise ValueError(f"{where}: account_id must be a non-empty string, not {account!r}")
        if isinstance(balance, str) and re.fullmatch(r"-?\d+", balance.strip()):
            balance = int(balance)
        if isinstance(balance, bool) or not isinstance(balance, int):
            raise ValueError(f"{where}: balance must be an integer number of coins, not {balance!r}")
        at = None
        if as_of not in (None, ""):
            try:
                at = datetime.fromisoformat(str(as_of))
            except ValueError as exc:
                raise ValueError(f"{where}: as_of is not an ISO 8601 time: {as_of!r}") from exc
        rows.append((account, balance, at))

    stripped = text.lstrip()
    if name.endswith((".json", ".jsonl")) or stripped.startswith(("[", "{")):
        try:
            items = json.loads(text) if stripped.startswith("[") else [
                json.loads(line) for line in text.splitlines() if line.strip()
            ]  # fmt: skip
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: not JSON: {exc}") from exc
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise ValueError(f"{name} item {i}: an object with account_id and balance expected")
            add(f"{name} item {i}", item.get("account_id"), item.get("balance"), item.get("as_of"))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"account_id", "balance"} <= set(reader.fieldnames):
            raise ValueError(f"{name}: CSV needs a header with account_id and balance (and optionally as_of)")
        for line, rec in enumerate(reader, 2):
            add(f"{name} line {line}", rec.get("account_id"), rec.get("balance"), rec.get("as_of"))
    seen: set[str] = set()
    for account, _, _ in rows:
        if account in seen:
            raise ValueError(f"{name}: account {account!r} appears twice")
        seen.add(account)
    return rows


async def reconcile_with(settings: Settings, **options: Any) -> RunResult:
    """One run on the fleet's settings (see `reconcile` for the options)."""
    dsn, redis_url = settings.postgres_dsn.get_secret_value(), settings.redis_url.get_secret_value()
    return await reconcile(
        dsn, redis_url, settings.kafka_bootstrap, key=lock_key(settings.topic_prefix), **options
    )


async def run_on_schedule(
    settings: Settings, every: float, wait: bool, debt_age: timedelta, lock_ttl: float
) -> None:
    """`costtrace reconcile --every`: a run each period (skipped while another holds the lock)."""
    metrics = Metrics()
    metrics.info.labels("reconciler", "costtrace-reconciler").set(1)
    runner = await serve(metrics, Health(lambda: None, lambda: None), settings.http_host, settings.http_port)
    try:
        while True:
            try:
                result = await reconcile_with(settings, wait=wait, lock_ttl=lock_ttl, debt_age=debt_age)
            except LockLost as exc:
                log.error("%s", exc)
                metrics.reconcile_runs.labels("lost_lock").inc()
            except (OSError, asyncpg.PostgresError) as exc:
                log.error("reconcile run failed: %r", exc)
                metrics.reconcile_runs.labels("failed").inc()
            else:
                metrics.reconcile_runs.labels(result.status).inc()
                if result.status in ("ok", "mismatches"):
                    metrics.reconcile_mismatches.set(sum(result.findings.values()) - result.old_debts)
                    metrics.reconcile_old_debts.set(result.old_debts)
                    metrics.reconcile_last_success.set(time.time())
                log.info("reconcile: %s %s %s", result.status, result.findings, result.why)
            await asyncio.sleep(every)
    finally:
        await runner.cleanup()
