"""Helpers for fleet tests on the real local stack (deploy/stack): topics, workers, drains."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from costtrace.contract.topics import Catalogue
from costtrace.fleet.publish import publish
from costtrace.fleet.settings import Settings, fleet_catalogue
from costtrace.model.order import fleet_order
from dev.demo import stack_env
from dev.harness import prepare_run, remove_run, stop_processes, wait_drained

REPO = Path(__file__).resolve().parents[2]
_loose = msgspec.json.Decoder()


@dataclass
class Fleet:
    """One test's own topics, consumer groups, database and worker processes."""

    tmp: Path
    partitions: int = 4
    replication: int = 1
    stack: dict[str, str] | None = None  # another stack's COSTTRACE_* settings (default: deploy/stack's)
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    settings: Settings = field(init=False)
    catalogue: Catalogue = field(init=False)
    env: dict[str, str] = field(init=False)
    dsn: str = field(init=False)

    def setup(self) -> None:
        """The test's own database (migrated) and topics, and its workers' settings."""
        stack = self.stack if self.stack is not None else stack_env()
        run = prepare_run(stack, self.name, partitions=self.partitions, replication=self.replication)
        self.settings, self.dsn = run.settings, run.dsn
        self.catalogue = fleet_catalogue(run.settings)
        self.env = {
            **os.environ, **run.env, "COSTTRACE_REPLICATION": str(self.replication),
            "COSTTRACE_COMMIT_INTERVAL": "0.3", "COSTTRACE_SESSION_TIMEOUT": "6",
            "COSTTRACE_SINK_WITHIN": "0.1", "COSTTRACE_LOG_LEVEL": "info",
        }  # fmt: skip

    # -- workers ---------------------------------------------------------------

    def start(self, name: str, role: str, state_dir: Path | None = None, http_port: int = 0) -> None:
        args = ["worker", "--role", role]
        if state_dir is not None:
            args += ["--state-dir", str(state_dir)]
        self.start_command(name, args, http_port)

    def start_command(self, name: str, args: list[str], http_port: int = 0) -> None:
        """A `costtrace` process of this fleet, logging to <name>.log."""
        log = (self.tmp / f"{name}.log").open("ab")
        env = {**self.env, "COSTTRACE_HTTP_PORT": str(http_port)}
        cmd = [sys.executable, "-m", "costtrace.cli", *args]
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        stop_processes(self.procs.values())
        self.procs.clear()

    def remove(self) -> None:
        """Delete the test's topics and database (its workers stopped): the broker stays small."""
        stack = self.stack if self.stack is not None else stack_env()
        asyncio.run(asyncio.wait_for(remove_run(stack, self.name), timeout=60))

    def assert_running(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, (
                f"worker {name} exited with {proc.returncode}: see {self.tmp / name}.log"
            )

    # -- traffic -----------------------------------------------------------------

    def publish(self, lines: list[bytes]) -> None:
        asyncio.run(publish(self.settings.kafka_bootstrap, self.catalogue, lines))

    def drain(self, timeout: float = 120.0) -> None:
        """Wait until the sink has committed everything and the allocators every input partition's end."""
        asyncio.run(self._drain(timeout))

    async def _drain(self, timeout: float) -> None:
        st, cat = self.settings, self.catalogue
        groups = (st.app_id, st.sink_app_id)
        await wait_drained(
            st.kafka_bootstrap, cat, *groups, self.partitions, timeout, check=self.assert_running
        )

    # -- results -------------------------------------------------------------------

    def export(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "costtrace.cli", "export", "-o", "-"],
            env=self.env,
            capture_output=True,
            check=True,
            cwd=REPO,
            timeout=120,
        )
        return [_loose.decode(line) for line in out.stdout.splitlines()]

    def dead_letters(self) -> Counter[tuple[str | None, str | None, str]]:
        async def fetch() -> list[Any]:
            conn = await asyncpg.connect(self.dsn)
            try:
                # rejections: a late_event letter reports an event applied late, and is none
                return list(
                    await conn.fetch(
                        "SELECT event_id, account_id, reason FROM dead_letters WHERE reason <> 'late_event'"
                    )
                )
            finally:
                await conn.close()

        return Counter((r["event_id"], r["account_id"], r["reason"]) for r in asyncio.run(fetch()))

    def assert_replays(self, lines: list[bytes], order: str = "fleet") -> dict[str, list[dict[str, Any]]]:
        """The fleet holds exactly replay's records of `lines` and its rejections; replay's records.

        `order`: "fleet", replay of the lines in the fleet's log order once
        published (costtrace.model.order.fleet_order); "file", in line order, for a
        log published in phases drained one by one (each phase applied whole
        before the next is published).
        """
        ordered = fleet_order(lines, self.partitions) if order == "fleet" else lines
        expected, rejections = replay(ordered)
        got = by_account(self.export())
        assert got == expected, differences(got, expected)
        assert self.dead_letters() == rejections
        self.assert_summaries_count_every_record_once()
        return expected

    def assert_summaries_count_every_record_once(self) -> None:
        """The statement's day summaries hold exactly the records' sums: none counted twice or missed,
        whatever was killed or sent again on the way (the sink keeps them in the records' statement)."""

        queries = (
            "SELECT budget_id, kind, sum(amount), count(*) FROM all_records GROUP BY 1, 2",
            "SELECT budget_id, kind, sum(amount), sum(records) FROM budget_days GROUP BY 1, 2",
            "SELECT budget_id, coalesce(merchant_id, ''), kind, sum(amount), count(*)"
            " FROM all_records WHERE kind IN ('consume', 'trueup', 'refund') GROUP BY 1, 2, 3",
            "SELECT budget_id, merchant_id, kind, sum(amount), sum(records)"
            " FROM merchant_days GROUP BY 1, 2, 3",
        )

        async def sums() -> list[list[tuple[Any, ...]]]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return [sorted(tuple(r) for r in await conn.fetch(q)) for q in queries]
            finally:
                await conn.close()

        records, budgets, merchant_records, merchants = asyncio.run(sums())
        assert budgets == records
        assert merchants == merchant_records

    def changelog(self) -> list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]:
        """Every record of the allocators' state changelog, each partition's in order: (partition, key, value,
        headers)."""

        async def read() -> list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
            )
            await consumer.start()
            try:
                tps = [TopicPartition(self.catalogue.state_changelog, p) for p in range(self.partitions)]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                ends = await consumer.end_offsets(tps)
                out = []
                for tp in tps:
                    while await consumer.position(tp) < ends[tp]:
                        for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                            if m.offset < ends[tp]:
                                out.append((tp.partition, m.key, m.value, list(m.headers)))
                return out
            finally:
                await consumer.stop()

        return asyncio.run(read())

    def late_events(self) -> int:
        async def fetch() -> int:
            conn = await asyncpg.connect(self.dsn)
            try:
                return int(
                    await conn.fetchval("SELECT count(*) FROM dead_letters WHERE reason = 'late_event'")
                )
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def audit(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`costtrace audit` on this fleet: replay of its topics against its database."""
        return subprocess.run(
            [sys.executable, "-m", "costtrace.cli", "audit", *args],
            env=self.env, capture_output=True, text=True, cwd=REPO, timeout=300,
        )  # fmt: skip


def replay(
    lines: list[bytes],
) -> tuple[dict[str, list[dict[str, Any]]], Counter[tuple[str | None, str | None, str]]]:
    """Replay's records per account (in order) and its rejections, as the fleet should give them."""
    proc = subprocess.run(
        [sys.executable, "-m", "costtrace.cli", "replay", "-", "-o", "-"],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        check=True,
        cwd=REPO,
        timeout=300,
    )
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rejections: Counter[tuple[str | None, str | None, str]] = Counter()
    for line in proc.stdout.splitlines():
        r = _loose.decode(line)
        if r["kind"] == "rejected":
            rejections[(r["event_id"], r["account_id"], r["reason"])] += 1
        else:
            records[r["account_id"]].append(r)
    return records, rejections


def by_account(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[r["account_id"]].append(r)
    return out


def phases(lines: list[bytes]) -> list[list[bytes]]:
    """Split a log so that, within a phase, each account hears from one source only.

    Topics give no order between each other, so an account that gets events
    from two topics (or credits from two senders) in one phase could see
    them in another order than the log's. Draining between phases makes the
    fleet's order per account the log's.
    """
    out: list[list[bytes]] = [[]]
    sources: dict[str, str] = {}
    for line in lines:
        touched: dict[str, str] = {}
        try:
            ev = _loose.decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            ev = None
        if isinstance(ev, dict) and isinstance(ev.get("account_id"), str):
            acct = ev["account_id"]
            touched[acct] = f"topic:{ev.get('type')}"
            if ev.get("type") == "transferred" and isinstance(ev.get("to_account_id"), str):
                touched.setdefault(ev["to_account_id"], f"credit:{acct}")
        if any(sources.get(a, s) != s for a, s in touched.items()):
            out.append([])
            sources = {}
        sources.update(touched)
        out[-1].append(line)
    return [p for p in out if p]


def differences(got: dict[str, list[dict[str, Any]]], expected: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A readable account of how the fleet's records differ from replay's (first few)."""
    out = []
    for acct in sorted(set(got) | set(expected)):
        g, e = got.get(acct, []), expected.get(acct, [])
        if g == e:
            continue
        missing = [r for r in e if r not in g]
        extra = [r for r in g if r not in e]
        out.append(f"{acct}: {len(g)} records, replay {len(e)}; missing {missing[:3]}; extra {extra[:3]}")
        if len(out) >= 5:
            break
    return out
