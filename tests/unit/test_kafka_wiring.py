"""The shared Kafka wiring against FastStream's in-memory broker.

The same scenarios run against the real broker in
tests/integration/test_kafka_wiring.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from spamops_runtime.kafka import (
    H_CORRELATION_ID,
    H_ERROR_FIELD,
    H_ERROR_REASON,
    H_ORIGINAL_TOPIC,
    RecordContext,
    RejectRecord,
    publish_event,
    subscribe_events,
)
from spamops_runtime.settings import PlatformSettings, ServiceSettings
from spamops_schemas import PromotionApproved

TOPIC = "models.promotion-approved"


def _wire(
    received: list[Any], *, fail_with: Exception | None = None, batch: int | None = None
) -> tuple[KafkaBroker, list[Any]]:
    settings = ServiceSettings(max_attempts=2, retry_backoff_seconds=0.01)
    broker = KafkaBroker(PlatformSettings().kafka_bootstrap)
    dead: list[Any] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        if fail_with is not None:
            raise fail_with
        received.append((event, record))

    subscribe_events(
        broker,
        topic=TOPIC,
        event_cls=PromotionApproved,
        handler=handler,
        settings=settings,
        service="test",
        batch_max_records=batch,
    )

    @broker.subscriber(TOPIC + ".dlq")
    async def on_dead(message: KafkaMessage) -> None:
        dead.append(message)

    return broker, dead


async def _settle() -> None:
    await asyncio.sleep(0.05)


async def test_typed_event_reaches_handler_with_key_and_headers() -> None:
    received: list[Any] = []
    broker, dead = _wire(received)
    async with TestKafkaBroker(broker) as br:
        event = PromotionApproved(model_name="spam-detector", version=2, approved_by="alice")
        await publish_event(br, event)
        await _settle()
    assert len(received) == 1 and not dead
    got, record = received[0]
    assert got == event
    assert record.key == "spam-detector"
    assert record.headers[H_CORRELATION_ID] == event.correlation_id


async def test_invalid_event_goes_to_dlq_unchanged_with_reason() -> None:
    received: list[Any] = []
    broker, dead = _wire(received)
    raw = b'{"model_name": "spam-detector", "approved_by": "alice"}'
    async with TestKafkaBroker(broker) as br:
        await br.publish(raw, topic=TOPIC, key=b"k")
        await br.publish(b"\x00garbage", topic=TOPIC, key=b"k")
        await _settle()
    assert not received
    assert len(dead) == 2
    assert dead[0].body == raw
    assert dead[0].headers[H_ERROR_REASON] == "invalid-field"
    assert dead[0].headers[H_ERROR_FIELD] == "version"
    assert dead[0].headers[H_ORIGINAL_TOPIC] == TOPIC
    assert dead[1].headers[H_ERROR_REASON] == "invalid-json"


async def test_a_batch_is_handled_record_by_record_in_order_refusals_dead_lettered() -> None:
    received: list[Any] = []
    broker, dead = _wire(received, batch=100)
    events = [PromotionApproved(model_name="m", version=v, approved_by="a") for v in (1, 2)]
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(
            events[0].to_bytes(), b"\x00garbage", events[1].to_bytes(), topic=TOPIC
        )
        await _settle()
    assert [event for event, _ in received] == events
    assert [d.headers[H_ERROR_REASON] for d in dead] == ["invalid-json"]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RejectRecord("unknown-version", "no version 9"), "unknown-version"),
        (RuntimeError("boom"), "handler-error"),
    ],
)
async def test_failing_handler_is_dead_lettered_and_stream_goes_on(
    error: Exception, reason: str
) -> None:
    received: list[Any] = []
    broker, dead = _wire(received, fail_with=error)
    async with TestKafkaBroker(broker) as br:
        for version in (1, 2):
            await publish_event(
                br, PromotionApproved(model_name="m", version=version, approved_by="a")
            )
        await _settle()
    assert [d.headers[H_ERROR_REASON] for d in dead] == [reason, reason]


@contextmanager
def _in_memory_spans() -> Iterator[Any]:
    """A test-local tracer provider for the block; yields its in-memory span exporter."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = trace._TRACER_PROVIDER  # type: ignore[attr-defined]  # None unless one is set
    trace._TRACER_PROVIDER = provider  # type: ignore[attr-defined]  # test-local provider
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER = previous  # type: ignore[attr-defined]


async def test_a_handled_record_continues_its_trace_into_what_the_handler_publishes() -> None:
    """traceparent in -> a consumer span child of it -> the same trace id out."""
    from spamops_runtime.kafka import H_TRACEPARENT
    from spamops_schemas import ModelPromoted

    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    broker = KafkaBroker(PlatformSettings().kafka_bootstrap)
    out: list[Any] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        promoted = event.caused(ModelPromoted, producer="t", model_name="m", version=1)
        await publish_event(broker, promoted)

    subscribe_events(
        broker,
        topic=TOPIC,
        event_cls=PromotionApproved,
        handler=handler,
        settings=ServiceSettings(max_attempts=1),
        service="tracing",
    )

    @broker.subscriber("models.promoted")
    async def on_out(message: KafkaMessage) -> None:
        out.append(message)

    with _in_memory_spans() as exporter:
        async with TestKafkaBroker(broker) as br:
            event = PromotionApproved(model_name="m", version=1, approved_by="a")
            await br.publish(
                event.to_bytes(),
                topic=TOPIC,
                headers={H_TRACEPARENT: f"00-{trace_id}-{parent_id}-01"},
            )
            await _settle()
    [span] = [s for s in exporter.get_finished_spans() if s.name == "tracing PromotionApproved"]
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_id
    [published] = out
    outgoing = published.headers[H_TRACEPARENT]
    assert outgoing.split("-")[1] == trace_id  # same trace across the hop
    assert outgoing.split("-")[2] == f"{span.context.span_id:016x}"  # child of the consumer span


async def test_without_record_spans_no_span_is_made_and_logs_keep_the_trace_id() -> None:
    """record_spans=False (the monitor's verdicts): no span, the traceparent's id in logs."""
    from spamops_runtime.kafka import H_TRACEPARENT
    from spamops_runtime.logs import current_log_context

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    broker = KafkaBroker(PlatformSettings().kafka_bootstrap)
    seen: list[dict[str, Any]] = []

    async def handler(event: PromotionApproved, record: RecordContext) -> None:
        seen.append(current_log_context())

    subscribe_events(
        broker,
        topic=TOPIC,
        event_cls=PromotionApproved,
        handler=handler,
        settings=ServiceSettings(max_attempts=1),
        service="quiet",
        record_spans=False,
    )
    event = PromotionApproved(model_name="m", version=1, approved_by="a")
    with _in_memory_spans() as exporter:
        async with TestKafkaBroker(broker) as br:
            await br.publish(
                event.to_bytes(),
                topic=TOPIC,
                headers={H_TRACEPARENT: f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
            await br.publish(event.to_bytes(), topic=TOPIC)  # no traceparent at all
            await _settle()
    assert [s.name for s in exporter.get_finished_spans() if s.name.startswith("quiet")] == []
    assert [c.get("trace_id") for c in seen] == [trace_id, None]
    assert all(c["correlation_id"] == str(event.correlation_id) for c in seen)
