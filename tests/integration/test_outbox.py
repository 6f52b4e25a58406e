"""The outbox on the real broker: a batch Kafka refuses for good leaves no hole behind it."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError

from costtrace.fleet.outbox import Outbox
from dev.demo import stack_env


async def test_no_later_batch_lands_after_one_the_broker_refused(stack: None) -> None:
    """Kafka 4, checked: given two batches of a partition at once, aiokafka sends the second after
    the broker refused the first (too large), and it lands: later writes without earlier ones."""
    bootstrap = stack_env()["COSTTRACE_KAFKA_BOOTSTRAP"]
    topic = f"t{uuid.uuid4().hex[:10]}-outbox"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "1000"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=2048)
    await producer.start()
    failures: list[BaseException] = []
    try:
        await producer.partitions_for(topic)
        box = Outbox(producer, topic, failures.append, batch_bytes=2048)
        for i in range(4):  # three fill a batch of about 1.9 kB (too large), the fourth starts the next
            box.add(topic, b"k%d" % i, b"x" * 600, [], 0)
        with pytest.raises(MessageSizeTooLargeError):
            await box.hand_over()
        await producer.flush()  # whatever the producer was given goes now (the exit takes a moment)
    finally:
        await producer.stop()
    assert len(failures) == 1
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        assert (await consumer.end_offsets([tp]))[tp] == 0  # the batch behind the refused one was never sent
    finally:
        await consumer.stop()
