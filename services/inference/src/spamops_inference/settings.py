"""Settings of the inference service (environment variables SPAMOPS_INFERENCE_*)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """inference: emails.inbox -> emails.verdicts."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_INFERENCE_", extra="ignore")

    service_name = "inference"
    group_id: str = "spamops-inference"
