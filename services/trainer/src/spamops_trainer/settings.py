"""Settings of the trainer service (environment variables SPAMOPS_TRAINER_*)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """trainer: DatasetReady and DriftDetected -> ModelTrained / DatasetReady."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_TRAINER_", extra="ignore")

    metrics_port: int = 9101
    group_id: str = "spamops-trainer"
