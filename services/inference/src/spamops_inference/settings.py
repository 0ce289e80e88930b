"""Settings of the inference service (environment variables SPAMOPS_INFERENCE_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from spamops_features.mail import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_LINES,
    DEFAULT_MAX_PARTS,
    DEFAULT_MAX_TEXT_CHARS,
)
from spamops_runtime.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """inference: emails.inbox -> emails.verdicts."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_INFERENCE_", extra="ignore")

    service_name = "inference"
    group_id: str = "spamops-inference"

    batch_max_records: int = Field(default=256, ge=1, description="Records per batch at most.")
    batch_timeout_ms: int = Field(
        default=20, ge=0, description="Longest wait for a record when none is buffered."
    )
    # A fetch returns as soon as any record is there, so at a few hundred mails a second
    # batches held 1-3 mails, each paying a Feast look-up, a Triton request and a commit.
    # The broker holds a fetch until this much data is there or the wait is over.
    fetch_min_bytes: int = Field(
        default=64 * 1024, ge=1, description="Kafka fetch.min.bytes of the inbox consumer."
    )
    fetch_max_wait_ms: int = Field(
        default=25,
        ge=0,
        description="Kafka fetch.max.wait.ms of the inbox consumer: the most a batch may "
        "wait to fill (adds at most this to a verdict's latency).",
    )
    triton_batch: int = Field(default=64, ge=1, description="Rows per Triton request.")
    recent_senders: int = Field(
        default=200_000,
        ge=0,
        description="Message keys whose sender domain is remembered for later labels (about "
        "250 bytes each: the service's memory grows by ~50 MB until this many are seen).",
    )
    # Hostile input: every limit of the mail parser (spamops_features.mail), so a
    # message bomb is refused (dead letter with the reason) or parsed within bounded
    # time and memory. README.md "Message bombs" lists them with what each guards.
    max_message_bytes: int = Field(
        default=10 * 2**20, ge=1, description="Larger inbox records are dead-lettered (too-large)."
    )
    max_header_bytes: int = Field(
        default=DEFAULT_MAX_HEADER_BYTES,
        ge=1,
        description="A larger top-level header block is dead-lettered (headers-too-large).",
    )
    max_headers: int = Field(
        default=DEFAULT_MAX_HEADERS,
        ge=1,
        description="More top-level header fields are dead-lettered (too-many-headers).",
    )
    max_lines: int = Field(
        default=DEFAULT_MAX_LINES, ge=1, description="Lines parsed at most; the rest is ignored."
    )
    max_mime_parts: int = Field(
        default=DEFAULT_MAX_PARTS, ge=1, description="MIME parts parsed at most."
    )
    max_mime_depth: int = Field(
        default=DEFAULT_MAX_DEPTH, ge=0, description="MIME nesting levels parsed at most."
    )
    max_text_chars: int = Field(
        default=DEFAULT_MAX_TEXT_CHARS,
        ge=1,
        description="Decoded characters kept of the text parts (and of the HTML parts).",
    )
    dead_letter_max_bytes: int = Field(
        default=11 * 2**20,
        ge=2**20,
        description=(
            "Largest dead letter sent (value and headers): at most the dead-letter "
            "topic's max.message.bytes. A longer value is cut, with headers saying so."
        ),
    )
    shadow: bool = Field(
        default=False, description="Also score production traffic with staging (shadow)."
    )
    use_reputation: bool = Field(default=True, description="Feast online reputation features.")
    triton_retry_max_s: float = Field(
        default=10.0, description="Longest pause between retries while Triton is unreachable."
    )
    triton_timeout_s: float = Field(default=10.0, description="Per-request Triton timeout.")
