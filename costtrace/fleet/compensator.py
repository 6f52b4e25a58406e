"""The compensator: dead letters retried after a growing delay, or parked in PostgreSQL.

Topics give no order between each other, so a refund can arrive before its
order and a transfer before the batch that funds it. The allocator rejects
them (`unknown_order`, `insufficient_stock`) like any other event; the
compensator reads each dead letter and either

- sends it to retry topic `<prefix>.retry-<n>` (one durable topic per delay,
  so each partition is in due order), from where it goes back to its own
  input topic, with the next attempt number and its first position (origin)
  in headers, once its delay has passed; the model judges it again (a
  rejected event is not remembered, contract rule 7); or
- parks it in `parked_letters`, when its reason is final or it is out of
  attempts. Its history is every dead letter with the same origin.

Each message is acked only after its send is delivered or its row committed;
anything else stops the process before faust can ack (as in the sink). A
redelivered letter may be sent twice: the model applies an event once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import faust
import msgspec

from costtrace.contract.letters import OMITTED, DeadLetter, resend_headers
from costtrace.contract.records import Reason
from costtrace.contract.topics import retry_topic
from costtrace.fleet.allocator import LATE_EVENT
from costtrace.fleet.app import _base_config, observe
from costtrace.fleet.internals import RAW, install
from costtrace.fleet.settings import Settings, fleet_catalogue, kafka_client_options
from costtrace.model.state import Position
from costtrace.ops.dlq import Filter
from costtrace.ops.dlq import replay as redrive
from costtrace.storage.db import Database

log = logging.getLogger(__name__)

DUE_HEADER: Final = "costtrace-due-ms"
_letter = msgspec.json.Decoder(DeadLetter)


async def persist_or_stop(write: Awaitable[None]) -> None:
    """faust acks an event whose handler failed, so a failed step stops the process first."""
    try:
        await write
    except BaseException:  # cancelled or broken mid-way: never let faust ack it
        log.critical("write not persisted; stopping before faust acks its event", exc_info=True)
        logging.shutdown()
        os._exit(75)


@dataclass(frozen=True)
class RetryPolicy:
    reasons: frozenset[str]
    attempts: int  # in all, the first one included
    delays: tuple[float, ...]  # seconds before retry 1, 2, ...; the last one repeats

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(frozenset(settings.retry_reasons), settings.retry_attempts, settings.retry_delays)


@dataclass(frozen=True)
class Retry:
    tier: int
    due_ms: int


@dataclass(frozen=True)
class Park:
    why: str


FINAL: Final = "final reason"
# rejections an event that came late could have prevented: a refund of an order consumed late, a
# transfer short of stock issued or credited late
REDRIVEN_BY_LATE_EVENTS: Final = (Reason.UNKNOWN_ORDER.value, Reason.INSUFFICIENT_STOCK.value)
OUT_OF_ATTEMPTS: Final = "out of attempts"
TOO_LONG: Final = "too long to carry: `costtrace dlq replay` reads it from its input"


def decide(letter: DeadLetter, policy: RetryPolicy, now_ms: int) -> Retry | Park:
    """Retry a retryable reason with attempts left, after the delay of its tier; park the rest."""
    if letter.reason not in policy.reasons:
        return Park(FINAL)
    if letter.payload_encoding == OMITTED:
        return Park(TOO_LONG)
    if letter.attempt >= policy.attempts or not policy.delays:
        return Park(OUT_OF_ATTEMPTS)
    tier = min(letter.attempt - 1, len(policy.delays) - 1)
    return Retry(tier, now_ms + int(policy.delays[tier] * 1000))


def origin_of(letter: DeadLetter) -> str:
    return letter.origin or Position(f"{letter.topic}:{letter.partition}", letter.offset).key


# the letter's current state, and its park appended to its history (a discard's note stays there)
PARK: Final = """
WITH parked AS (
    INSERT INTO parked_letters (origin, event_id, account_id, reason, detail, attempts, why, topic,
                                message_key, payload, payload_size, parked_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (origin) DO UPDATE SET
        event_id = EXCLUDED.event_id, reason = EXCLUDED.reason, detail = EXCLUDED.detail,
        attempts = GREATEST(parked_letters.attempts, EXCLUDED.attempts), why = EXCLUDED.why,
        parked_at = EXCLUDED.parked_at, status = 'parked', resolved_at = NULL, note = NULL
    RETURNING origin, parked_at, reason, attempts, why
)
INSERT INTO letter_history (origin, at, action, reason, attempts, why)
SELECT origin, parked_at, 'parked', reason, attempts, why FROM parked
ON CONFLICT DO NOTHING
"""


def park_args(letter: DeadLetter, why: str, now_ms: int) -> tuple[Any, ...]:
    return (
        origin_of(letter), letter.event_id, letter.account_id, letter.reason, letter.detail, letter.attempt,
        why, letter.topic, letter.key_bytes, letter.payload_bytes, letter.payload_size,
        datetime.fromtimestamp(now_ms / 1000, UTC),
    )  # fmt: skip


async def wait_until_due(
    due_ms: int, interrupted: Callable[[], bool], clock_ms: Callable[[], int], step: float = 0.5
) -> bool:
    """Sleep until `due_ms`; False as soon as `interrupted()` (a rebalance or a stop) says so."""
    while (left := due_ms - clock_ms()) > 0:
        if interrupted():
            return False
        await asyncio.sleep(min(step, left / 1000))
    return True


def compensator_app(
    settings: Settings, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)
) -> faust.App:
    cat = fleet_catalogue(settings)
    app = faust.App(**_base_config(settings, settings.compensator_app_id), store="memory://")
    install(app, fetch_min_bytes=settings.fetch_min_bytes, fetch_max_wait=settings.fetch_max_wait)
    db = Database(settings.postgres_dsn.get_secret_value())
    policy = RetryPolicy.of(settings)
    kafka = kafka_client_options(settings)  # once: a TLS context reads its files
    tiers = [retry_topic(settings.topic_prefix, t) for t in range(len(settings.retry_delays))]
    metrics = observe(
        app, settings, "compensator", settings.compensator_app_id, {cat.dead_letters, *tiers}, lambda: None
    )

    async def deliver(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        producer: Any = app.producer
        fut = await producer.send(topic, key, value, None, None, headers)
        await fut  # delivered before the letter is acked

    async def handle_letter(letter: DeadLetter, raw: bytes) -> None:
        now = clock_ms()
        if letter.reason == LATE_EVENT:
            # not a rejection: an event applied late, which may have been what an earlier
            # rejection of its account missed (its letters come before this one, on this
            # partition, so they are parked by now)
            if letter.account_id is not None:
                sent = (await redrive(
                    settings.postgres_dsn.get_secret_value(), settings.kafka_bootstrap,
                    Filter(account=letter.account_id, reasons=REDRIVEN_BY_LATE_EVENTS),
                    by=f"compensator: late event {origin_of(letter)}", **kafka,
                )).sent  # fmt: skip
                metrics.compensations.labels("redriven").inc(sent)
                if sent:
                    log.info("late event of %s: re-drove %d parked letter(s)", letter.account_id, sent)
            return
        decision = decide(letter, policy, now)
        if isinstance(decision, Retry):
            key = (letter.account_id or "").encode()
            await deliver(tiers[decision.tier], key, raw, [(DUE_HEADER, str(decision.due_ms).encode())])
            metrics.compensations.labels("retried").inc()
        else:
            await db.execute(PARK, *park_args(letter, decision.why, now))
            metrics.compensations.labels("parked").inc()
            log.info("parked %s (%s, %s after %d attempts)", origin_of(letter), letter.reason, decision.why,
                     letter.attempt)  # fmt: skip

    def interrupted() -> bool:
        return bool(app.rebalancing or app.should_stop)

    async def handle_retry(tier: str, letter: DeadLetter, raw: bytes, due_ms: int) -> None:
        if not await wait_until_due(due_ms, interrupted, clock_ms):
            # a rebalance waits for messages in hand: put this one back, due as before
            await deliver(tier, (letter.account_id or "").encode(), raw, [(DUE_HEADER, str(due_ms).encode())])
            return
        value = letter.payload_bytes
        assert value is not None  # `decide` parks letters whose payload was left out
        await deliver(
            letter.topic, letter.key_bytes, value, resend_headers(letter.attempt + 1, origin_of(letter))
        )

    @app.agent(app.topic(cat.dead_letters, **RAW), name="compensate")
    async def compensate(stream: Any) -> None:
        async for event in stream.events():
            raw = event.message.value
            try:
                letter = _letter.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("unreadable dead letter at %s:%s@%s skipped", event.message.topic,
                          event.message.partition, event.message.offset, exc_info=True)  # fmt: skip
                continue
            await persist_or_stop(handle_letter(letter, raw))  # never acked after a failed step

    for tier in tiers:

        @app.agent(app.topic(tier, **RAW), name=f"retry-{tier.rsplit('-', 1)[1]}")
        async def retry(stream: Any, tier: str = tier) -> None:
            async for event in stream.events():
                m = event.message
                try:
                    letter = _letter.decode(m.value)
                    due_ms = int(dict(m.headers or ())[DUE_HEADER])
                except (msgspec.DecodeError, msgspec.ValidationError, KeyError, ValueError):
                    log.error(
                        "unreadable retry at %s:%s@%s skipped", m.topic, m.partition, m.offset, exc_info=True
                    )
                    continue
                await persist_or_stop(handle_retry(tier, letter, m.value, due_ms))

    @app.timer(30.0)  # type: ignore[untyped-decorator]
    async def _parked() -> None:
        try:
            metrics.parked.set(await db.parked_letters())
        except Exception as exc:  # a gauge must not stop the worker
            log.warning("parked letters not counted: %r", exc)

    return app
