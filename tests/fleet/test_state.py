"""The allocator's state on a changelogged table survives any crash the commit rule allows."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from costtrace.fleet.state import PartitionTable, TableStore, account_of_key
from costtrace.model.allocation import Status, apply_event
from costtrace.model.state import MemoryStore, Position
from tests.model.test_properties import logs

REPO = Path(__file__).resolve().parents[2]


class LoggedTable(dict[bytes, bytes]):
    """A table that remembers every write in order: its changelog, and where a crash may cut it.

    A group of writes that `together` covers reaches the changelog whole (as
    the outbox's one record batch); any other may be cut anywhere.
    """

    def __init__(
        self, initial: dict[bytes, bytes] | None = None, together: Callable[[int, int], bool] | None = None
    ) -> None:
        super().__init__(initial or {})
        self.changelog: list[tuple[bytes, bytes]] = []
        self.together = together or (lambda size, records: False)
        self.cuts: list[int] = [0]  # changelog lengths a crash may leave

    def put_all(self, writes: list[tuple[bytes, bytes]]) -> None:
        whole = self.together(sum(len(k) + len(v) for k, v in writes), len(writes))
        for key, value in writes:
            self[key] = value
            self.changelog.append((key, value))
            if not whole:
                self.cuts.append(len(self.changelog))
        if whole:
            self.cuts.append(len(self.changelog))


def single_account_events(log: list[dict[str, Any]]) -> list[bytes]:
    # transfers need a second partition's credits; their dedupe is tested in tests/model
    return [msgspec.json.encode(e) for e in log if e["type"] != "transferred"]


def records_of(outcome: Any) -> list[bytes]:
    out = [msgspec.json.encode(r) for r in outcome.records]
    if outcome.rejection is not None:
        out.append(msgspec.json.encode(outcome.rejection))
    return out


def test_table_store_gives_replays_records() -> None:
    from costtrace.ops.sample import encode_event, generate_events

    lines = [encode_event(e) for e in generate_events(2000, 50, seed=4)]
    mem, table = MemoryStore(), TableStore(LoggedTable())
    for i, line in enumerate(lines):
        a = apply_event(mem, line)
        b = apply_event(table, line, Position("t:0", i))
        assert (a.status, a.records, a.rejection) == (b.status, b.records, b.rejection)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs, st.data())
def test_any_allowed_crash_then_redelivery_gives_replays_records(
    log: list[dict[str, Any]], data: st.DataObject
) -> None:
    lines = single_account_events(log)
    mem = MemoryStore()
    expected = [rec for line in lines for rec in records_of(apply_event(mem, line))]

    # which groups of writes the changelog takes whole: none (every header carries its
    # redo log), all, or those up to a length (longer ones are cut anywhere)
    limit = data.draw(st.sampled_from([None, 0, 120, 300, 10**9]))
    together = None if limit is None else (lambda size, records: size <= limit)

    # first run: apply `applied` events; the group committed offset `committed`
    table = LoggedTable(together=together)
    store = TableStore(table, together)
    applied = data.draw(st.integers(0, len(lines)))
    committed = data.draw(st.integers(0, applied))
    ends: list[int] = []  # changelog length after each event
    outputs: list[list[bytes]] = []
    settled = 0  # the group's commits as the worker saw them: never past `committed`, never back
    for i in range(applied):
        settled = data.draw(st.integers(settled, min(i, committed)))
        outputs.append(records_of(apply_event(store, lines[i], Position("t:0", i), {"t:0": settled})))
        ends.append(len(table.changelog))

    # the crash: the changelog keeps at least the committed events' writes, maybe more;
    # outputs of committed events were delivered, later ones maybe, never before their state
    floor = ends[committed - 1] if committed else 0
    cut = data.draw(st.sampled_from([c for c in table.cuts if c >= floor]))
    delivered: dict[str, bytes] = {}
    rejections: list[bytes] = []

    def deliver(recs: list[bytes]) -> None:
        for r in recs:
            obj = msgspec.json.decode(r)
            if "record_id" in obj:
                assert delivered.setdefault(obj["record_id"], r) == r, "same id, other record"
            else:
                rejections.append(r)

    for i in range(applied):
        if i < committed or (ends[i] <= cut and data.draw(st.booleans())):
            deliver(outputs[i])

    # restart on the changelog prefix (a fresh node, or a wiped folder), re-read from the commit
    restored = LoggedTable(dict(table.changelog[:cut]), together)
    store2 = TableStore(restored, together)
    settled = committed
    for i in range(committed, len(lines)):
        settled = data.draw(st.integers(settled, i))
        out = apply_event(store2, lines[i], Position("t:0", i), {"t:0": settled})
        assert out.status is not Status.REPEAT or not out.records
        deliver(records_of(out))

    want = {msgspec.json.decode(r)["record_id"]: r for r in expected if b'"record_id"' in r}
    assert delivered == want


def test_every_state_key_names_its_account() -> None:
    table = LoggedTable()
    tstore = TableStore(table)
    for account in ("alice", "b:o:b", "çå", "12:34"):
        raw = msgspec.json.encode(
            {"event_id": "e", "type": "issued", "account_id": account, "occurred_at": "2026-01-01T00:00:00Z",
             "batch_id": "b", "budget_id": "B", "amount": 5}
        )  # fmt: skip
        apply_event(tstore, raw, Position("t:0", 0))
    assert {account_of_key(k) for k, _ in table.changelog} == {"alice", "b:o:b", "çå", "12:34"}


_WRITER = """
import gc, os, sys
from rocksdict import Options, Rdict
from costtrace.fleet.internals import without_write_ahead_log
from costtrace.fleet.state import PartitionTable

class Rocks:  # faust's RocksDB store, as far as the wrapper goes
    def _open_for_partition(self, partition):
        return Rdict(f"{sys.argv[1]}/{partition}", options=Options(raw_mode=True))

rocks = Rocks()
without_write_ahead_log(rocks)
db = rocks._open_for_partition(0)
table = PartitionTable(lambda partition: db)
table.use(0)
for i in range(100):
    table.put_all([(b"k%d" % i, b"v%d" % i), (b"h", b"%d" % i)])
    table.flush()  # the allocator's round ends before the persisted offset moves
    db.put(b"__faust\\0offset__", b"%d" % i)  # as faust's set_persisted_offset writes it
    if i == 49:
        db.flush()  # RocksDB flushes a full memtable on its own; here, once, by hand
if sys.argv[2] == "close":
    del table, db, rocks
    gc.collect()
os._exit(0)  # no interpreter shutdown: as far as RocksDB sees, a kill
"""


@pytest.mark.parametrize(("ending", "kept"), [("kill", 50), ("close", 100)])
def test_a_db_without_its_write_ahead_log_keeps_a_prefix_of_its_writes(
    tmp_path: Path, ending: str, kept: int
) -> None:
    """What the allocator relies on with the log off: data and persisted offset are lost together, or kept."""
    subprocess.run([sys.executable, "-c", _WRITER, str(tmp_path), ending], check=True, cwd=REPO)
    db = Rdict(str(tmp_path / "0"), options=Options(raw_mode=True))
    try:
        present = [i for i in range(100) if db.get(b"k%d" % i) is not None]
        assert present == list(range(kept))
        assert db.get(b"h") == db.get(b"__faust\0offset__") == b"%d" % (kept - 1)
    finally:
        db.close()


def test_the_partition_table_reads_what_it_wrote_from_memory_and_forgets_after_a_rebalance(
    tmp_path: Path,
) -> None:
    dbs = {p: Rdict(str(tmp_path / f"p{p}"), Options(raw_mode=True)) for p in (0, 1)}
    table = PartitionTable(dbs.__getitem__, kept=3)
    table.use(0)
    table.put_all([(b"a", b"1"), (b"b", b"2")])
    assert table.pending == [[(b"a", b"1"), (b"b", b"2")]] and table.get(b"a") == b"1"
    assert dbs[0].get(b"a") is None  # RocksDB gets a round's writes at once
    table.flush()
    assert dbs[0][b"a"] == b"1" and dbs[0][b"b"] == b"2"
    assert table.get(b"zz") is None and table.get(b"zz", b"-") == b"-"
    dbs[0][b"a"] = b"restored"  # recovery, behind the table's back
    dbs[0][b"zz"] = b"restored"
    assert table.get(b"a") == b"1" and table.get(b"zz") is None  # kept from before
    table.use(1)
    assert table.get(b"a") is None  # each partition its own
    table.use(0)
    assert table.get(b"a") == b"1"
    table.forget()  # what a rebalance does
    table.use(0)
    assert table.get(b"a") == b"restored" and table.get(b"zz") == b"restored"
    table.put_all([(b"c", b"3"), (b"d", b"4")])  # past `kept`: what was kept is forgotten, not wrong
    table.put_all([(b"e", b"5")])  # memory full: what waited is written before it is forgotten
    assert dbs[0][b"c"] == b"3" and dbs[0][b"d"] == b"4"
    assert table.get(b"c") == b"3" and table.get(b"b") == b"2" and table.get(b"e") == b"5"
    table.flush()
    dbs[0][b"c"] = b"behind"
    table.use(1)
    for i in range(4):  # and once `unflushed` writes wait, whatever the memory holds
        PartitionTable.put_all(table, [(b"x%d" % i, b"y")])
    small = PartitionTable(dbs.__getitem__, unflushed=2)
    small.use(1)
    small.put_all([(b"u", b"1")])
    assert dbs[1].get(b"u") is None
    small.put_all([(b"v", b"2")])
    assert dbs[1][b"u"] == b"1" and dbs[1][b"v"] == b"2"
    table.flush()
    for db in dbs.values():
        db.close()


def test_an_event_before_one_its_account_applied_is_late_for_whoever_applies_it() -> None:
    """The hold knows only what its own worker applied; the account's state knows what any worker did."""
    from costtrace.fleet.allocator import LATE_EVENT, Allocator, Message
    from costtrace.model.order import OrderKey
    from tests.model.helpers import ev, issued

    table = LoggedTable()
    first = Allocator(TableStore(table), "credits", "allocations", "dead-letters")
    issue = Message("issued", 0, 93, b"alice", issued("b1", 100), 166_000)
    done = first.handle(issue, order=OrderKey(166_000, 1, 0, 93))
    assert done.outcome.status is Status.APPLIED and not done.late
    # another worker takes the partition over: a new store on the restored table, a hold from scratch
    second = Allocator(TableStore(LoggedTable(dict(table))), "credits", "allocations", "dead-letters")
    again = second.handle(issue, order=OrderKey(166_000, 1, 0, 93))  # read again from the commit
    assert again.outcome.status is Status.REDELIVERED and not again.late
    opening = ev("opened", event_id="open-1", batch_id="b0", budget_id="ACME", amount=5)
    late = second.handle(Message("opened", 0, 6, b"alice", opening, 98_000), order=OrderKey(98_000, 0, 0, 6))
    assert late.outcome.status is Status.APPLIED and late.late
    letters = [o for o in late.outputs if o.topic == "dead-letters"]
    assert [msgspec.json.decode(o.value)["reason"] for o in letters] == [LATE_EVENT]
    # the account keeps the largest place: a later event is on time again
    later = second.handle(
        Message("consumed", 0, 7, b"alice", ev("consumed", event_id="c1", order_id="o1", amount=3), 170_000),
        order=OrderKey(170_000, 4, 0, 7),
    )
    assert later.outcome.status is Status.APPLIED and not later.late
    # replay (no places) and a store without them are untouched: nothing is ever late there
    assert not apply_event(MemoryStore(), opening).late
