"""The compensator's policy: which dead letters are retried, after which delay, and which are parked."""

from __future__ import annotations

import asyncio

import pytest

from costtrace.contract.letters import DeadLetter
from costtrace.fleet.compensator import (
    FINAL,
    OUT_OF_ATTEMPTS,
    Park,
    Retry,
    RetryPolicy,
    decide,
    origin_of,
    wait_until_due,
)
from costtrace.ops.dlq import Filter, parse_age

POLICY = RetryPolicy(
    frozenset({"unknown_order", "insufficient_stock"}), attempts=4, delays=(5.0, 30.0, 120.0)
)


def letter(reason: str, attempt: int = 1, origin: str | None = None) -> DeadLetter:
    return DeadLetter(
        "e1",
        "rejected",
        "alice",
        reason,
        None,
        "p.refunded",
        3,
        41,
        "alice",
        "{}",
        "utf-8",
        1,
        attempt,
        2,
        origin,
    )


def test_final_reasons_are_parked_at_once() -> None:
    for reason in ("invalid_event", "duplicate_order", "conflicting_duplicate", "processing_error"):
        assert decide(letter(reason), POLICY, now_ms=0) == Park(FINAL)


def test_retryable_reasons_wait_longer_each_time_then_park() -> None:
    decisions = [decide(letter("unknown_order", attempt), POLICY, now_ms=1_000) for attempt in (1, 2, 3, 4)]
    assert decisions == [Retry(0, 6_000), Retry(1, 31_000), Retry(2, 121_000), Park(OUT_OF_ATTEMPTS)]


def test_the_last_delay_repeats_when_attempts_outnumber_delays() -> None:
    policy = RetryPolicy(frozenset({"insufficient_stock"}), attempts=10, delays=(1.0, 2.0))
    assert decide(letter("insufficient_stock", 7), policy, now_ms=0) == Retry(1, 2_000)


def test_a_letter_keeps_the_position_of_its_first_attempt() -> None:
    assert origin_of(letter("unknown_order")) == "p.refunded:3@41"
    assert origin_of(letter("unknown_order", 2, origin="p.refunded:0@7")) == "p.refunded:0@7"


async def test_waiting_for_a_retry_gives_way_to_a_rebalance() -> None:
    now = [0]

    def clock() -> int:
        now[0] += 100
        return now[0]

    assert await wait_until_due(1_000, lambda: False, clock, step=0) is True
    calls = []

    def rebalancing() -> bool:
        calls.append(1)
        return len(calls) > 2

    assert await wait_until_due(10**9, rebalancing, lambda: 0, step=0) is False
    assert len(calls) == 3


def test_dlq_filters_build_one_parameter_per_condition() -> None:
    where, args = Filter(("a:0@1",), "unknown_order", "alice", parse_age("2h"), None, "parked").where()
    assert where == (
        " WHERE origin = ANY($1) AND reason = $2 AND account_id = $3"
        " AND parked_at < now() - $4::interval AND status = $5"
    )
    assert args[:3] == [["a:0@1"], "unknown_order", "alice"] and args[3].total_seconds() == 7200
    assert Filter(status=None).where() == ("", [])
    with pytest.raises(ValueError, match="not a duration"):
        parse_age("2 hours")


def test_a_letter_already_due_goes_out_even_while_rebalancing() -> None:
    assert asyncio.run(wait_until_due(1, lambda: True, lambda: 1)) is True
