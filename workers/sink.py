"""The sink: allocation records and dead letters into PostgreSQL, in batches, idempotently.

A batch's offsets are committed only after its rows are: faust acks the
events of `take_events` when the batch body returns, and the body returns
only once PostgreSQL has committed (it waits and retries while PostgreSQL is
down or slow). faust also acks a batch whose body raised or was cancelled
(`take_events`' `finally`), so the sink then stops the process at once
instead: it holds no state, and the batch is read again on restart, where
the primary keys (record id; dead letter's source position) drop what is
already stored.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import faust
import msgspec

from schemas.records import Record
from workers.allocator import DeadLetter
from workers.app import RAW, _base_config, fleet_catalogue, guard_consumer, observe
from workers.db import DEAD_LETTER_COLUMNS, Database
from workers.settings import Settings

log = logging.getLogger(__name__)

_record = msgspec.json.Decoder(Record)
_letter = msgspec.json.Decoder(DeadLetter)
DEAD_LETTER_REASON = [name for name, _ in DEAD_LETTER_COLUMNS].index("reason")


def _headers(message: Any) -> dict[str, bytes]:
    return {k: v for k, v in (message.headers or [])}


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def record_row(value: bytes, headers: dict[str, bytes]) -> tuple[Any, ...]:
    """A record message as a `records` row (columns of workers.db.RECORD_COLUMNS)."""
    r = _record.decode(value)
    seq = int(r.record_id.rsplit("-", 1)[1])
    received = headers.get("costtrace-received-ms")
    return (
        r.record_id, r.event_id, r.kind, r.account_id, r.batch_id, r.budget_id, r.amount,
        r.order_id, r.refund_id, r.transfer_id, r.merchant_id,
        int(headers["costtrace-step"]), seq, headers["costtrace-source"].decode(),
        _at(int(received)) if received else None,
    )  # fmt: skip


def dead_letter_row(value: bytes) -> tuple[Any, ...]:
    d = _letter.decode(value)
    return (
        d.topic,
        d.partition,
        d.offset,
        d.event_id,
        d.account_id,
        d.reason,
        d.detail,
        d.key,
        d.payload,
        d.payload_encoding,
        _at(d.message_timestamp_ms),
        d.attempt,
        _at(d.dead_lettered_at_ms),
        d.origin,
    )


async def persist_or_stop(write: Awaitable[None]) -> None:
    try:
        await write
    except BaseException:  # cancelled or broken mid-batch: never let faust ack it
        log.critical("sink batch not persisted; stopping before faust acks it", exc_info=True)
        logging.shutdown()
        os._exit(75)


def rows(events: Sequence[Any], convert: Any) -> list[tuple[Any, ...]]:
    out = []
    for ev in events:
        m = ev.message
        try:
            out.append(convert(m))
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError, ValueError, IndexError):
            log.error("unreadable message at %s:%s@%s skipped", m.topic, m.partition, m.offset, exc_info=True)
    return out


def latencies(events: Sequence[Any], now_ms: int) -> tuple[list[float], list[float]]:
    """Seconds from each record's event time, and from its input's broker time, to `now_ms`."""
    by_event: list[float] = []
    by_broker: list[float] = []
    for ev in events:
        h = _headers(ev.message)
        for name, out in (("costtrace-occurred-ms", by_event), ("costtrace-received-ms", by_broker)):
            raw = h.get(name)
            if raw and raw.isdigit():  # set by the allocator; anything else is not a time
                out.append(max(0.0, (now_ms - int(raw)) / 1000))
    return by_event, by_broker


def sink_app(settings: Settings) -> faust.App:
    cat = fleet_catalogue(settings)
    app = faust.App(**_base_config(settings, settings.sink_app_id), store="memory://")
    guard_consumer(app, settings.fetch_min_bytes, settings.fetch_max_wait)
    db = Database(settings.postgres_dsn.get_secret_value())
    within = settings.sink_within
    topics = {cat.allocations, cat.dead_letters}
    metrics = observe(app, settings, "sink", settings.sink_app_id, topics, lambda: None)
    retries = 0

    async def persist(table: str, batch: list[tuple[Any, ...]], write: Awaitable[None]) -> None:
        nonlocal retries
        started = time.monotonic()
        await persist_or_stop(write)
        metrics.sink_batch_seconds.labels(table).observe(time.monotonic() - started)
        metrics.sink_batch_rows.labels(table).observe(len(batch))
        metrics.sink_rows.labels(table).inc(len(batch))
        metrics.sink_last_commit.set(time.time())
        metrics.sink_retries.inc(db.retries - retries)
        retries = db.retries

    @app.agent(app.topic(cat.allocations, **RAW), name="sink-records")
    async def sink_records(stream: Any) -> None:
        async for events in stream.take_events(settings.sink_batch, within=within):
            batch = rows(events, lambda m: record_row(m.value, _headers(m)))
            await persist("records", batch, db.write_records(batch))
            by_event, by_broker = latencies(events, int(time.time() * 1000))
            for clock, seconds in (("event", by_event), ("broker", by_broker)):
                histogram = metrics.end_to_end.labels(clock)
                for s in seconds:
                    histogram.observe(s)

    @app.agent(app.topic(cat.dead_letters, **RAW), name="sink-dead-letters")
    async def sink_dead_letters(stream: Any) -> None:
        async for events in stream.take_events(settings.sink_batch, within=within):
            batch = rows(events, lambda m: dead_letter_row(m.value))
            await persist("dead_letters", batch, db.write_dead_letters(batch))
            for row in batch:
                metrics.dead_letters.labels(row[DEAD_LETTER_REASON]).inc()

    @app.timer(30.0)  # type: ignore[untyped-decorator]
    async def _debt() -> None:
        """Outstanding debt of every account, from what PostgreSQL holds (the `debt` view)."""
        try:
            metrics.debt.set(await db.debt_outstanding())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("debt not read from PostgreSQL: %r", exc)

    return app
