"""Settings of the inference service (environment variables SPAMOPS_INFERENCE_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """inference: emails.inbox -> emails.verdicts."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_INFERENCE_", extra="ignore")

    service_name = "inference"
    group_id: str = "spamops-inference"

    batch_max_records: int = Field(default=256, ge=1, description="Records per batch at most.")
    batch_timeout_ms: int = Field(default=20, ge=0, description="Wait for a batch to fill.")
    triton_batch: int = Field(default=64, ge=1, description="Rows per Triton request.")
    max_message_bytes: int = Field(
        default=10 * 2**20, ge=1, description="Larger inbox records are dead-lettered."
    )
    shadow: bool = Field(
        default=False, description="Also score production traffic with staging (shadow)."
    )
    use_reputation: bool = Field(default=True, description="Feast online reputation features.")
    triton_retry_max_s: float = Field(
        default=10.0, description="Longest pause between retries while Triton is unreachable."
    )
    triton_timeout_s: float = Field(default=10.0, description="Per-request Triton timeout.")
