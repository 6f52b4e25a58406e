"""Replay of the topics, and the audit that holds PostgreSQL to it.

`replay_topics` reads the retained input topics (and the archive topic) whole,
puts their records in the fleet's log order (`costtrace.model.order.log_order`) and
applies them one by one with the allocator's own per-message code
(`costtrace.fleet.allocator.Allocator`) on a state in memory, each transfer's credit
right after it. That is what the fleet does, without Kafka between the steps
and without timing: its records are the ones the fleet must have written.

`audit` compares them with PostgreSQL account by account: every record (by
its deterministic id, and its content) and every rejection. Operators run it
to prove the fleet right in production; the fleet tests run it after the
fleet has drained.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from costtrace._native import partition_for
from costtrace.contract.letters import DeadLetter
from costtrace.contract.topics import Catalogue
from costtrace.fleet.allocator import LATE_EVENT, Allocator, Message
from costtrace.fleet.codecs import require_codecs
from costtrace.fleet.switch import Switch
from costtrace.model.order import InputRecord, OrderKey, log_order
from costtrace.model.state import MemoryStore

log = logging.getLogger(__name__)

_letter = msgspec.json.Decoder(DeadLetter)
_record = msgspec.json.Decoder(dict[str, Any])
Rejections = Counter[tuple[str | None, str | None, str]]  # (event_id, account_id, reason)


class TruncatedLog(Exception):
    """An input topic no longer starts at offset 0: what was deleted cannot be replayed."""


class _Never:
    """Settled offsets for a replay that reads nothing twice: every earlier position is settled."""

    def get(self, source: str, /) -> int | None:
        return 1 << 62


async def read_inputs(
    bootstrap: str, cat: Catalogue, partitions: int, whole: bool = True, **client: Any
) -> list[InputRecord]:
    """Every record of the input topics and the archive topic, each partition's in offset order.

    `whole`: refuse a topic partition whose beginning retention has deleted.
    """
    require_codecs()
    kinds = {
        cat.input_for(kind): kind for kind in ("issued", "opened", "consumed", "refunded", "transferred")
    }
    kinds[cat.archive] = "archive"
    tps = [TopicPartition(t, p) for t in kinds for p in range(partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **client)
    try:
        await consumer.start()  # in the try: a start that fails leaves nothing open
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        trimmed = sorted(f"{tp.topic}:{tp.partition} from {starts[tp]}" for tp in tps if starts[tp] > 0)
        if whole and trimmed:
            raise TruncatedLog(
                "retention has deleted the beginning of " + ", ".join(trimmed[:5])
                + (f" and {len(trimmed) - 5} more" if len(trimmed) > 5 else "")
            )  # fmt: skip
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        for tp in tps:
            consumer.seek(tp, starts[tp])
        out: list[InputRecord] = []
        while pending:
            got = await consumer.getmany(*pending, timeout_ms=1000, max_records=10_000)
            for tp, messages in got.items():
                for m in messages:
                    if m.offset < ends[tp]:
                        out.append(
                            InputRecord(
                                kinds[tp.topic], tp.partition, m.offset, m.timestamp, m.value or b"", m.key
                            )
                        )
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()


@dataclass
class Replayed:
    """What replay of the topics gives: records by account (in order), and rejections."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    rejections: Rejections = field(default_factory=Counter)
    events: int = 0


def replay_records(
    cat: Catalogue, partitions: int, records: list[InputRecord], node: str | None = None
) -> Iterator[tuple[str, bytes]]:
    """Apply `records` in the log order; yields (topic, value) of every output, credits applied inline.

    `node`: the fleet's historical node (costtrace/fleet/switch.py): events at or before it are skipped.
    """
    allocator = Allocator(
        MemoryStore(), cat.credits, cat.allocations, cat.dead_letters, archive_topic=cat.archive,
        partitions=partitions, clock_ms=lambda: 0, skips=Switch.of(True, node).skips,
    )  # fmt: skip
    topic_of = {
        kind: cat.input_for(kind) for kind in ("issued", "opened", "consumed", "refunded", "transferred")
    }
    topic_of["archive"] = cat.archive
    settled = _Never()
    credit_offsets: dict[int, int] = defaultdict(int)
    for key, r in log_order(records):
        msg = Message(topic_of[r.kind], r.partition, r.offset, r.key, r.value, r.timestamp_ms)
        pending: list[tuple[Message, OrderKey]] = [(msg, key)]
        while pending:
            msg, order = pending.pop(0)
            handled = allocator.handle(msg, settled, order)
            for out in handled.outputs:
                if out.topic == cat.credits:  # the receiving half, at once, as in offline replay
                    to = partition_for(out.key, partitions)
                    credit = Message(cat.credits, to, credit_offsets[to], out.key, out.value, r.timestamp_ms)
                    credit_offsets[to] += 1
                    pending.append((credit, order._replace(credit=1)))
                else:
                    yield out.topic, out.value


def rejection_in(value: bytes) -> DeadLetter | None:
    """A dead letter replay wrote, as the rejection it stands for; None for a late event's (not one)."""
    letter = _letter.decode(value)
    return None if letter.reason == LATE_EVENT else letter


def replay_topics(
    cat: Catalogue, partitions: int, records: list[InputRecord], node: str | None = None
) -> Replayed:
    result = Replayed(events=len(records))
    for topic, value in replay_records(cat, partitions, records, node):
        if topic == cat.allocations:
            r = _record.decode(value)
            result.records[r["account_id"]].append(r)
        elif topic == cat.dead_letters and (letter := rejection_in(value)) is not None:
            result.rejections[(letter.event_id, letter.account_id, letter.reason)] += 1
    return result


@dataclass
class Finding:
    account: str | None
    missing: list[dict[str, Any]]  # in replay, not in PostgreSQL
    extra: list[dict[str, Any]]  # in PostgreSQL, not in replay
    rejections: dict[str, int]  # reason: replay's count minus PostgreSQL's, where they differ


@dataclass
class AuditResult:
    events: int
    accounts: int
    records: int
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self, limit: int = 10) -> list[str]:
        out = [
            f"events replayed from the topics: {self.events:,}",
            f"accounts compared: {self.accounts:,}; records: {self.records:,}",
        ]
        if self.ok:
            out.append("PostgreSQL holds exactly the records and rejections replay of the topics gives")
            return out
        out.append(f"accounts that differ: {len(self.findings):,}")
        for f in self.findings[:limit]:
            parts = []
            if f.missing:
                parts.append(f"{len(f.missing)} record(s) missing in PostgreSQL, e.g. {_short(f.missing[0])}")
            if f.extra:
                parts.append(
                    f"{len(f.extra)} record(s) PostgreSQL has and replay does not, e.g. {_short(f.extra[0])}"
                )
            if f.rejections:
                parts.append("rejections (replay minus PostgreSQL): " + ", ".join(
                    f"{reason} {n:+d}" for reason, n in sorted(f.rejections.items())))  # fmt: skip
            out.append(f"  {f.account}: " + "; ".join(parts))
        if len(self.findings) > limit:
            out.append(f"  ... and {len(self.findings) - limit:,} more (--json lists them all)")
        return out


def _short(record: dict[str, Any]) -> str:
    keys = ("record_id", "kind", "batch_id", "amount", "order_id")
    return "{" + ", ".join(f"{k}={record[k]}" for k in keys if record.get(k) is not None) + "}"


_RECORD_FIELDS = (
    "record_id", "event_id", "kind", "account_id", "batch_id", "budget_id", "amount",
    "order_id", "refund_id", "transfer_id", "merchant_id",
)  # fmt: skip


async def stored(dsn: str) -> tuple[dict[str, list[dict[str, Any]]], Rejections]:
    """What PostgreSQL holds: every record (hot and archived) by account, and the rejections."""
    conn = await asyncpg.connect(dsn)
    try:
        records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        async with conn.transaction():
            query = f"SELECT {', '.join(_RECORD_FIELDS)} FROM all_records ORDER BY account_id, step, seq"
            async for row in conn.cursor(query, prefetch=5000):
                records[row["account_id"]].append({k: v for k, v in dict(row).items() if v is not None})
        letters = await conn.fetch("SELECT event_id, account_id, reason FROM dead_letters WHERE reason <> $1",
                                   LATE_EVENT)  # fmt: skip
        rejections: Rejections = Counter((r["event_id"], r["account_id"], r["reason"]) for r in letters)
        return records, rejections
    finally:
        await conn.close()


def compare(
    replayed: Replayed, records: dict[str, list[dict[str, Any]]], rejections: Rejections
) -> AuditResult:
    findings = []
    by_account_rejections: dict[str | None, Counter[str]] = defaultdict(Counter)
    for (_, account, reason), n in replayed.rejections.items():
        by_account_rejections[account][reason] += n
    for (_, account, reason), n in rejections.items():
        by_account_rejections[account][reason] -= n
    accounts = set(replayed.records) | set(records) | set(by_account_rejections)
    for account in sorted(accounts, key=lambda a: (a is None, a or "")):
        want = {r["record_id"]: r for r in replayed.records.get(account or "", [])} if account else {}
        got = {r["record_id"]: r for r in records.get(account or "", [])} if account else {}
        missing = [r for rid, r in want.items() if got.get(rid) != r]
        extra = [r for rid, r in got.items() if want.get(rid) != r]
        rejected = {reason: n for reason, n in by_account_rejections.get(account, Counter()).items() if n}
        if missing or extra or rejected or (want.keys() != got.keys()):
            findings.append(Finding(account, missing, extra, rejected))
    total = sum(len(v) for v in replayed.records.values())
    return AuditResult(replayed.events, len(accounts), total, findings)


async def audit(
    bootstrap: str, dsn: str, cat: Catalogue, partitions: int, node: str | None = None, **client: Any
) -> AuditResult:
    records = await read_inputs(bootstrap, cat, partitions, **client)
    replayed = await asyncio.to_thread(replay_topics, cat, partitions, records, node)
    got, rejections = await stored(dsn)
    return compare(replayed, got, rejections)
