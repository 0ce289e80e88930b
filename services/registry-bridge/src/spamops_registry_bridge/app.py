"""Wiring of the registry-bridge service: settings -> broker -> subscribers -> FastStream app."""

from __future__ import annotations

import logging
from functools import partial

from faststream import FastStream
from spamops_runtime.kafka import publish_event, subscribe_events
from spamops_runtime.service import service_app, service_broker
from spamops_runtime.triton_repo import model_repository
from spamops_schemas import Event, ModelTrained, PromotionApproved
from spamops_schemas.topics import MODELS_TRAINED, PROMOTION_APPROVED

from spamops_registry_bridge.adapters import MlflowRegistry, TritonDeployer
from spamops_registry_bridge.handlers import (
    SERVICE,
    BridgeDeps,
    on_model_trained,
    on_promotion_approved,
)
from spamops_registry_bridge.settings import RegistryBridgeSettings

logger = logging.getLogger(__name__)


class UnsafeConfigurationError(RuntimeError):
    """A setting secure mode may not run with (the service refuses to start)."""


def check_approval_policy(settings: RegistryBridgeSettings) -> None:
    """Secure mode (Kafka SASL: ``--secure``, compose, Kubernetes) needs protected approvals.

    A plain local stack keeps the convenience of unsigned approvals, and says so.
    """
    problems = settings.approval_problems()
    if not problems:
        return
    if settings.platform.kafka_secure:
        raise UnsafeConfigurationError("secure mode refuses to start: " + "; ".join(problems))
    logger.warning(
        "promotion approvals are not protected (plain local stack only; secure mode, "
        "compose and Kubernetes refuse to start like this)",
        extra={"problems": problems},
    )


def build_app(settings: RegistryBridgeSettings | None = None) -> FastStream:
    """Bootstrap: build the broker and register the handlers with their dependencies."""
    settings = settings or RegistryBridgeSettings()
    broker = service_broker(SERVICE, settings)
    check_approval_policy(settings)
    platform = settings.platform

    async def publish(event: Event) -> None:
        await publish_event(broker, event, service=SERVICE)

    deps = BridgeDeps(
        registry=MlflowRegistry(platform.mlflow_uri, platform.model_name),
        triton=TritonDeployer(
            repository=model_repository(platform.state_dir),
            http_endpoint=platform.triton_http,
            max_batch_size=settings.max_batch_size,
            dynamic_batching=settings.dynamic_batching,
            max_queue_delay_microseconds=settings.max_queue_delay_microseconds,
            instance_count=settings.instance_count,
            repository_key=platform.triton_repository_key(),
        ),
        publish=publish,
        settings=settings,
    )
    subscribe_events(
        broker,
        topic=MODELS_TRAINED,
        event_cls=ModelTrained,
        handler=partial(on_model_trained, deps=deps),
        settings=settings,
        service=SERVICE,
    )
    subscribe_events(
        broker,
        topic=PROMOTION_APPROVED,
        event_cls=PromotionApproved,
        handler=partial(on_promotion_approved, deps=deps),
        settings=settings,
        service=SERVICE,
    )
    return service_app(SERVICE, settings, broker)
