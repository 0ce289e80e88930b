"""Settings of the registry-bridge service (environment variables SPAMOPS_REGISTRY_BRIDGE_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


def _also_unprefixed(name: str) -> AliasChoices:
    """``SPAMOPS_<name>`` (`spamops approve` reads it too) or the bridge's own prefix."""
    return AliasChoices(f"SPAMOPS_{name}", f"SPAMOPS_REGISTRY_BRIDGE_{name}")


class RegistryBridgeSettings(ServiceSettings):
    """registry-bridge: ModelTrained, PromotionApproved -> ModelRegistered/Rejected/Promoted."""

    model_config = SettingsConfigDict(
        env_prefix="SPAMOPS_REGISTRY_BRIDGE_", extra="ignore", populate_by_name=True
    )

    service_name = "registry-bridge"
    group_id: str = "spamops-registry-bridge"

    experiment: str = Field(
        default="spam-detector",
        description="MLflow experiment whose runs may be registered (the trainer's); a "
        "ModelTrained naming a run or model elsewhere is refused.",
    )
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
    max_batch_size: int = Field(default=64, ge=1, description="Triton max_batch_size of a model.")
    dynamic_batching: bool = Field(default=True, description="Triton dynamic batching on.")
    max_queue_delay_microseconds: int = Field(
        default=200, ge=0, description="Triton: longest wait to fill a dynamic batch."
    )
    instance_count: int = Field(default=1, ge=1, description="CPU instances per version.")
    smoke_rows: int = Field(default=32, ge=1, description="Test rows of the smoke inference.")
    # Promotion
    approvers: list[str] = Field(
        default_factory=list,
        description="Who may approve a promotion (JSON list); empty = anyone named "
        "(refused at start in secure mode).",
    )
    approval_secret: SecretStr | None = Field(
        default=None,
        validation_alias=_also_unprefixed("APPROVAL_SECRET"),
        description="HMAC secret; when set, approvals must carry a valid signature and an "
        "expiry. Empty = unset (an empty key would let anyone sign).",
    )
    approval_secret_file: Path | None = Field(
        default=None,
        validation_alias=_also_unprefixed("APPROVAL_SECRET_FILE"),
        description="File holding the HMAC secret (wins over approval_secret): a child "
        "process gets the path, never the key.",
    )
    approval_secret_previous: SecretStr | None = Field(
        default=None,
        validation_alias=_also_unprefixed("APPROVAL_SECRET_PREVIOUS"),
        description="The secret being rotated out: also accepted until it is removed.",
    )
    approval_max_lifetime_s: float = Field(
        default=86_400.0,
        gt=0,
        description="Longest an approval may be valid (expires_at - issued-at).",
    )
    approval_clock_skew_s: float = Field(
        default=300.0, ge=0, description="Tolerated clock difference with the approver."
    )

    @field_validator("approval_secret", "approval_secret_previous", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker compose's ${VAR:-} passes "" for an unset variable: never a key.
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value

    @model_validator(mode="after")
    def _secret_from_file(self) -> RegistryBridgeSettings:
        if self.approval_secret_file is not None:
            try:
                text = self.approval_secret_file.expanduser().read_text("utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"cannot read the approval secret file {self.approval_secret_file}: "
                    f"{exc.strerror}"
                ) from None
            object.__setattr__(self, "approval_secret", SecretStr(text) if text else None)
        return self

    def approval_secrets(self) -> list[str]:
        """The secrets a signature may be made with (current first, then the previous)."""
        return [
            secret.get_secret_value()
            for secret in (self.approval_secret, self.approval_secret_previous)
            if secret is not None
        ]

    def approval_problems(self) -> list[str]:
        """Why promotions would be unprotected; in secure mode the bridge refuses to start."""
        problems = []
        if self.approval_secret is None:
            problems.append("SPAMOPS_APPROVAL_SECRET is unset or empty (approvals unsigned)")
        if not self.approvers:
            problems.append("SPAMOPS_REGISTRY_BRIDGE_APPROVERS is empty (anyone may approve)")
        return problems

    def triton_name(self, alias: str) -> str:
        """Triton model serving an alias: ``<model>-staging`` / ``<model>-production``."""
        return f"{self.platform.model_name}-{alias}"
