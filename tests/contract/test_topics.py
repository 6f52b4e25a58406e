"""The topic catalogue: one place for names, partitions, keys, and what producers send where."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from costtrace.contract.topics import CopartitionError, catalogue


def test_every_event_type_has_exactly_one_input_topic() -> None:
    cat = catalogue("ct", 6, "ct-app")
    assert {t: cat.input_for(t) for t in ("issued", "opened", "consumed", "refunded", "transferred")} == {
        "issued": "ct.issued", "opened": "ct.opened", "consumed": "ct.consumed",
        "refunded": "ct.refunded", "transferred": "ct.transferred",
    }  # fmt: skip
    assert cat.credits == "ct.credits"
    assert cat.named("ct-app-state-changelog").configs["cleanup.policy"] == "compact"
    assert cat.state_changelog == "ct-app-state-changelog"
    assert all(t.configs.get("retention.ms") for t in cat.by_role("input"))


def test_copartitioned_topics_with_different_partition_counts_are_refused() -> None:
    cat = catalogue("ct", 6, "ct-app")
    cat.check_copartitioning()
    with pytest.raises(CopartitionError, match=r"ct\.credits=4"):
        cat.check_copartitioning({"ct.credits": 4})
    # outputs are not co-partitioned with the inputs: any count will do
    cat.check_copartitioning({"ct.allocations": 3})
    skewed = dataclasses.replace(
        cat, topics=(dataclasses.replace(cat.topics[0], partitions=5), *cat.topics[1:])
    )
    with pytest.raises(CopartitionError, match=r"ct\.issued=5"):
        skewed.check_copartitioning()


def test_topics_list_json_prints_the_catalogue() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "costtrace.cli", "topics", "list", "--json"],
        capture_output=True, check=True, env={"COSTTRACE_TOPIC_PREFIX": "zz", "PATH": ""},
    )  # fmt: skip
    topics = json.loads(out.stdout)
    by_name = {t["name"]: t for t in topics}
    assert by_name["zz.refunded"]["event_types"] == ["refunded"]
    assert by_name["zz.refunded"]["key"] == "account_id"
    assert {t["role"] for t in topics} == {"input", "internal", "changelog", "output"}
