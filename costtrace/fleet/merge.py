"""The allocator's hold: each account's events applied in the log order, whatever their arrival.

An allocator reads every input topic of the partitions it owns, and Kafka
gives no order between topics: under a backlog a refund can be read before
its order, a consumption before its issuance. `LogMerge` holds what it has
read and releases, per partition, events in the order of their `OrderKey`
(costtrace/model/order.py), each as soon as nothing that could still come may go
before it. That is Kafka Streams' timestamp synchronisation of a task's
partitions (KIP-353, KIP-695), with what it leaves open closed:

- **Sources** of partition q: its topic partitions (opened, issued,
  transferred, consumed, refunded, archive), and the credits each sending
  partition p routes to q, which arrive mixed on one credits partition.
- **A source's bound** is the least key it can still bring: the key after
  its last record (order times never go back in a partition). Held events
  below every source's bound may go, smallest first. Past its bound, a topic
  partition no longer holds anything back once it is known to be **at its
  end** (the broker's end offset, asked at least `end_grace` after the held
  event was read: anything appended later is taken to be later than all this
  worker had read by then, which a producer stamping its events in order
  makes true if its batches to different partitions land within `end_grace`
  of each other; `as_of`), or once it has
  held an event back for `max_idle` seconds with data due that does not come
  (a *forced* release, counted). Kafka Streams goes by the lag its last fetch
  saw; asking the broker after the event was read closes the race where the
  fetch that brought it predates an earlier append to another topic.
- **Credits come announced, and with watermarks.** A sender reads its
  transferred partition ahead of applying it, and for each transfer it holds
  it *announces* the credit to come, to the receiving account's partition
  (in band, on the credits topic). A receiver then holds back only the
  events of that one account from the announced credit's place on, until
  the credit comes: other accounts go on. What a sender has not read yet
  may go anywhere; its *watermark* says how far it has read (the least key
  of a credit not announced yet) and how far it has applied (announced
  credits below that which have not come never will: the transfer was
  refused). A receiver holds its partition back below every sender's
  watermark, and waits for a silent sender (one dead, or between owners)
  without limit: credits that come late would give another answer than
  replay. Watermarks depend on the senders' transferred topics alone, so no
  cycle of partitions can wait on itself (Flink's watermarks, in band).
- **Nothing is committed past an event not yet applied** (`commit_point`),
  nor past an announcement whose credit has not been applied, and each topic
  partition's order time at its commit point goes with the offset
  (`order_metadata`), so another owner, or a restart, gives every record the
  same key.
- **Late events**: a record read when events after it in the log order have
  already been applied is marked late, for the allocator to apply at once,
  count and report.
- **Tracing off** (`only_openings`, the fleet's switch): every event but an
  opening balance stays held, its offset uncommitted, until tracing is on
  again, and then goes in the log order. An opening goes when its turn would
  come if its account's held events were not there: below every source's
  bound, with nothing of its account held or announced before it. So each
  account's events are still applied in the log order, and the openings at
  the node T, once applied, hold everything up to T: the account's events at
  or before T are skipped once tracing is on with node T (costtrace/fleet/switch.py).

It is pure (no Kafka, no faust): the allocator feeds it messages, broker end
offsets and the time, sends what it announces, and applies what it releases
(costtrace/fleet/app.py).
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import msgspec

from costtrace.model.order import CREDIT_RANK, FIRST, LAST, RANK, OrderKey, after_time

log = logging.getLogger(__name__)

ORDER_HEADER: Final = "costtrace-order"  # a credit's place: its transfer's (costtrace/fleet/allocator.py)
# credits to come: the value lists them (`announcement_message`); one message with no value is one
# credit, at the header's place, to the message key's account
ANNOUNCE_HEADER: Final = "costtrace-announce"
WATERMARK_HEADER: Final = "costtrace-watermark"  # a watermark message on the credits topic
METADATA_PREFIX: Final = "costtrace-order-time:"
RESYNCS_BEFORE_A_GAP: Final = 3
OPENED_RANK: Final = RANK["opened"]

TP = tuple[str, int]


class Watermark(NamedTuple):
    """What a sending partition tells every receiver about the credits it can still send."""

    unread: OrderKey  # the least key of a credit not announced yet (its transfer not read yet)
    applied: OrderKey  # announced credits below this that have not come never will
    next_offset: int | None  # its transferred partition's next offset


# per sender: its partition, the two keys, its transferred partition's next offset (-1: unknown)
_watermarks = msgspec.msgpack.Decoder(list[tuple[int, int, int, int, int, int, int, int, int, int, int, int]])
# per credit to come: its receiving account, then its key
_announcements = msgspec.msgpack.Decoder(list[tuple[bytes, int, int, int, int, int]])
_encode = msgspec.msgpack.Encoder().encode


def announcement_message(credits: Iterable[tuple[bytes, OrderKey]]) -> bytes:
    """An announcement message's value: credits to come to one partition, (receiving account, key) each."""
    return _encode([(account, *key) for account, key in credits])


def watermark_message(marks: Mapping[int, Watermark]) -> bytes:
    """A watermark message's value, for these sending partitions."""
    return _encode(
        [
            (p, *m.unread, *m.applied, -1 if m.next_offset is None else m.next_offset)
            for p, m in sorted(marks.items())
        ]
    )


@dataclass(slots=True)
class Held:
    """A message read and not yet applied."""

    key: OrderKey
    seq: int  # arrival number
    message: Any
    before: int | None  # the order time of its partition before it (commit metadata)
    offset: int  # its own offset (for a credit: on the credits partition)
    account: bytes | None  # whose event it is (the message key)
    source: Source
    late: bool = False
    # a credit that was announced: its announcement's offset on the credits partition, which holds the
    # commit there until the credit is applied (see `_settle`)
    announced_at: int | None = None
    gone: bool = False  # released ahead of the order (an opening while tracing is off)


@dataclass(slots=True)
class Source:
    """One source of a partition: a topic partition, or one sender's credits."""

    rank: int
    partition: int  # the source's own partition (for credits: the sender's)
    is_credits: bool = False
    held: dict[int, Held] = field(default_factory=dict)  # by offset, in offset order
    time: int | None = None  # order time of its last record (topic partitions)
    # the next offset it will read; for credits, the sender's transferred partition's
    next_offset: int | None = None
    end: int | None = None  # the broker's end offset (for credits: of the sender's transferred partition)
    end_seq: int = -1  # arrivals before that answer was asked for
    end_time: int = FIRST.time_ms  # the latest order time this worker had read when it was asked
    arrived: float = 0.0  # when it last took a message (or was assigned)
    waiting_since: float | None = None  # since when it has held back its partition's next event
    forced: bool = False  # let go after `max_idle` with data due, until its next record
    unread: OrderKey = FIRST  # credits: the sender's watermark
    applied: OrderKey = FIRST

    def bound(self) -> OrderKey:
        """The least key this source can still bring, held records aside.

        A topic partition: the key after its last record. A sender's credits:
        the least key of one not announced yet. And past every key of the
        latest order time this worker had read when it asked the broker, once
        the answer showed that the partition (for credits: the sender's
        transferred partition) had nothing more than the reader (the sender)
        has read: what is appended later is taken to be later than all that.
        """
        if self.forced:
            return LAST
        if self.is_credits:
            least = self.unread
        elif self.time is None:
            least = FIRST
        else:
            least = OrderKey(self.time, self.rank, self.partition, self.next_offset or 0)
        if self.end is not None and self.next_offset is not None and self.next_offset >= self.end:
            least = max(least, after_time(self.end_time))
        return least


@dataclass
class Group:
    """One partition's sources, what it holds and what it has applied."""

    partition: int
    topics: dict[str, Source]
    credits: dict[int, Source]
    heap: list[tuple[OrderKey, int, Held]] = field(default_factory=list)
    # accounts held back by an announced credit: their events from the first one past it, in order
    waiting: dict[bytes | None, deque[Held]] = field(default_factory=dict)
    pending: dict[bytes, list[OrderKey]] = field(default_factory=dict)  # account -> announced keys not come
    announced: dict[int, list[tuple[OrderKey, bytes, int]]] = field(default_factory=dict)  # sender -> ...
    # on the credits partition, in order: how many of the credits each message announced have not come
    announcement_offsets: dict[int, int] = field(default_factory=dict)
    credits_next: int | None = None  # the credits partition's next offset
    credits_arrived: float = 0.0
    credits_end: int | None = None
    applied: OrderKey = FIRST  # the largest key released
    # the least bound of its sources as last worked out, and the source it came from; None: to work out again
    least: OrderKey | None = None
    least_source: Source | None = None
    # tracing off: each account's first held event (openings aside), which its openings wait for
    first_held: dict[bytes | None, OrderKey] = field(default_factory=dict)


class LogMerge:
    """Holds what an allocator reads and releases each account's events in the log order.

    `topics`: each input topic's rank (costtrace.model.order.RANK by its kind);
    `partitions`: how many the co-partitioned topics have (the senders a
    receiver hears from); `destination(message)`: where a transfer's credit
    goes, (partition, account), or None when it names none.
    """

    def __init__(
        self,
        topics: Mapping[str, int],
        credits_topic: str,
        partitions: int,
        max_idle: float,
        hold_limit: int = 2000,
        destination: Callable[[Any], tuple[int, bytes] | None] = lambda message: None,
    ) -> None:
        self.ranks = dict(topics)
        self.credits_topic = credits_topic
        self.partitions = partitions
        self.max_idle = max_idle
        self.hold_limit = hold_limit
        self.destination = destination
        self.transferred = next(t for t, r in topics.items() if r == CREDIT_RANK)
        self.opened = next((t for t, r in topics.items() if r == OPENED_RANK), None)
        self._only_openings = False  # tracing off: everything else is held until it is on again
        self.groups: dict[int, Group] = {}
        self.seq = 0  # messages read so far
        self.latest = FIRST.time_ms  # the latest order time read (any source)
        self.held = 0
        self.forced = 0  # sources let go by max_idle, counted once each
        self.skipped = 0  # messages left out for coming past their partition's next offset
        self.resync: dict[TP, int] = {}  # partitions to read again from this offset (see `_next`)
        # announcements to send: (receiving partition, account, the credit's key)
        self.announcements: list[tuple[int, bytes, OrderKey]] = []
        self._resyncs: dict[TP, tuple[int, int]] = {}  # partition -> (offset sought to, times)
        self._published: dict[int, Watermark] = {}
        self._reads: deque[tuple[float, int, int]] = deque()  # (time, seq, latest), oldest first (`as_of`)

    # -- assignment -------------------------------------------------------------------

    def assign(self, positions: Mapping[TP, tuple[int | None, str | None]], now: float = 0.0) -> None:
        """Start over on these partitions, from each topic partition's committed offset and metadata.

        `positions`: (topic, partition) -> (committed offset or None, its commit metadata).
        """
        self.clear()
        for partition in sorted({p for _, p in positions}):
            topics = {t: Source(rank, partition, arrived=now) for t, rank in self.ranks.items()}
            credits = {p: Source(CREDIT_RANK, p, is_credits=True) for p in range(self.partitions)}
            group = self.groups[partition] = Group(partition, topics, credits)
            group.credits_next = positions.get((self.credits_topic, partition), (None, None))[0]
            group.credits_arrived = now
            for topic, source in topics.items():
                offset, metadata = positions.get((topic, partition), (None, None))
                source.next_offset = offset
                source.time = _time_of(metadata)

    def clear(self) -> None:
        """Forget everything (a rebalance: faust reads every partition again from its commit)."""
        self.groups.clear()
        self.resync.clear()
        self._resyncs.clear()
        self.announcements.clear()
        self.held = 0
        self._published.clear()

    # -- input --------------------------------------------------------------------------

    def add(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        headers: Iterable[tuple[str, bytes]] | None,
        message: Any,
        now: float = 0.0,
    ) -> None:
        """One message read, of an input topic or the credits topic (a credit, announcement or watermark).

        `message.key` is its account (the receiver's, for a credit).
        """
        group = self.groups.get(partition)
        if group is None:
            raise LookupError(f"{topic}:{partition} is not assigned here")
        if topic == self.credits_topic:
            if not self._next(group, topic, group.credits_next, offset):
                return
            group.credits_next, group.credits_arrived = offset + 1, now
            self._credits_message(group, offset, headers, message)
            return
        source = group.topics[topic]
        if not self._next(group, topic, source.next_offset, offset):
            return
        source.arrived = now
        before = source.time
        time_ms = timestamp_ms if before is None else max(before, timestamp_ms)
        # only this source's bound moves, and up (`Source.bound`): the least one stays, unless it was
        # this source's, or this source was let go (its bound left out, counted again from now)
        if source.forced or source is group.least_source:
            group.least = None
        source.time, source.next_offset, source.forced, source.waiting_since = (
            time_ms,
            offset + 1,
            False,
            None,
        )
        key = OrderKey(time_ms, source.rank, partition, offset)
        if topic == self.transferred:
            to = self.destination(message)
            if to is not None:  # its credit may come: the receiver holds its account back until it does
                self.announcements.append((to[0], to[1], key._replace(credit=1)))
        self._hold(group, source, Held(key, self.seq, message, before, offset, message.key, source))

    def _credits_message(
        self, group: Group, offset: int, headers: Iterable[tuple[str, bytes]] | None, message: Any
    ) -> None:
        order = announce = watermark = None
        for name, value in headers or ():
            if name == ORDER_HEADER:
                order = value
            elif name == ANNOUNCE_HEADER:
                announce = value
            elif name == WATERMARK_HEADER:
                watermark = value
        account = message.key
        if order is not None and account is not None:
            key = OrderKey.credit_of(order)
            announced_at = self._settle(group, account, key)
            held = Held(key, self.seq, message, None, offset, account, group.credits[key.partition])
            held.announced_at = announced_at
            self._hold(group, held.source, held, late=announced_at is None)
        elif announce is not None:
            if message.value:
                for to, *place in _announcements.decode(message.value):
                    self._announce(group, OrderKey(*place), to, offset)
            elif account is not None:
                self._announce(group, OrderKey.credit_of(announce), account, offset)
        elif watermark is not None:
            for sender, *keys, next_offset in _watermarks.decode(message.value):
                source = group.credits.get(sender)
                if source is None or OrderKey(*keys[:5]) < source.unread:
                    continue  # an owner before the last one: it promised less
                source.unread, source.applied = OrderKey(*keys[:5]), OrderKey(*keys[5:])
                source.next_offset = None if next_offset < 0 else next_offset
                self._expire(group, sender, source.applied)
            group.least = None
        # anything else: no allocator writes it; nothing to apply

    def _announce(self, group: Group, key: OrderKey, account: bytes, offset: int) -> None:
        keys = group.pending.setdefault(account, [])
        if key in keys or key < group.credits[key.partition].applied:
            return  # read twice (a sender read again), or already refused
        bisect.insort(keys, key)
        bisect.insort(group.announced.setdefault(key.partition, []), (key, account, offset))
        group.announcement_offsets[offset] = group.announcement_offsets.get(offset, 0) + 1

    @staticmethod
    def _announced(group: Group, offset: int) -> None:
        """One credit announced at `offset` came and was applied, or will never come."""
        left = group.announcement_offsets.get(offset, 0) - 1
        if left > 0:
            group.announcement_offsets[offset] = left
        else:
            group.announcement_offsets.pop(offset, None)

    def _settle(self, group: Group, account: bytes, key: OrderKey) -> int | None:
        """A credit came: its account waits no more. Its announcement's offset if it was announced.

        The announcement still holds the commit of the credits partition until
        the credit is applied: read again from a commit past it, a receiver
        would meet the sender's later watermarks before the credit, without
        the announcement that makes the account wait for it, and apply the
        account's later events first (seen in the live equivalence test: a
        transfer applied before a credit of an earlier time).
        """
        keys = group.pending.get(account)
        if not keys or key not in keys:
            return None
        keys.remove(key)
        if not keys:
            del group.pending[account]
        announced = group.announced[key.partition]
        for i, (k, a, offset) in enumerate(announced):
            if k == key and a == account:
                del announced[i]
                return offset
        return None

    def _expire(self, group: Group, sender: int, applied: OrderKey) -> None:
        """The sender applied every transfer below `applied`: announced credits below it will not come."""
        announced = group.announced.get(sender)
        while announced and announced[0][0] < applied:
            key, account, offset = announced.pop(0)
            self._announced(group, offset)
            keys = group.pending.get(account)
            if keys is not None and key in keys:
                keys.remove(key)
                if not keys:
                    del group.pending[account]
            self._wake(group, account)

    def _wake(self, group: Group, account: bytes | None) -> None:
        """An account's events held back behind an announced credit: back into the partition's order."""
        waiting = group.waiting.pop(account, None)
        for held in waiting or ():
            heapq.heappush(group.heap, (held.key, held.seq, held))

    def _hold(self, group: Group, source: Source, held: Held, late: bool = True) -> None:
        self.seq += 1
        if held.key.time_ms > self.latest:
            self.latest = held.key.time_ms
        # late: read when events after it in the log order were applied already (a credit that was
        # announced and waited for is not: only its account waited)
        held.late = late and held.key < group.applied
        source.held[held.offset] = held
        heapq.heappush(group.heap, (held.key, held.seq, held))
        self.held += 1
        if self._only_openings:
            self._held_first(group, held)
        if held.source.is_credits:
            self._wake(group, held.account)

    def _next(self, group: Group, topic: str, expected: int | None, offset: int) -> bool:
        """Whether a message continues its partition where the hold has it, and so is taken.

        faust does not hand a partition over whole and in order around a seek:
        it can hand over what it fetched before the seek as well as what it
        reads again, drop records it fetched for a partition it had paused and
        note the hole as a gap in the log, and drop what it reads again below
        a message it handed over after the seek. So only the next offset is
        taken. Anything below it was read already; anything beyond is left
        out, with nothing held or committed past it, and `resync` asks the
        allocator to seek the partition to where the hold has it. Should the
        log itself have nothing there (transaction markers), faust hands over
        the same later offset again after each seek: the third time it is
        taken.
        """
        where = (topic, group.partition)
        if expected is None or offset == expected:
            self.resync.pop(where, None)
            self._resyncs.pop(where, None)
            return True
        if offset > expected:
            tries = self._resyncs.get(where)
            if tries is not None and tries[0] == expected and tries[1] >= RESYNCS_BEFORE_A_GAP:
                log.warning("%s:%s has no record to read from %s to %s: a gap in the log", topic,
                            group.partition, expected, offset - 1)  # fmt: skip
                self.resync.pop(where, None)
                self._resyncs.pop(where, None)
                return True
            if self.resync.get(where) != expected:
                log.info("%s:%s@%s is past the next offset %s: read again from there",
                         topic, group.partition, offset, expected)  # fmt: skip
                self.resync[where] = expected
            self.skipped += 1
        return False

    def resynced(self, topic: str, partition: int, offset: int) -> None:
        """The allocator sought the partition to `offset` for the hold."""
        tries = self._resyncs.get((topic, partition))
        count = tries[1] + 1 if tries is not None and tries[0] == offset else 1
        self._resyncs[(topic, partition)] = (offset, count)

    def restart_at(self, topic: str, partition: int, start: int) -> None:
        """A partition whose log now starts past where the hold has it (retention): go on from its start."""
        self.resync.pop((topic, partition), None)
        group = self.groups.get(partition)
        if group is None:
            return
        if topic == self.credits_topic:
            if group.credits_next is None or group.credits_next < start:
                log.warning("%s:%s starts at %s, past %s: what retention deleted is gone", topic, partition,
                            start, group.credits_next)  # fmt: skip
                group.credits_next = start
            return
        source = group.topics.get(topic)
        if source is not None and (source.next_offset is None or source.next_offset < start):
            log.warning("%s:%s starts at %s, past %s: what retention deleted is gone", topic, partition,
                        start, source.next_offset)  # fmt: skip
            source.next_offset = start
            group.least = None

    def as_of(self, now: float, grace: float) -> tuple[int, int]:
        """(messages read, latest order time read) `grace` seconds before `now`, for `confirm_ends`.

        A producer sends its events in order, but batches them per partition:
        an event stamped before one this worker read can still be on its way
        to another partition, appended some milliseconds later (seen in the
        live equivalence test: an opening appended after its account's later
        issuance had been read, and its partition asked for its end). An end
        offset asked now vouches only for what was read `grace` before.
        """
        reads = self._reads
        reads.append((now, self.seq, self.latest))
        cutoff = now - grace
        while len(reads) > 1 and reads[1][0] <= cutoff:
            reads.popleft()
        if reads[0][0] > cutoff:
            return -1, FIRST.time_ms  # read for less than `grace`: nothing vouched for yet
        return reads[0][1], reads[0][2]

    def confirm_ends(self, ends: Mapping[TP, int], asked_seq: int, asked_latest: int) -> None:
        """The broker's end offsets, asked once `asked_seq` messages had arrived, the latest read at
        `asked_latest`. A transferred partition's end also bears on its credits, wherever they go."""
        for (topic, partition), end in ends.items():
            group = self.groups.get(partition)
            if topic == self.credits_topic:
                if group is not None:
                    group.credits_end = end
                continue
            sources = []
            if group is not None and topic in group.topics:
                sources.append(group.topics[topic])
            if topic == self.transferred:
                sources += [g.credits[partition] for g in self.groups.values() if partition in g.credits]
            for source in sources:
                if asked_seq > source.end_seq:
                    source.end, source.end_seq, source.end_time = end, asked_seq, asked_latest
        self._bounds_moved()

    def set_starts(self, starts: Mapping[TP, int]) -> None:
        """The first offset of topic partitions never committed, read from their start."""
        for (topic, partition), start in starts.items():
            group = self.groups.get(partition)
            source = group.topics.get(topic) if group is not None else None
            if source is not None and source.next_offset is None:
                source.next_offset = start
        self._bounds_moved()

    # -- output -------------------------------------------------------------------------

    def release(self, now: float, partition: int | None = None, limit: int | None = None) -> list[Held]:
        """Every held message whose turn has come, each account's in the log order (one partition, or all).

        At most `limit` (the rest at the next call), so that the allocator
        hands over what they gave while it goes on.

        One partition's, as after each message read, goes by the least bound
        worked out before when nothing has moved it; all of them, as the
        allocator asks on a timer, work out every bound again and so start
        the `max_idle` waits (`_least_bound`).
        """
        out: list[Held] = []
        if self.only_openings:
            for group in self.groups.values() if partition is None else (self.groups[partition],):
                self._release_openings(group, now, out)
            self.held -= len(out)
            return out
        if partition is None:
            for group in self.groups.values():
                if limit is not None and len(out) >= limit:
                    break
                if group.heap:
                    self._release_group(group, self._least_bound(group, group.heap[0][0], now), out, limit)
        else:
            group = self.groups[partition]
            if group.heap:
                least = group.least
                if least is None:
                    least = self._least_bound(group, group.heap[0][0], now)
                if group.heap[0][0] < least:
                    self._release_group(group, least, out, limit)
        self.held -= len(out)
        return out

    @property
    def only_openings(self) -> bool:
        return self._only_openings

    @only_openings.setter
    def only_openings(self, off: bool) -> None:
        """Tracing off (True) or on: off, the first event each account holds is kept track of."""
        if off and not self._only_openings:
            for group in self.groups.values():
                group.first_held = {}
                for _key, _, held in group.heap:
                    self._held_first(group, held)
                for waiting in group.waiting.values():
                    for held in waiting:
                        self._held_first(group, held)
        self._only_openings = off

    def _held_first(self, group: Group, held: Held) -> None:
        if held.gone or held.source.rank == OPENED_RANK:
            return
        first = group.first_held.get(held.account)
        if first is None or held.key < first:
            group.first_held[held.account] = held.key

    def _release_openings(self, group: Group, now: float, out: list[Held]) -> None:
        """Tracing off: the opening balances whose turn has come, ahead of the events held.

        Each goes below every source's bound, and only when its account holds
        nothing before it, neither an event nor an announced credit. They stay
        in the heap (or among an account's waiting events), marked gone, and
        are passed over there once tracing is on again.
        """
        source = group.topics.get(self.opened) if self.opened is not None else None
        if source is None or not source.held:
            return
        least = self._least_bound(group, next(iter(source.held.values())).key, now)
        for held in list(source.held.values()):
            if held.key >= least:
                break
            first = group.first_held.get(held.account)
            announced = group.pending.get(held.account) if held.account is not None else None
            if (first is not None and first < held.key) or (announced and announced[0] < held.key):
                continue  # in the log order when tracing is on again
            held.gone = True
            del source.held[held.offset]
            if held.key > group.applied:
                group.applied = held.key
            out.append(held)

    def _bounds_moved(self) -> None:
        for group in self.groups.values():
            group.least = None

    def _release_group(self, group: Group, wait: OrderKey, out: list[Held], limit: int | None = None) -> None:
        heap, waiting, pending = group.heap, group.waiting, group.pending
        while heap and (limit is None or len(out) < limit):
            key, _, held = heap[0]
            if key >= wait:
                return
            heapq.heappop(heap)
            if held.gone:
                continue
            account = held.account
            if account in waiting:  # behind an announced credit: in order after it
                waiting[account].append(held)
                continue
            keys = pending.get(account) if account is not None else None
            if keys and keys[0] < key:
                waiting[account] = deque((held,))
                continue
            del held.source.held[held.offset]
            if held.announced_at is not None:  # its announcement no longer holds the commit
                self._announced(group, held.announced_at)
            if key > group.applied:
                group.applied = key
            out.append(held)

    def _least_bound(self, group: Group, head: OrderKey, now: float) -> OrderKey:
        """The least key any source can still bring: held keys below it may go.

        A topic partition that has held `head` back for `max_idle` with data
        due is let go (as Kafka Streams' max.task.idle.ms does): what it brings
        later is late.
        """
        least, least_source = LAST, None
        for source in group.topics.values():
            if source.forced:
                continue
            bound = source.bound()
            if bound > head:
                source.waiting_since = None
            elif source.waiting_since is None:
                source.waiting_since = now
            elif now - source.waiting_since >= self.max_idle:
                source.forced = True
                self.forced += 1
                continue
            if bound < least:
                least, least_source = bound, source
        for source in group.credits.values():
            bound = source.bound()
            if bound < least:
                least, least_source = bound, source
        group.least, group.least_source = least, least_source
        return least

    # -- what the allocator asks --------------------------------------------------------------

    def wanted_ends(self) -> list[TP]:
        """Topic partitions whose end offset would let something go: those a held event waits on.

        For a sender's credits, its transferred partition, wherever it is.
        """
        out: set[TP] = set()
        for group in self.groups.values():
            if not group.heap:
                continue
            head = group.heap[0][0]
            for topic, source in group.topics.items():
                if not source.forced and source.bound() <= head:
                    out.add((topic, group.partition))
            for sender, source in group.credits.items():
                if source.bound() <= head:
                    out.add((self.transferred, sender))
        return sorted(out)

    def stalled(self, now: float, after: float) -> dict[TP, int]:
        """Partitions with records the broker has and faust has handed nothing of for `after` seconds.

        faust can drop what it fetched and not read it again until its next
        seek (see `_next`); the allocator seeks these to where the hold has them.
        """
        out: dict[TP, int] = {}
        for group in self.groups.values():
            # a crowded partition is left out of the fetch on purpose (`crowded`)
            positions = [
                (t, s.next_offset, s.end, s.arrived)
                for t, s in group.topics.items()
                if len(s.held) <= self.hold_limit
            ]
            positions.append(
                (self.credits_topic, group.credits_next, group.credits_end, group.credits_arrived)
            )
            for topic, next_offset, end, arrived in positions:
                if (
                    next_offset is not None
                    and end is not None
                    and next_offset < end
                    and now - arrived >= after
                ):
                    out[(topic, group.partition)] = next_offset
        return out

    def owned(self) -> list[TP]:
        """Every topic partition the hold reads (for a round of end offsets)."""
        return [(t, p) for p, g in self.groups.items() for t in [*g.topics, self.credits_topic]]

    def wanted_starts(self) -> list[TP]:
        """Topic partitions whose next offset is unknown: never committed, nothing read yet."""
        return sorted(
            (topic, group.partition)
            for group in self.groups.values()
            for topic, source in group.topics.items()
            if source.next_offset is None
        )

    def commit_point(self, topic: str, partition: int) -> int | None:
        """The offset to commit for a topic partition: its first held message's, else its next one.

        On the credits partition, announcements whose credits have not been applied are held too.
        """
        group = self.groups.get(partition)
        if group is None:
            return None
        if topic == self.credits_topic:
            points = [next(iter(s.held), None) for s in group.credits.values()]
            points += [next(iter(group.announcement_offsets), None), group.credits_next]
        else:
            source = group.topics.get(topic)
            if source is None:
                return None
            points = [next(iter(source.held), None), source.next_offset]
        return min((p for p in points if p is not None), default=None)

    def order_metadata(self, topic: str, partition: int) -> str:
        """What goes with the commit: the partition's order time before its commit point."""
        group = self.groups.get(partition)
        source = group.topics.get(topic) if group is not None else None
        if source is None:
            return ""
        first = next(iter(source.held.values()), None)
        time_ms = first.before if first is not None else source.time
        return "" if time_ms is None else f"{METADATA_PREFIX}{time_ms}"

    def watermarks(self) -> dict[int, Watermark]:
        """Per owned partition, what its future credits can be (see the module's docstring).

        A credit's key is its transfer's, marked as a credit. Not announced yet:
        those of transfers not read yet, from the key after the last one read.
        Below the first transfer not applied yet, every credit has been sent.
        Whether the transferred partition has more than the sender has read is
        for each receiver to ask, against what it has read itself
        (`Source.bound`): this worker may have read less.
        """
        out = {}
        for partition, group in self.groups.items():
            transferred = group.topics[self.transferred]
            time_ms = FIRST.time_ms if transferred.time is None else transferred.time
            unread = OrderKey(time_ms, transferred.rank, partition, transferred.next_offset or 0, 1)
            first = next(iter(transferred.held.values()), None)
            applied = unread if first is None else first.key._replace(credit=1)
            out[partition] = Watermark(unread, applied, transferred.next_offset)
        return out

    def changed_watermarks(self) -> dict[int, Watermark]:
        """The watermarks that moved since last asked (all of them after an assignment)."""
        changed = {p: w for p, w in self.watermarks().items() if self._published.get(p) != w}
        self._published.update(changed)
        return changed

    def waiting_for(self) -> list[str]:
        """What each partition with held events waits for: its next event and the sources below it."""
        out = []
        for group in self.groups.values():
            if not group.heap:
                if group.waiting:
                    out.append(
                        f"partition {group.partition}: {len(group.waiting)} account(s) wait for credits"
                    )
                continue
            head = group.heap[0][0]
            waits = [
                f"{topic}(bound {source.bound()}, next {source.next_offset}, end {source.end})"
                for topic, source in group.topics.items()
                if not source.forced and source.bound() <= head
            ]
            waits += [
                f"credits of {sender} (unread {source.unread}, applied {source.applied}, "
                f"sender's next {source.next_offset}, end {source.end})"
                for sender, source in group.credits.items()
                if source.bound() <= head
            ]
            out.append(
                f"partition {group.partition}: next {head} waits for {'; '.join(waits) or 'nothing'}; "
                f"{len(group.waiting)} account(s) wait for credits"
            )
        return out

    def crowded(self) -> set[TP]:
        """Topic partitions holding more than `hold_limit`: the consumer fetches others first."""
        return {
            (topic, group.partition)
            for group in self.groups.values()
            for topic, source in group.topics.items()
            if len(source.held) > self.hold_limit
        }


def _time_of(metadata: str | None) -> int | None:
    if metadata and metadata.startswith(METADATA_PREFIX):
        try:
            return int(metadata[len(METADATA_PREFIX) :])
        except ValueError:
            return None
    return None
