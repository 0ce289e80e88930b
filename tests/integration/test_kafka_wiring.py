"""The shared Kafka wiring against the real broker (tests/unit/test_kafka_wiring.py: in memory).

Each test has topics of its own and a consumer group of its own, so it can
run again on a long-lived stack (``SPAMOPS_IT_STACK=running``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker
from spamops_runtime.kafka import (
    H_CORRELATION_ID,
    H_ERROR_FIELD,
    H_ERROR_REASON,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_TOPIC,
    RecordContext,
    RejectRecord,
    make_broker,
    publish_event,
    subscribe_events,
)
from spamops_runtime.settings import PlatformSettings, ServiceSettings
from spamops_schemas import PromotionApproved

pytestmark = pytest.mark.integration


async def fresh_topic(settings: PlatformSettings) -> str:
    """A new topic and its dead-letter topic (the broker does not auto-create)."""
    topic = f"it.wiring.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1), NewTopic(topic + ".dlq", 1, 1)])
    finally:
        await admin.close()
    return topic


def wire(
    settings: PlatformSettings,
    topic: str,
    group: str,
    handler: Callable[[PromotionApproved, RecordContext], Any],
) -> KafkaBroker:
    service_settings = ServiceSettings(
        platform=settings, max_attempts=2, retry_backoff_seconds=0.05, group_id=group
    )
    broker = make_broker(settings, client_id="it-wiring", graceful_timeout=5.0)
    subscribe_events(
        broker,
        topic=topic,
        event_cls=PromotionApproved,
        handler=handler,
        settings=service_settings,
        service="it-wiring",
    )
    return broker


async def read_all(settings: PlatformSettings, topic: str, count: int) -> list[Any]:
    """``count`` records of ``topic`` from the beginning (no group), or fail after 30 s."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    assert len(records) == count, f"{len(records)} of {count} records on {topic}"
    return records


async def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def committed(settings: PlatformSettings, topic: str, group: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


async def test_typed_event_round_trip_in_a_consumer_group(stack: PlatformSettings) -> None:
    topic, group = await fresh_topic(stack), f"it-{uuid.uuid4().hex[:8]}"
    received: list[tuple[PromotionApproved, RecordContext]] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        received.append((event, record))

    broker = wire(stack, topic, group, handler)
    events = [
        PromotionApproved(model_name="spam-detector", version=v, approved_by="alice")
        for v in (1, 2, 3)
    ]
    async with broker:
        await broker.start()
        for event in events:
            await publish_event(broker, event, topic=topic)
        await wait_for(lambda: len(received) == 3)
    assert sorted(e.version for e, _ in received) == [1, 2, 3]
    got, record = received[0]
    assert got in events
    assert record.topic == topic
    assert record.key == "spam-detector"
    assert record.headers[H_CORRELATION_ID] == got.correlation_id
    # Offsets were committed for what was handled: a restart starts after them.
    assert await committed(stack, topic, group) == 3


async def test_bad_records_are_dead_lettered_and_the_stream_goes_on(
    stack: PlatformSettings,
) -> None:
    topic, group = await fresh_topic(stack), f"it-{uuid.uuid4().hex[:8]}"
    received: list[PromotionApproved] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        if event.version == 9:
            raise RejectRecord("unknown-version", "no version 9 of spam-detector")
        if event.version == 13:
            raise RuntimeError("boom")
        received.append(event)

    broker = wire(stack, topic, group, handler)
    missing_field = b'{"model_name": "spam-detector", "approved_by": "alice"}'
    async with broker:
        await broker.start()
        # One partition key for all, so the order is kept and "after" means after.
        await broker.publish(missing_field, topic=topic, key=b"k")
        await broker.publish(b"\x00garbage", topic=topic, key=b"k")
        for version in (9, 13, 2):
            event = PromotionApproved(model_name="m", version=version, approved_by="a")
            await broker.publish(event.to_bytes(), topic=topic, key=b"k")
        await wait_for(lambda: len(received) == 1)

    dead = await read_all(stack, topic + ".dlq", 4)
    headers = [{k: v.decode() for k, v in record.headers} for record in dead]
    assert [h[H_ERROR_REASON] for h in headers] == [
        "invalid-field",
        "invalid-json",
        "unknown-version",
        "handler-error",
    ]
    assert headers[0][H_ERROR_FIELD] == "version"
    assert dead[0].value == missing_field  # the original bytes, untouched
    assert all(h[H_ORIGINAL_TOPIC] == topic for h in headers)
    assert [int(h[H_ORIGINAL_OFFSET]) for h in headers] == [0, 1, 2, 3]
    assert [e.version for e in received] == [2]
    assert await committed(stack, topic, group) == 5


async def test_an_unfinished_record_is_redelivered_after_a_restart(
    stack: PlatformSettings,
) -> None:
    """Offsets are committed after the handler: a consumer stopped mid-record loses nothing."""
    topic, group = await fresh_topic(stack), f"it-{uuid.uuid4().hex[:8]}"
    started = asyncio.Event()

    async def stuck(event: PromotionApproved, record: RecordContext) -> None:
        started.set()
        await asyncio.sleep(3600)  # "killed" before it finishes

    broker = wire(stack, topic, group, stuck)
    event = PromotionApproved(model_name="spam-detector", version=7, approved_by="alice")
    await broker.start()
    await publish_event(broker, event, topic=topic)
    await asyncio.wait_for(started.wait(), 30)
    await broker.stop()  # graceful timeout passes, the handler is cancelled
    assert await committed(stack, topic, group) <= 0

    received: list[PromotionApproved] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        received.append(event)

    restarted = wire(stack, topic, group, handler)
    async with restarted:
        await restarted.start()
        await wait_for(lambda: len(received) == 1)
    assert received == [event]
