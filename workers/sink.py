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
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any

import faust
import msgspec

from schemas.records import Record
from workers.allocator import DeadLetter
from workers.app import RAW, _base_config, fleet_catalogue
from workers.db import Database
from workers.settings import Settings

log = logging.getLogger(__name__)

_record = msgspec.json.Decoder(Record)
_letter = msgspec.json.Decoder(DeadLetter)


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


def sink_app(settings: Settings) -> faust.App:
    cat = fleet_catalogue(settings)
    app = faust.App(**_base_config(settings, settings.sink_app_id), store="memory://")
    db = Database(settings.postgres_dsn.get_secret_value())
    within = settings.sink_within

    @app.agent(app.topic(cat.allocations, **RAW), name="sink-records")
    async def sink_records(stream: Any) -> None:
        async for events in stream.take_events(settings.sink_batch, within=within):
            batch = rows(events, lambda m: record_row(m.value, _headers(m)))
            await persist_or_stop(db.write_records(batch))

    @app.agent(app.topic(cat.dead_letters, **RAW), name="sink-dead-letters")
    async def sink_dead_letters(stream: Any) -> None:
        async for events in stream.take_events(settings.sink_batch, within=within):
            batch = rows(events, lambda m: dead_letter_row(m.value))
            await persist_or_stop(db.write_dead_letters(batch))

    return app
