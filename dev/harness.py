"""Operations on a running fleet: wait until it has caught up; finance's report from PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from costtrace.contract.topics import Catalogue
from costtrace.fleet.settings import Settings, fleet_catalogue
from costtrace.model.report import BudgetLine, Report
from costtrace.ops.topics import create
from costtrace.storage.db import migrate

log = logging.getLogger(__name__)


async def behind(
    groups: dict[str, list[str]],
    partitions: int,
    consumer: AIOKafkaConsumer,
    admin: AIOKafkaAdminClient,
) -> list[str]:
    """Each partition a group has not committed to its end yet: `group topic/partition committed/end`."""
    out = []
    for group, names in groups.items():
        tps = [TopicPartition(n, p) for n in names for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group)
        for tp in tps:
            done = committed.get(tp)
            if ends[tp] > 0 and (done is None or done.offset < ends[tp]):
                at = "-" if done is None else done.offset
                out.append(f"{group} {tp.topic}/{tp.partition} {at}/{ends[tp]}")
    return out


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """Stop workers as Kubernetes does: SIGTERM (a stopped one continued first), SIGKILL after `timeout`."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


async def wait_drained(
    bootstrap: str,
    cat: Catalogue,
    allocator_group: str,
    sink_group: str,
    partitions: int,
    timeout: float,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Wait until the allocators and the sink have committed everything, credits included.

    `check` runs between polls (tests use it to fail fast on a dead worker).
    """
    groups = {allocator_group: cat.allocator_sources, sink_group: [cat.allocations, cat.dead_letters]}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    deadline = time.monotonic() + timeout
    stable = 0
    lagging = ["not asked yet"]
    try:
        while time.monotonic() < deadline:
            check()
            try:
                lagging = await behind(groups, partitions, consumer, admin)
            except KafkaError as exc:  # e.g. no group coordinator yet on a fresh broker
                log.info("not caught up yet: %r", exc)
                lagging = [repr(exc)]
            if not lagging:
                stable += 1
                if stable >= 2:  # twice in a row: credits made meanwhile are seen
                    return
            else:
                stable = 0
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
        await admin.close()
    shown = "; ".join(lagging[:8]) + (f"; and {len(lagging) - 8} more" if len(lagging) > 8 else "")
    raise TimeoutError(f"the fleet did not catch up within {timeout:.0f} s: behind: {shown}")


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    records: int


async def report(dsn: str) -> tuple[Report, Latency | None]:
    """Per budget (as costtrace.model.report defines the columns), rejections, and end-to-end latency."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT budget_id,
                   coalesce(sum(amount) FILTER (WHERE kind IN ('issue', 'open')), 0) AS issued,
                   coalesce(-sum(amount) FILTER (WHERE kind IN ('consume', 'trueup')), 0) AS consumed,
                   coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0) AS refunded,
                   coalesce(sum(amount) FILTER (WHERE kind IN ('transfer_in', 'transfer_out')), 0) AS moved
            FROM all_records WHERE batch_id <> 'SUSPENSE' GROUP BY budget_id
            """
        )
        debt = await conn.fetchval("SELECT coalesce(sum(debt), 0) FROM debt")
        reasons = await conn.fetch(
            "SELECT reason, count(*) AS n FROM dead_letters WHERE reason <> 'late_event' GROUP BY reason"
        )
        n_records = await conn.fetchval("SELECT count(*) FROM all_records")
        lat = await conn.fetchrow(
            """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99, count(*) AS n
            FROM (SELECT extract(epoch FROM persisted_at - received_at) * 1000 AS ms
                  FROM all_records WHERE received_at IS NOT NULL) t
            """
        )
    finally:
        await conn.close()
    rep = Report(
        budgets={
            r["budget_id"]: BudgetLine(
                int(r["issued"]), int(r["consumed"]), int(r["refunded"]), int(r["moved"])
            )
            for r in rows
        },
        debt=int(debt),
        rejections=Counter({r["reason"]: r["n"] for r in reasons}),
        records=int(n_records),
    )
    latency = Latency(float(lat["p50"]), float(lat["p99"]), int(lat["n"])) if lat and lat["n"] else None
    return rep, latency


@dataclass(frozen=True)
class Run:
    """A fleet run of its own: topics, consumer groups and a database, all named `name`."""

    name: str
    settings: Settings
    env: dict[str, str]  # COSTTRACE_* settings for its worker processes

    @property
    def dsn(self) -> str:
        return self.settings.postgres_dsn.get_secret_value()


async def create_database(admin_dsn: str, name: str, fresh: bool = False) -> str:
    """A database `name` beside the admin DSN's (emptied first when `fresh`); its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        if fresh:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def remove_run(stack_env: dict[str, str], name: str) -> int:
    """Delete a run's topics (its own and its workers' internal ones) and its database; the topics' count.

    A benchmark run creates some 140 partitions; a broker left with thousands
    of them from earlier runs is slower, and the figures of a series drift
    (docs/performance.md).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=stack_env["COSTTRACE_KAFKA_BOOTSTRAP"])
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith((f"{name}.", f"{name}-"))]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    await drop_database(stack_env["COSTTRACE_POSTGRES_DSN"], name)
    return len(topics)


def prepare_run(stack_env: dict[str, str], name: str, partitions: int = 8, **settings: Any) -> Run:
    """Create the run's database (migrated) and topics on the stack that `stack_env` describes."""
    admin_dsn = stack_env["COSTTRACE_POSTGRES_DSN"]
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    st = Settings(
        kafka_bootstrap=stack_env["COSTTRACE_KAFKA_BOOTSTRAP"], postgres_dsn=SecretStr(dsn),
        topic_prefix=name, app_id=f"{name}-allocator", sink_app_id=f"{name}-sink", partitions=partitions,
        standby_replicas=0,
        **settings,
    )  # fmt: skip
    asyncio.run(create_database(admin_dsn, name))
    migrate(dsn)
    asyncio.run(create(st.kafka_bootstrap, fleet_catalogue(st), st.replication))
    env = {
        **stack_env, "COSTTRACE_POSTGRES_DSN": dsn, "COSTTRACE_TOPIC_PREFIX": name,
        "COSTTRACE_APP_ID": st.app_id, "COSTTRACE_SINK_APP_ID": st.sink_app_id,
        "COSTTRACE_PARTITIONS": str(partitions), "COSTTRACE_STANDBY_REPLICAS": "0",
        # several workers of a run share this host: each takes a free port unless told one
        "COSTTRACE_HTTP_PORT": "0",
    }  # fmt: skip
    return Run(name, st, env)
