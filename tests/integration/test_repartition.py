"""Adding partitions: a second generation of topics with more partitions, the state carried over by
`costtrace repartition`, ends with exactly replay's records for the whole log."""

from __future__ import annotations

from costtrace.fleet.settings import fleet_catalogue
from costtrace.ops.repartition import partition_of
from tests.integration.fleet import Fleet, phases
from tests.integration.test_equivalence import sample
from tests.integration.test_switch import run


def test_a_new_generation_with_more_partitions_carries_every_account_on(fleet: Fleet) -> None:
    lines = sample(1200, 300, seed=21)
    steps = phases(lines)
    half = len(steps) // 2
    fleet.start("allocator-1", "allocator", fleet.tmp / "state-1")
    fleet.start("sink", "sink")
    for phase in steps[:half]:
        fleet.publish(phase)
        fleet.drain()
    fleet.stop_all()  # producers paused, the old generation drained and stopped

    prefix, app_id = f"{fleet.name}b", f"{fleet.name}b-allocator"
    out = run(fleet, "repartition", "--to-prefix", prefix, "--to-app-id", app_id, "--partitions", "8")
    assert "carried" in out and "topic(s) created" in out
    fleet.settings = fleet.settings.model_copy(
        update={"topic_prefix": prefix, "app_id": app_id, "partitions": 8}
    )
    fleet.catalogue = fleet_catalogue(fleet.settings)
    fleet.partitions = 8
    fleet.env.update(
        {"COSTTRACE_TOPIC_PREFIX": prefix, "COSTTRACE_APP_ID": app_id, "COSTTRACE_PARTITIONS": "8"}
    )
    fleet.start("allocator-2a", "allocator", fleet.tmp / "state-2a")
    fleet.start("allocator-2b", "allocator", fleet.tmp / "state-2b")
    fleet.start("sink", "sink")
    for phase in steps[half:]:
        fleet.publish(phase)
        fleet.drain()

    expected = fleet.assert_replays(lines, order="file")
    # many accounts did move: without their state carried over the records above would differ
    moved = sum(partition_of(a, 4) != partition_of(a, 8) for a in expected)
    assert moved > len(expected) // 3
