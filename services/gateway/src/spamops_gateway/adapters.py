"""The gateway's outside world: Kafka (through the shared wiring) and Redis."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from faststream.kafka import KafkaBroker
from redis.exceptions import RedisError
from spamops_runtime.kafka import H_ENVIRONMENT, publish_event, publish_raw
from spamops_schemas import EmailClassified, EmailLabeled, EventDecodeError, decode_event
from spamops_schemas.topics import EMAILS_INBOX

from spamops_gateway.handlers import SERVICE, Outcome, Refusal, StoreUnavailableError

logger = logging.getLogger(__name__)


class KafkaInbox:
    """emails.inbox: the raw bytes, keyed, with ``x-environment`` and the trace headers."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    async def publish_email(
        self, raw: bytes, *, key: str, environment: str, correlation_id: str
    ) -> None:
        """Publish one email and wait for Kafka's acknowledgement."""
        await publish_raw(
            self.broker,
            raw,
            topic=EMAILS_INBOX,
            key=key,
            correlation_id=correlation_id,
            headers={H_ENVIRONMENT: environment},
            service=SERVICE,
        )


class KafkaFeedback:
    """emails.feedback through ``publish_event`` (keyed by message key)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    async def publish_label(self, event: EmailLabeled) -> None:
        """Publish one label and wait for Kafka's acknowledgement."""
        await publish_event(self.broker, event, service=SERVICE)


class RedisOutcomes:
    """Verdicts (their JSON, as on Kafka) and refusals by key in Redis, with a TTL."""

    def __init__(self, url: str, *, prefix: str = "spamops:gateway:", ttl_s: int = 3600) -> None:
        # Short timeouts: a request must not hang on a Redis that is away.
        self.client: Any = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, message_key: str) -> str:
        return f"{self.prefix}outcome:{message_key}"

    async def get(self, key: str) -> Outcome | None:
        """The verdict or refusal stored for ``key``, or None."""
        try:
            raw = await self.client.get(self._key(key))
        except RedisError as exc:
            raise StoreUnavailableError(str(exc)) from exc
        if raw is None:
            return None
        return decode_outcome(key, raw)

    async def put_verdicts(self, verdicts: Sequence[EmailClassified]) -> None:
        """Store verdicts (replacing a refusal of the same key: a redriven email)."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for one in verdicts:
                    pipe.set(self._key(one.message_key), one.to_bytes(), ex=self.ttl_s)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailableError(str(exc)) from exc

    async def put_refusals(self, refusals: Sequence[Refusal]) -> None:
        """Store refusals, never over a verdict already there (nx)."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for one in refusals:
                    value = json.dumps(
                        {"refused": {"reason": one.reason, "message": one.message[:2000]}}
                    )
                    pipe.set(self._key(one.message_key), value, ex=self.ttl_s, nx=True)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailableError(str(exc)) from exc

    async def ping(self) -> bool:
        """Whether Redis answers."""
        try:
            return bool(await self.client.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        """Release the connections."""
        await self.client.aclose()


def decode_outcome(key: str, raw: bytes | str) -> Outcome | None:
    """The value stored for ``key`` back as a verdict or a refusal (None if unreadable)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("refused"), dict):
        refused = data["refused"]
        return Refusal(key, str(refused.get("reason", "")), str(refused.get("message", "")))
    try:
        return decode_event(raw, expected=EmailClassified)
    except EventDecodeError:
        logger.warning("unreadable verdict in Redis: ignored")
        return None
