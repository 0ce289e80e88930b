"""The one piece of Kafka wiring every service uses.

* ``make_broker`` builds a FastStream ``KafkaBroker`` with idempotent, fully
  acknowledged producers.
* ``publish_event`` sends a typed event to its catalogue topic, keyed as the
  catalogue says, with correlation and trace headers.
* ``subscribe_events`` registers a handler for one event type with manual
  offset commits: a record is committed only after its handler (and whatever
  the handler published) finished, so a service killed mid-stream loses
  nothing. Undecodable records and records a handler rejects go, unchanged, to
  ``<topic>.dlq`` with the reason in their headers; the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.security import SASLScram512
from spamops_schemas import Event, EventDecodeError, decode_event, topic_for_event

from spamops_runtime.logs import log_context
from spamops_runtime.metrics import (
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    EVENTS_PUBLISHED,
    HANDLER_RETRIES,
    HANDLER_SECONDS,
)
from spamops_runtime.settings import PlatformSettings, ServiceSettings
from spamops_runtime.tracing import consumer_span, current_trace_id, inject

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

# Record headers used across the platform.
H_CORRELATION_ID = "x-correlation-id"
H_EVENT_TYPE = "x-event-type"
H_EVENT_ID = "x-event-id"
H_TRACEPARENT = "traceparent"
H_ENVIRONMENT = "x-environment"
H_ERROR_REASON = "x-error-reason"
H_ERROR_MESSAGE = "x-error-message"
H_ERROR_SERVICE = "x-error-service"
H_ERROR_FIELD = "x-error-field"
H_ORIGINAL_TOPIC = "x-original-topic"
H_ORIGINAL_PARTITION = "x-original-partition"
H_ORIGINAL_OFFSET = "x-original-offset"
H_ORIGINAL_TIMESTAMP = "x-original-timestamp"


class RejectRecord(Exception):  # noqa: N818  (a control-flow signal, not an error type)
    """Raised by a handler for a record that can never succeed: dead-letter it, go on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransientError(Exception):
    """Raised by a handler when a dependency is down: retry forever, commit nothing."""


@dataclass(frozen=True)
class RecordContext:
    """Where a record came from, passed to handlers next to the typed event."""

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: Mapping[str, str]
    timestamp_ms: int
    raw: bytes = field(repr=False)


_current_record: ContextVar[RecordContext | None] = ContextVar("spamops_record", default=None)


def make_broker(platform: PlatformSettings, *, client_id: str, **kwargs: Any) -> KafkaBroker:
    """A FastStream Kafka broker for ``platform``'s cluster.

    Producers wait for all in-sync replicas and are idempotent, so a retried
    send cannot duplicate or reorder what a handler publishes. With
    ``kafka_security_protocol=SASL_PLAINTEXT`` the broker authenticates with
    SCRAM-SHA-512 as ``kafka_sasl_username`` (see ``PlatformSettings.kafka_client_options``).
    """
    options: dict[str, Any] = {
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "graceful_timeout": 30.0,
        "logger": logging.getLogger(f"spamops.kafka.{client_id}"),
    }
    sasl = platform.kafka_client_options()
    if sasl:
        options["security"] = SASLScram512(sasl["sasl_plain_username"], sasl["sasl_plain_password"])
        # Topics are the admin's business on a secured cluster: a service has no Create
        # right, so FastStream's attempt would only log an authorization warning.
        options["allow_auto_create_topics"] = False
    options.update(kwargs)
    return KafkaBroker(platform.kafka_bootstrap, **options)


def _decode_headers(raw_headers: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw_headers or ():
        if isinstance(value, bytes | bytearray):
            headers[name] = value.decode("utf-8", errors="replace")
        elif value is not None:
            headers[name] = str(value)
    return headers


def record_context(message: Any) -> RecordContext:
    """Build a RecordContext from a FastStream KafkaMessage (single record)."""
    return _context_of(message.raw_message)


def _context_of(record: Any) -> RecordContext:
    """A RecordContext from one aiokafka ConsumerRecord."""
    key = record.key.decode("utf-8", errors="replace") if record.key is not None else None
    return RecordContext(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        headers=_decode_headers(record.headers),
        timestamp_ms=record.timestamp,
        raw=record.value if record.value is not None else b"",
    )


def event_key(event: Event) -> str | None:
    """The record key the catalogue prescribes for an event (e.g. dataset_id)."""
    key_field = topic_for_event(event.event_type).key
    value = getattr(event, key_field, None)
    return None if value is None else str(value)


def outgoing_headers(
    event: Event | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Headers for a record published while handling another: trace and correlation carried on."""
    headers: dict[str, str] = {}
    current = _current_record.get()
    if current is not None and H_TRACEPARENT in current.headers:
        headers[H_TRACEPARENT] = current.headers[H_TRACEPARENT]
    inject(headers)  # the current span, when there is one, continues the trace
    if event is not None:
        headers[H_CORRELATION_ID] = event.correlation_id
        headers[H_EVENT_TYPE] = event.event_type
        headers[H_EVENT_ID] = str(event.event_id)
        headers["content-type"] = "application/json"
    if extra:
        headers.update(extra)
    return headers


async def publish_event(
    broker: KafkaBroker,
    event: Event,
    *,
    topic: str | None = None,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    service: str = "spamops",
) -> None:
    """Publish ``event`` as UTF-8 JSON to its catalogue topic and wait for Kafka's ack."""
    target = topic or topic_for_event(event.event_type).name
    record_key = key if key is not None else event_key(event)
    await broker.publish(
        event.to_bytes(),
        topic=target,
        key=record_key.encode("utf-8") if record_key is not None else None,
        headers=outgoing_headers(event, headers),
    )
    EVENTS_PUBLISHED.labels(service, target, event.event_type).inc()


async def dead_letter(
    broker: KafkaBroker,
    record: RecordContext,
    *,
    reason: str,
    error: str,
    service: str,
    error_field: str | None = None,
) -> None:
    """Send the record, unchanged, to ``<topic>.dlq`` with why it failed in its headers."""
    headers = dict(record.headers)
    headers.update(
        {
            H_ERROR_REASON: reason,
            H_ERROR_MESSAGE: error[:2000],
            H_ERROR_SERVICE: service,
            H_ORIGINAL_TOPIC: record.topic,
            H_ORIGINAL_PARTITION: str(record.partition),
            H_ORIGINAL_OFFSET: str(record.offset),
            H_ORIGINAL_TIMESTAMP: str(record.timestamp_ms),
        }
    )
    if error_field:
        headers[H_ERROR_FIELD] = error_field
    await broker.publish(
        record.raw,
        topic=record.topic + ".dlq",
        key=record.key.encode("utf-8") if record.key is not None else None,
        headers=headers,
    )
    DEAD_LETTERS.labels(service, record.topic, reason).inc()
    logger.error(
        "record dead-lettered",
        extra={
            "reason": reason,
            "error": error[:500],
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
        },
    )


EventHandler = Callable[[E, RecordContext], Awaitable[None]]


async def handle_record(
    broker: KafkaBroker,
    record: RecordContext,
    event_cls: type[E],
    handler: EventHandler[E],
    *,
    service: str,
    max_attempts: int = 3,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 30.0,
) -> None:
    """Decode one record and run ``handler`` on it; dead-letter what can never succeed.

    Returns once the record is finished (handled or dead-lettered), so the
    caller may commit its offset. A ``TransientError`` is retried without end
    (capped backoff): nothing is committed while a dependency is down.
    """
    try:
        event = decode_event(record.raw, expected=event_cls)
    except EventDecodeError as exc:
        await dead_letter(
            broker,
            record,
            reason=exc.reason,
            error=str(exc),
            service=service,
            error_field=exc.field,
        )
        return

    attempt = 0
    delay = backoff_seconds
    token = _current_record.set(record)
    span_attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": record.topic,
        "messaging.kafka.partition": record.partition,
        "messaging.kafka.offset": record.offset,
        "spamops.event_type": event.event_type,
        "spamops.event_id": str(event.event_id),
        "spamops.correlation_id": event.correlation_id,
    }
    try:
        with (
            consumer_span(f"{service} {event.event_type}", record.headers, span_attributes),
            log_context(
                event_type=event.event_type,
                event_id=str(event.event_id),
                correlation_id=event.correlation_id,
                trace_id=current_trace_id(),
            ),
        ):
            while True:
                attempt += 1
                started = time.perf_counter()
                try:
                    await handler(event, record)
                except RejectRecord as exc:
                    await dead_letter(
                        broker, record, reason=exc.reason, error=str(exc), service=service
                    )
                    return
                except TransientError as exc:
                    HANDLER_RETRIES.labels(service, record.topic).inc()
                    logger.warning(
                        "dependency unavailable, retrying",
                        extra={"error": str(exc), "retry_in_s": delay},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_backoff_seconds)
                    continue
                except Exception as exc:
                    if attempt >= max_attempts:
                        await dead_letter(
                            broker,
                            record,
                            reason="handler-error",
                            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}",
                            service=service,
                        )
                        return
                    HANDLER_RETRIES.labels(service, record.topic).inc()
                    logger.warning(
                        "handler failed, retrying",
                        exc_info=True,
                        extra={"attempt": attempt, "retry_in_s": delay},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_backoff_seconds)
                    continue
                HANDLER_SECONDS.labels(service, record.topic).observe(time.perf_counter() - started)
                EVENTS_CONSUMED.labels(service, record.topic, event.event_type).inc()
                return
    finally:
        _current_record.reset(token)


def subscribe_events(
    broker: KafkaBroker,
    *,
    topic: str,
    event_cls: type[E],
    handler: EventHandler[E],
    settings: ServiceSettings,
    service: str,
    group_id: str | None = None,
    auto_offset_reset: Literal["latest", "earliest", "none"] = "earliest",
    batch_max_records: int | None = None,
    batch_timeout_ms: int = 200,
    **subscriber_options: Any,
) -> None:
    """Register ``handler`` for ``event_cls`` records of ``topic`` in a consumer group.

    The offset is committed after the handler finished or the record was
    dead-lettered, never before. With ``batch_max_records`` the records are
    fetched in batches, still handled one by one in order, and the offsets are
    committed once per batch: a commit per record caps a consumer at a few hundred
    records a second, which a high-volume topic (emails.verdicts) outruns.
    """

    async def consume(message: KafkaMessage) -> None:
        raw = message.raw_message
        for one in raw if isinstance(raw, tuple | list) else (raw,):
            await handle_record(
                broker,
                _context_of(one),
                event_cls,
                handler,
                service=service,
                max_attempts=settings.max_attempts,
                backoff_seconds=settings.retry_backoff_seconds,
            )
        await message.ack()

    if batch_max_records is not None:
        subscriber_options |= {
            "batch": True,
            "max_records": batch_max_records,
            "batch_timeout_ms": batch_timeout_ms,
        }

    consume.__name__ = f"on_{event_cls.EVENT_TYPE}"
    consume.__doc__ = f"{service}: {event_cls.EVENT_TYPE} from {topic}."
    broker.subscriber(
        topic,
        group_id=group_id or settings.group_id or service,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset=auto_offset_reset,
        title=f"{service}:{topic}",
        **subscriber_options,
    )(consume)
