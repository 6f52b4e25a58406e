"""The guards around faust's consumer: no stream event before its seek, no fetch of paused partitions,
no partition left past records faust dropped."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP

from workers.app import ConsumerGuards

STREAM, OTHER, CHANGELOG = TP("p.issued", 0), TP("p.issued", 1), TP("app-state-changelog", 0)


class Consumer:
    """The two calls faust's recovery makes, in its order: resume, then seek."""

    def __init__(self) -> None:
        self.active: set[TP] = set()
        self.calls: list[str] = []
        self.seek_done = asyncio.Event()
        self.assigned = {STREAM, CHANGELOG}
        self._committed_offset: dict[TP, int | None] = {}
        self.positions: dict[TP, int] = {}

    def resume_partitions(self, tps: Any) -> None:
        self.active |= set(tps)
        self.calls.append(f"resume {sorted(tp.topic for tp in tps)}")

    async def perform_seek(self) -> None:
        self.calls.append(f"seek while active={sorted(tp.topic for tp in self.active)}")
        await self.seek_done.wait()

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.positions.update(partitions)

    def assignment(self) -> set[TP]:
        return self.assigned

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        self.fetching = active_partitions
        await asyncio.sleep(0)
        return {tp: [] for tp in active_partitions}


async def test_stream_partitions_resume_only_after_the_seek() -> None:
    consumer = Consumer()
    ConsumerGuards(consumer, lambda tp: tp.topic.endswith("-changelog"))

    consumer.resume_partitions({STREAM, OTHER, CHANGELOG})
    assert consumer.active == {CHANGELOG}  # changelogs resume at once (recovery reads them)
    seek = asyncio.ensure_future(consumer.perform_seek())
    await asyncio.sleep(0)
    assert consumer.active == {CHANGELOG}, "a stream partition was fetched before its seek"
    consumer.seek_done.set()
    await seek
    # OTHER was revoked meanwhile (not in the assignment): it stays paused
    assert consumer.active == {CHANGELOG, STREAM}
    assert consumer.calls[1] == "seek while active=['app-state-changelog']"


async def test_the_consumer_thread_fetches_a_snapshot_of_the_active_partitions() -> None:
    consumer = Consumer()
    ConsumerGuards(consumer, lambda tp: tp.topic.endswith("-changelog"))
    active = {CHANGELOG}
    fetch = asyncio.ensure_future(consumer._getmany(active_partitions=active, timeout=1.0))
    await asyncio.sleep(0)
    active.discard(CHANGELOG)  # recovery pauses the changelog while the fetch waits
    assert await fetch == {CHANGELOG: []}
    assert consumer.fetching == {CHANGELOG}, "an emptied set reads as every partition in aiokafka"


async def test_stream_partitions_the_group_never_committed_are_read_again_from_their_beginning() -> None:
    consumer = Consumer()
    ConsumerGuards(consumer, lambda tp: tp.topic.endswith("-changelog"))
    consumer.assigned = {STREAM, OTHER, CHANGELOG}
    consumer._committed_offset = {STREAM: 7}  # OTHER: never committed; CHANGELOG: recovery's business
    consumer.seek_done.set()
    await consumer.perform_seek()
    assert consumer.positions == {OTHER: 0}
