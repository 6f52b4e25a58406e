"""The changelog fence: a restore takes the owner's records, never a writer's that lost the partition."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from costtrace.fleet.fence import MARKER_KEY, Fence, marker_value, read_marker, writer_headers

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def restore(log: list[Record], fence: Fence | None = None, partition: int = 0) -> dict[bytes, bytes]:
    """What a restore of `log` leaves: the records the fence admits, last write wins (no fence: all)."""
    state: dict[bytes, bytes] = {}
    for key, value, headers in log:
        if fence is None or fence.admits(partition, key, value, headers):
            state[key] = value
    return state


def marker(generation: int, forced: bool = False) -> Record:
    return (MARKER_KEY, marker_value(generation, forced), [])


def write(generation: int | None, key: bytes, value: bytes) -> Record:
    return (key, value, writer_headers(generation))


def test_records_of_an_older_writer_after_a_newer_marker_are_skipped_and_counted() -> None:
    log = [marker(3), write(3, b"a", b"1"), marker(5), write(5, b"a", b"2"), write(3, b"a", b"stale")]
    fence = Fence()
    assert restore(log, fence)[b"a"] == b"2"
    assert fence.skipped == 1
    assert restore(log)[b"a"] == b"stale"  # what the restore took before the fence


def test_an_older_writer_s_records_before_the_newer_marker_are_its_history_and_applied() -> None:
    log = [marker(3), write(3, b"a", b"1"), write(3, b"b", b"1"), marker(5), write(5, b"a", b"2")]
    assert restore(log, Fence()) == {MARKER_KEY: b"5", b"a": b"2", b"b": b"1"}


def test_a_stale_writer_s_own_late_marker_does_not_take_the_partition_back() -> None:
    log = [marker(5), write(5, b"a", b"2"), marker(3), write(3, b"a", b"stale")]
    fence = Fence()
    state = restore(log, fence)
    assert state[b"a"] == b"2" and state[MARKER_KEY] == b"5"
    assert fence.current(0) == 5 and fence.skipped == 2


def test_a_forced_marker_wins_whatever_its_generation_a_group_started_over() -> None:
    log = [marker(40), write(40, b"a", b"1"), marker(2), marker(2, forced=True), write(2, b"a", b"2")]
    fence = Fence()
    assert restore(log, fence)[b"a"] == b"2"
    assert fence.current(0) == 2


def test_records_without_a_writer_are_applied_whatever_the_marker() -> None:
    log = [write(None, b"a", b"1"), marker(5), write(None, b"a", b"copied"), write(4, b"b", b"stale")]
    assert restore(log, Fence()) == {MARKER_KEY: b"5", b"a": b"copied"}


def test_the_stored_marker_is_where_an_incremental_restore_starts_and_partitions_are_apart() -> None:
    stored = {0: b"7", 1: None}
    fence = Fence(lambda p: stored[p])
    assert not fence.admits(0, b"a", b"x", writer_headers(6))
    assert fence.admits(0, b"a", b"x", writer_headers(7))
    assert fence.admits(1, b"a", b"x", writer_headers(6))  # no marker there yet
    stored[0] = b"9"
    assert fence.current(0) == 7  # kept until forgotten
    fence.forget()
    assert fence.current(0) == 9


def test_markers_read_back_and_anything_else_is_not_one() -> None:
    assert read_marker(marker_value(12)) == (12, False)
    assert read_marker(marker_value(12, forced=True)) == (12, True)
    for junk in (None, b"", b"!", b"x1", b"-3", "١".encode()):
        assert read_marker(junk) is None
    fence = Fence()
    assert not fence.admits(0, MARKER_KEY, b"junk", [])
    assert fence.current(0) is None


# The property: owners follow each other, generation by generation. Each writes its marker, restores the
# partition from the changelog as it then stands (faust reads to the end after the marker), and writes on.
# An owner that loses the partition while frozen sends what it still held at any later moment, and
# sometimes its own marker late. Whatever the interleaving, a restore of the whole changelog gives what
# the last owner holds: its own restore and its own writes since.

owner_writes = st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.integers(0, 9)), max_size=4)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Record], dict[bytes, bytes]]:
    generations = sorted(draw(st.sets(st.integers(1, 60), min_size=1, max_size=5)))
    log: list[Record] = [write(None, b"a", b"legacy")]
    late: list[Record] = []  # what owners that lost the partition still send
    held: dict[bytes, bytes] = {}
    for generation in generations:
        # a stale writer sends some of what it held, before or after this owner's marker
        log += draw(st.lists(st.sampled_from(late), max_size=3)) if late else []
        log.append(marker(generation))
        log += draw(st.lists(st.sampled_from(late), max_size=3)) if late else []
        held = restore(log, Fence())  # the new owner's restore, to the end of the changelog as it is
        for key, n in draw(owner_writes):
            value = f"{generation}:{n}".encode()
            log.append(write(generation, key, value))
            held[key] = value
        if generation != generations[-1]:  # it freezes and loses the partition, with these unsent
            unsent = draw(owner_writes)
            late += [write(generation, key, f"{generation}:late{n}".encode()) for key, n in unsent]
            if draw(st.booleans()):
                late.append(marker(generation))
    log += draw(st.lists(st.sampled_from(late), max_size=4)) if late else []
    return log, held


@settings(max_examples=300)
@given(histories())
def test_a_restore_gives_what_the_last_owner_holds_whatever_stale_writers_send(
    history: tuple[list[Record], dict[bytes, bytes]],
) -> None:
    log, last_owner = history
    assert restore(log, Fence()) == last_owner


def test_without_the_fence_a_stale_writer_wins() -> None:
    # the case the soak found (docs/operations.md, "Faults"): the property above fails without the fence
    log = [marker(1), write(1, b"a", b"1:0"), marker(2), write(2, b"a", b"2:0"), write(1, b"a", b"1:late")]
    assert restore(log) != restore(log, Fence())
    assert restore(log, Fence())[b"a"] == b"2:0"
