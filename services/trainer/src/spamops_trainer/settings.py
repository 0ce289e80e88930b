"""Settings of the trainer service (environment variables SPAMOPS_TRAINER_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """trainer: DatasetReady and DriftDetected -> ModelTrained / DatasetReady."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_TRAINER_", extra="ignore")

    service_name = "trainer"
    group_id: str = "spamops-trainer"

    experiment: str = Field(default="spam-detector", description="MLflow experiment name.")
    num_samples: int = Field(default=20, description="Ray Tune trials per training.")
    max_concurrent_trials: int = Field(default=2, description="Trials running at once.")
    time_budget_s: float = Field(default=600.0, description="Wall-clock cap of the search.")
    report_every: int = Field(default=25, description="Boosting rounds between trial reports.")
    max_estimators: int = Field(default=600, description="Upper bound of n_estimators.")
    grace_reports: int = Field(default=2, description="ASHA: reports before a trial may stop.")
    seed: int = Field(default=42, description="Seed of the search, the folds and the models.")
    reference_point: bool = Field(
        default=True,
        description=(
            "Evaluate the reference configuration (tuning.REFERENCE_POINT) first and keep "
            "it among the finalists that cross-validation chooses from."
        ),
    )
    threshold: float | None = Field(
        default=None,
        description="Fixed spam-probability threshold; unset = chosen on validation.",
    )
    max_val_fpr: float = Field(
        default=0.005,
        description=(
            "Threshold policy: the threshold with the best F1 among those whose false-positive "
            "rate is at most this ceiling, on rows the model did not train on (see "
            "threshold_folds; never on test)."
        ),
    )
    threshold_folds: int = Field(
        default=5,
        ge=0,
        description=(
            "Score the reference configuration and the best 3 trials out of fold over train "
            "+ validation with this many folds; the best F1 under the ceiling chooses both "
            "the model and its threshold (~6x more rows than validation alone). < 2 = the "
            "search's best trial and a threshold on the validation split."
        ),
    )
    ray_address: str | None = Field(
        default=None,
        validation_alias="RAY_ADDRESS",
        description="An existing Ray cluster; in-process Ray when unset.",
    )
    ray_num_cpus: int = Field(default=2, description="CPUs of the in-process Ray.")
    ray_keep_alive: bool = Field(
        default=False,
        description=(
            "Keep the in-process Ray running between trainings (the next search starts "
            "sooner); by default it is stopped after each search, as idle it used ~5% of a "
            "core that serving needs."
        ),
    )
    max_handler_minutes: int = Field(
        default=60, description="Longest a training may hold its record before Kafka gives up."
    )
    use_reputation: bool = Field(
        default=True, description="Sender reputation from Feast as model inputs."
    )
    drift_cooldown_s: float = Field(
        default=600.0, description="DriftDetected events within this window retrain once."
    )
