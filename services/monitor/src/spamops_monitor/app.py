"""Wiring of the monitor service: settings -> broker -> subscribers -> FastStream app."""

from __future__ import annotations

from faststream import FastStream
from spamops_runtime.service import service_app, service_broker

from spamops_monitor.settings import MonitorSettings

SERVICE = "monitor"


def build_app(settings: MonitorSettings | None = None) -> FastStream:
    """Bootstrap: build the broker and register the handlers with their dependencies."""
    settings = settings or MonitorSettings()
    broker = service_broker(SERVICE, settings)
    return service_app(SERVICE, settings, broker)
