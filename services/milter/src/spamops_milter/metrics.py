"""Prometheus metrics of the milter."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MESSAGES = Counter(
    "spamops_milter_messages_total",
    "Mails judged, by verdict (spam, ham, unchecked) and action (accept, reject, quarantine).",
    ["verdict", "action"],
)
UNCHECKED_TOTAL = Counter(
    "spamops_milter_unchecked_total",
    "Mails accepted without a verdict, by reason (unreachable, timeout, no-verdict, "
    "gateway-error, refused, bad-response, too-large, error).",
    ["reason"],
)
GATEWAY_SECONDS = Histogram(
    "spamops_milter_gateway_seconds",
    "Time of one classify request to the gateway (failures included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
MILTER_ERRORS = Counter(
    "spamops_milter_callback_errors_total",
    "Milter callbacks that raised (the mail was still accepted when possible).",
    ["callback"],
)
