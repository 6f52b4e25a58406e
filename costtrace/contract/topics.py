"""Every topic costtrace uses: name, partitions, key, configs and who writes what.

Producers publish the contract's plain JSON (one event per message, UTF-8),
keyed by `account_id` with Kafka's default (murmur2) partitioner, to the topic
of its type; nothing from this project is needed to do so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from costtrace.contract.events import EVENT_TYPES
from costtrace.contract.letters import LETTER_TOPIC_MAX_BYTES

DAY_MS: Final = 24 * 3600 * 1000
# The input topics are the log the fleet's answer is made from: `costtrace replay --from-topics` and
# `costtrace audit` read them from the start, so they keep every event. Their records carry the
# events' own times (docs/producers.md), which can be months old: Kafka's time-based retention and
# segment rolling go by record timestamps, and would delete a historical load at once, and roll a
# segment per batch. So neither applies; plan the disk (or tiered storage) for the whole log.
INPUT_LOG: Final = {
    "retention.ms": "-1",
    "segment.ms": str(2**63 - 1),
    "cleanup.policy": "delete",
    "message.timestamp.type": "CreateTime",
}
INPUT_RETENTION: Final = {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "delete"}
# a dead letter carries its message whole (costtrace/contract/letters.py): room for the largest
# value a producer can send to an input topic (the broker's default, 1 MiB after compression), and more
LETTER_SIZE: Final = {"max.message.bytes": str(LETTER_TOPIC_MAX_BYTES)}
ACCOUNT_GROUP: Final = "accounts"


class CopartitionError(ValueError):
    """Topics that must be co-partitioned do not have the same partition count."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    role: str  # input | internal | changelog | output
    description: str
    event_types: tuple[str, ...] = ()
    configs: Mapping[str, str] = field(default_factory=dict)
    copartition_group: str | None = None


@dataclass(frozen=True)
class Catalogue:
    topics: tuple[TopicSpec, ...]

    def by_role(self, role: str) -> list[TopicSpec]:
        return [t for t in self.topics if t.role == role]

    def named(self, name: str) -> TopicSpec:
        for t in self.topics:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def inputs(self) -> list[str]:
        return [t.name for t in self.by_role("input")]

    def input_for(self, event_type: str) -> str:
        for t in self.by_role("input"):
            if event_type in t.event_types:
                return t.name
        raise KeyError(event_type)

    @property
    def credits(self) -> str:
        return next(t.name for t in self.by_role("internal") if t.name.endswith(".credits"))

    @property
    def archive(self) -> str:
        return next(t.name for t in self.by_role("internal") if t.name.endswith(".archive"))

    @property
    def allocator_sources(self) -> list[str]:
        """Every topic the allocators read: producers' events, transfer credits, archived orders."""
        return [*self.inputs, self.credits, self.archive]

    @property
    def allocations(self) -> str:
        return next(t.name for t in self.by_role("output") if t.name.endswith(".allocations"))

    @property
    def state_changelog(self) -> str:
        """The allocator's table's changelog (faust names it `{app_id}-{table}-changelog`)."""
        (changelog,) = self.by_role("changelog")
        return changelog.name

    @property
    def dead_letters(self) -> str:
        return next(t.name for t in self.by_role("output") if t.name.endswith(".dead-letters"))

    def check_copartitioning(self, actual: Mapping[str, int] | None = None) -> None:
        """Refuse co-partitioned topics whose partition counts differ.

        `actual` gives the counts found on the broker; without it, the
        catalogue's own counts are checked.
        """
        groups: dict[str, dict[str, int]] = {}
        for t in self.topics:
            if t.copartition_group is not None:
                count = actual.get(t.name, t.partitions) if actual is not None else t.partitions
                groups.setdefault(t.copartition_group, {})[t.name] = count
        for group, counts in groups.items():
            if len(set(counts.values())) > 1:
                listing = ", ".join(f"{n}={c}" for n, c in sorted(counts.items()))
                raise CopartitionError(
                    f"topics of co-partition group {group!r} must have the same partition count, "
                    f"since one account's events must all reach the same worker: {listing}"
                )


def catalogue(prefix: str, partitions: int, app_id: str, retry_tiers: int = 4) -> Catalogue:
    inputs = tuple(
        TopicSpec(
            name=f"{prefix}.{t.kind}",
            partitions=partitions,
            key="account_id",
            role="input",
            description=f"`{t.kind}` events from producers",
            event_types=(t.kind,),
            configs=INPUT_LOG,
            copartition_group=ACCOUNT_GROUP,
        )
        for t in EVENT_TYPES
    )
    return Catalogue(
        (
            *inputs,
            TopicSpec(
                name=f"{prefix}.credits",
                partitions=partitions,
                key="to_account_id",
                role="internal",
                description="the receiving half of each transfer, sent to the receiver's partition",
                configs=INPUT_RETENTION,
                copartition_group=ACCOUNT_GROUP,
            ),
            TopicSpec(
                name=f"{prefix}.archive",
                partitions=partitions,
                key="account_id",
                role="internal",
                description="orders `costtrace archive` moved, for their account's state",
                configs=INPUT_LOG,  # part of the log replay and the audit read
                copartition_group=ACCOUNT_GROUP,
            ),
            TopicSpec(
                name=f"{app_id}-state-changelog",
                partitions=partitions,
                key="state entry",
                role="changelog",
                description="the allocator's RocksDB table (per-account state), compacted",
                configs={"cleanup.policy": "compact"},
                copartition_group=ACCOUNT_GROUP,
            ),
            TopicSpec(
                name=f"{prefix}.allocations",
                partitions=partitions,
                key="account_id",
                role="output",
                description="allocation records (JSON), read by the PostgreSQL sink",
                configs={"retention.ms": str(30 * DAY_MS), "cleanup.policy": "delete"},
            ),
            TopicSpec(
                name=f"{prefix}.dead-letters",
                partitions=partitions,
                key="account_id",
                role="output",
                description="rejected events with reason, detail, source position and payload",
                configs={"retention.ms": str(30 * DAY_MS), "cleanup.policy": "delete", **LETTER_SIZE},
            ),
            *(
                TopicSpec(
                    name=retry_topic(prefix, tier),
                    partitions=partitions,
                    key="account_id",
                    role="internal",
                    description=f"dead letters waiting out retry delay {tier} (compensator)",
                    configs={**INPUT_RETENTION, **LETTER_SIZE},
                )
                for tier in range(retry_tiers)
            ),
        )
    )


def retry_topic(prefix: str, tier: int) -> str:
    return f"{prefix}.retry-{tier}"
