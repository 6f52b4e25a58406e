"""The historical node: one `opened` event per account from the balances at T (`costtrace migrate`).

Each event is the account's opening balance at T, as a batch of the
`LEGACY` budget (contract: `opened`); its ids are fixed by T and the
account (`event_id` and `batch_id` `opening@T`), so publishing it again is an
exact repeat the model ignores. Progress is checkpointed in Redis after each
confirmed chunk: a migration killed halfway resumes after the last
checkpoint, and one run to the end again publishes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Final

import msgspec
import redis.asyncio as aioredis

from schemas.timestamps import parse_instant
from workers.publish import reliable_producer

CHUNK: Final = 500
LEGACY: Final = "LEGACY"


def opening_events(
    as_of: str, balances: list[tuple[str, int]], budget: str = LEGACY
) -> list[tuple[str, bytes]]:
    """(account_id, event JSON) for every account with a positive balance, in the file's order."""
    parse_instant(as_of)  # a valid RFC 3339 instant, or ValueError
    opening = f"opening@{as_of}"
    out = []
    for account, amount in balances:
        if amount <= 0:
            continue
        body = {
            "event_id": opening, "type": "opened", "account_id": account, "occurred_at": as_of,
            "batch_id": opening, "budget_id": budget, "amount": amount,
        }  # fmt: skip
        out.append((account, msgspec.json.encode(body)))
    return out


def checkpoint_key(as_of: str, events: list[tuple[str, bytes]]) -> str:
    digest = hashlib.blake2b(b"\n".join(e for _, e in events), digest_size=12).hexdigest()
    return f"costtrace:migrate:{as_of}:{digest}"


async def migrate(
    bootstrap: str,
    topic: str,
    redis_url: str,
    as_of: str,
    events: list[tuple[str, bytes]],
    rate: float | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[int, int]:
    """Publish from the checkpoint on; (where it resumed, how many it published)."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    key = checkpoint_key(as_of, events)
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        start = int(await client.get(key) or 0)
        progress(start)
        started = time.monotonic()
        done = start
        # stamped with the node's time, as an outbox relay stamps its events (docs/producers.md): the
        # openings come before every later event in the log order, however late they are published
        stamp = max(0, parse_instant(as_of) // 1_000_000)
        for i in range(start, len(events), CHUNK):
            chunk = events[i : i + CHUNK]
            futures = [
                await producer.send(topic, value, key=account.encode(), timestamp_ms=stamp)
                for account, value in chunk
            ]
            await asyncio.gather(*futures)  # every event of the chunk confirmed before the checkpoint
            done = i + len(chunk)
            await client.set(key, done)
            progress(len(chunk))
            if rate:
                ahead = (done - start) / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return start, done - start
    finally:
        await producer.stop()
        await client.aclose()
