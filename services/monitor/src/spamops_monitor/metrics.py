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
    "PSI check of one window (histogram counts; the Evidently report is timed apart).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
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
REPORT_SECONDS = Histogram(
    "spamops_monitor_report_seconds",
    "Evidently report of one window (HTML + JSON files), run on alerts and periodically.",
    buckets=(0.5, 1, 2, 4, 8, 16, 32, 64),
)
REPLAYED = Counter(
    "spamops_monitor_replayed_total",
    "Verdicts read again after a restart and skipped, already counted (by: join, window).",
    ["by"],
)
UI_SNAPSHOTS = Counter(
    "spamops_monitor_ui_snapshots_total",
    "Report snapshots added to the Evidently UI workspace, by result (added, failed).",
    ["result"],
)
REPORT_UPLOADS = Counter(
    "spamops_monitor_report_uploads_total",
    "Reports logged to the MLflow monitoring runs, by result (logged, failed, dropped).",
    ["result"],
)
