"""Settings of the registry-bridge service (environment variables SPAMOPS_REGISTRY_BRIDGE_*)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


class RegistryBridgeSettings(ServiceSettings):
    """registry-bridge: ModelTrained, PromotionApproved -> ModelRegistered/Rejected/Promoted."""

    model_config = SettingsConfigDict(
        env_prefix="SPAMOPS_REGISTRY_BRIDGE_", extra="ignore", populate_by_name=True
    )

    service_name = "registry-bridge"
    group_id: str = "spamops-registry-bridge"

    # Quality gate
    min_f1: float = Field(default=0.95, description="Lowest test F1 a model may have.")
    max_false_positive_rate: float = Field(
        default=0.01, description="Highest test false-positive rate (ham flagged as spam)."
    )
    champion_margin: float = Field(
        default=0.01,
        description="How much worse than production (F1 down, FPR up) a challenger may be, "
        "both scored on the challenger's test split.",
    )
    parity_tolerance: float = Field(
        default=1e-4, description="Largest |p_onnx - p_xgboost| allowed on the test sample."
    )
    # Triton
    keep_versions: int = Field(default=3, ge=1, description="Versions kept loaded per model.")
    max_batch_size: int = Field(default=64, ge=1)
    dynamic_batching: bool = Field(default=True)
    max_queue_delay_microseconds: int = Field(default=200, ge=0)
    instance_count: int = Field(default=1, ge=1, description="CPU instances per version.")
    smoke_rows: int = Field(default=32, ge=1, description="Test rows of the smoke inference.")
    # Promotion
    approvers: list[str] = Field(
        default_factory=list,
        description="Who may approve a promotion (JSON list); empty = anyone named.",
    )
    approval_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "SPAMOPS_APPROVAL_SECRET", "SPAMOPS_REGISTRY_BRIDGE_APPROVAL_SECRET"
        ),
        description="HMAC secret; when set, approvals must carry a valid signature.",
    )

    def triton_name(self, alias: str) -> str:
        """Triton model serving an alias: ``<model>-staging`` / ``<model>-production``."""
        return f"{self.platform.model_name}-{alias}"
