"""The historical node on the real stack: `costtrace migrate` killed halfway and resumed, the tracing
switch followed by a running allocator, and Redis going away and coming back."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from costtrace.model.order import occurred_ms
from costtrace.ops.migrate import canonical_instant, opening_events
from tests.integration.fleet import REPO, Fleet
from tests.integration.test_compensation import event, eventually, query
from tests.integration.test_equivalence import sample
from tests.integration.test_metrics import free_port, scrape, total

NODE = "2026-03-01T00:00:00Z"
N = 3000


class PrivateRedis:
    """A Redis of this test's own, so that it can go down without touching the shared stack."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def up(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.tmp),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        eventually(lambda: redis.Redis(port=self.port).ping())

    def down(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path)
    r.up()
    yield r
    r.down()


def consume(event_id: str, account: str, order: str, amount: int, at: str) -> bytes:
    return event(
        event_id=event_id, type="consumed", account_id=account, order_id=order, amount=amount, occurred_at=at
    )


def cli(fleet: Fleet, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "costtrace.cli", *args],
        env=fleet.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run(fleet: Fleet, *args: str) -> str:
    proc = cli(fleet, *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_a_migration_killed_halfway_resumes_and_the_switch_skips_what_the_node_holds(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    fleet.env["COSTTRACE_REDIS_URL"] = private_redis.url
    fleet.env["COSTTRACE_SWITCH_POLL"] = "0.5"
    assert "historical node 2026-03-01T00:00:00Z" in run(fleet, "switch", "on", "--node", NODE)
    port = free_port()
    fleet.start("allocator", "allocator", fleet.tmp / "state", http_port=port)
    fleet.start("sink", "sink")

    balances = fleet.tmp / "balances.csv"
    balances.write_text("account_id,balance\n" + "".join(f"acct-{i:05d},{100 + i}\n" for i in range(N)))
    migration = cli(fleet, "migrate", "--as-of", NODE, "--balances", str(balances), "--rate", "1000")
    client = redis.Redis(port=private_redis.port)

    def checkpoint() -> int:
        return sum(int(client.get(k) or 0) for k in client.keys(f"{fleet.settings.topic_prefix}:migrate:*"))

    eventually(lambda: checkpoint() >= 1000)
    migration.send_signal(signal.SIGKILL)
    migration.wait(timeout=10)
    halfway = checkpoint()
    assert 1000 <= halfway < N
    assert f"resumed after {halfway:,}; published {N - halfway:,}" in run(
        fleet, "migrate", "--as-of", NODE, "--balances", str(balances)
    )
    assert f"resumed after {N:,}; published 0" in run(
        fleet, "migrate", "--as-of", NODE, "--balances", str(balances)
    )

    fleet.publish(
        [
            consume("c-before", "acct-00001", "o1", 10, "2026-02-28T12:00:00Z"),
            consume("c-after", "acct-00001", "o2", 30, "2026-03-01T00:00:01Z"),
        ]
    )
    fleet.drain()
    opened = query(fleet, "SELECT account_id, amount FROM records WHERE kind = 'open' ORDER BY account_id")
    assert opened == [{"account_id": f"acct-{i:05d}", "amount": 100 + i} for i in range(N)]  # once each
    consumes = query(fleet, "SELECT event_id, batch_id, amount FROM records WHERE kind = 'consume'")
    assert consumes == [{"event_id": "c-after", "batch_id": f"opening@{NODE}", "amount": -30}]
    assert query(fleet, "SELECT * FROM dead_letters") == []
    metrics = scrape(port)
    assert total(metrics, "costtrace_events_total", type="consumed", outcome="skipped") == 1

    # Redis goes away: the allocator keeps the node, also across a restart
    private_redis.down()
    fleet.stop_all()
    fleet.start("allocator", "allocator", fleet.tmp / "state", http_port=port)
    fleet.start("sink", "sink")
    fleet.publish([consume("c-before-2", "acct-00002", "o3", 5, "2026-02-15T00:00:00Z")])
    fleet.drain()
    assert query(fleet, "SELECT 1 FROM records WHERE event_id = 'c-before-2'") == []
    down = scrape(port)
    assert total(down, "costtrace_tracing_node_timestamp_seconds") > 0
    # the switch is polled on a timer: the drain can end before its first failed read
    eventually(lambda: total(scrape(port), "costtrace_switch_read_failures_total") > 0)

    # and follows the switch again once Redis is back (empty: not set means on, no node)
    private_redis.up()
    eventually(lambda: total(scrape(port), "costtrace_tracing_node_timestamp_seconds") == 0)
    fleet.publish([consume("c-before-3", "acct-00003", "o4", 5, "2026-02-15T00:00:00Z")])
    fleet.drain()
    assert query(fleet, "SELECT amount FROM records WHERE event_id = 'c-before-3'") == [{"amount": -5}]


def test_one_opening_per_account_and_node_however_written_and_a_corrected_balance_is_refused(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    fleet.env["COSTTRACE_REDIS_URL"] = private_redis.url
    fleet.start("allocator", "allocator", fleet.tmp / "state")
    fleet.start("sink", "sink")
    balances = fleet.tmp / "balances.csv"
    balances.write_text("account_id,balance\nh9,10\nz0,0\n")
    first = run(fleet, "migrate", "--as-of", "2026-03-01T00:00:00Z", "--balances", str(balances))
    assert "1 account(s) with balance 0 at 2026-03-01T00:00:00Z get no opening: z0" in first
    assert "published 1 opening balance(s) at 2026-03-01T00:00:00Z" in first
    for spelling in ("2026-03-01T00:00:00+00:00", "2026-03-01T01:00:00+01:00"):
        assert "resumed after 1; published 0" in run(
            fleet, "migrate", "--as-of", spelling, "--balances", str(balances)
        )
    fleet.drain()
    opened = query(fleet, "SELECT account_id, amount FROM records WHERE kind = 'open'")
    assert opened == [{"account_id": "h9", "amount": 10}]

    balances.write_text("account_id,balance\nh9,30\n")
    corrected = cli(fleet, "migrate", "--as-of", "2026-03-01T01:00:00+01:00", "--balances", str(balances))
    out, err = corrected.communicate(timeout=120)
    assert corrected.returncode == 1
    assert "1 account(s) already have an opening at 2026-03-01T00:00:00Z with another balance" in err
    assert "(h9: 10 traced, 30 in the file)" in err and "Nothing was published." in err
    fleet.drain()
    assert query(fleet, "SELECT * FROM dead_letters") == []
    assert query(fleet, "SELECT account_id, amount FROM records WHERE kind = 'open'") == opened

    # the fleet's own switch (under its prefix); `on` keeps the node unless told otherwise
    client = redis.Redis(port=private_redis.port)
    assert "historical node 2026-03-01T00:00:00Z" in run(fleet, "switch", "on", "--node", NODE)
    run(fleet, "switch", "off")  # the node waits for `on`
    kept = run(fleet, "switch", "on")
    assert (
        "on, historical node 2026-03-01T00:00:00Z (kept; --node T sets another, --no-node drops it)" in kept
    )
    assert client.get(f"{fleet.settings.topic_prefix}:switch") is not None
    assert client.get("costtrace:switch") is None  # another fleet's, sharing this Redis, is untouched
    assert "no historical node" in run(fleet, "switch", "on", "--no-node")
    assert "(none was set)" in run(fleet, "switch", "on")

    # Redis gone: one line and an exit code, no traceback
    private_redis.down()
    for args in (
        ["switch", "status"],
        ["switch", "off"],
        ["migrate", "--as-of", NODE, "--balances", str(balances)],
    ):
        if args[0] == "migrate":
            balances.write_text("account_id,balance\nnew1,5\n")
        proc = cli(fleet, *args)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (args, out, err)
        assert err.startswith("Error: Redis unavailable (") and len(err.strip().splitlines()) == 1, err


def test_the_documented_procedure_with_traffic_throughout_loses_and_doubles_nothing(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    """docs/operations.md, "Switching tracing on for a running business": off, migrate, on --node T,
    with producers publishing all along, events before and after T. The fleet then holds exactly what
    replay gives of the openings and every event after T, and counts the events at or before T."""
    fleet.env["COSTTRACE_REDIS_URL"] = private_redis.url
    fleet.env["COSTTRACE_SWITCH_POLL"] = "0.5"
    port = free_port()
    fleet.start("allocator", "allocator", fleet.tmp / "state", http_port=port)
    fleet.start("sink", "sink")
    assert "off" in run(fleet, "switch", "off")

    def tracing_off() -> bool:
        try:
            return total(scrape(port), "costtrace_tracing_on") == 0
        except OSError:  # not serving yet
            return False

    eventually(tracing_off)

    # the producers' first batches as issuances: the openings topic then holds migrate's alone, whose
    # order against the traffic's would depend on when each was published (the order time runs per
    # partition); an `opened` event while tracing is off is the merge's to test (tests/workers)
    lines = [
        line.replace(b'"type":"opened"', b'"type":"issued"')
        for line in sample(2400, 150, seed=23)
        if occurred_ms(line) is not None and (b'"type":"opened"' not in line or b'"budget_id"' in line)
    ]
    times = sorted(t for line in lines if (t := occurred_ms(line)) is not None)
    node = canonical_instant(datetime.fromtimestamp(times[len(times) // 3] / 1000, UTC).isoformat())
    node_ms = occurred_ms(b'{"occurred_at": "%s"}' % node.encode())
    assert node_ms is not None
    balances = [(f"acct-{i:06d}", 40 if i % 7 else 0) for i in range(150)]
    (fleet.tmp / "balances.csv").write_text(
        "account_id,balance\n" + "".join(f"{a},{b}\n" for a, b in balances)
    )

    chunks = [lines[i : i + 200] for i in range(0, len(lines), 200)]
    published = threading.Semaphore(0)

    def traffic() -> None:  # producers, all along: their events held while tracing is off
        for chunk in chunks:
            fleet.publish(chunk)
            published.release()

    producers = threading.Thread(target=traffic)
    producers.start()
    for _ in range(3):
        published.acquire(timeout=120)
    migrated = run(fleet, "migrate", "--as-of", node, "--balances", str(fleet.tmp / "balances.csv"))
    assert f"opening balance(s) at {node}" in migrated
    for _ in range(3):
        published.acquire(timeout=120)
    assert f"historical node {node}" in run(fleet, "switch", "on", "--node", node)
    producers.join(timeout=300)
    fleet.drain(timeout=300)

    openings = [body for _, body in opening_events(node, balances)]
    traced = [line for line in lines if (occurred_ms(line) or 0) > node_ms]  # and the node's openings
    expected = fleet.assert_replays(openings + traced)  # records and rejections, exactly
    opened_at_node = [
        r
        for rs in expected.values()
        for r in rs
        if r["kind"] == "open" and r["batch_id"] == f"opening@{node}"
    ]
    assert len(opened_at_node) == len(openings) > 100
    assert fleet.late_events() == 0
    skipped = total(scrape(port), "costtrace_events_total", outcome="skipped")
    assert skipped == len(lines) - len(traced) > 500  # held while off, then skipped: none lost, none applied
    audit = fleet.audit("--node", node.replace("Z", "+00:00"))  # replay of the topics with the node
    assert audit.returncode == 0 and "PostgreSQL holds exactly" in audit.stdout, audit.stdout + audit.stderr
    assert fleet.audit().returncode == 1  # without it, replay applies what the openings hold
