"""The allocator's hold (costtrace/fleet/merge.py): the log order whatever the arrival, in memory.

The property at the end is the one the fleet stands on: with everything
published before it is read (a backlog), any interleaving of the topic
partitions' arrivals, on one worker or two, applies each account's events
and credits in exactly the order offline replay of the topics gives.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from costtrace.fleet.merge import (
    ANNOUNCE_HEADER,
    ORDER_HEADER,
    WATERMARK_HEADER,
    LogMerge,
    Watermark,
    announcement_message,
    watermark_message,
)
from costtrace.model.order import FIRST, RANK, InputRecord, OrderKey, log_order

TOPICS = {f"p.{kind}": rank for kind, rank in RANK.items()}
CREDITS = "p.credits"
KIND_OF = {f"p.{kind}": kind for kind in RANK}


class Msg(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    headers: list[tuple[str, bytes]]
    value: bytes = b""
    key: bytes | None = b"a"  # the account


def mark(
    sender: int, unread: OrderKey, applied: OrderKey | None = None, next_offset: int | None = None
) -> bytes:
    """A watermark message from one sender."""
    return watermark_message({sender: Watermark(unread, applied or unread, next_offset)})


def watermark(partition: int, offset: int, value: bytes) -> Msg:
    return Msg(CREDITS, partition, offset, 0, [(WATERMARK_HEADER, b"1")], value)


def merge(partitions: int = 1, max_idle: float = 1e9) -> LogMerge:
    m = LogMerge(TOPICS, CREDITS, partitions, max_idle)
    m.assign({(t, p): (0, None) for t in [*TOPICS, CREDITS] for p in range(partitions)})
    return m


def add(m: LogMerge, msg: Msg) -> None:
    m.add(msg.topic, msg.partition, msg.offset, msg.timestamp_ms, msg.headers, msg)


def released(m: LogMerge, now: float = 0.0) -> list[tuple[str, int]]:
    return [(h.message.topic, h.message.offset) for h in m.release(now)]


def test_a_consumption_read_before_its_issuance_waits_for_it() -> None:
    m = merge()
    add(m, Msg("p.consumed", 0, 0, 10, []))
    m.confirm_ends({(t, 0): 0 for t in TOPICS} | {("p.consumed", 0): 1, ("p.issued", 0): 1}, m.seq, m.latest)
    assert released(m) == []  # issued has a record due: the broker said so
    add(m, Msg("p.issued", 0, 0, 5, []))
    assert released(m) == []  # a credit could still come before it
    add(m, watermark(0, 0, mark(0, OrderKey(50, 3, 0, 0, 1))))
    assert released(m) == [("p.issued", 0), ("p.consumed", 0)]
    assert m.commit_point("p.consumed", 0) == 1 and m.commit_point(CREDITS, 0) == 1


def test_nothing_is_committed_past_a_held_event_and_order_time_goes_with_the_offset() -> None:
    m = merge()
    add(m, Msg("p.issued", 0, 0, 7, []))
    add(m, Msg("p.issued", 0, 1, 4, []))  # stamped before the one ahead of it: order time 7
    add(m, Msg("p.refunded", 0, 0, 9, []))
    assert [h.key for h in m.groups[0].topics["p.issued"].held.values()] == [
        OrderKey(7, 1, 0, 0),
        OrderKey(7, 1, 0, 1),
    ]
    assert m.commit_point("p.issued", 0) == 0 and m.commit_point("p.refunded", 0) == 0
    assert m.order_metadata("p.issued", 0) == ""  # nothing known before offset 0
    m2 = LogMerge(TOPICS, CREDITS, 1, 1e9)
    m2.assign({("p.issued", 0): (1, "costtrace-order-time:7")})
    add(m2, Msg("p.issued", 0, 1, 4, []))
    assert m2.groups[0].topics["p.issued"].held[1].key == OrderKey(7, 1, 0, 1)  # as the first owner saw it


def test_a_partition_at_its_end_holds_nothing_back_but_one_with_data_due_does() -> None:
    m = merge()
    add(m, Msg("p.refunded", 0, 0, 10, []))
    add(m, watermark(0, 0, mark(0, OrderKey(99, 3, 0, 0, 1))))
    ends = {(t, 0): 0 for t in TOPICS} | {("p.refunded", 0): 1, ("p.issued", 0): 3}
    m.confirm_ends(ends, m.seq, m.latest)
    assert released(m) == []  # issued has three records due
    assert ("p.issued", 0) in m.wanted_ends()
    for offset in range(3):
        add(m, Msg("p.issued", 0, offset, 20 + offset, []))
    assert released(m) == [("p.refunded", 0)]  # issued's next one is later; the rest are at their end
    # the others were at their end when the latest read was 10: a record appended since could be
    # stamped before 20, so issued waits until the broker is asked again
    assert ("p.consumed", 0) in m.wanted_ends()
    m.confirm_ends(ends, m.seq, m.latest)
    assert released(m) == [("p.issued", 0), ("p.issued", 1), ("p.issued", 2)]


def test_an_end_vouches_only_for_what_was_read_the_grace_before_it_was_asked() -> None:
    """A producer's batch to one partition can land after its later-stamped batch to another: an end
    offset asked just after reading the later event must not let it go before the earlier one."""
    m = merge()
    add(m, watermark(0, 0, mark(0, OrderKey(99, 3, 0, 0, 1))))
    ends = {(t, 0): 0 for t in TOPICS}
    m.as_of(0.0, 0.25)
    add(m, Msg("p.issued", 0, 0, 20, []))  # read at 0.1; the opening stamped 10 is still on its way
    m.confirm_ends(ends | {("p.issued", 0): 1}, *m.as_of(0.2, 0.25))
    assert released(m) == []  # the answer vouches for nothing read after 0.0-: issued waits
    add(m, Msg("p.opened", 0, 0, 10, []))  # lands at 0.3
    m.confirm_ends(ends | {("p.issued", 0): 1, ("p.opened", 0): 1}, *m.as_of(0.4, 0.25))
    assert released(m) == []  # read at most 0.15 ago: not yet vouched for
    m.confirm_ends(ends | {("p.issued", 0): 1, ("p.opened", 0): 1}, *m.as_of(0.7, 0.25))
    assert [(h.message.topic, h.late) for h in m.release(0.7)] == [("p.opened", False), ("p.issued", False)]


def test_a_release_gives_at_most_its_limit_and_the_rest_next_time_in_the_same_order() -> None:
    m = merge(partitions=2)
    for p in range(2):
        add(m, watermark(p, 0, mark(0, OrderKey(999, 3, 0, 0, 1)) + b""))
    ends = {(t, p): 0 for t in TOPICS for p in range(2)}
    for p in range(2):
        add(m, watermark(p, 1, mark(1, OrderKey(999, 3, 1, 0, 1))))
    for offset in range(5):
        for p in range(2):
            add(m, Msg("p.consumed", p, offset, 10 + offset, []))
    m.confirm_ends(ends | {("p.consumed", p): 5 for p in range(2)}, m.seq, m.latest)
    batches = []
    while batch := [(h.message.partition, h.message.offset) for h in m.release(0.0, limit=3)]:
        batches.append(batch)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    for p in range(2):
        assert [o for b in batches for q, o in b if q == p] == list(range(5))
    assert m.held == 0


def test_without_the_grace_the_same_arrivals_make_the_opening_late() -> None:
    m = merge()
    add(m, watermark(0, 0, mark(0, OrderKey(99, 3, 0, 0, 1))))
    ends = {(t, 0): 0 for t in TOPICS}
    add(m, Msg("p.issued", 0, 0, 20, []))
    m.confirm_ends(ends | {("p.issued", 0): 1}, *m.as_of(0.2, 0.0))
    assert released(m) == [("p.issued", 0)]
    add(m, Msg("p.opened", 0, 0, 10, []))
    m.confirm_ends(ends | {("p.issued", 0): 1, ("p.opened", 0): 1}, *m.as_of(0.4, 0.0))
    assert [(h.message.topic, h.late) for h in m.release(0.4)] == [("p.opened", True)]


def test_a_partition_with_data_due_is_let_go_after_max_idle_and_what_it_brings_is_late() -> None:
    m = merge(max_idle=2.0)
    add(m, watermark(0, 0, mark(0, OrderKey(99, 3, 0, 0, 1))))
    add(m, Msg("p.consumed", 0, 0, 10, []))
    m.confirm_ends({(t, 0): 0 for t in TOPICS} | {("p.consumed", 0): 1, ("p.issued", 0): 1}, m.seq, m.latest)
    assert released(m, now=0.0) == [] and released(m, now=1.9) == []
    assert released(m, now=2.0) == [("p.consumed", 0)]
    assert m.forced == 1
    add(m, Msg("p.issued", 0, 0, 5, []))
    [late] = m.release(3.0)
    assert late.late and late.key == OrderKey(5, 1, 0, 0)


def test_a_partition_let_go_holds_back_again_once_it_brings_a_record() -> None:
    """After each message the hold goes by the bounds it worked out before (what the message moved
    aside): a partition let go by `max_idle` counts again from its next record."""
    m = merge(max_idle=2.0)
    add(m, watermark(0, 0, mark(0, OrderKey(99, 3, 0, 0, 1))))
    add(m, Msg("p.consumed", 0, 0, 10, []))
    ends = {(t, 0): 0 for t in TOPICS} | {("p.consumed", 0): 1, ("p.issued", 0): 2}
    m.confirm_ends(ends, m.seq, 50)  # the others are at their end: they hold back nothing up to 50
    assert released(m, now=0.0) == [] and released(m, now=2.0) == [("p.consumed", 0)]  # issued let go
    add(m, Msg("p.issued", 0, 0, 5, []))
    add(m, Msg("p.consumed", 0, 1, 30, []))
    # issued's next record may be stamped before 30: the consumption waits for it, as after a tick
    assert [(h.message.topic, h.message.offset, h.late) for h in m.release(2.1, 0)] == [("p.issued", 0, True)]
    assert released(m, now=2.2) == []
    add(m, Msg("p.issued", 0, 1, 20, []))
    after = [(h.message.topic, h.message.offset) for h in m.release(2.3, 0)]
    assert after == [("p.issued", 1), ("p.consumed", 1)]


def test_an_announced_credit_holds_back_its_account_only_and_takes_its_transfers_place() -> None:
    m = merge(partitions=2)
    ends = {(t, p): 0 for t in TOPICS for p in range(2)} | {("p.consumed", 1): 2}
    m.confirm_ends(ends, 0, 0)
    place = OrderKey(20, 3, 0, 4).text().encode()
    add(m, Msg(CREDITS, 1, 0, 0, [(ANNOUNCE_HEADER, place)], key=b"bob"))  # a transfer to bob, read
    add(m, Msg("p.consumed", 1, 0, 21, [], key=b"bob"))
    add(m, Msg("p.consumed", 1, 1, 22, [], key=b"cy"))
    add(m, watermark(1, 1, mark(0, OrderKey(90, 3, 0, 9, 1), applied=OrderKey(20, 3, 0, 4, 1))))
    add(m, watermark(1, 2, mark(1, OrderKey(90, 3, 1, 0, 1))))
    m.confirm_ends(ends, m.seq, m.latest)
    assert released(m) == [("p.consumed", 1)]  # cy goes on; bob waits for the credit before his order
    assert m.commit_point(CREDITS, 1) == 0  # the announcement holds the commit until its credit comes
    add(m, Msg(CREDITS, 1, 3, 20, [(ORDER_HEADER, place)], key=b"bob"))
    assert released(m) == [(CREDITS, 3), ("p.consumed", 0)]  # (20, transferred) before (21, consumed)
    assert m.commit_point(CREDITS, 1) == 4 and m.commit_point("p.consumed", 1) == 2


def test_an_announcement_holds_the_commit_until_its_credit_is_applied_not_only_read() -> None:
    """Read again from a commit past the announcement, the sender's later watermarks would come before
    the credit, with nothing to say that bob waits for it: his later events would go first."""
    m = merge(partitions=2)
    place = OrderKey(20, 3, 0, 4).text().encode()
    add(m, Msg(CREDITS, 1, 0, 0, [(ANNOUNCE_HEADER, place)], key=b"bob"))
    add(m, watermark(1, 1, mark(0, OrderKey(90, 3, 0, 9, 1), applied=OrderKey(20, 3, 0, 4, 1))))
    add(m, watermark(1, 2, mark(1, OrderKey(90, 3, 1, 0, 1))))
    add(m, Msg(CREDITS, 1, 3, 20, [(ORDER_HEADER, place)], key=b"bob"))  # the credit, read
    add(m, Msg("p.consumed", 1, 0, 30, [], key=b"bob"))
    assert released(m) == []  # partition 1's other topics may still bring something before it
    assert m.commit_point(CREDITS, 1) == 0  # not 3: the announcement is needed again until then
    m.confirm_ends({(t, p): 0 for t in TOPICS for p in range(2)} | {("p.consumed", 1): 1}, m.seq, m.latest)
    assert released(m) == [(CREDITS, 3), ("p.consumed", 0)]
    assert m.commit_point(CREDITS, 1) == 4


def test_one_message_announces_many_credits_and_holds_the_commit_until_each_has_come() -> None:
    m = merge(partitions=1)
    ends = {(t, 0): 0 for t in TOPICS} | {("p.consumed", 0): 2}
    to_bob, to_cy = OrderKey(20, 3, 0, 4, 1), OrderKey(24, 3, 0, 6, 1)
    add(
        m,
        Msg(
            CREDITS,
            0,
            0,
            0,
            [(ANNOUNCE_HEADER, b"1")],
            announcement_message([(b"bob", to_bob), (b"cy", to_cy)]),
            key=b"",
        ),
    )
    add(m, Msg("p.consumed", 0, 0, 30, [], key=b"bob"))
    add(m, Msg("p.consumed", 0, 1, 31, [], key=b"cy"))
    add(m, watermark(0, 1, mark(0, OrderKey(90, 3, 0, 9, 1), applied=OrderKey(20, 3, 0, 4, 1))))
    m.confirm_ends(ends, m.seq, m.latest)
    assert released(m) == []  # both wait for their credits
    add(m, Msg(CREDITS, 0, 2, 20, [(ORDER_HEADER, to_bob.text().encode())], key=b"bob"))
    assert released(m) == [(CREDITS, 2), ("p.consumed", 0)]
    assert m.commit_point(CREDITS, 0) == 0  # cy's credit, announced there, has not come
    add(m, watermark(0, 3, mark(0, OrderKey(90, 3, 0, 9, 1), applied=OrderKey(25, 3, 0, 7, 1))))  # refused
    assert released(m) == [("p.consumed", 1)]
    assert m.commit_point(CREDITS, 0) == 4


def test_an_announced_credit_that_never_comes_expires_with_its_senders_watermark() -> None:
    m = merge(partitions=1)
    m.confirm_ends({(t, 0): 0 for t in TOPICS} | {("p.consumed", 0): 1}, 0, 0)
    add(m, Msg(CREDITS, 0, 0, 0, [(ANNOUNCE_HEADER, OrderKey(20, 3, 0, 4).text().encode())], key=b"bob"))
    add(m, Msg("p.consumed", 0, 0, 30, [], key=b"bob"))
    add(m, watermark(0, 1, mark(0, OrderKey(90, 3, 0, 9, 1), applied=OrderKey(20, 3, 0, 4, 1))))
    m.confirm_ends({(t, 0): 0 for t in TOPICS} | {("p.consumed", 0): 1}, m.seq, m.latest)
    assert released(m) == []
    # the sender applied its transfer (refused: no credit), and says so
    add(m, watermark(0, 2, mark(0, OrderKey(90, 3, 0, 9, 1), applied=OrderKey(25, 3, 0, 5, 1))))
    assert released(m) == [("p.consumed", 0)]
    assert m.commit_point(CREDITS, 0) == 3


def test_tracing_off_lets_openings_go_in_their_accounts_order_and_holds_the_rest_uncommitted() -> None:
    m = merge()
    add(m, watermark(0, 0, mark(0, OrderKey(99, 3, 0, 0, 1))))
    m.only_openings = True
    add(m, Msg("p.consumed", 0, 0, 40, [], key=b"dan"))  # after his opening: held, and no matter
    add(m, Msg("p.issued", 0, 0, 10, [], key=b"bob"))  # before his opening: held, so his opening waits
    add(m, Msg("p.opened", 0, 0, 20, [], key=b"bob"))
    add(m, Msg("p.opened", 0, 1, 20, [], key=b"cy"))
    add(m, Msg("p.opened", 0, 2, 20, [], key=b"dan"))
    assert released(m) == []  # issued and consumed may still bring something before them
    ends = {(t, 0): 0 for t in TOPICS} | {("p.issued", 0): 1, ("p.consumed", 0): 1, ("p.opened", 0): 3}
    m.confirm_ends(ends, m.seq, m.latest)
    assert released(m) == [("p.opened", 1), ("p.opened", 2)]
    assert released(m) == []
    assert m.commit_point("p.opened", 0) == 0  # bob's opening is still held
    assert m.commit_point("p.consumed", 0) == 0 and m.commit_point("p.issued", 0) == 0  # kept in Kafka
    assert m.held == 3
    m.only_openings = False
    # the log order, each opening once: bob's issuance, then his opening, then dan's consumption
    assert released(m) == [("p.issued", 0), ("p.opened", 0), ("p.consumed", 0)]
    assert m.held == 0 and m.commit_point("p.opened", 0) == 3 and m.commit_point("p.consumed", 0) == 1


def test_tracing_turned_off_with_events_held_keeps_their_accounts_openings_behind_them() -> None:
    m = merge()
    add(m, Msg("p.consumed", 0, 0, 10, [], key=b"bob"))  # held (no watermark yet) before tracing goes off
    m.only_openings = True
    add(m, watermark(0, 0, mark(0, OrderKey(99, 3, 0, 0, 1))))
    add(m, Msg("p.opened", 0, 0, 20, [], key=b"bob"))
    add(m, Msg("p.opened", 0, 1, 20, [], key=b"cy"))
    m.confirm_ends({(t, 0): 0 for t in TOPICS} | {("p.consumed", 0): 1, ("p.opened", 0): 2}, m.seq, m.latest)
    assert released(m) == [("p.opened", 1)]


def test_watermarks_say_how_far_a_sender_has_read_and_applied() -> None:
    m = merge(partitions=2)
    add(m, Msg("p.transferred", 0, 0, 40, []))
    add(m, Msg("p.transferred", 0, 1, 45, []))
    assert m.release(0.0) == []  # every sender must speak first
    sent = m.changed_watermarks()
    assert sent[0] == Watermark(OrderKey(45, 3, 0, 2, 1), OrderKey(40, 3, 0, 0, 1), 2)
    # partition 1 has read nothing of its transferred partition
    assert sent[1] == Watermark(OrderKey(FIRST.time_ms, 3, 1, 0, 1), OrderKey(FIRST.time_ms, 3, 1, 0, 1), 0)
    assert m.changed_watermarks() == {}  # only what moved is published again


def test_a_crowded_partition_is_named_for_the_fetch_to_skip() -> None:
    m = LogMerge(TOPICS, CREDITS, 1, 1e9, hold_limit=3)
    m.assign({("p.issued", 0): (0, None)})
    for offset in range(4):
        add(m, Msg("p.issued", 0, offset, offset, []))
    assert m.crowded() == {("p.issued", 0)}


def test_offsets_past_the_next_one_are_left_for_a_seek_and_taken_after_three() -> None:
    m = merge()
    add(m, Msg("p.issued", 0, 0, 1, []))
    add(m, Msg("p.issued", 0, 5, 2, []))  # 1 to 4 dropped on the way
    assert m.resync == {("p.issued", 0): 1} and m.commit_point("p.issued", 0) == 0
    for _ in range(3):
        m.resynced("p.issued", 0, 1)
        add(m, Msg("p.issued", 0, 5, 2, []))
    assert m.resync == {} and list(m.groups[0].topics["p.issued"].held) == [0, 5]  # the log has none there


# -- the property: any arrival interleaving, the offline order --------------------------------


@dataclass
class World:
    """Topics published whole before anything is read, workers sharing the partitions, credits in band."""

    partitions: int
    inputs: dict[tuple[str, int], list[Msg]]
    destination: dict[tuple[str, int, int], tuple[int, bytes]]  # a transfer's receiving partition and account
    refused: set[tuple[str, int, int]]  # transfers the model refuses: no credit
    credits: dict[int, list[Msg]] = field(default_factory=dict)
    read: dict[tuple[str, int], int] = field(default_factory=dict)


ACCOUNTS = [b"a", b"b", b"c"]


@st.composite
def worlds(draw: st.DrawFn) -> World:
    partitions = draw(st.integers(1, 3))
    inputs: dict[tuple[str, int], list[Msg]] = {}
    destination = {}
    refused = set()
    for topic in TOPICS:
        for p in range(partitions):
            times = draw(st.lists(st.integers(0, 12), max_size=6))
            accounts = [draw(st.sampled_from(ACCOUNTS)) for _ in times]
            inputs[(topic, p)] = [
                Msg(topic, p, o, t, [], key=a) for o, (t, a) in enumerate(zip(times, accounts, strict=True))
            ]
            if topic == "p.transferred":
                for o in range(len(times)):
                    destination[(topic, p, o)] = (
                        draw(st.integers(0, partitions - 1)),
                        draw(st.sampled_from(ACCOUNTS)),
                    )
                    if draw(st.integers(0, 4)) == 0:
                        refused.add((topic, p, o))
    return World(partitions, inputs, destination, refused, {p: [] for p in range(partitions)})


def expected_order(world: World) -> dict[tuple[int, bytes | None], list[tuple[str, int, int]]]:
    """Offline, per account: the topics in the log order, each credit right after its transfer."""
    records = [
        InputRecord(KIND_OF[m.topic], m.partition, m.offset, m.timestamp_ms, b"")
        for msgs in world.inputs.values()
        for m in msgs
    ]
    out: dict[tuple[int, bytes | None], list[tuple[str, int, int]]] = {}
    for _, r in log_order(records):
        topic = f"p.{r.kind}"
        msg = world.inputs[(topic, r.partition)][r.offset]
        out.setdefault((r.partition, msg.key), []).append((topic, r.partition, r.offset))
        where = (topic, r.partition, r.offset)
        if topic == "p.transferred" and where not in world.refused:
            to, account = world.destination[where]
            out.setdefault((to, account), []).append(("credit", r.partition, r.offset))
    return out


@settings(max_examples=300, deadline=None)
@given(worlds(), st.integers(1, 2), st.integers(0, 2**32), st.booleans())
def test_any_arrival_interleaving_gives_each_account_the_offline_order(
    world: World, workers: int, seed: int, switching: bool
) -> None:
    """`switching`: tracing goes off and on again at random meanwhile (openings go ahead while off)."""
    rnd = random.Random(
        seed
    )  # the interleaving: drawn here, not from hypothesis's data, which it would exhaust
    owners = {p: p % workers for p in range(world.partitions)}
    merges = []
    for w in range(workers):
        m = LogMerge(
            TOPICS, CREDITS, world.partitions, max_idle=1e9,
            destination=lambda msg: world.destination[(msg.topic, msg.partition, msg.offset)],
        )  # fmt: skip
        owned = [p for p, o in owners.items() if o == w]
        m.assign({(t, p): (0, None) for t in [*TOPICS, CREDITS] for p in owned})
        merges.append(m)
    credits_read = {p: 0 for p in range(world.partitions)}
    got: dict[tuple[int, bytes | None], list[tuple[str, int, int]]] = {}
    ends = {tp: len(msgs) for tp, msgs in world.inputs.items()}

    def send(to: int, headers: list[tuple[str, bytes]], value: bytes = b"", key: bytes | None = None) -> None:
        queue = world.credits[to]
        queue.append(Msg(CREDITS, to, len(queue), 0, headers, value, key))

    def announce(m: LogMerge) -> None:
        """As the allocator sends them: a message per receiving partition, or one per credit (as before)."""
        if rnd.random() < 0.5:
            for to, account, key in m.announcements:
                send(to, [(ANNOUNCE_HEADER, key.text().encode())], key=account)
        else:
            for to in {to for to, _, _ in m.announcements}:
                credits = [(account, key) for p, account, key in m.announcements if p == to]
                send(to, [(ANNOUNCE_HEADER, b"1")], announcement_message(credits), key=b"")
        m.announcements.clear()

    def apply(w: int, partition: int | None = None) -> None:
        """What the allocator does: after a message, its partition's turn (by the bounds worked out
        before, where nothing moved them); on a tick, every partition's."""
        m = merges[w]
        released = m.release(0.0, partition)
        if released and m.announcements:  # before any credit of a transfer read so far (fleet/app.py)
            announce(m)
        for h in released:
            msg: Any = h.message
            assert not h.late
            if msg.topic == CREDITS:
                got.setdefault((msg.partition, msg.key), []).append(("credit", h.key.partition, h.key.offset))
                continue
            got.setdefault((msg.partition, msg.key), []).append((msg.topic, msg.partition, msg.offset))
            where = (msg.topic, msg.partition, msg.offset)
            if msg.topic == "p.transferred" and where not in world.refused:
                to, account = world.destination[where]
                send(to, [(ORDER_HEADER, h.key.text().encode())], key=account)
        if partition is None and m.announcements:
            announce(m)
        moved = m.changed_watermarks() if partition is None else None
        if moved:
            for to in world.credits:
                send(to, [(WATERMARK_HEADER, b"1")], watermark_message(moved))

    for _ in range(10_000):
        pending = [tp for tp, msgs in world.inputs.items() if world.read.get(tp, 0) < len(msgs)]
        pending_credits = [p for p, q in world.credits.items() if credits_read[p] < len(q)]
        choices: list[tuple[str, Any]] = [("input", tp) for tp in pending]
        choices += [("credit", p) for p in pending_credits] + [("tick", w) for w in range(workers)]
        if switching:
            choices.append(("switch", None))
        kind, what = rnd.choice(choices)
        if kind == "switch":
            for m in merges:
                m.only_openings = not m.only_openings
        elif kind == "input":
            msg = world.inputs[what][world.read.get(what, 0)]
            world.read[what] = world.read.get(what, 0) + 1
            add(merges[owners[msg.partition]], msg)
            apply(owners[msg.partition], msg.partition)
        elif kind == "credit":
            msg = world.credits[what][credits_read[what]]
            credits_read[what] += 1
            add(merges[owners[what]], msg)
            apply(owners[what], what)
        else:
            m = merges[what]
            wanted = m.wanted_ends()
            m.confirm_ends({tp: ends[tp] for tp in wanted}, m.seq, m.latest)
            apply(what)
        done_reading = all(world.read.get(tp, 0) == len(msgs) for tp, msgs in world.inputs.items())
        read_all = done_reading and all(credits_read[p] == len(q) for p, q in world.credits.items())
        if read_all and all(m.held == 0 for m in merges):
            break
        if read_all and rnd.random() < 0.1:  # tracing on again, for good
            switching = False
            for m in merges:
                m.only_openings = False
    assert all(m.held == 0 for m in merges), "the merge stalled"
    assert got == expected_order(world)
