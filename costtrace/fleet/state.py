"""The model's per-account state on a faust table (RocksDB, with a changelog topic).

One table holds every entry of every account on the partition, under
`{namespace}{len(account)}:{account}{key}` (the length keeps accounts apart
whatever characters their ids hold); values are compact msgpack.

Atomic events on a non-transactional changelog: an event's writes are several
table puts, and after a crash the changelog must never hold some of them
without the others. Two ways, chosen per event:
- Together. An event's writes are one group (`Table.put_all`), and the
  allocator's outbox puts a group into a single Kafka record batch, which
  the broker appends whole or not at all (`Outbox.add_together`). For a
  group short enough to always fit one batch (`TableStore.together`) the
  header is written alone.
- With a redo log. A longer group (or any, where nothing is promised) may be
  split across batches, so the account's header is written *first* and
  carries the event's other writes (its redo log); the entries follow. Any
  prefix of the writes is then either "event not applied" (header not there)
  or "header there, entries maybe not". The first time a process loads an
  account it writes the header's redo log again, which completes a cut-off
  event; after that, writes from this process are in order, so once is
  enough.
Locally, a group is one RocksDB write batch either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from rocksdict import WriteBatch

from costtrace._native import NativeStore
from costtrace.model.state import HEADER_PREFIX as _HEADER_NS


class Table(Protocol):
    """What the store needs of the partition's table (bytes in, bytes out)."""

    def get(self, key: bytes, default: Any = None) -> Any: ...

    def put_all(self, writes: list[tuple[bytes, bytes]]) -> None:
        """Write these in order, as one group: one RocksDB write batch, then their changelog records."""
        ...


_ABSENT: Any = object()


class PartitionTable:
    """The `Table` on RocksDB: the event's partition DB, with the changelog records of its writes queued.

    Reads and writes go straight to the partition's RocksDB (faust's `Store`
    adds a key index we do not need); `use(partition)` picks it per event, and
    the allocator sends the `pending` groups to the changelog after each event.

    What was read or written last is kept in memory too, per partition, up
    to `kept` entries (then forgotten at once), so that an account's next
    event reads none of it from RocksDB (docs/performance.md, "The log order,
    faster"). Only this process writes a partition it is active
    for; `forget()` after each rebalance, when recovery may have written.

    Writes reach RocksDB at `flush()`, one write batch per partition for
    many events (the allocator flushes after each round it applies, before
    the event loop runs anything else), or once `unflushed` writes wait;
    until then reads find them in memory. A batch per event cost more than
    the writes in it.
    """

    def __init__(
        self, db_for_partition: Callable[[int], Any], kept: int = 100_000, unflushed: int = 20_000
    ) -> None:
        self._db_for_partition = db_for_partition
        self.db: Any = None
        self.pending: list[list[tuple[bytes, bytes]]] = []
        self._kept_entries = kept
        self._kept: dict[int, dict[bytes, bytes | None]] = {}
        self._known: dict[bytes, bytes | None] = {}
        self._partition = -1
        self._batches: dict[int, tuple[Any, WriteBatch]] = {}  # partition -> (its DB, writes not flushed)
        self._unflushed = 0
        self._unflushed_limit = unflushed

    def use(self, partition: int) -> None:
        self._partition = partition
        self.db = self._db_for_partition(partition)
        known = self._kept.get(partition)
        if known is None:
            known = self._kept[partition] = {}
        self._known = known

    def forget(self) -> None:
        self.flush()
        self._kept.clear()
        self._known = {}

    def flush(self) -> None:
        """Write what waits to RocksDB, each partition's in one write batch."""
        batches, self._batches, self._unflushed = self._batches, {}, 0
        for db, batch in batches.values():
            db.write(batch)

    def _full(self, known: dict[bytes, bytes | None]) -> None:
        # what waits must be in RocksDB before memory forgets it
        self.flush()
        known.clear()

    def get(self, key: bytes, default: Any = None) -> Any:
        known = self._known
        value = known.get(key, _ABSENT)
        if value is _ABSENT:
            if len(known) >= self._kept_entries:
                self._full(known)
            value = known[key] = self.db.get(key)
        return default if value is None else value

    def put_all(self, writes: list[tuple[bytes, bytes]]) -> None:
        known = self._known
        if len(known) >= self._kept_entries:
            self._full(known)
        waiting = self._batches.get(self._partition)
        if waiting is None:
            waiting = self._batches[self._partition] = (self.db, WriteBatch(raw_mode=True))
        batch = waiting[1]
        for key, value in writes:
            batch.put(key, value)
            known[key] = value
        self.pending.append(writes)
        self._unflushed += len(writes)
        if self._unflushed >= self._unflushed_limit:
            self.flush()


def account_of_key(key: bytes) -> str:
    """The account a table key belongs to: `{namespace byte}{len}:{account}{rest}`."""
    length, sep, rest = key[1:].partition(b":")
    if not sep or not length.isdigit() or len(rest) < int(length):
        raise ValueError(f"not a state key: {key!r}")
    return rest[: int(length)].decode()


class TableStore:
    """`costtrace.model.state.Store` on a faust table; used inside a stream, one event at a time.

    The native model reads the table through `table.get` and hands each
    event's writes to `table.put_all` (native/src/store.rs does the header,
    redo log and repair described above). `together(size, records)`: whether
    the table's changelog takes a group of `records` writes of `size` key and
    value bytes whole; by default none, and every header carries its redo log.
    """

    def __init__(self, table: Table, together: Callable[[int, int], bool] | None = None) -> None:
        self.native = NativeStore.table(table, together or (lambda size, records: False))

    def forget_repairs(self) -> None:
        """After a rebalance, recovery may have restored another worker's cut-off event."""
        self.native.forget_repairs()

    @property
    def created(self) -> int:
        """Accounts whose first header this store wrote (for the accounts-held metric)."""
        return self.native.created


class PartitionDB(Protocol):
    def keys(self, backwards: bool = False, from_key: bytes | None = None) -> Any: ...


class AccountsHeld:
    """How many accounts the partitions a worker holds have: each counted once, then kept up to date.

    Counting reads every account header of a partition (a RocksDB prefix
    scan), so it is done once per partition after each rebalance, not per
    scrape; `created` adds the accounts this worker opens after that.
    """

    def __init__(self, db_for_partition: Callable[[int], PartitionDB] | None) -> None:
        self._db_for_partition = db_for_partition
        self._counts: dict[int, int] = {}

    def forget(self) -> None:
        """After a rebalance another worker may have added accounts: count again."""
        self._counts.clear()

    def created(self, partition: int) -> None:
        if partition in self._counts:
            self._counts[partition] += 1

    def count(self, partitions: set[int]) -> int:
        if self._db_for_partition is None:
            return 0
        for p in partitions - self._counts.keys():
            self._counts[p] = count_headers(self._db_for_partition(p))
        return sum(self._counts[p] for p in partitions)


def count_headers(db: PartitionDB) -> int:
    n = 0
    for key in db.keys(from_key=_HEADER_NS):
        if not key.startswith(_HEADER_NS):
            break
        n += 1
    return n
