"""Prometheus metrics of the gateway (beside the runtime's, e.g. spamops_service_ready)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "spamops_gateway_requests_total",
    "HTTP requests answered, by route, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "spamops_gateway_request_seconds",
    "HTTP request latency, by route, method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1, 2, 5, 10),
)
PENDING = Gauge("spamops_gateway_pending", "Requests waiting for their verdict.")
VERDICTS_SEEN = Counter(
    "spamops_gateway_verdicts_seen_total",
    "Verdicts read from emails.verdicts, by whether they answer a gateway request.",
    ["ours"],
)
OUTCOMES = Counter(
    "spamops_gateway_outcomes_total",
    "How requests waiting for a verdict ended (verdict, refused, timeout).",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "spamops_gateway_rate_limited_total", "Requests refused with 429, by API key name.", ["key"]
)
