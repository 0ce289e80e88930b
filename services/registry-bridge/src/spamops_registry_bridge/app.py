"""Wiring of the registry-bridge service: settings -> broker -> subscribers -> FastStream app."""

from __future__ import annotations

from faststream import FastStream
from spamops_runtime.service import service_app, service_broker

from spamops_registry_bridge.settings import RegistryBridgeSettings

SERVICE = "registry-bridge"


def build_app(settings: RegistryBridgeSettings | None = None) -> FastStream:
    """Bootstrap: build the broker and register the handlers with their dependencies."""
    settings = settings or RegistryBridgeSettings()
    broker = service_broker(SERVICE, settings)
    return service_app(SERVICE, settings, broker)
