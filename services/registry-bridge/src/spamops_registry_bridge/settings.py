"""Settings of the registry-bridge service (environment variables SPAMOPS_REGISTRY_BRIDGE_*)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


class RegistryBridgeSettings(ServiceSettings):
    """registry-bridge: ModelTrained, PromotionApproved -> ModelRegistered/Rejected/Promoted."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_REGISTRY_BRIDGE_", extra="ignore")

    service_name = "registry-bridge"
    group_id: str = "spamops-registry-bridge"
