"""Reading a topic from the beginning without a consumer group (replays, CLI, trainer).

Topics are the platform's log: the CLI prints verdicts with it and the trainer
replays ``emails.feedback`` and ``emails.inbox`` to build a drift snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from spamops_runtime.settings import PlatformSettings


@dataclass(frozen=True)
class ReadRecord:
    """A record read from a topic."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int


async def topic_partitions(settings: PlatformSettings, topic: str) -> list[int]:
    """The partition ids of ``topic`` (empty if it does not exist)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **settings.kafka_client_options()
    )
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found: list[int] = []
    for entry in described:
        if entry.get("topic") == topic and not entry.get("error_code"):
            found += [int(p["partition"]) for p in entry.get("partitions", [])]
    return sorted(found)


async def read_topic(
    settings: PlatformSettings,
    topic: str,
    *,
    follow: bool = False,
    from_beginning: bool = True,
    idle_timeout_s: float = 2.0,
    client_id: str = "spamops-replay",
) -> AsyncIterator[ReadRecord]:
    """Yield the records of ``topic`` without joining a consumer group.

    Without ``follow`` it stops at the end offsets it saw when it started.
    """
    partitions = await topic_partitions(settings, topic)
    if not partitions:
        return  # no such topic: nothing to read
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        if from_beginning:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        end_offsets = await consumer.end_offsets(assigned)
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_timeout_s * 1000))
            for tp, records in batch.items():
                for rec in records:
                    yield ReadRecord(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=rec.offset,
                        key=rec.key.decode("utf-8", "replace") if rec.key is not None else None,
                        value=rec.value or b"",
                        headers={k: v.decode("utf-8", "replace") for k, v in rec.headers or ()},
                        timestamp_ms=rec.timestamp,
                    )
            if not follow:
                positions = {tp: await consumer.position(tp) for tp in assigned}
                if all(positions[tp] >= end_offsets[tp] for tp in assigned):
                    return
    finally:
        await consumer.stop()
