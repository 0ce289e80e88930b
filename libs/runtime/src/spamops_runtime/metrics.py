"""Prometheus metrics shared by every service's Kafka wiring."""

from __future__ import annotations

import functools
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

EVENTS_CONSUMED = Counter(
    "spamops_events_consumed_total",
    "Records handled successfully, by topic and event type.",
    ["service", "topic", "event_type"],
)
EVENTS_PUBLISHED = Counter(
    "spamops_events_published_total",
    "Events published, by topic and event type.",
    ["service", "topic", "event_type"],
)
DEAD_LETTERS = Counter(
    "spamops_dead_letters_total",
    "Records sent to a dead-letter topic, by source topic and reason.",
    ["service", "topic", "reason"],
)
HANDLER_RETRIES = Counter(
    "spamops_handler_retries_total",
    "Handler attempts that failed and were retried.",
    ["service", "topic"],
)
HANDLER_SECONDS = Histogram(
    "spamops_handler_seconds",
    "Time spent in a handler per record.",
    ["service", "topic"],
)

SERVICE_READY = Gauge(
    "spamops_service_ready",
    "1 once the service is connected to Kafka and consuming, 0 while starting or stopping.",
    ["service"],
)


@functools.cache
def labelled(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, looked up once: prometheus_client's ``labels`` takes a
    lock and checks the values on every call, a measurable share of a per-record hot path
    (the monitor handles every verdict). Label values here come from a small closed set
    (service, topic, event type), so the cache stays small."""
    return metric.labels(*values)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on ``host:port`` in a background thread (port 0 = disabled)."""
    if port:
        start_http_server(port, addr=host)
