"""The soak's short form (dev/soak.py): steady traffic, every kind of fault, then nothing lost or doubled.

A SIGSTOP here lasts longer than the session timeout (6 s): the frozen worker loses its
partitions while it sleeps, and what it sends when resumed must not corrupt the next
restore (the freeze guard, costtrace/fleet/allocator.py, and the changelog fence,
costtrace/fleet/fence.py; docs/operations.md, "Faults: the soak").
"""

from __future__ import annotations

from pathlib import Path

from dev.soak import KINDS, soak


def test_a_short_soak_with_every_fault_loses_and_doubles_nothing(stack: None, tmp_path: Path) -> None:
    verdict = soak(
        60, seed=3, rate=150, every=(3.0, 6.0), outage=(10.0, 15.0), freeze=(8.0, 12.0), workdir=tmp_path
    )
    print("\n".join(verdict.lines()))
    assert {f.kind for f in verdict.faults} == set(KINDS)  # the nemesis did each thing at least once
    assert verdict.restarts >= 3  # the kills came back
    assert verdict.lost == [], verdict.lines()
    assert verdict.differing == [], verdict.lines()
    assert verdict.published == 9_000
