"""Prometheus metrics of the monitor."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

VERDICTS = Counter(
    "spamops_monitor_verdicts_total", "Verdicts read, by model version.", ["model_version"]
)
IGNORED = Counter("spamops_monitor_ignored_total", "Verdicts not monitored, by reason.", ["reason"])
WINDOWS = Counter(
    "spamops_monitor_windows_total",
    "Drift windows, by model version and result (drift, no_drift, skipped, failed).",
    ["model_version", "result"],
)
DRIFT_SHARE = Gauge(
    "spamops_monitor_drift_share", "Drift share of the last checked window.", ["model_version"]
)
CHECK_SECONDS = Histogram(
    "spamops_monitor_check_seconds",
    "Evidently check of one window (report files included).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
DRIFT_EVENTS = Counter(
    "spamops_monitor_drift_events_total", "DriftDetected published, by kind.", ["kind"]
)
SUPPRESSED = Counter(
    "spamops_monitor_suppressed_total", "Drift found but within the cooldown, by kind.", ["kind"]
)
PROFILE_UNAVAILABLE = Counter(
    "spamops_monitor_profile_unavailable_total",
    "Failed attempts to build a reference profile, by reason.",
    ["reason"],
)
QUALITY = Gauge(
    "spamops_monitor_live_quality",
    "Live quality of a model version over its last labelled verdicts "
    "(metric: precision, recall, f1, false_positive_rate; NaN when undefined).",
    ["model_version", "metric"],
)
LABELS = Gauge(
    "spamops_monitor_live_labels",
    "Labelled verdicts in the live-quality window.",
    ["model_version"],
)
LABELS_UNMATCHED = Counter(
    "spamops_monitor_labels_unmatched_total", "Labels that arrived before their verdict."
)
WEBHOOK = Counter(
    "spamops_monitor_webhook_total",
    "Webhook deliveries by result (delivered, retried, failed, dropped).",
    ["result"],
)
