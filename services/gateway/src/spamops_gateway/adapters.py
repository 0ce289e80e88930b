"""The gateway's outside world: Kafka (through the shared wiring) and Redis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from faststream.kafka import KafkaBroker
from redis.exceptions import RedisError
from spamops_runtime.kafka import H_ENVIRONMENT, publish_event, publish_raw
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailClassified, EmailLabeled, EventDecodeError, decode_event
from spamops_schemas.topics import EMAILS_INBOX

from spamops_gateway.handlers import (
    SERVICE,
    ExplainerUnavailableError,
    Outcome,
    Refusal,
    StoreUnavailableError,
)

if TYPE_CHECKING:  # the features library (Feast, XGBoost) loads on the first explanation
    from spamops_features.explain import ModelFiles

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


class MlflowExplainer:
    """Explanations from the deciding version's files in MLflow and the mail in emails.inbox.

    A version's pipeline and booster are downloaded once and kept (they never change);
    the work (Feast, XGBoost) runs in a thread, off the event loop that answers requests.
    """

    def __init__(self, settings: PlatformSettings, work_dir: Path) -> None:
        self.settings = settings
        self.work_dir = work_dir
        self._files: dict[tuple[str, int], ModelFiles] = {}
        self._lock = asyncio.Lock()

    async def _model_files(self, model_name: str, version: int) -> ModelFiles:
        from mlflow.exceptions import MlflowException
        from spamops_features.explain import ModelFiles
        from spamops_runtime.model_registry import download_version_files, is_not_found

        async with self._lock:  # one download per version, not one per request
            found = self._files.get((model_name, version))
            if found is not None:
                return found
            target = self.work_dir / "models" / f"{model_name}-v{version}"
            try:
                pipeline_dir, booster = await asyncio.to_thread(
                    download_version_files, self.settings.mlflow_uri, model_name, version, target
                )
            except MlflowException as exc:
                if is_not_found(exc):
                    raise LookupError(f"{model_name} v{version} is not registered") from exc
                raise ExplainerUnavailableError(f"MLflow: {exc}") from exc
            files = ModelFiles(pipeline_dir, booster)
            self._files[(model_name, version)] = files
            return files

    async def explain(self, verdict: EmailClassified, *, top: int) -> dict[str, object]:
        """The verdict's explanation (see ``spamops_features.explain``), JSON-ready."""
        from aiokafka.errors import KafkaError
        from spamops_features.explain import explain_mail, reputation_at
        from spamops_runtime.replay import read_record

        if verdict.inbox_record is None:
            raise LookupError("the verdict does not name its inbox record")
        try:
            raw = await read_record(self.settings, EMAILS_INBOX, *verdict.inbox_record)
        except KafkaError as exc:
            raise ExplainerUnavailableError(f"Kafka: {exc}") from exc
        files = await self._model_files(verdict.model_name, verdict.model_version)
        feast_dir = self.work_dir / "feast"
        reputation = await asyncio.to_thread(
            reputation_at, feast_dir, self.settings.redis, raw, verdict.occurred_at
        )
        result = await asyncio.to_thread(explain_mail, files, raw, reputation, top=top)
        return {
            "message_key": verdict.message_key,
            "verdict": verdict.verdict,
            "spam_probability": verdict.spam_probability,
            "model_name": verdict.model_name,
            "model_version": verdict.model_version,
            **result.as_dict(),
        }
