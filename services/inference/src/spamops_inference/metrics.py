"""Prometheus metrics of the inference stream."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MESSAGES_IN = Counter("spamops_inference_messages_total", "Inbox records read.")
VERDICTS = Counter(
    "spamops_inference_verdicts_total",
    "Verdicts published, by label, model version and environment.",
    ["verdict", "model_version", "environment"],
)
BATCH_SIZE = Histogram(
    "spamops_inference_batch_size",
    "Inbox records per batch.",
    buckets=(1, 4, 16, 32, 64, 128, 256, 512, 1024),
)
TRITON_SECONDS = Histogram(
    "spamops_inference_triton_seconds", "Triton scoring time of one batch group."
)
END_TO_END_SECONDS = Histogram(
    "spamops_inference_end_to_end_seconds",
    "Inbox record timestamp to verdict.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
TRITON_RETRIES = Counter(
    "spamops_inference_triton_retries_total", "Triton calls retried (unreachable)."
)
REPUTATION_DEGRADED = Counter(
    "spamops_inference_reputation_degraded_total",
    "Batches scored with default reputation because Redis failed.",
)
LABELS_REFUSED = Counter(
    "spamops_inference_labels_refused_total",
    "Labels that moved no reputation, by reason (ambiguous-key: a reused Message-ID).",
    ["reason"],
)
