"""Publishing events to the input topics as a producer would: plain JSON keyed by account."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from topics.catalogue import Catalogue

_loose = msgspec.json.Decoder()


def reliable_producer(bootstrap: str, linger_ms: int = 5) -> AIOKafkaProducer:
    """A producer for what must not be lost or doubled by a retry: every replica acks, idempotent."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms
    )


def route(line: bytes, cat: Catalogue) -> tuple[str, bytes | None]:
    """The topic and key a producer would use for one event line.

    A line that is not an event still has to go somewhere so that it ends as
    a dead letter: it goes to the `consumed` topic, keyed by its account_id
    when it has a string one.
    """
    try:
        obj: Any = _loose.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        obj = None
    topic = cat.input_for("consumed")
    key = None
    if isinstance(obj, dict):
        with_type = obj.get("type")
        if isinstance(with_type, str):
            with contextlib.suppress(KeyError):  # unknown type: rejected downstream
                topic = cat.input_for(with_type)
        if isinstance(obj.get("account_id"), str):
            key = obj["account_id"].encode()
    return topic, key


async def publish(bootstrap: str, cat: Catalogue, lines: Iterable[bytes], rate: float | None = None) -> int:
    """Send every line to its topic; `rate` caps events per second. Returns the count sent."""
    producer = reliable_producer(bootstrap)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        for line in lines:
            topic, key = route(line, cat)
            await producer.send(topic, line, key=key)
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
