"""The soak's short form (dev/soak.py): steady traffic, every kind of fault, then nothing lost or doubled.

The long form runs on demand: `python -m dev.soak --minutes 30`.
"""

from __future__ import annotations

from pathlib import Path

from dev.soak import KINDS, soak


def test_a_short_soak_with_every_fault_loses_and_doubles_nothing(stack: None, tmp_path: Path) -> None:
    verdict = soak(100, seed=3, rate=150, every=(3.0, 6.0), outage=(10.0, 15.0), workdir=tmp_path)
    print("\n".join(verdict.lines()))
    assert {f.kind for f in verdict.faults} == set(KINDS)  # the nemesis did each thing at least once
    assert verdict.restarts >= 3  # the kills (and any worker a fault stopped) came back
    assert verdict.lost == [], verdict.lines()
    assert verdict.differing == [], verdict.lines()
    assert verdict.published == 15_000
