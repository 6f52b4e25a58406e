"""A new generation of topics with another partition count, the allocators' state carried over.

Kafka routes an account by `murmur2(account_id) mod partitions`; adding
partitions in place would move most accounts away from their state. Instead:
create the new generation's topics (new prefix, new app id), then copy every
record of the old state changelog into the new one, on the partition the new
count gives its account (every state key starts with its account id). Each
account's versions come from one old partition, in order, and go to one new
partition, in order, so the last write still wins after compaction. The new
allocators restore from the new changelog. docs/operations.md has the
procedure around it (producers paused, old fleet drained).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from costtrace._native import partition_for
from costtrace.fleet.fence import MARKER_KEY, Fence
from costtrace.fleet.publish import reliable_producer
from costtrace.fleet.state import account_of_key
from costtrace.ops.topics import partition_counts


def partition_of(account_id: str, partitions: int) -> int:
    """The partition of an account's messages (they are keyed by its id)."""
    return partition_for(account_id.encode(), partitions)


async def copy_state(
    bootstrap: str,
    old_changelog: str,
    new_changelog: str,
    new_partitions: int,
    progress: Callable[[int], None] = lambda n: None,
    **client: Any,
) -> int:
    """Copy the old changelog, up to its current end, into the new one; the number of records copied.

    Only what a restore would apply is copied, without its writer header: the
    new changelog's first owners start it with their own markers.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", **client
    )
    producer = reliable_producer(bootstrap, linger_ms=20, **client)
    await consumer.start()
    await producer.start()
    copied = 0
    fence = Fence()  # what a restore of the old changelog would take (costtrace/fleet/fence.py)
    try:
        counts = await partition_counts(bootstrap, [old_changelog], **client)
        if old_changelog not in counts:
            raise LookupError(f"no topic {old_changelog!r}: nothing to carry over")
        tps = [TopicPartition(old_changelog, p) for p in range(counts[old_changelog])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batches = await consumer.getmany(*left, timeout_ms=1000)
            for tp, messages in batches.items():
                for m in messages:
                    if m.offset >= ends[tp]:
                        break
                    key = m.key or b""
                    if not fence.admits(tp.partition, key, m.value, m.headers) or key == MARKER_KEY:
                        continue  # a stale writer's record, or a marker: the new changelog has its own
                    target = partition_of(account_of_key(key), new_partitions)
                    await producer.send(new_changelog, m.value, key=key, partition=target)
                    copied += 1
                progress(len(messages))
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        await producer.flush()
        return copied
    finally:
        await producer.stop()
        await consumer.stop()
