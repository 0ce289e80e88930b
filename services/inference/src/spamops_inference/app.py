"""Wiring of the inference service: settings -> broker -> subscribers -> FastStream app."""

from __future__ import annotations

from faststream import FastStream
from spamops_runtime.service import service_app, service_broker

from spamops_inference.settings import InferenceSettings

SERVICE = "inference"


def build_app(settings: InferenceSettings | None = None) -> FastStream:
    """Bootstrap: build the broker and register the handlers with their dependencies."""
    settings = settings or InferenceSettings()
    broker = service_broker(SERVICE, settings)
    return service_app(SERVICE, settings, broker)
