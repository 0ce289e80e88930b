"""Kafka access for the command line: publish through the shared wiring, read topics plainly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream.kafka import KafkaBroker
from spamops_runtime.kafka import make_broker, publish_event
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import Event

CLIENT_ID = "spamops-cli"


@dataclass(frozen=True)
class RawRecord:
    """A record to send as it is (e.g. raw email bytes)."""

    topic: str
    value: bytes
    key: str | None = None
    headers: Mapping[str, str] | None = None


async def _connected(settings: PlatformSettings) -> KafkaBroker:
    broker = make_broker(settings, client_id=CLIENT_ID)
    await broker.connect()
    return broker


async def send_events(settings: PlatformSettings, events: Iterable[Event]) -> int:
    """Publish typed events to their catalogue topics; returns how many were acknowledged."""
    broker = await _connected(settings)
    sent = 0
    try:
        for event in events:
            await publish_event(broker, event, service=CLIENT_ID)
            sent += 1
    finally:
        await broker.stop()
    return sent


async def send_raw(
    settings: PlatformSettings, records: Iterable[RawRecord], *, on_sent: object = None
) -> int:
    """Publish raw records, pipelined (all sends in flight, then awaited)."""
    broker = await _connected(settings)
    sent = 0
    try:
        pending = []
        for record in records:
            pending.append(
                broker.publish(
                    record.value,
                    topic=record.topic,
                    key=record.key.encode("utf-8") if record.key is not None else None,
                    headers=dict(record.headers or {}),
                )
            )
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                sent += len(pending)
                if callable(on_sent):
                    on_sent(len(pending))
                pending = []
        if pending:
            await asyncio.gather(*pending)
            sent += len(pending)
            if callable(on_sent):
                on_sent(len(pending))
    finally:
        await broker.stop()
    return sent


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


async def read_topic(
    settings: PlatformSettings,
    topic: str,
    *,
    follow: bool = False,
    from_beginning: bool = True,
    idle_timeout_s: float = 2.0,
) -> AsyncIterator[ReadRecord]:
    """Yield the records of ``topic`` without joining a consumer group.

    Without ``follow`` it stops at the end offsets it saw when it started.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=CLIENT_ID,
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
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
