"""The fleet's log order: which event comes first, decided from the topics alone.

Producers publish each event type to its own topic, and Kafka gives no order
between topics. The contract's log order for an account is: by record
timestamp, then by topic (opened, issued, credits, transferred, consumed,
refunded), then by offset. costtrace makes that exact in two places where the
contract leaves a gap (docs/semantics.md, "Log order"):

- **Order time.** A partition is read in offset order, so a record can never
  come before the one ahead of it in its own partition. Its *order time* is
  its timestamp, or the latest order time before it in its topic partition
  when that is later (a running maximum). Where producers stamp in order,
  order time is the timestamp.
- **Credits.** A transfer's credit takes the transfer's own place: its order
  time, the `transferred` rank, and the sending partition and offset. Ordered
  with the receiver's own transfers of the same millisecond by that
  position, the credits of two accounts that pay each other in the same
  millisecond can each come after the transfer that made them, as they must.

So every input record has an `OrderKey`, unique and fixed by the topics, and
the log order is the order of the keys. Offline replay of the topics sorts by
it; the fleet's allocators merge their partitions by it (costtrace/fleet/merge.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple

import msgspec

from costtrace._native import partition_for
from costtrace.contract.timestamps import TimestampError, parse_instant

# topic kind -> its rank in the log order at equal order time
RANK: Final = {"opened": 0, "issued": 1, "transferred": 3, "consumed": 4, "refunded": 5, "archive": 6}
CREDIT_RANK: Final = RANK["transferred"]  # a credit takes its transfer's place
AFTER_ALL_RANKS: Final = 99  # a bound "every key of this time": past any rank


class OrderKey(NamedTuple):
    """An input record's place in the log order (smaller first); a credit's is right after its transfer's."""

    time_ms: int  # order time: the record's timestamp, or a later one before it in its partition
    rank: int  # its topic's rank (RANK)
    partition: int
    offset: int
    credit: int = 0  # 1: the credit of the transfer at this place

    def text(self) -> str:
        """The record's place as a credit header carries it (`time:rank:partition:offset`)."""
        return f"{self.time_ms}:{self.rank}:{self.partition}:{self.offset}"

    @classmethod
    def credit_of(cls, text: str | bytes) -> OrderKey:
        """The key of the credit whose transfer's place is `text` (see `text`)."""
        parts = (text.decode() if isinstance(text, bytes) else text).split(":")
        if len(parts) != 4:
            raise ValueError(f"not an order key (time:rank:partition:offset): {text!r}")
        time_ms, rank, partition, offset = (int(p) for p in parts)
        return cls(time_ms, rank, partition, offset, 1)


FIRST: Final = OrderKey(-(1 << 62), -1, -1, -1)  # before every key
LAST: Final = OrderKey(1 << 62, AFTER_ALL_RANKS, 0, 0)  # after every key


def after_time(time_ms: int) -> OrderKey:
    """The first key after every key of `time_ms`: a bound that lets all of that millisecond pass."""
    return OrderKey(time_ms, AFTER_ALL_RANKS, 0, 0)


class InputRecord(NamedTuple):
    """A record of an input topic as the log order sees it."""

    kind: str  # the topic's kind: an event type, or "archive"
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes
    key: bytes | None = None


def log_order(records: Iterable[InputRecord]) -> list[tuple[OrderKey, InputRecord]]:
    """Every record with its key, in the log order (each topic partition's records given in offset order)."""
    latest: dict[tuple[str, int], int] = {}
    keyed = []
    for r in records:
        tp = (r.kind, r.partition)
        time_ms = max(r.timestamp_ms, latest.get(tp, r.timestamp_ms))
        latest[tp] = time_ms
        keyed.append((OrderKey(time_ms, RANK[r.kind], r.partition, r.offset), r))
    keyed.sort(key=lambda kr: kr[0])
    return keyed


_loose = msgspec.json.Decoder()


def publish_kind_and_key(line: bytes) -> tuple[str, bytes | None]:
    """The topic kind and key a producer publishes a line with: its type, keyed by its account.

    A line that is not an event still has to go somewhere so that it ends as
    a dead letter: it goes to the `consumed` topic, keyed by its account_id
    when it has a string one (costtrace's own publisher; `costtrace/fleet/publish.py`).
    """
    try:
        obj = _loose.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return "consumed", None
    if not isinstance(obj, dict):
        return "consumed", None
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in RANK or kind == "archive":
        kind = "consumed"
    account = obj.get("account_id")
    return kind, account.encode() if isinstance(account, str) else None


def as_published(lines: Iterable[bytes], partitions: int) -> list[InputRecord]:
    """The records costtrace's publisher makes of `lines`: topic by type, partition by key (murmur2,
    keyless ones on partition 0), offsets in line order, timestamps as `record_times` gives them."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    lines = list(lines)
    for line, time_ms in zip(lines, record_times(lines), strict=True):
        kind, key = publish_kind_and_key(line)
        partition = 0 if key is None else partition_for(key, partitions)
        offset = offsets.get((kind, partition), 0)
        offsets[(kind, partition)] = offset + 1
        out.append(InputRecord(kind, partition, offset, time_ms, line, key))
    return out


def fleet_order(lines: Iterable[bytes], partitions: int) -> list[bytes]:
    """`lines` in the order the fleet applies them once costtrace's publisher has published them."""
    return [r.value for _, r in log_order(as_published(lines, partitions))]


def occurred_ms(line: bytes) -> int | None:
    """The event's `occurred_at` in milliseconds since the epoch (floor), if it has a valid one."""
    try:
        obj = _loose.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    at = obj.get("occurred_at") if isinstance(obj, dict) else None
    if not isinstance(at, str):
        return None
    try:
        return parse_instant(at) // 1_000_000
    except TimestampError:
        return None


def record_times(lines: Iterable[bytes]) -> Iterator[int]:
    """The record timestamp a relaying producer gives each line: its `occurred_at`.

    A line without a valid one (not an event) takes the one before it, so the
    relay's timestamps are a function of the log alone. Kafka has no time
    before 1970: earlier instants are stamped 0.
    """
    previous = 0
    for line in lines:
        at = occurred_ms(line)
        if at is not None:
            previous = max(0, at)
        yield previous
