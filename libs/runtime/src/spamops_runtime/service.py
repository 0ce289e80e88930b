"""Bootstrap shared by the four services: logging, metrics, broker, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from spamops_runtime.kafka import make_broker
from spamops_runtime.logs import configure_logging
from spamops_runtime.metrics import SERVICE_READY, start_metrics_server
from spamops_runtime.settings import ServiceSettings, unknown_variables
from spamops_runtime.tracing import configure_tracing

logger = logging.getLogger(__name__)


def service_broker(service: str, settings: ServiceSettings) -> KafkaBroker:
    """The service's Kafka broker, with JSON logging configured first."""
    configure_logging(service, level=settings.platform.log_level, fmt=settings.platform.log_format)
    platform = settings.platform
    configure_tracing(
        service, platform.state_dir, max_bytes=platform.log_max_bytes, backups=platform.log_backups
    )
    return make_broker(settings.platform, client_id=service)


Hook = Callable[[], Awaitable[None]]


def service_app(
    service: str,
    settings: ServiceSettings,
    broker: KafkaBroker,
    *,
    before_ready: Sequence[Hook] = (),
    before_stop: Sequence[Hook] = (),
) -> FastStream:
    """A FastStream app whose start serves /metrics and whose stop is logged.

    FastStream stops consumers first and lets in-flight handlers finish
    (graceful_timeout), so what was handled gets committed on SIGTERM.
    ``before_ready`` runs once the broker is started, before the readiness gauge
    turns 1 (e.g. the gateway's HTTP server); ``before_stop`` runs first on
    shutdown, while the broker still runs (e.g. draining HTTP requests that wait
    for a verdict).
    """
    app = FastStream(broker, specification=AsyncAPI(title=f"spamops {service}", version="0.1.0"))

    @app.on_startup
    async def _start_metrics() -> None:
        SERVICE_READY.labels(service).set(0)
        start_metrics_server(settings.metrics_listen_port, settings.platform.host)
        logger.info(
            "service starting",
            extra={
                "kafka": settings.platform.kafka_bootstrap,
                "metrics_port": settings.metrics_listen_port,
            },
        )
        for name in unknown_variables(settings, os.environ):
            # Ignored by every settings class: a typo would otherwise pass unnoticed.
            logger.warning(
                f"unknown setting {name} is ignored (see docs/settings.md)",
                extra={"variable": name},
            )

    @app.after_startup
    async def _started() -> None:
        for hook in before_ready:
            await hook()
        SERVICE_READY.labels(service).set(1)  # what `spamops up` waits for
        logger.info("service ready")

    @app.on_shutdown
    async def _stopping() -> None:
        SERVICE_READY.labels(service).set(0)
        for hook in before_stop:
            await hook()

    @app.after_shutdown
    async def _stopped() -> None:
        logger.info("service stopped")

    return app


def run_app(app: FastStream) -> None:
    """Run until SIGINT/SIGTERM (FastStream installs the signal handlers)."""
    asyncio.run(app.run())
