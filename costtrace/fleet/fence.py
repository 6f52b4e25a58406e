"""Which changelog records a restore takes: the partition's owner's, never a stale writer's.

An allocator frozen past its session (SIGSTOP, a paused VM) has lost its
partitions; resumed, it can still hand Kafka state it computed before, which
then lands in the changelog after the new owner's newer states, and the next
restore would take it (docs/fleet.md, "Effectively once", 5). So:

- every changelog record the allocator writes carries its writer's consumer
  group generation (the `writer` header);
- an allocator given a partition first writes a *marker* to the partition's
  changelog (key `MARKER_KEY`, value its generation), and waits until Kafka
  has it before faust's recovery reads the partition's end: whatever the old
  owner still sends lands after the marker;
- a restore (and the repartition copy) applies, per partition, only records
  of the generation of the newest marker it has read, and a marker only if
  its generation is not older than that one (a stale writer's own late
  marker loses). Records without the header (written before this existed,
  or copied by `costtrace repartition`) are always applied.

The broker numbers generations; a group deleted and started over (after its
offsets expired) numbers from 1 again. An owner whose restore ends on a
marker other than its own (`current` differs) writes a *forced* marker,
taken whatever its generation, and applies it locally too.
Pure: the faust side is `costtrace.fleet.internals.WriterFence`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

WRITER_HEADER: Final = "writer"
# outside every account's keys, whose first byte is one of KEY_PREFIXES (letters and digits)
MARKER_KEY: Final = b"\x00writer"
_FORCED: Final = b"!"


def marker_value(generation: int, forced: bool = False) -> bytes:
    return str(generation).encode() + (_FORCED if forced else b"")


def writer_headers(generation: int | None) -> list[tuple[str, bytes]]:
    """The header every changelog record of this writer carries (none before it knows its generation)."""
    return [] if generation is None else [(WRITER_HEADER, str(generation).encode())]


def read_marker(value: bytes | None) -> tuple[int, bool] | None:
    """A marker's generation and whether it is forced; None for anything else."""
    if not value:
        return None
    forced = value.endswith(_FORCED)
    digits = value[:-1] if forced else value
    return (int(digits), forced) if digits.isdigit() else None


class Fence:
    """Per changelog partition, the generation whose records a restore applies.

    `stored(partition)`: the marker the partition's local state holds (the
    last one applied there), read the first time a partition is seen.
    """

    def __init__(self, stored: Callable[[int], bytes | None] = lambda partition: None) -> None:
        self._stored = stored
        self._current: dict[int, tuple[int, bytes] | None] = {}
        self.skipped = 0  # records and markers not applied, since this fence was made

    def forget(self) -> None:
        """Read the stored markers again (after a rebalance)."""
        self._current.clear()

    def current(self, partition: int) -> int | None:
        entry = self._entry(partition)
        return None if entry is None else entry[0]

    def set(self, partition: int, generation: int) -> None:
        self._current[partition] = (generation, str(generation).encode())

    def _entry(self, partition: int) -> tuple[int, bytes] | None:
        if partition in self._current:
            return self._current[partition]
        marker = read_marker(self._stored(partition))
        entry = self._current[partition] = None if marker is None else (marker[0], str(marker[0]).encode())
        return entry

    def admits(
        self,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] | None,
    ) -> bool:
        """Whether a restore applies this record (a marker it admits becomes the partition's current)."""
        entry = self._current[partition] if partition in self._current else self._entry(partition)
        if key == MARKER_KEY:
            marker = read_marker(value)
            if marker is None or not (marker[1] or entry is None or marker[0] >= entry[0]):
                self.skipped += 1
                return False
            self.set(partition, marker[0])
            return True
        if entry is None or not headers:
            return True
        for name, writer in headers:
            if name == WRITER_HEADER:
                if writer == entry[1]:
                    return True
                self.skipped += 1
                return False
        return True
