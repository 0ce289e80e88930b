"""The delivery rule on the real broker: every record ends as its effect or a dead letter.

Poison records sit in the middle of batches, between normal ones: Kafka header
values that are not UTF-8 or null, a ``content-type`` that lies about the
value, a ``reply_to`` header, invalid JSON. A handler that raises, and a
dead-letter topic that refuses writes for a while, must not let the group's
committed offset pass the record they concern.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from faststream.kafka import KafkaBroker
from spamops_runtime.kafka import (
    H_ERROR_REASON,
    H_ORIGINAL_HEADERS,
    RecordContext,
    decode_raw_headers,
    make_broker,
    subscribe_events,
    subscribe_records,
)
from spamops_runtime.settings import PlatformSettings, ServiceSettings
from spamops_schemas import PromotionApproved

from tests.integration.test_kafka_wiring import committed, read_all, wait_for

pytestmark = pytest.mark.integration

Settle = Callable[[RecordContext], None]

MAIL = b"From: a@example.com\r\nSubject: hi\r\n\r\nGr\xfc\xdfe aus K\xf6ln\r\n"


def _event(version: int) -> bytes:
    return PromotionApproved(model_name="m", version=version, approved_by="a").to_bytes()


# name -> (value, headers as aiokafka sends them): what kcat or any client may write.
def poison_kinds() -> dict[str, tuple[bytes, list[tuple[str, bytes | None]]]]:
    return {
        "non-utf8-header": (_event(101), [("x-note", b"\xff\xfe\x00bad")]),
        "null-header": (_event(102), [("x-null", None)]),
        "json-content-type-on-garbage": (b"\x00not json", [("content-type", b"application/json")]),
        "text-content-type-on-8bit": (MAIL, [("content-type", b"text/plain")]),
        "reply-to-header": (_event(103), [("reply_to", b"somewhere.else")]),
        "invalid-json": (b"{", []),
        "empty-value": (b"", []),
    }


async def topic_with_dlq(
    settings: PlatformSettings, partitions: int = 1, dlq_configs: dict[str, str] | None = None
) -> str:
    topic = f"it.delivery.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topic, partitions, 1),
                NewTopic(topic + ".dlq", 1, 1, topic_configs=dlq_configs or {}),
            ]
        )
    finally:
        await admin.close()
    return topic


async def produce(
    settings: PlatformSettings, topic: str, records: Sequence[tuple[bytes, list[Any]]]
) -> None:
    """Send records in order to partition 0, as a plain client would (headers as raw bytes)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i, (value, headers) in enumerate(records):
            await producer.send_and_wait(
                topic, value=value, key=f"k{i}".encode(), headers=headers, partition=0
            )
    finally:
        await producer.stop()


async def committed_reaches(
    settings: PlatformSettings, topic: str, group: str, offset: int, seconds: float = 15
) -> None:
    """Wait until the group's committed offset is ``offset`` (commits follow handling)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await committed(settings, topic, group) == offset:
            return
        await asyncio.sleep(0.2)


def service_settings(settings: PlatformSettings, group: str) -> ServiceSettings:
    return ServiceSettings(
        platform=settings, max_attempts=2, retry_backoff_seconds=0.05, group_id=group
    )


def approvals_consumer(
    stack: PlatformSettings,
    topic: str,
    group: str,
    handler: Callable[[PromotionApproved, RecordContext], Awaitable[None]],
) -> KafkaBroker:
    """A broker with ``handler`` on ``topic``'s PromotionApproved events (batches of 50)."""
    broker = make_broker(stack, client_id="it-delivery", graceful_timeout=5.0)
    subscribe_events(
        broker, topic=topic, event_cls=PromotionApproved, handler=handler,
        settings=service_settings(stack, group), service="it-delivery", batch_max_records=50,
    )  # fmt: skip
    return broker


async def test_poison_records_mid_batch_on_an_event_topic_each_end_handled_or_dead_lettered(
    stack: PlatformSettings,
) -> None:
    topic, group = await topic_with_dlq(stack), f"it-{uuid.uuid4().hex[:8]}"
    handled: list[int] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        handled.append(event.version)

    kinds = poison_kinds()
    records: list[tuple[bytes, list[Any]]] = [(_event(1), [])]
    normal = [1]
    for value, headers in kinds.values():
        normal.append(len(records) + 2)
        records += [(value, headers), (_event(normal[-1]), [])]
    await produce(stack, topic, records)

    broker = approvals_consumer(stack, topic, group, handler)
    async with broker:
        await broker.start()
        await wait_for(lambda: len(handled) >= len(normal) + 3)
        await asyncio.sleep(2)  # room for a wrong extra delivery to show
    # The events whose headers were odd were handled like any other (headers are not fatal).
    assert sorted(handled) == sorted([*normal, 101, 102, 103])
    dead = await read_all(stack, topic + ".dlq", 4)
    reasons = sorted(dict(r.headers)[H_ERROR_REASON].decode() for r in dead)
    assert reasons == ["invalid-json"] * 4  # an empty value is not JSON either
    assert await committed(stack, topic, group) == len(records)


async def test_json_nested_past_any_recursion_limit_is_dead_lettered_not_read_forever(
    stack: PlatformSettings,
) -> None:
    """json.loads raised RecursionError on 100k open brackets, which no decoder caught: the
    record was read again forever. Now it is invalid JSON, and the stream goes on."""
    topic, group = await topic_with_dlq(stack), f"it-{uuid.uuid4().hex[:8]}"
    handled: list[int] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        handled.append(event.version)

    nested = b"[" * 100_000
    await produce(stack, topic, [(_event(1), []), (nested, []), (_event(3), [])])
    broker = approvals_consumer(stack, topic, group, handler)
    async with broker:
        await broker.start()
        await wait_for(lambda: handled == [1, 3])
        await committed_reaches(stack, topic, group, 3)
    (letter,) = await read_all(stack, topic + ".dlq", 1)
    assert letter.value == nested
    assert dict(letter.headers)[H_ERROR_REASON] == b"invalid-json"


async def test_raw_records_are_bytes_whatever_the_headers_say_and_dead_letters_keep_exact_headers(
    stack: PlatformSettings,
) -> None:
    topic, group = await topic_with_dlq(stack), f"it-{uuid.uuid4().hex[:8]}"
    seen: list[RecordContext] = []

    async def handler(
        records: Sequence[RecordContext], settle: Callable[[RecordContext], None]
    ) -> None:
        for record in records:
            seen.append(record)
            settle(record)

    kinds = poison_kinds()
    records = list(kinds.values())
    await produce(stack, topic, records)
    broker = make_broker(stack, client_id="it-delivery", graceful_timeout=5.0)
    subscribe_records(
        broker, topic=topic, handler=handler, settings=service_settings(stack, group),
        service="it-delivery", batch_max_records=50,
    )  # fmt: skip
    async with broker:
        await broker.start()
        await wait_for(lambda: len(seen) == len(records))
    assert [r.raw for r in seen] == [value for value, _ in records]
    assert [r.raw_headers for r in seen] == [tuple(h) for _, h in records]
    assert seen[0].headers["x-note"].startswith("\ufffd")  # decoded tolerantly
    assert seen[1].headers["x-null"] == ""
    assert await committed(stack, topic, group) == len(records)

    # A dead letter of such a record keeps its exact header bytes for `spamops redrive`.
    from spamops_runtime.kafka import dead_letter

    producer_broker = make_broker(stack, client_id="it-delivery-dlq")
    async with producer_broker:
        await producer_broker.connect()
        await dead_letter(producer_broker, seen[0], reason="test", error="x", service="it")
    (letter,) = await read_all(stack, topic + ".dlq", 1)
    kept = decode_raw_headers(dict(letter.headers)[H_ORIGINAL_HEADERS].decode())
    assert kept == (("x-note", b"\xff\xfe\x00bad"),)


async def test_an_exception_escaping_the_handler_is_never_committed_past(
    stack: PlatformSettings,
) -> None:
    """A library error on record 3 of a batch: records 0-2 commit, 3 and after wait for it."""
    topic, group = await topic_with_dlq(stack), f"it-{uuid.uuid4().hex[:8]}"
    healthy = asyncio.Event()
    done: list[int] = []
    failures = 0

    async def handler(
        records: Sequence[RecordContext], settle: Callable[[RecordContext], None]
    ) -> None:
        nonlocal failures
        for record in records:
            if record.offset == 3 and not healthy.is_set():
                failures += 1
                raise OSError("a library failed")  # not our RejectRecord: anything may raise
            done.append(record.offset)
            settle(record)

    await produce(stack, topic, [(_event(v + 1), []) for v in range(8)])
    broker = make_broker(stack, client_id="it-delivery", graceful_timeout=5.0)
    subscribe_records(
        broker, topic=topic, handler=handler, settings=service_settings(stack, group),
        service="it-delivery", batch_max_records=50,
    )  # fmt: skip
    async with broker:
        await broker.start()
        await wait_for(lambda: failures >= 3, 30)
        assert await committed(stack, topic, group) == 3
        assert 4 not in done
        healthy.set()
        await wait_for(lambda: 7 in done, 60)
        await committed_reaches(stack, topic, group, 8)
    assert sorted(set(done)) == list(range(8))
    assert done.count(0) == 1  # the settled prefix was not handled again
    assert await committed(stack, topic, group) == 8


async def test_a_dead_letter_topic_that_refuses_writes_holds_the_commit_until_it_accepts(
    stack: PlatformSettings,
) -> None:
    # The DLQ takes records of at most 64 bytes: the dead letter (value + headers) is refused.
    topic = await topic_with_dlq(stack, dlq_configs={"max.message.bytes": "64"})
    group = f"it-{uuid.uuid4().hex[:8]}"
    handled: list[int] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        handled.append(event.version)

    await produce(stack, topic, [(_event(1), []), (b"{not json", []), (_event(3), [])])
    broker = approvals_consumer(stack, topic, group, handler)
    async with broker:
        await broker.start()
        await wait_for(lambda: handled == [1])
        await asyncio.sleep(4)  # the dead letter is refused and retried meanwhile
        assert handled == [1]
        assert await committed(stack, topic, group) in (0, 1)  # 0: nothing committed yet
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            await admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC, topic + ".dlq", {"max.message.bytes": "1048588"}
                    )
                ]
            )
        finally:
            await admin.close()
        await wait_for(lambda: handled == [1, 3], 60)
        await committed_reaches(stack, topic, group, 3)
    (letter,) = await read_all(stack, topic + ".dlq", 1)
    assert letter.value == b"{not json"
    assert dict(letter.headers)[H_ERROR_REASON] == b"invalid-json"
    assert await committed(stack, topic, group) == 3


async def test_redrive_sends_dead_letters_back_once_with_their_exact_headers(
    stack: PlatformSettings,
) -> None:
    from spamops_cli.redrive import redrive
    from spamops_runtime.kafka import H_REDRIVEN_FROM, context_of, dead_letter

    topic = await topic_with_dlq(stack)
    await produce(
        stack, topic, [(b"{bad", [("x-note", b"\xff")]), (b"{worse", []), (_event(5), [])]
    )
    originals = await read_all(stack, topic, 3)
    broker = make_broker(stack, client_id="it-redrive")
    async with broker:
        await broker.connect()
        for record, reason in zip(originals, ("invalid-json", "other", "later"), strict=True):
            await dead_letter(broker, context_of(record), reason=reason, error="e", service="it")

    only = await redrive(stack, topic + ".dlq", reason="invalid-json")
    assert (only.matched, only.sent, only.already) == (1, 1, 0)
    everything = await redrive(stack, topic + ".dlq")
    assert (everything.matched, everything.sent, everything.already) == (3, 2, 1)
    again = await redrive(stack, topic + ".dlq")
    assert (again.sent, again.already) == (0, 3)  # idempotent: nothing is sent twice

    back = (await read_all(stack, topic, 6))[3:]
    assert sorted(r.value for r in back) == sorted(r.value for r in originals)
    first = next(r for r in back if r.value == b"{bad")
    headers = list(first.headers)
    assert ("x-note", b"\xff") in headers  # the exact bytes, restored
    assert not any(name.startswith("x-error-") for name, _ in headers)
    assert dict(headers)[H_REDRIVEN_FROM].decode().startswith(topic + ".dlq:0:")
