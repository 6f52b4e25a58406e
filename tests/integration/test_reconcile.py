"""The reconciler on the real stack: findings, the ledger, re-driving parked letters, what the command says,
and its Redis lock (two reconcilers racing, a lost lock, Redis down and back)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from costtrace.ops.reconcile import LOCK_KEY, LockLost, RunResult, load_ledger, reconcile
from tests.integration.fleet import Fleet
from tests.integration.test_compensation import event, eventually, query, start


def run(fleet: Fleet, redis_url: str | None = None, **kw: Any) -> RunResult:
    url = redis_url or fleet.env["COSTTRACE_REDIS_URL"]
    return asyncio.run(reconcile(fleet.dsn, url, fleet.settings.kafka_bootstrap, **kw))


@pytest.fixture
def lock_free(fleet: Fleet) -> Iterator[None]:
    client = redis.Redis.from_url(fleet.env["COSTTRACE_REDIS_URL"])
    client.delete(LOCK_KEY)
    yield
    client.delete(LOCK_KEY)


def test_a_mismatch_with_the_ledger_re_drives_the_accounts_parked_letters(
    fleet: Fleet, lock_free: None
) -> None:
    start(fleet, attempts=1)  # nothing retried: the early refund is parked at once
    fleet.publish(
        [event(event_id="i1", type="issued", account_id="ann", batch_id="b1", budget_id="B1", amount=100)]
    )
    fleet.publish(
        [event(event_id="r1", type="refunded", account_id="ann", refund_id="f1", order_id="o1", amount=20)]
    )
    eventually(lambda: query(fleet, "SELECT 1 FROM parked_letters WHERE event_id = 'r1'"))
    # its order comes after the refund in the log too (a producer's mistake): the refund stays parked
    fleet.publish([event(event_id="c1", type="consumed", account_id="ann", order_id="o1", amount=60,
                         occurred_at="2026-03-01T11:00:00Z")])  # fmt: skip
    fleet.drain()
    # the accounting service knows the refund: 100 - 60 + 20
    asyncio.run(load_ledger(fleet.dsn, [("ann", 60, None)]))

    first = run(fleet, debt_age=timedelta(days=1))
    assert first.status == "mismatches"
    assert first.findings == {"balance_mismatch": 1}
    assert first.actions == {"replayed_parked_letters": {"ann": 1}}
    finding = query(fleet, "SELECT kind, account_id, detail FROM reconcile_findings")
    assert [(f["kind"], f["account_id"]) for f in finding] == [("balance_mismatch", "ann")]
    assert '"traced": 40' in finding[0]["detail"] and '"ledger": 60' in finding[0]["detail"]
    said = first.describe()
    assert "    ann: traced 40, ledger 60 (traced - ledger = -20)" in said
    assert "  re-drove 1 parked letter(s) of ann to Kafka: reconcile again once applied" in said

    eventually(lambda: query(fleet, "SELECT 1 FROM records WHERE event_id = 'r1'"))
    fleet.drain()
    second = run(fleet, debt_age=timedelta(days=1))
    assert second.status == "ok" and second.findings == {}
    runs = query(fleet, "SELECT status, accounts, mismatches FROM reconcile_runs ORDER BY run_id")
    assert runs == [
        {"status": "mismatches", "accounts": 1, "mismatches": 1},
        {"status": "ok", "accounts": 1, "mismatches": 0},
    ]


def test_broken_invariants_and_old_debt_are_found(fleet: Fleet, lock_free: None) -> None:
    start(fleet, attempts=1)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")  # a debt's age counts from its order's time
    fleet.publish(
        [event(event_id="c1", type="consumed", account_id="cy", order_id="o1", amount=30, occurred_at=now)]
    )  # all debt
    fleet.drain()
    # a row no allocator would write: a refund larger than its order
    columns = (
        "record_id, event_id, kind, account_id, batch_id, budget_id, amount, order_id, step, seq, source"
    )
    values = "'x-0', 'x', 'refund', 'cy', 'SUSPENSE', 'SUSPENSE', 50, 'o1', 9, 0, 't'"
    query(fleet, f"INSERT INTO records ({columns}) VALUES ({values})")
    result = run(fleet, debt_age=timedelta(0))
    assert result.findings == {"order_overrefunded": 1}
    assert result.status == "mismatches"
    query(fleet, "DELETE FROM records WHERE record_id = 'x-0'")
    result = run(fleet, debt_age=timedelta(0))
    assert result.findings == {"old_debt": 1} and result.status == "ok"
    assert run(fleet, debt_age=timedelta(days=1)).findings == {}


def test_two_reconcilers_race_one_runs_the_other_skips_or_waits(fleet: Fleet, lock_free: None) -> None:
    url = fleet.env["COSTTRACE_REDIS_URL"]
    bootstrap = fleet.settings.kafka_bootstrap

    async def race() -> tuple[RunResult, RunResult, RunResult]:
        release = asyncio.Event()
        started = asyncio.Event()

        async def hold() -> None:
            started.set()
            await release.wait()

        first = asyncio.create_task(reconcile(fleet.dsn, url, bootstrap, holder="first", before_actions=hold))
        await started.wait()
        skipped = await reconcile(fleet.dsn, url, bootstrap, holder="second")
        waiting = asyncio.create_task(reconcile(fleet.dsn, url, bootstrap, holder="third", wait=True))
        await asyncio.sleep(1.0)
        assert not waiting.done()  # still waiting for the lock
        release.set()
        return await first, skipped, await waiting

    first, skipped, waited = asyncio.run(race())
    assert first.status == "ok" and waited.status == "ok"
    assert skipped.status == "skipped" and "another reconciler" in skipped.why
    runs = query(fleet, "SELECT holder, started_at, finished_at FROM reconcile_runs ORDER BY run_id")
    assert [r["holder"] for r in runs] == ["first", "third"]
    assert runs[1]["started_at"] >= runs[0]["finished_at"]  # never at once


def test_a_lost_lock_stops_the_run(fleet: Fleet, lock_free: None) -> None:
    client = redis.Redis.from_url(fleet.env["COSTTRACE_REDIS_URL"])

    async def steal() -> None:
        client.set(LOCK_KEY, b"someone-else")  # as if it had expired and another took it
        await asyncio.sleep(5)

    with pytest.raises(LockLost):
        run(fleet, lock_ttl=1.5, before_actions=steal)
    assert query(fleet, "SELECT status FROM reconcile_runs") == [{"status": "lost_lock"}]
    assert client.get(LOCK_KEY) == b"someone-else"  # not released by the loser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_without_redis_no_run_starts_and_runs_resume_when_it_returns(fleet: Fleet, tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = shutil.which("redis-server") or "/usr/bin/redis-server"

    def redis_up() -> subprocess.Popen[bytes]:
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        eventually(lambda: redis.Redis(port=port).ping())
        return proc

    down = run(fleet, url)
    assert down.status == "skipped" and "Redis unavailable" in down.why
    assert query(fleet, "SELECT * FROM reconcile_runs") == []
    proc = redis_up()
    try:
        assert run(fleet, url).status == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    time.sleep(0.2)
    assert run(fleet, url).status == "skipped"


def costtrace(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costtrace.cli", *args],
        env=fleet.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_names_what_it_found_and_the_ledger_is_replaced_only_when_asked(
    fleet: Fleet, lock_free: None, tmp_path: Path
) -> None:
    empty = costtrace(fleet, "reconcile", "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["ledger_compared"] is False
    assert "no ledger loaded: no balance was compared" in costtrace(fleet, "reconcile").stdout

    (tmp_path / "three.csv").write_text("account_id,balance\na,5\nb,6\nc,7\n")
    (tmp_path / "two.csv").write_text("account_id,balance\na,8\nb,9\n")
    assert (
        "loaded 3 ledger balance(s)" in costtrace(fleet, "ledger", "load", str(tmp_path / "three.csv")).stdout
    )
    merged = costtrace(fleet, "ledger", "load", str(tmp_path / "two.csv"))
    assert "loaded 2 ledger balance(s); 1 other account(s) keep their earlier balances" in merged.stdout
    balances = query(fleet, "SELECT account_id, balance FROM ledger_balances ORDER BY 1")
    assert [(r["account_id"], r["balance"]) for r in balances] == [("a", 8), ("b", 9), ("c", 7)]

    text = costtrace(fleet, "reconcile")
    assert text.returncode == 1, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert "  balance_mismatch: 3" in lines
    assert "    c: traced 0, ledger 7 (traced - ledger = -7)" in lines
    assert lines[-1] == "  no parked letters of the mismatching accounts to re-drive"

    replaced = costtrace(fleet, "ledger", "load", "--replace", str(tmp_path / "two.csv"))
    assert "replaced the ledger: 2 balance(s) loaded, 1 other account(s) removed" in replaced.stdout
    assert [r["account_id"] for r in query(fleet, "SELECT account_id FROM ledger_balances ORDER BY 1")] == [
        "a",
        "b",
    ]
    tool = costtrace(fleet, "reconcile", "--json", "--limit", "1")
    assert tool.returncode == 1
    report = json.loads(tool.stdout)
    assert report["findings"] == {"balance_mismatch": 2} and report["ledger_accounts"] == 2
    assert report["details"] == [{"kind": "balance_mismatch", "account_id": "a", "traced": 0, "ledger": 8}]
