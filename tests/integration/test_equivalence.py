"""The fleet (two allocator processes and a sink) gives exactly replay's records."""

from __future__ import annotations

from costtrace.sample import encode_event, generate_events
from tests.integration.fleet import Fleet, phases


def sample(n: int, accounts: int, seed: int) -> list[bytes]:
    return [encode_event(e) for e in generate_events(n, accounts, seed, skew=1.0)]


def test_two_allocators_persist_exactly_replays_records(fleet: Fleet) -> None:
    lines = sample(1200, 300, seed=11)
    fleet.start("allocator-1", "allocator", fleet.tmp / "state-1")
    fleet.start("allocator-2", "allocator", fleet.tmp / "state-2")
    fleet.start("sink", "sink")
    for phase in phases(lines):
        fleet.publish(phase)
        fleet.drain()
    expected = fleet.assert_replays(lines)
    assert sum(map(len, expected.values())) > 1000  # the log exercises the model
    assert {r["kind"] for rs in expected.values() for r in rs} >= {
        "consume",
        "trueup",
        "refund",
        "transfer_in",
    }
