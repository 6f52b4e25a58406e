"""The compensator on the real stack: what a late event would have prevented is re-driven; rejections
are parked, with history (retried first, where an operator asks for retries); `costtrace dlq` lists,
shows, replays (twice applies once) and discards them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest

from tests.integration.fleet import REPO, Fleet, by_account, replay

T = "2026-03-01T10:00:00Z"


def event(**body: Any) -> bytes:
    return msgspec.json.encode({"occurred_at": T, **body})


def query(fleet: Fleet, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(fleet.dsn)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def eventually(check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.5)
    return result


def dlq(fleet: Fleet, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "costtrace.cli", "dlq", *args],
        env=fleet.env, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def start(fleet: Fleet, attempts: int, retried: tuple[str, ...] = ()) -> None:
    fleet.env["COSTTRACE_RETRY_DELAYS"] = "[0.5, 1, 1, 2]"
    fleet.env["COSTTRACE_RETRY_ATTEMPTS"] = str(attempts)
    fleet.env["COSTTRACE_RETRY_REASONS"] = json.dumps(list(retried))
    fleet.start("allocator", "allocator", fleet.tmp / "state")
    fleet.start("sink", "sink")
    fleet.start("compensator", "compensator")


def test_an_order_that_comes_late_re_drives_the_refund_it_left_without_an_order(fleet: Fleet) -> None:
    """The consumption arrives long after its refund, past the fleet's wait: it is late."""
    start(fleet, attempts=5)
    issue = event(event_id="i1", type="issued", account_id="ann", batch_id="b1", budget_id="B1", amount=100)
    consume = event(event_id="c1", type="consumed", account_id="ann", order_id="o1", amount=60)
    refund = event(event_id="r1", type="refunded", account_id="ann", refund_id="f1", order_id="o1", amount=20)
    fleet.publish([issue])
    fleet.publish([refund])  # its order not there yet, anywhere: judged where it is, unknown_order
    eventually(lambda: query(fleet, "SELECT 1 FROM parked_letters WHERE event_id = 'r1'"))
    fleet.publish([consume])  # its place is before the refund: late, applied, and the refund re-driven

    expected, _ = replay([issue, consume, refund])  # the order the events were meant in
    eventually(lambda: by_account(fleet.export()) == expected)
    letters = query(
        fleet, "SELECT event_id, reason, attempt, origin FROM dead_letters ORDER BY dead_lettered_at"
    )
    assert [(r["event_id"], r["reason"]) for r in letters] == [("r1", "unknown_order"), ("c1", "late_event")]
    assert eventually(
        lambda: (
            query(fleet, "SELECT status FROM parked_letters WHERE event_id = 'r1'")
            == [{"status": "replayed"}]
        )
    )


def test_final_and_exhausted_letters_are_parked_and_ops_replay_or_discard_them(fleet: Fleet) -> None:
    start(fleet, attempts=3, retried=("insufficient_stock",))  # retries only where an operator asks
    invalid = event(event_id="x1", type="issued", account_id="bob", batch_id="b1", budget_id="B1", amount=-5)
    short = event(
        event_id="t1", type="transferred", account_id="bob", transfer_id="tr1", to_account_id="cy", amount=30
    )
    fleet.publish([invalid, short])

    parked = eventually(
        lambda: len(rows := query(fleet, "SELECT * FROM parked_letters ORDER BY event_id")) == 2 and rows
    )
    by_event = {r["event_id"]: r for r in parked}
    assert by_event["x1"]["reason"] == "invalid_event" and by_event["x1"]["why"] == "final reason"
    assert by_event["x1"]["attempts"] == 1
    assert by_event["t1"]["reason"] == "insufficient_stock" and by_event["t1"]["why"] == "out of attempts"
    assert by_event["t1"]["attempts"] == 3

    listed = [
        json.loads(line)
        for line in dlq(fleet, "list", "--reason", "insufficient_stock", "--json").splitlines()
    ]
    assert [r["event_id"] for r in listed] == ["t1"]
    origin = by_event["t1"]["origin"]
    history = eventually(lambda: (out := dlq(fleet, "show", origin)).count("attempt ") == 3 and out)
    assert "attempt 1: insufficient_stock" in history and "attempt 3: insufficient_stock" in history
    assert dlq(fleet, "list", "--older-than", "1h") == ""  # parked just now

    # stock arrives (now: after the retries, so not late); ops replay the transfer, twice
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    fleet.publish(
        [event(event_id="i1", type="issued", account_id="bob", batch_id="b1", budget_id="B1", amount=50,
               occurred_at=now)]
    )  # fmt: skip
    eventually(lambda: query(fleet, "SELECT 1 FROM records WHERE event_id = 'i1'"))
    assert dlq(fleet, "replay", origin).startswith("replayed 1 letter(s)")
    assert "left alone" in dlq(fleet, "replay", origin)
    assert dlq(fleet, "replay", "--again", "--status", "any", origin).startswith("replayed 1 letter(s)")

    def transfer_records() -> list[dict[str, Any]]:
        return query(fleet, "SELECT kind, amount FROM records WHERE event_id = 't1' ORDER BY kind")

    assert eventually(lambda: len(transfer_records()) == 2)
    time.sleep(3)  # the second replay has been read by now: it must add nothing
    assert transfer_records() == [
        {"kind": "transfer_in", "amount": 30},
        {"kind": "transfer_out", "amount": -30},
    ]
    assert query(fleet, "SELECT status FROM parked_letters WHERE origin = $1", origin) == [
        {"status": "replayed"}
    ]

    assert dlq(fleet, "discard", "--reason", "invalid_event", "--note", "producer fixed").startswith(
        "discarded 1"
    )
    discarded = query(fleet, "SELECT event_id, note FROM parked_letters WHERE status = 'discarded'")
    assert discarded == [{"event_id": "x1", "note": "producer fixed"}]
    assert dlq(fleet, "list") == ""  # nothing left parked

    # a discarded letter goes back only when asked by name; its history only grows
    x1 = by_event["x1"]["origin"]
    kept = dlq(fleet, "replay", "--again", x1)
    assert kept.startswith("replayed 0 letter(s)") and "1 discarded, left alone" in kept
    assert dlq(fleet, "replay", "--discarded", x1).startswith("replayed 1 letter(s)")
    eventually(
        lambda: query(fleet, "SELECT 1 FROM parked_letters WHERE origin = $1 AND status = 'parked'", x1)
    )
    trail = query(
        fleet, "SELECT action, reason, note, by FROM letter_history WHERE origin = $1 ORDER BY at", x1
    )
    assert [(t["action"], t["reason"], t["note"]) for t in trail] == [
        ("parked", "invalid_event", None),
        ("discarded", None, "producer fixed"),
        ("replayed", None, None),
        ("parked", "invalid_event", None),
    ]
    assert trail[1]["by"].startswith("costtrace dlq (") and trail[2]["by"].startswith("costtrace dlq (")
    shown = dlq(fleet, "show", x1)
    assert "discarded by costtrace dlq (" in shown and ": producer fixed" in shown
    t1_trail = query(fleet, "SELECT action FROM letter_history WHERE origin = $1 ORDER BY at", origin)
    assert [t["action"] for t in t1_trail] == ["parked", "replayed", "replayed"]
    with pytest.raises(asyncpg.exceptions.RaiseError, match="append-only"):
        query(fleet, "UPDATE letter_history SET note = 'rewritten'")
    with pytest.raises(asyncpg.exceptions.RaiseError, match="append-only"):
        query(fleet, "DELETE FROM letter_history")
