"""Publishing events to the input topics as a producer would: plain JSON keyed by account."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from costtrace.contract.topics import Catalogue
from costtrace.model.order import publish_kind_and_key, record_times


def reliable_producer(bootstrap: str, linger_ms: int = 5, **client: Any) -> AIOKafkaProducer:
    """A producer for what must not be lost or doubled by a retry: every replica acks, idempotent."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms, **client
    )


def route(line: bytes, cat: Catalogue) -> tuple[str, bytes | None]:
    """The topic and key a producer would use for one event line (`model.order.publish_kind_and_key`)."""
    kind, key = publish_kind_and_key(line)
    return cat.input_for(kind), key


async def publish(
    bootstrap: str,
    cat: Catalogue,
    lines: Iterable[bytes],
    rate: float | None = None,
    stamp: bool = True,
    window: int = 256,
    **client: Any,
) -> int:
    """Send every line to its topic; `rate` caps events per second. Returns the count sent.

    In the log's order, `window` at a time: each window's records are
    acknowledged before the next is sent, so a record lands at most one
    window's round trip after an earlier one on another partition, well
    within the allocators' `end_grace` (docs/producers.md). Sent all at once,
    the producer's batches to different partitions land in any order, and
    an earlier event can land seconds after a later one was applied: late.

    `stamp`: as a producer relaying from an outbox does, each record's
    timestamp is its event's `occurred_at` (`costtrace.model.order.record_times`);
    otherwise the time it is sent, as a producer publishing events as they
    happen. A line without a key goes to partition 0, so that where each
    record lands is a function of the log (`costtrace.model.order.as_published`).
    """
    producer = reliable_producer(bootstrap, **client)
    sent = 0
    lines = list(lines)
    times = record_times(lines) if stamp else itertools.repeat(None)
    try:
        await producer.start()  # in the try: a start that fails (or is cancelled) leaves nothing open
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        for line, time_ms in zip(lines, times, strict=False):  # `times` may be endless
            topic, key = route(line, cat)
            pending.append(
                await producer.send(
                    topic, line, key=key, partition=0 if key is None else None, timestamp_ms=time_ms
                )
            )
            sent += 1
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending.clear()
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent
