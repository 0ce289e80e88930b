"""Wiring of the gateway: settings -> broker, Redis, API keys -> FastAPI under uvicorn.

The process is a FastStream app like the other services (same start, /metrics
and readiness gauge, graceful stop): its broker consumes emails.verdicts and
emails.inbox.dlq, and once the consumers hold their partitions, a uvicorn
server in the same event loop serves the HTTP API. On SIGTERM the HTTP server
stops first and lets requests in flight be answered (the consumers still
run), then the broker stops and commits. See ``handlers`` for why every
instance reads every verdict in a consumer group of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from fastapi import FastAPI
from faststream import FastStream
from faststream.kafka import KafkaBroker
from spamops_runtime.api_keys import KeyRing
from spamops_runtime.kafka import (
    H_ERROR_MESSAGE,
    H_ERROR_REASON,
    RecordContext,
    subscribe_records,
)
from spamops_runtime.service import service_app, service_broker
from spamops_schemas import EmailClassified, EventDecodeError, decode_event
from spamops_schemas.topics import DLQ_SUFFIX, EMAILS_INBOX, EMAILS_VERDICTS

from spamops_gateway.adapters import KafkaFeedback, KafkaInbox, MlflowExplainer, RedisOutcomes
from spamops_gateway.api import create_api
from spamops_gateway.handlers import (
    SERVICE,
    GatewayDeps,
    PendingReplies,
    RateLimiter,
    Refusal,
    is_gateway_key,
    on_refusals,
    on_verdicts,
)
from spamops_gateway.metrics import VERDICTS_SEEN
from spamops_gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

EMAILS_INBOX_DLQ = EMAILS_INBOX + DLQ_SUFFIX


def decode_verdicts(records: Sequence[RecordContext]) -> list[EmailClassified]:
    """The verdicts of a batch; an unreadable record is skipped (the monitor dead-letters it)."""
    verdicts = []
    for record in records:
        try:
            verdict = decode_event(record.raw, expected=EmailClassified)
        except EventDecodeError as exc:
            logger.warning(
                "unreadable verdict skipped",
                extra={"partition": record.partition, "offset": record.offset, "error": str(exc)},
            )
            continue
        verdicts.append(verdict)
    return verdicts


def decode_refusals(records: Sequence[RecordContext]) -> list[Refusal]:
    """The inbox dead letters of a batch as refusals (key, reason, message)."""
    return [
        Refusal(
            message_key=record.key,
            reason=record.headers.get(H_ERROR_REASON, "") or "unknown",
            message=record.headers.get(H_ERROR_MESSAGE, ""),
        )
        for record in records
        if record.key is not None
    ]


class HttpServer:
    """uvicorn serving the API in the service's event loop; FastStream owns the signals."""

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # FastStream handles SIGINT/SIGTERM and stops this server in order.
            yield

    def __init__(self, api: FastAPI, host: str, port: int, drain_timeout_s: float) -> None:
        config = uvicorn.Config(
            api,
            host=host,
            port=port,
            log_config=None,  # the service's JSON logging
            access_log=False,  # one line per request from the API's middleware instead
            timeout_graceful_shutdown=int(drain_timeout_s) or None,
            lifespan="off",
        )
        self.server = self._Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen; raises if the port cannot be bound."""
        self.task = asyncio.create_task(self.server.serve(), name="gateway-http")
        while not self.server.started:
            if self.task.done():
                self.task.result()  # the bind error, if any
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        logger.info("http listening", extra={"host": self.server.config.host,
                                             "port": self.server.config.port})  # fmt: skip

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (``drain_timeout_s``)."""
        if self.task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await self.task


def _consumers(broker: KafkaBroker) -> list[AIOKafkaConsumer]:
    return [
        c
        for c in (getattr(sub, "consumer", None) for sub in broker.subscribers)
        if isinstance(c, AIOKafkaConsumer)
    ]


async def wait_assigned(broker: KafkaBroker, timeout_s: float = 60.0) -> None:
    """Until every consumer holds partitions and knows where it reads from.

    A new group starts at the latest offset: the position is resolved here,
    before requests are accepted, so no verdict of an accepted request can
    fall before it. That position is also committed for every partition the
    group has no offset for yet: a partition with no record since the group
    began would otherwise start at "latest" again after a restart, and skip
    the verdicts that came while the instance was down (seen in a test).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for consumer in _consumers(broker):
        while not consumer.assignment():
            if loop.time() > deadline:
                raise TimeoutError("the gateway's consumers got no partitions")
            await asyncio.sleep(0.05)
        starts: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            if await consumer.committed(tp) is None:
                starts[tp] = OffsetAndMetadata(position, "")
        if starts:
            await consumer.commit(starts)


def readiness_check(broker: KafkaBroker, store: RedisOutcomes) -> Callable[[], Any]:
    """The /readyz checks: producer connected, consumers assigned, Redis answering."""

    async def checks() -> dict[str, bool]:
        producer = getattr(broker.config, "producer", None)
        consumers = _consumers(broker)
        return {
            "kafka_producer": bool(producer) and not getattr(producer, "closed", False),
            "kafka_consumers": bool(consumers) and all(c.assignment() for c in consumers),
            "redis": await store.ping(),
        }

    return checks


def build_app(settings: GatewaySettings | None = None) -> FastStream:
    """Bootstrap: the broker, its consumers, the API with its dependencies, the HTTP server."""
    settings = settings or GatewaySettings()
    platform = settings.platform
    broker = service_broker(SERVICE, settings)
    store = RedisOutcomes(
        platform.redis, prefix=settings.redis_prefix, ttl_s=settings.verdict_ttl_s
    )
    deps = GatewayDeps(
        inbox=KafkaInbox(broker),
        feedback=KafkaFeedback(broker),
        store=store,
        pending=PendingReplies(settings.max_pending),
        verdict_timeout_s=settings.verdict_timeout_s,
        explainer=MlflowExplainer(platform, platform.state_dir / "data" / "gateway"),
    )
    # Groups of this instance alone: every instance sees every verdict (its requests'
    # answers are spread over all partitions); the first start reads from the latest.
    group = f"{settings.group_id}-{settings.instance_id}"

    async def on_verdict_records(
        records: Sequence[RecordContext], settle: Callable[[RecordContext], None]
    ) -> None:
        """gateway: EmailClassified from emails.verdicts -> waiting requests and Redis."""
        verdicts = decode_verdicts(records)
        await on_verdicts(verdicts, deps)  # stored before the batch is settled and committed
        ours = sum(1 for v in verdicts if is_gateway_key(v.message_key))
        VERDICTS_SEEN.labels("yes").inc(ours)
        VERDICTS_SEEN.labels("no").inc(len(verdicts) - ours)
        for record in records:
            settle(record)

    async def on_dead_letter_records(
        records: Sequence[RecordContext], settle: Callable[[RecordContext], None]
    ) -> None:
        """gateway: dead letters of emails.inbox -> refused requests and Redis."""
        await on_refusals(decode_refusals(records), deps)
        for record in records:
            settle(record)

    subscribe_records(
        broker,
        topic=EMAILS_VERDICTS,
        handler=on_verdict_records,
        settings=settings,
        service=SERVICE,
        group_id=group,
        auto_offset_reset="latest",
        batch_max_records=settings.batch_max_records,
        batch_timeout_ms=20,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        name="on_verdicts",
        description=on_verdict_records.__doc__,
    )
    subscribe_records(
        broker,
        topic=EMAILS_INBOX_DLQ,
        handler=on_dead_letter_records,
        settings=settings,
        service=SERVICE,
        group_id=f"{group}-dlq",
        auto_offset_reset="latest",
        batch_max_records=100,
        batch_timeout_ms=20,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        name="on_inbox_dead_letters",
        description=on_dead_letter_records.__doc__,
    )

    keys = KeyRing(settings.keys_path)
    api = create_api(
        deps,
        keys=keys,
        limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        max_email_bytes=settings.max_email_bytes,
        readiness=readiness_check(broker, store),
    )
    server = HttpServer(api, platform.host, platform.gateway_port, settings.drain_timeout_s)

    async def ready() -> None:
        await wait_assigned(broker)
        if not len(keys):
            logger.warning(
                "no API key: every request is refused (spamops gateway-key create)",
                extra={"keys_file": str(settings.keys_path)},
            )
        await server.start()

    app = service_app(SERVICE, settings, broker, before_ready=[ready], before_stop=[server.stop])

    @app.after_shutdown
    async def _close_store() -> None:
        """After the consumers stopped: their last batch may still write to Redis."""
        await store.close()

    return app
