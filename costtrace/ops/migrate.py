"""The historical node: one `opened` event per account from the balances at T (`costtrace migrate`).

Each event is the account's opening balance at T, as a batch of the
`LEGACY` budget (contract: `opened`); its ids are fixed by T and the
account (`event_id` and `batch_id` `opening@T`, T in one spelling however it
was written: UTC, `Z`), so publishing it again is an exact repeat the model
ignores. A balance at T that differs from the one already traced is refused
before anything is published (`conflicting_openings`): the node's balances
are fixed once traced, and the model would park the new one as a
`conflicting_duplicate`. Progress is checkpointed in Redis after each
confirmed chunk: a migration killed halfway resumes after the last
checkpoint, and one run to the end again publishes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import msgspec
import redis.asyncio as aioredis

from costtrace.contract.timestamps import parse_instant
from costtrace.fleet.publish import reliable_producer

CHUNK: Final = 500
LEGACY: Final = "LEGACY"


def canonical_instant(text: str) -> str:
    """An RFC 3339 instant in one spelling (UTC, `Z`, a fraction only as long as it needs): the node's ids
    are built from it, so `+00:00` and `01:00+01:00` name the node `Z` names."""
    seconds, fraction = divmod(parse_instant(text), 1_000_000_000)
    day = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return day + (f".{fraction:09d}".rstrip("0") if fraction else "") + "Z"


def opening_events(
    as_of: str, balances: list[tuple[str, int]], budget: str = LEGACY
) -> list[tuple[str, bytes]]:
    """(account_id, event JSON) for every account with a positive balance, in the file's order.

    A negative balance is refused (ValueError): an opening balance is a batch, and cannot carry debt.
    """
    as_of = canonical_instant(as_of)  # a valid RFC 3339 instant, or ValueError
    negative = sum(1 for _, amount in balances if amount < 0)
    if negative:
        raise ValueError(
            f"{negative} account(s) have a negative balance at T: an opening balance cannot carry debt"
        )
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


async def conflicting_openings(
    dsn: str, as_of: str, balances: list[tuple[str, int]]
) -> list[tuple[str, int, int]]:
    """Accounts whose opening at this node is traced already with another balance: (account, traced, new).

    Sees what the sink has written: run it with the fleet drained.
    """
    wanted = {account: amount for account, amount in balances if amount > 0}
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT account_id, amount FROM stock WHERE batch_id = $1 AND account_id = ANY($2::text[])",
            f"opening@{canonical_instant(as_of)}", list(wanted),
        )  # fmt: skip
    finally:
        await conn.close()
    return sorted(
        (r["account_id"], int(r["amount"]), wanted[r["account_id"]])
        for r in rows
        if int(r["amount"]) != wanted[r["account_id"]]
    )


def checkpoint_key(as_of: str, events: list[tuple[str, bytes]], prefix: str = "costtrace") -> str:
    """Where a migration's progress is kept: per fleet (topic prefix), node and file."""
    digest = hashlib.blake2b(b"\n".join(e for _, e in events), digest_size=12).hexdigest()
    return f"{prefix}:migrate:{as_of}:{digest}"


async def migrate(
    bootstrap: str,
    topic: str,
    redis_url: str,
    as_of: str,
    events: list[tuple[str, bytes]],
    rate: float | None = None,
    progress: Callable[[int], None] = lambda n: None,
    prefix: str = "costtrace",
    **kafka: Any,
) -> tuple[int, int]:
    """Publish from the checkpoint on; (where it resumed, how many it published)."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    key = checkpoint_key(as_of, events, prefix)
    producer = reliable_producer(bootstrap, **kafka)
    try:
        await producer.start()  # in the try: a start that fails leaves nothing open
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
