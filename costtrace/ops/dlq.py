"""What ops do with parked letters: list, show (with history), replay, discard (`costtrace dlq`).

A replay publishes the original payload to its original topic, keyed as it
was, with a fresh attempt count and the same origin, then marks the letter
`replayed`. Replaying twice applies once: a letter already replayed is left
alone unless asked (`again`), and even then the model ignores an event it has
applied (contract rule 7). A discarded letter is sent again only when asked
by name (`discarded`): an operator decided it should not apply.

Every park, replay and discard is appended to `letter_history`, with who did
it and the discard's note; `parked_letters` holds only the current state.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from costtrace.contract.letters import resend_headers
from costtrace.fleet.publish import reliable_producer
from costtrace.model.state import Position

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_age(text: str) -> timedelta:
    """`90s`, `30m`, `2h`, `7d`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 2h, 7d)")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


@dataclass(frozen=True)
class Filter:
    origins: tuple[str, ...] = ()
    reason: str | None = None
    account: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None
    status: str | None = "parked"  # None: any
    reasons: tuple[str, ...] = ()  # any of these

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []

        def add(sql: str, value: Any) -> None:
            args.append(value)
            clauses.append(sql.format(f"${len(args)}"))

        if self.origins:
            add("origin = ANY({})", list(self.origins))
        if self.reason:
            add("reason = {}", self.reason)
        if self.reasons:
            add("reason = ANY({})", list(self.reasons))
        if self.account:
            add("account_id = {}", self.account)
        if self.older_than is not None:
            add("parked_at < now() - {}::interval", self.older_than)
        if self.newer_than is not None:
            add("parked_at >= now() - {}::interval", self.newer_than)
        if self.status:
            add("status = {}", self.status)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


COLUMNS = "origin, status, reason, account_id, event_id, attempts, why, topic, parked_at, resolved_at, note"


async def parked(dsn: str, f: Filter, limit: int = 1000) -> list[asyncpg.Record]:
    where, args = f.where()
    conn = await asyncpg.connect(dsn)
    try:
        sql = f"SELECT {COLUMNS} FROM parked_letters{where} ORDER BY parked_at, origin LIMIT {int(limit)}"
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def operator() -> str:
    """Who runs a dlq command, for the letters' history: `costtrace dlq (user@host)`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "?"
    return f"costtrace dlq ({user}@{socket.gethostname()})"


RESOLVED: Final = """
WITH resolved AS (UPDATE parked_letters SET {set} WHERE {where} RETURNING origin, resolved_at)
INSERT INTO letter_history (origin, at, action, note, by)
SELECT origin, resolved_at, {action}, {note}, {by} FROM resolved
"""


async def show(
    dsn: str, origin: str
) -> tuple[asyncpg.Record | None, list[asyncpg.Record], list[asyncpg.Record]]:
    """The parked letter with its payload, every dead letter of its chain of attempts, and its history."""
    conn = await asyncpg.connect(dsn)
    try:
        letter = await conn.fetchrow("SELECT * FROM parked_letters WHERE origin = $1", origin)
        trail = await conn.fetch(
            "SELECT at, action, reason, attempts, why, note, by FROM letter_history"
            " WHERE origin = $1 ORDER BY at",
            origin,
        )
        history = await conn.fetch(
            """
            SELECT attempt, reason, detail, source_topic, source_partition, source_offset, dead_lettered_at
            FROM dead_letters
            WHERE coalesce(origin, source_topic || ':' || source_partition || '@' || source_offset) = $1
            ORDER BY attempt, dead_lettered_at
            """,
            origin,
        )
        return letter, list(history), list(trail)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Replayed:
    sent: int
    not_parked: int = 0  # named letters left alone: already replayed (without `again`) or unknown
    discarded: int = 0  # selected discarded letters left alone (without `discarded`)


async def replay(
    dsn: str,
    bootstrap: str,
    f: Filter,
    again: bool = False,
    discarded: bool = False,
    by: str | None = None,
    **client: Any,
) -> Replayed:
    """Send the selected letters back to their topics: parked ones; replayed ones too with `again`,
    discarded ones too with `discarded`. Each replay goes into the letter's history, `by` whom."""
    wanted = {"parked"} | ({"replayed"} if again else set()) | ({"discarded"} if discarded else set())
    selected = Filter(
        f.origins, f.reason, f.account, f.older_than, f.newer_than,
        None if again or discarded else f.status, f.reasons,
    )  # fmt: skip
    where, args = selected.where()
    conn = await asyncpg.connect(dsn)
    producer = reliable_producer(bootstrap, linger_ms=0, **client)
    try:
        await producer.start()  # in the try: a start that fails leaves nothing open
        columns = "origin, status, topic, message_key, payload"
        rows = await conn.fetch(f"SELECT {columns} FROM parked_letters{where}", *args)
        sendable = [r for r in rows if r["status"] in wanted]
        for r in sendable:
            value = r["payload"]
            if value is None:  # too long to travel in its letter: still in its input topic
                value = await read_original(bootstrap, r["origin"], **client)
            headers = resend_headers(1, r["origin"])
            await producer.send_and_wait(r["topic"], bytes(value), key=r["message_key"], headers=headers)
        sql = RESOLVED.format(
            set="status = 'replayed', resolved_at = clock_timestamp()", where="origin = ANY($1)",
            action="'replayed'", note="NULL", by="$2",
        )  # fmt: skip
        await conn.execute(sql, [r["origin"] for r in sendable], by or operator())
        held_back = sum(1 for r in rows if r["status"] == "discarded" and not discarded)
        not_parked = 0
        if f.origins:
            not_parked = len(set(f.origins) - {r["origin"] for r in sendable}) - held_back
        return Replayed(len(sendable), not_parked, held_back)
    finally:
        await producer.stop()
        await conn.close()


async def read_original(bootstrap: str, origin: str, **client: Any) -> bytes:
    """The value of the message at `origin` (`topic:partition@offset`), read from Kafka.

    Letters leave out values too long to carry (costtrace/contract/letters.py); the
    input topics keep them for their retention.
    """
    position = Position.parse(origin)
    topic, partition = position.source.rsplit(":", 1)
    tp = TopicPartition(topic, int(partition))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=1, **client
    )
    try:
        await consumer.start()  # in the try: a start that fails leaves nothing open
        consumer.assign([tp])
        consumer.seek(tp, position.offset)
        message = await asyncio.wait_for(consumer.getone(tp), timeout=30)
        if message.offset != position.offset or message.value is None:
            raise LookupError(f"{origin} is no longer in its topic (retention): its payload is lost")
        return bytes(message.value)
    finally:
        await consumer.stop()


async def discard(dsn: str, f: Filter, note: str, by: str | None = None) -> int:
    """Mark the selected letters discarded (kept, with the note, and in their history)."""
    where, args = f.where()
    conn = await asyncpg.connect(dsn)
    try:
        args += [note, by or operator()]
        sql = RESOLVED.format(
            set=f"status = 'discarded', resolved_at = clock_timestamp(), note = ${len(args) - 1}",
            where=where.removeprefix(" WHERE ") or "true", action="'discarded'",
            note=f"${len(args) - 1}", by=f"${len(args)}",
        )  # fmt: skip
        result = await conn.execute(sql, *args)
        return int(result.split()[-1])
    finally:
        await conn.close()
