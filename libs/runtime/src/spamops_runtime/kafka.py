"""The one piece of Kafka wiring every service uses.

* ``make_broker`` builds a FastStream ``KafkaBroker`` with fully acknowledged
  producers.
* ``publish_event`` sends a typed event to its catalogue topic, keyed as the
  catalogue says, with correlation and trace headers.
* ``subscribe_records`` is the delivery rule (docs/DESIGN.md §4) for any topic: each
  record ends as its effect or as a dead letter, and an offset is committed,
  explicitly per partition, only when every record before it in that partition
  is settled. Whatever raises — a decoder, a handler, a dead-letter publish, a
  library — the record is not committed past: the consumer seeks back to it and
  reads it again after a capped backoff.
* ``subscribe_events`` is ``subscribe_records`` for typed events: undecodable
  records and records a handler rejects go, unchanged, to ``<topic>.dlq`` with
  the reason in their headers; an unreachable dependency is retried, never
  dead-lettered; the stream goes on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
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
    labelled,
)
from spamops_runtime.settings import PlatformSettings, ServiceSettings
from spamops_runtime.tracing import (
    consumer_span,
    current_trace_id,
    inject,
    traceparent_trace_id,
)

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
# The original headers, exactly (JSON list of [name, base64 value or null]), on a dead
# letter whose headers were not all UTF-8 text: what `spamops redrive` restores.
H_ORIGINAL_HEADERS = "x-original-headers"
# Set by `spamops redrive` on a record it re-published (the dead letter's topic:partition:offset).
H_REDRIVEN_FROM = "x-redriven-from"

RawHeaders = tuple[tuple[str, bytes | None], ...]


class RejectRecord(Exception):  # noqa: N818  (a control-flow signal, not an error type)
    """Raised by a handler for a record that can never succeed: dead-letter it, go on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransientError(Exception):
    """Raised by a handler when a dependency is down: retry forever, commit nothing."""


# Exception types (by module prefix and name) that mean "a dependency is unreachable
# right now", wherever they come from: retried, never dead-lettered. Matched by name so
# the wiring imports none of the clients (MLflow, Triton, Redis, requests, grpc).
_TRANSIENT_NAMES = frozenset(
    {
        "ConnectionError",
        "ConnectionRefusedError",
        "ConnectionResetError",
        "ConnectionAbortedError",
        "BrokenPipeError",
        "TimeoutError",
        "ReadTimeout",
        "ConnectTimeout",
        "ReadTimeoutError",
        "NewConnectionError",
        "MaxRetryError",
        "ProtocolError",
        "ChunkedEncodingError",
        "BusyLoadingError",  # redis
        "KafkaConnectionError",
        "KafkaTimeoutError",
        "NodeNotReadyError",
        "RequestTimedOutError",
        "NotLeaderForPartitionError",
        "LeaderNotAvailableError",
        "NotEnoughReplicasError",
        "NotEnoughReplicasAfterAppendError",
        "CoordinatorNotAvailableError",
        "NotCoordinatorError",
        "UnknownTopicOrPartitionError",
        "InferenceServerException",  # tritonclient: checked for its status below
    }
)
# MLflow's REST error codes of a server that is there but cannot answer now.
_MLFLOW_TRANSIENT_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "UNAVAILABLE"}
)
_TRITON_TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "StatusCode.UNAVAILABLE", "503")


def _one_is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | ConnectionError | TimeoutError | asyncio.TimeoutError):
        return True
    name = type(exc).__name__
    if name == "MlflowException" or name == "RestException":
        code = str(getattr(exc, "error_code", "") or "")
        status = getattr(exc, "get_http_status_code", None)
        http = status() if callable(status) else 0
        return code in _MLFLOW_TRANSIENT_CODES or (isinstance(http, int) and http >= 500)
    if name == "InferenceServerException":
        status = str(getattr(exc, "status", lambda: "")() or "")
        return any(s in status for s in _TRITON_TRANSIENT_STATUS) or "connect" in str(exc).lower()
    if name in _TRANSIENT_NAMES:
        return True
    retriable = getattr(type(exc), "retriable", None)  # aiokafka's own classification
    return retriable is True


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means a dependency is unreachable.

    Connection refused or reset, timeouts, 5xx and MLflow's INTERNAL_ERROR /
    TEMPORARILY_UNAVAILABLE, gRPC UNAVAILABLE, Kafka's retriable errors: such a
    record is retried (capped backoff) and never dead-lettered.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _one_is_transient(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def backoff_delays(first_s: float, cap_s: float, *, jitter: float = 0.2) -> Callable[[], float]:
    """A source of capped exponential delays with +/- ``jitter`` (fraction) randomness."""
    state = {"next": first_s}

    def next_delay() -> float:
        delay = state["next"]
        state["next"] = min(delay * 2, cap_s)
        return delay * (1 + random.uniform(-jitter, jitter))  # noqa: S311  (not crypto)

    return next_delay


@dataclass(frozen=True)
class RecordContext:
    """One Kafka record as the platform sees it, passed to handlers next to the event.

    ``headers`` are decoded tolerantly (invalid UTF-8 replaced, a null value is
    ""); ``raw_headers`` keep the exact bytes for dead letters.
    """

    topic: str
    partition: int
    offset: int
    key: str | None
    headers: Mapping[str, str]
    timestamp_ms: int
    raw: bytes = field(repr=False)
    raw_headers: RawHeaders = field(default=(), repr=False)

    @property
    def value(self) -> bytes:
        """The record's value (empty for a null value)."""
        return self.raw


_current_record: ContextVar[RecordContext | None] = ContextVar("spamops_record", default=None)


def make_broker(platform: PlatformSettings, *, client_id: str, **kwargs: Any) -> KafkaBroker:
    """A FastStream Kafka broker for ``platform``'s cluster.

    Producers wait for all in-sync replicas. They are not idempotent on purpose:
    aiokafka's idempotent producer never expires a batch and, after a broker
    restart that lost an in-flight batch, retries it forever against
    ``OutOfOrderSequenceException`` (seen here). A plain producer's batch fails
    after ``request_timeout_ms`` instead, the handler retries it (nothing is
    committed meanwhile), and ordering holds because aiokafka keeps one request
    in flight per broker. The cost is a possible duplicate after a retried send,
    which at-least-once delivery allows anyway (consumers dedupe by event id).
    With ``kafka_security_protocol=SASL_PLAINTEXT`` the broker authenticates with
    SCRAM-SHA-512 as ``kafka_sasl_username``.
    """
    options: dict[str, Any] = {
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": False,
        "request_timeout_ms": 30_000,
        "graceful_timeout": 30.0,
        "logger": logging.getLogger(f"spamops.kafka.{client_id}"),
        # FastStream's "Received"/"Processed" lines come per fetched batch: at DEBUG
        # (SPAMOPS_LOG_LEVEL=DEBUG shows them), not two INFO lines a batch in every log.
        "log_level": logging.DEBUG,
    }
    sasl = platform.kafka_client_options()
    if sasl:
        options["security"] = SASLScram512(sasl["sasl_plain_username"], sasl["sasl_plain_password"])
        # Topics are the admin's business on a secured cluster: a service has no Create
        # right, so FastStream's attempt would only log an authorization warning.
        options["allow_auto_create_topics"] = False
    options.update(kwargs)
    return KafkaBroker(platform.kafka_bootstrap, **options)


def decode_headers(raw_headers: Any) -> dict[str, str]:
    """Record headers as text, whatever a client wrote: never raises.

    Invalid UTF-8 is replaced, a null value becomes "", a repeated name keeps
    its last value (as FastStream does).
    """
    headers: dict[str, str] = {}
    for item in raw_headers or ():
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if not isinstance(name, str):
            name = bytes(name).decode("utf-8", "replace") if name is not None else ""
        if value is None:
            headers[name] = ""
        elif isinstance(value, bytes | bytearray | memoryview):
            headers[name] = bytes(value).decode("utf-8", errors="replace")
        else:
            headers[name] = str(value)
    return headers


def _raw_headers_of(raw_headers: Any) -> RawHeaders:
    kept: list[tuple[str, bytes | None]] = []
    for item in raw_headers or ():
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        text = name if isinstance(name, str) else bytes(name or b"").decode("utf-8", "replace")
        if value is None or isinstance(value, bytes):
            kept.append((text, value))
        elif isinstance(value, bytearray | memoryview):
            kept.append((text, bytes(value)))
        else:
            kept.append((text, str(value).encode("utf-8")))
    return tuple(kept)


def record_context(message: Any) -> RecordContext:
    """Build a RecordContext from a FastStream KafkaMessage (single record)."""
    return context_of(message.raw_message)


def context_of(record: Any) -> RecordContext:
    """A RecordContext from one aiokafka ConsumerRecord: never raises on odd content."""
    raw_key = record.key
    if raw_key is None:
        key = None
    elif isinstance(raw_key, bytes | bytearray):
        key = bytes(raw_key).decode("utf-8", errors="replace")
    else:
        key = str(raw_key)
    value = record.value
    if value is None:
        raw = b""
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    else:
        raw = str(value).encode("utf-8")
    return RecordContext(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        headers=decode_headers(record.headers),
        timestamp_ms=record.timestamp if record.timestamp is not None else 0,
        raw=raw,
        raw_headers=_raw_headers_of(record.headers),
    )


def headers_are_text(raw_headers: RawHeaders) -> bool:
    """Whether every header value is present and valid UTF-8 (a dead letter keeps them as is)."""
    for _, value in raw_headers:
        if value is None:
            return False
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def encode_raw_headers(raw_headers: RawHeaders) -> str:
    """The exact headers as JSON text: ``[[name, base64 value or null], ...]``."""
    return json.dumps(
        [[n, None if v is None else base64.b64encode(v).decode("ascii")] for n, v in raw_headers]
    )


def decode_raw_headers(text: str) -> RawHeaders:
    """The inverse of ``encode_raw_headers``."""
    return tuple((str(n), None if v is None else base64.b64decode(v)) for n, v in json.loads(text))


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


async def publish_raw(
    broker: KafkaBroker,
    value: bytes,
    *,
    topic: str,
    key: str | None,
    correlation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    service: str = "spamops",
) -> None:
    """Publish bytes that are not an event (a raw email) and wait for Kafka's ack.

    The same trace and correlation headers as ``publish_event``: the current
    span's ``traceparent`` and ``x-correlation-id`` when one is given.
    """
    extra = dict(headers or {})
    if correlation_id is not None:
        extra[H_CORRELATION_ID] = correlation_id
    await broker.publish(
        value,
        topic=topic,
        key=key.encode("utf-8") if key is not None else None,
        headers=outgoing_headers(None, extra),
    )
    EVENTS_PUBLISHED.labels(service, topic, "raw").inc()


def dead_letter_headers(
    record: RecordContext,
    *,
    reason: str,
    error: str,
    service: str,
    error_field: str | None = None,
) -> dict[str, str]:
    """The headers of ``record``'s dead letter: its own (as text) plus why it failed."""
    headers = dict(record.headers)
    if record.raw_headers and not headers_are_text(record.raw_headers):
        headers[H_ORIGINAL_HEADERS] = encode_raw_headers(record.raw_headers)
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
    return headers


async def dead_letter(
    broker: KafkaBroker,
    record: RecordContext,
    *,
    reason: str,
    error: str,
    service: str,
    error_field: str | None = None,
    retry_first_s: float = 0.5,
    retry_max_s: float = 30.0,
) -> None:
    """Send the record, unchanged, to ``<topic>.dlq`` with why it failed in its headers.

    Returns only once Kafka acknowledged the dead letter: a failed publish is
    retried with capped backoff, never skipped (the record's offset must not be
    committed before its dead letter exists).
    """
    headers = dead_letter_headers(
        record, reason=reason, error=error, service=service, error_field=error_field
    )
    delays = backoff_delays(retry_first_s, retry_max_s)
    while True:
        try:
            await broker.publish(
                record.raw,
                topic=record.topic + ".dlq",
                key=record.key.encode("utf-8") if record.key is not None else None,
                headers=headers,
            )
            break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = delays()
            logger.error(
                "dead-letter publish failed, retrying",
                extra={
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "retry_in_s": round(delay, 2),
                },
            )
            await asyncio.sleep(delay)
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
    record_span: bool = True,
) -> None:
    """Decode one record and run ``handler`` on it; dead-letter what can never succeed.

    Returns once the record is settled (handled or dead-lettered), so the
    caller may commit its offset. A ``TransientError``, or any exception that
    ``is_transient`` recognises (a dependency unreachable), is retried without
    end (capped backoff with jitter): nothing is committed while it is down.
    Another exception is retried ``max_attempts`` times, then dead-lettered as
    ``handler-error``.

    ``record_span=False`` skips the CONSUMER span of the record (its logs still
    carry the trace id of its ``traceparent``): on a high-volume stream whose
    records are leaves of their traces (verdicts in the monitor) a span per
    record cost about a third of the consumer's CPU (py-spy).
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
    delays = backoff_delays(backoff_seconds, max_backoff_seconds)
    token = _current_record.set(record)
    headers = record.headers
    span: AbstractContextManager[object] = nullcontext()
    if record_span:  # the attributes only for a span: no per-record work without one
        span = consumer_span(
            f"{service} {event.event_type}",
            headers,
            {
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.partition": record.partition,
                "messaging.kafka.offset": record.offset,
                "spamops.event_type": event.event_type,
                "spamops.event_id": str(event.event_id),
                "spamops.correlation_id": event.correlation_id,
            },
        )
    try:
        with (
            span,
            log_context(
                event_type=event.event_type,
                event_id=str(event.event_id),
                correlation_id=event.correlation_id,
                # Evaluated once the span is entered: the trace id is the span's.
                trace_id=current_trace_id() if record_span else traceparent_trace_id(headers),
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
                except Exception as exc:
                    transient = is_transient(exc)
                    if not transient and attempt >= max_attempts:
                        await dead_letter(
                            broker,
                            record,
                            reason="handler-error",
                            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}",
                            service=service,
                        )
                        return
                    delay = delays()
                    HANDLER_RETRIES.labels(service, record.topic).inc()
                    if transient:
                        logger.warning(
                            "dependency unavailable, retrying",
                            extra={
                                "error": f"{type(exc).__name__}: {exc}"[:500],
                                "retry_in_s": round(delay, 2),
                            },
                        )
                    else:
                        logger.warning(
                            "handler failed, retrying",
                            exc_info=True,
                            extra={"attempt": attempt, "retry_in_s": round(delay, 2)},
                        )
                    await asyncio.sleep(delay)
                    continue
                elapsed = time.perf_counter() - started
                labelled(HANDLER_SECONDS, service, record.topic).observe(elapsed)
                labelled(EVENTS_CONSUMED, service, record.topic, event.event_type).inc()
                return
    finally:
        _current_record.reset(token)


# A batch handler: settles the records it is given, calling ``settle(record)`` for each
# once its effect or dead letter is done. What it did not settle is read again.
BatchHandler = Callable[[Sequence[RecordContext], Callable[[RecordContext], None]], Awaitable[None]]
# (topic, partition) -> the lowest offset whose effect is not durable yet, or None.
CommitFloor = Callable[[str, int], int | None]


async def _tolerant_parser(msg: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """FastStream's parser, fed records whose headers cannot make it raise.

    FastStream decodes every header value as strict UTF-8 and fails on invalid
    bytes or a null value, before any handler runs and without acknowledging
    anything; here it sees text-only copies, and the message keeps the
    original records, so nothing is lost and the dead letters keep exact bytes.
    """

    def text_only(record: Any) -> Any:
        headers = tuple((n, v.encode("utf-8")) for n, v in decode_headers(record.headers).items())
        try:
            return replace(record, headers=headers)
        except TypeError:  # not a dataclass (a test double): FastStream reads .headers only
            return record

    if isinstance(msg, tuple | list):
        parsed = await original(tuple(text_only(r) for r in msg))
    else:
        parsed = await original(text_only(msg))
    parsed.raw_message = msg
    return parsed


async def _raw_decoder(msg: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """The body as bytes whatever ``content-type`` claims (raw mail may say JSON)."""
    return msg.body


@dataclass
class _Progress:
    """Per subscriber: the next offset to commit per partition (all before it settled)."""

    settled: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    failures: int = 0


async def _commit(
    consumer: Any,
    message: KafkaMessage,
    progress: _Progress,
    commit_floor: CommitFloor | None,
    service: str,
) -> None:
    """Commit, per partition, the settled position (held back by ``commit_floor``)."""
    if not isinstance(consumer, AIOKafkaConsumer):
        await message.ack()  # FastStream's in-memory test broker: nothing to commit
        return
    offsets: dict[TopicPartition, int] = {}
    for tp, position in progress.settled.items():
        target = position
        if commit_floor is not None:
            floor = commit_floor(tp.topic, tp.partition)
            if floor is not None:
                target = min(target, floor)
        if target > progress.committed.get(tp, -1):
            offsets[tp] = target
    if not offsets:
        return
    assigned = consumer.assignment()
    offsets = {tp: off for tp, off in offsets.items() if tp in assigned}
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # A rebalance or an unreachable coordinator: the records stay settled here and a
        # later commit covers them; if this member loses them first, the new owner reads
        # them again (at least once, never lost).
        logger.warning(
            "offset commit failed; a later commit covers it",
            extra={"service": service, "error": f"{type(exc).__name__}: {exc}"[:300]},
        )
        return
    progress.committed.update(offsets)


def _seek_back(consumer: AIOKafkaConsumer, stops: Mapping[TopicPartition, int]) -> None:
    """Point each still-assigned partition at its first unsettled record, to read it again."""
    assigned = consumer.assignment()
    for tp, offset in stops.items():
        if tp in assigned:
            consumer.seek(tp, offset)


def subscribe_records(
    broker: KafkaBroker,
    *,
    topic: str,
    handler: BatchHandler,
    settings: ServiceSettings,
    service: str,
    group_id: str | None = None,
    auto_offset_reset: Literal["latest", "earliest", "none"] = "earliest",
    batch_max_records: int | None = None,
    batch_timeout_ms: int = 200,
    commit_floor: CommitFloor | None = None,
    title: str | None = None,
    name: str | None = None,
    description: str | None = None,
    **subscriber_options: Any,
) -> None:
    """Register ``handler`` for the raw records of ``topic`` under the delivery rule.

    The handler gets the records of one fetch (one record unless
    ``batch_max_records``) and calls ``settle`` on each once its effect or its
    dead letter is done. Then, per partition, the wiring commits the offset
    after the last record such that every record before it is settled (and, if
    ``commit_floor`` is given, no further than the first offset it says is not
    durable yet). If the handler raises, whatever it raised, the consumer seeks
    back to the first unsettled record of each partition, waits (capped backoff)
    and reads it again: nothing is committed past it. A record re-fetched after
    a rebalance that this process already settled is not handled twice.
    """
    progress = _Progress()
    first_s = max(settings.retry_backoff_seconds, 0.05)

    async def consume(message: KafkaMessage) -> None:
        raw = message.raw_message
        records = list(raw) if isinstance(raw, tuple | list) else [raw]
        consumer: Any = getattr(message, "consumer", None)
        real = isinstance(consumer, AIOKafkaConsumer)  # not FastStream's in-memory broker
        pending: list[RecordContext] = []
        for one in records:
            tp = TopicPartition(one.topic, one.partition)
            if real and one.offset < progress.settled.get(tp, -1):
                continue  # settled here before a rebalance reset the position
            pending.append(context_of(one))
        settled_now: set[tuple[str, int, int]] = set()

        def settle(record: RecordContext) -> None:
            settled_now.add((record.topic, record.partition, record.offset))

        def advance() -> dict[TopicPartition, int]:
            """Move each partition's settled position over the settled prefix; the stops."""
            stops: dict[TopicPartition, int] = {}
            for ctx in pending:
                tp = TopicPartition(ctx.topic, ctx.partition)
                if tp in stops:
                    continue
                if (ctx.topic, ctx.partition, ctx.offset) in settled_now:
                    progress.settled[tp] = ctx.offset + 1
                else:
                    stops[tp] = ctx.offset
            return stops

        try:
            if pending:
                await handler(pending, settle)
        except asyncio.CancelledError:
            advance()
            await _commit(consumer, message, progress, commit_floor, service)
            raise
        except Exception as exc:
            stops = advance()
            progress.failures += 1
            delay = min(first_s * 2 ** (progress.failures - 1), 30.0)
            logger.error(
                "records not settled: reading them again",
                exc_info=exc,
                extra={
                    "service": service,
                    "topic": topic,
                    "from_offsets": {f"{tp.topic}:{tp.partition}": o for tp, o in stops.items()},
                    "retry_in_s": delay,
                },
            )
            await _commit(consumer, message, progress, commit_floor, service)
            if real:
                _seek_back(consumer, stops)
            await asyncio.sleep(delay)
            return
        stops = advance()
        if stops:  # the handler returned without settling everything: read those again
            logger.error(
                "handler returned records unsettled: reading them again",
                extra={"service": service, "topic": topic},
            )
            if real:
                _seek_back(consumer, stops)
        else:
            progress.failures = 0
        await _commit(consumer, message, progress, commit_floor, service)

    if batch_max_records is not None:
        subscriber_options |= {
            "batch": True,
            "max_records": batch_max_records,
            "batch_timeout_ms": batch_timeout_ms,
        }
    consume.__name__ = name or f"on_{topic.replace('.', '_').replace('-', '_')}"
    consume.__doc__ = description or f"{service}: records of {topic}."
    broker.subscriber(
        topic,
        group_id=group_id or settings.group_id or service,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset=auto_offset_reset,
        title=title or f"{service}:{topic}",
        parser=_tolerant_parser,
        decoder=_raw_decoder,
        no_reply=True,  # a `reply_to` header must not make us publish anywhere
        **subscriber_options,
    )(consume)


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
    commit_floor: CommitFloor | None = None,
    record_spans: bool = True,
    **subscriber_options: Any,
) -> None:
    """Register ``handler`` for ``event_cls`` records of ``topic`` in a consumer group.

    Records are handled one by one, in order (``handle_record``: decode, run,
    dead-letter what can never succeed, retry what is transient); each offset is
    committed only once its record and every record before it are settled. With
    ``batch_max_records`` the records are fetched in batches and committed once
    per batch: a commit per record caps a consumer at a few hundred records a
    second, which a high-volume topic (emails.verdicts) outruns. ``record_spans``:
    see ``handle_record``'s ``record_span``.
    """

    async def handle_in_order(
        records: Sequence[RecordContext], settle: Callable[[RecordContext], None]
    ) -> None:
        for record in records:
            await handle_record(
                broker,
                record,
                event_cls,
                handler,
                service=service,
                max_attempts=settings.max_attempts,
                backoff_seconds=settings.retry_backoff_seconds,
                record_span=record_spans,
            )
            settle(record)

    subscribe_records(
        broker,
        topic=topic,
        handler=handle_in_order,
        settings=settings,
        service=service,
        group_id=group_id,
        auto_offset_reset=auto_offset_reset,
        batch_max_records=batch_max_records,
        batch_timeout_ms=batch_timeout_ms,
        commit_floor=commit_floor,
        name=f"on_{event_cls.EVENT_TYPE}",
        description=f"{service}: {event_cls.EVENT_TYPE} from {topic}.",
        **subscriber_options,
    )
