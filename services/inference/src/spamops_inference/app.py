"""Wiring of the inference service: settings -> broker -> subscribers -> FastStream app."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from faststream import FastStream
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from spamops_runtime.kafka import (
    H_TRACEPARENT,
    RecordContext,
    dead_letter,
    make_broker,
    outgoing_headers,
    publish_event,
    subscribe_events,
    subscribe_records,
)
from spamops_runtime.logs import configure_logging
from spamops_runtime.service import service_app
from spamops_runtime.tracing import configure_tracing
from spamops_schemas import EmailClassified, EmailLabeled, ModelPromoted, ModelRegistered
from spamops_schemas.topics import (
    EMAILS_FEEDBACK,
    EMAILS_INBOX,
    MODELS_PROMOTED,
    MODELS_REGISTERED,
)

from spamops_inference.adapters import MlflowModels, RecentSenders, TritonScorer
from spamops_inference.handlers import (
    SERVICE,
    InboxRecord,
    InferenceDeps,
    classify_batch,
    fit_dead_letter,
    on_email_labeled,
)
from spamops_inference.ledger import RedisAppliedLabels
from spamops_inference.metrics import BATCH_SIZE
from spamops_inference.serving import PRODUCTION, STAGING, ModelCatalog
from spamops_inference.settings import InferenceSettings

logger = logging.getLogger(__name__)


class _LazyScorer:
    """The Triton client is created on the service's event loop, at start-up."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.client: TritonScorer | None = None

    async def score(self, model: str, version: int, x: Any) -> Any:
        if self.client is None:
            self.client = TritonScorer(
                self.settings.platform.triton_grpc,
                rows_per_request=self.settings.triton_batch,
                timeout_s=self.settings.triton_timeout_s,
            )
        return await self.client.score(model, version, x)


def inbox_record(record: RecordContext) -> InboxRecord:
    """The inference view of one inbox record (headers already decoded tolerantly)."""
    return InboxRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.raw,
        headers=dict(record.headers),
        timestamp_ms=record.timestamp_ms,
    )


_PROPAGATOR = TraceContextTextMapPropagator()
VERDICT_SPAN = f"{SERVICE} classify"
BATCH_SPAN = f"{SERVICE} classify batch"


class VerdictSpans:
    """The spans of the verdicts: per verdict for traced mail, per batch for the rest.

    An inbox record with a ``traceparent`` (the caller traces it, e.g. through
    the gateway) gets a CONSUMER span of its own, child of that context, and its
    verdict carries the trace on, so inbox record and verdict share a trace. A
    record without one would start a new trace per email (~0.5 KB of span per
    verdict, and a tenth of the service's CPU at full speed): its verdict
    carries the batch's span instead, one per batch with the batch's size,
    partitions and offsets.

    The tracer is looked up once: the SDK's ``TracerProvider.get_tracer`` calls
    ``warnings.filterwarnings`` on every call, which took ~40 % of the service's
    CPU at full speed when done per verdict. Create this after ``configure_tracing``.
    """

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self._tracer = tracer or trace.get_tracer("spamops")

    @staticmethod
    def traced(record: InboxRecord) -> bool:
        """Whether the record carries its caller's trace context."""
        return H_TRACEPARENT in record.headers

    @contextmanager
    def batch(self, records: Sequence[InboxRecord], verdicts: int) -> Iterator[Span]:
        """The batch's span, current while its verdicts are published."""
        partitions = sorted({r.partition for r in records})
        with self._tracer.start_as_current_span(
            BATCH_SPAN,
            context=otel_context.Context(),  # a root: not a child of whatever ran before
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.destination.name": records[0].topic if records else "",
                "messaging.batch.message_count": len(records),
                "messaging.kafka.partitions": partitions,
                "messaging.kafka.offset.first": min((r.offset for r in records), default=-1),
                "messaging.kafka.offset.last": max((r.offset for r in records), default=-1),
                "spamops.verdicts": verdicts,
            },
        ) as span:
            yield span

    @contextmanager
    def span(self, record: InboxRecord, verdict: EmailClassified) -> Iterator[Span]:
        """A traced record's own span, current while its verdict is published."""
        token = otel_context.attach(_PROPAGATOR.extract(carrier=record.headers))
        try:
            with self._tracer.start_as_current_span(
                VERDICT_SPAN,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.destination.name": record.topic,
                    "messaging.kafka.partition": record.partition,
                    "messaging.kafka.offset": record.offset,
                    "spamops.verdict": verdict.verdict,
                    "spamops.model_version": verdict.model_version,
                },
            ) as span:
                yield span
        finally:
            otel_context.detach(token)


def verdict_record(
    spans: VerdictSpans, record: InboxRecord, verdict: EmailClassified
) -> tuple[bytes, dict[str, str]]:
    """A verdict's value and headers as published, its span included (inside ``batch``)."""
    if spans.traced(record):
        with spans.span(record, verdict):
            return verdict.to_bytes(), outgoing_headers(verdict)
    return verdict.to_bytes(), outgoing_headers(verdict)


def build_app(settings: InferenceSettings | None = None) -> FastStream:
    """Bootstrap: build the broker and register the handlers with their dependencies."""
    settings = settings or InferenceSettings()
    platform = settings.platform
    # service_broker, with a producer that can send a dead letter as large as the
    # inbox allows (aiokafka's default is 1 MiB): see fit_dead_letter.
    configure_logging(SERVICE, level=platform.log_level, fmt=platform.log_format)
    configure_tracing(
        SERVICE, platform.state_dir, max_bytes=platform.log_max_bytes, backups=platform.log_backups
    )
    broker = make_broker(
        platform,
        client_id=SERVICE,
        max_request_size=max(settings.dead_letter_max_bytes, 2**20) + 64 * 1024,
    )
    models = MlflowModels(platform.mlflow_uri, platform.model_name)
    catalog = ModelCatalog(models.load)
    scorer = _LazyScorer(settings)
    deps = InferenceDeps(
        catalog=catalog,
        scorer=scorer,
        settings=settings,
        senders=RecentSenders(settings.recent_senders),
    )
    if settings.use_reputation:
        from spamops_features.reputation import ReputationStore

        store = ReputationStore.open(
            platform.state_dir / "data" / "inference" / "feast", platform.redis
        )
        deps.reputation = store.online
        deps.push_label = store.push_label
        deps.applied_labels = RedisAppliedLabels(platform.redis)

    spans = VerdictSpans()

    async def publish_verdict(record: InboxRecord, verdict: EmailClassified) -> None:
        # A traced record's span (child of its traceparent) is current while its verdict
        # is published, so the verdict record carries that trace on; otherwise the
        # batch's span is (VerdictSpans).
        key = record.key or verdict.message_key
        if spans.traced(record):
            with spans.span(record, verdict):
                await publish_event(broker, verdict, key=key, service=SERVICE)
        else:
            await publish_event(broker, verdict, key=key, service=SERVICE)

    async def on_inbox(
        contexts: Sequence[RecordContext], settle: Callable[[RecordContext], None]
    ) -> None:
        """inference: raw RFC 822 emails from emails.inbox -> EmailClassified on emails.verdicts."""
        records = [inbox_record(c) for c in contexts]
        by_offset = {(c.topic, c.partition, c.offset): c for c in contexts}
        BATCH_SIZE.observe(len(records))
        result = await classify_batch(records, deps)
        # Every verdict acknowledged by Kafka (and every refusal dead-lettered) before the
        # batch's offsets are committed: a crash here replays the batch, loses nothing.
        with spans.batch(records, len(result.verdicts)):
            await asyncio.gather(
                *(publish_verdict(record, verdict) for record, verdict in result.verdicts)
            )
        for refused in result.refused:
            r = refused.record
            value, headers = fit_dead_letter(r, settings.dead_letter_max_bytes)
            await dead_letter(
                broker,
                replace(by_offset[(r.topic, r.partition, r.offset)], headers=headers, raw=value),
                reason=refused.reason,
                error=refused.message,
                service=SERVICE,
            )
        for context in contexts:
            settle(context)

    # Raw bytes whatever the record's headers say (a kcat user may send content-type
    # application/json with mail in it); settled records committed per partition.
    subscribe_records(
        broker,
        topic=EMAILS_INBOX,
        handler=on_inbox,
        settings=settings,
        service=SERVICE,
        batch_max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        fetch_min_bytes=settings.fetch_min_bytes,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        name="on_inbox",
        description=on_inbox.__doc__,
    )

    # Every instance must see every switch: a group of its own, from the latest offset
    # (the current aliases are read from MLflow at start).
    control_group = f"{settings.group_id}-control-{uuid.uuid4().hex[:8]}"

    async def on_registered(event: ModelRegistered, record: RecordContext) -> None:
        if event.model_name == platform.model_name:
            await catalog.switch(STAGING, event.version)

    async def on_promoted(event: ModelPromoted, record: RecordContext) -> None:
        if event.model_name == platform.model_name:
            await catalog.switch(PRODUCTION, event.version)

    for topic, cls, handler in (
        (MODELS_REGISTERED, ModelRegistered, on_registered),
        (MODELS_PROMOTED, ModelPromoted, on_promoted),
    ):
        subscribe_events(
            broker, topic=topic, event_cls=cls, handler=handler,  # type: ignore[arg-type]
            settings=settings, service=SERVICE, group_id=control_group,
            auto_offset_reset="latest",
        )  # fmt: skip

    async def on_labeled(event: EmailLabeled, record: RecordContext) -> None:
        await on_email_labeled(event, deps)

    subscribe_events(
        broker,
        topic=EMAILS_FEEDBACK,
        event_cls=EmailLabeled,
        handler=on_labeled,
        settings=settings,
        service=SERVICE,
        group_id=f"{settings.group_id}-feedback",
    )

    app = service_app(SERVICE, settings, broker)

    async def load_current_models(attempts: int = 1) -> None:
        """The serving versions as MLflow knows them now."""
        for attempt in range(1, attempts + 1):
            try:
                aliases = await asyncio.to_thread(models.aliases)
                break
            except Exception:  # MLflow not up yet: the stack starts it first, but be patient
                logger.warning("cannot read aliases from MLflow", extra={"attempt": attempt})
                if attempt < attempts:
                    await asyncio.sleep(2 * attempt)
        else:
            aliases = {}
        for alias, version in aliases.items():
            await catalog.switch(alias, version)
        logger.info("serving models", extra={"aliases": aliases})

    deps.refresh = load_current_models

    @app.on_startup
    async def _load_current_models() -> None:
        """Before consuming anything."""
        await load_current_models(attempts=5)

    return app
