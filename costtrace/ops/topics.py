"""Apply the catalogue to a broker, idempotently, and check it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from costtrace.contract.topics import Catalogue


async def describe(bootstrap: str, names: list[str], **client: Any) -> list[dict[str, Any]]:
    """The broker's metadata of these topics (aiokafka's `describe_topics`: partitions, replicas, ...)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    try:
        await admin.start()  # in the try: a start that fails leaves nothing open
        described: list[dict[str, Any]] = await admin.describe_topics(names)
        return described
    finally:
        await admin.close()


async def partition_counts(bootstrap: str, names: list[str], **client: Any) -> dict[str, int]:
    described = await describe(bootstrap, names, **client)
    return {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0}


async def create(bootstrap: str, cat: Catalogue, replication: int, **client: Any) -> list[str]:
    """Create the topics that are missing; return their names.

    Existing ones are checked, and given the catalogue's configs (a newer
    catalogue may set more, e.g. the dead letters' message size).
    """
    cat.check_copartitioning()
    existing = await partition_counts(bootstrap, [t.name for t in cat.topics], **client)
    missing = [t for t in cat.topics if t.name not in existing]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    try:
        await admin.start()  # in the try: a start that fails leaves nothing open
        for t in missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by another
                await admin.create_topics(
                    [NewTopic(t.name, t.partitions, replication, topic_configs=dict(t.configs))]
                )
        configured = [t for t in cat.topics if t.name in existing and t.configs]
        if configured:
            # AlterConfigs sets a topic's whole config: the catalogue's is all costtrace sets
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t.name, dict(t.configs)) for t in configured]
            )
    finally:
        await admin.close()
    # new topics take a moment to appear in every broker's metadata
    for _ in range(50):
        try:
            await check(bootstrap, cat, **client)
            break
        except LookupError:
            await asyncio.sleep(0.2)
    else:
        await check(bootstrap, cat, **client)
    return [t.name for t in missing]


async def check(bootstrap: str, cat: Catalogue, **client: Any) -> None:
    """Raise if a topic is missing or co-partitioned topics disagree on partitions."""
    actual = await partition_counts(bootstrap, [t.name for t in cat.topics], **client)
    missing = [t.name for t in cat.topics if t.name not in actual]
    if missing:
        raise LookupError(f"missing topics: {', '.join(missing)} (run `costtrace topics create`)")
    cat.check_copartitioning(actual)
