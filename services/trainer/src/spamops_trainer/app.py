"""Wiring of the trainer service: settings -> broker -> subscribers -> FastStream app."""

from __future__ import annotations

from faststream import FastStream
from spamops_runtime.service import service_app, service_broker

from spamops_trainer.settings import TrainerSettings

SERVICE = "trainer"


def build_app(settings: TrainerSettings | None = None) -> FastStream:
    """Bootstrap: build the broker and register the handlers with their dependencies."""
    settings = settings or TrainerSettings()
    broker = service_broker(SERVICE, settings)
    return service_app(SERVICE, settings, broker)
