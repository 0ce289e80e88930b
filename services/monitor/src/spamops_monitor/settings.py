"""Settings of the monitor service (environment variables SPAMOPS_MONITOR_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    """monitor: emails.verdicts + emails.feedback -> monitoring.drift."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_MONITOR_", extra="ignore")

    service_name = "monitor"
    group_id: str = "spamops-monitor"
    batch_max_records: int = Field(
        default=500,
        ge=1,
        description="Verdicts fetched (and committed) together; each is still handled in order.",
    )
    # Per-batch costs (fetch, commit, state flush) dominated at a few hundred verdicts a
    # second, when a fetch returned 1-3 records: let the broker gather more first.
    fetch_min_bytes: int = Field(
        default=256 * 1024, ge=1, description="Kafka fetch.min.bytes of the verdict consumer."
    )
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=0,
        description="Kafka fetch.max.wait.ms of the verdict consumer: the most a batch waits "
        "to fill.",
    )

    # ---------------------------------------------------------------- drift windows
    window_size: int = Field(
        default=500, ge=10, description="Verdicts per drift window (a full window is checked)."
    )
    window_max_age_s: float = Field(
        default=600.0,
        ge=0,
        description="A window older than this is checked once it has min_window_size verdicts "
        "(0 = by count only).",
    )
    min_window_size: int = Field(
        default=200, ge=10, description="Fewest verdicts a time-closed window needs."
    )
    window_expire_s: float = Field(
        default=3600.0,
        ge=0,
        description="An open window this old that never became due (fewer than "
        "min_window_size verdicts: its version stopped serving) is given up, so it does not "
        "hold the commit floor back (0 = never).",
    )
    max_versions: int = Field(
        default=8,
        ge=1,
        description="Model versions with windows, profiles and live-quality pairs in memory "
        "at once (least recently used first out): memory levels off.",
    )
    report_interval_s: float = Field(
        default=600.0,
        ge=0,
        description="Every window is scored with PSI from histogram counts; the Evidently "
        "report (HTML + JSON) runs for a drifted window that raises an alert, and otherwise at "
        "most once per this interval per version (0 = for every window: costly).",
    )
    drift_method: Literal["psi"] = Field(
        default="psi",
        description="Drift score per column: PSI, computed from histogram counts exactly as "
        "Evidently's (its report uses the same method).",
    )
    drift_threshold: float = Field(
        default=0.1, gt=0, description="A column drifted when its score exceeds this (PSI 0.1)."
    )
    drift_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Share of drifted columns at or above which a window has drifted.",
    )
    severity_medium_share: float = Field(default=0.45, description="Drift share: medium from.")
    severity_high_share: float = Field(default=0.6, description="Drift share: high from.")
    cooldown_s: float = Field(
        default=3600.0,
        ge=0,
        description="After a DriftDetected, no other one of the same kind for the same version "
        "for this long (one shift, one event).",
    )
    reference_max_rows: int = Field(
        default=3000, ge=100, description="Reference rows kept per version (sampled, seed 0)."
    )
    profile_retry_s: float = Field(
        default=30.0, ge=0, description="Wait between attempts to build a missing profile."
    )
    reports_keep: int = Field(
        default=20,
        ge=1,
        description="Reports kept per version (HTML is ~4 MB); reports of a DriftDetected are "
        "always kept.",
    )
    ui_snapshots: bool = Field(
        default=True,
        description="Add each Evidently report's snapshot to the Evidently workspace "
        "(SPAMOPS_EVIDENTLY_WORKSPACE, a project per model) that the Evidently UI serves; "
        "DriftDetected.report_url links to it.",
    )
    ui_snapshots_keep: int = Field(
        default=100,
        ge=1,
        description="Snapshots kept per model in the Evidently workspace (~0.5 MB each); "
        "those of a DriftDetected are always kept.",
    )
    mlflow_reports: bool = Field(
        default=True,
        description="Log each report (HTML + JSON summary) and its scores to the MLflow run "
        "monitoring-v<version> of the experiment spamops-monitoring, in the background.",
    )
    mlflow_reports_queue: int = Field(
        default=20,
        ge=1,
        description="Reports waiting for their MLflow upload; when MLflow is slow or down the "
        "oldest is dropped (logged; the local files stay).",
    )
    pending_windows: int = Field(
        default=4, ge=1, description="Closed windows waiting for a check; more are skipped."
    )

    # ---------------------------------------------------------------- live quality
    join_capacity: int = Field(
        default=200_000, ge=1, description="Verdicts (and early labels) remembered for the join."
    )
    quality_window: int = Field(
        default=1000, ge=1, description="Live quality: the last N labelled verdicts per version."
    )
    quality_min_labels: int = Field(
        default=100, ge=1, description="Labels needed before a quality drop can raise an alert."
    )
    quality_min_f1: float = Field(
        default=0.9, ge=0, le=1, description="Live F1 below this raises DriftDetected(performance)."
    )
    quality_max_fpr: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Live false-positive rate above this raises DriftDetected(performance).",
    )
    status_interval_s: float = Field(
        default=1.0, ge=0, description="Least time between two writes of live_quality.json."
    )

    # ---------------------------------------------------------------- alerts
    webhook_url: str | None = Field(
        default=None, description="POST a JSON summary (Slack-compatible 'text') per DriftDetected."
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="Per-attempt timeout.")
    webhook_max_attempts: int = Field(default=6, ge=1, description="Attempts per alert.")
    webhook_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay (doubles).")
    webhook_queue: int = Field(default=1000, ge=1, description="Alerts waiting; more are dropped.")

    @property
    def monitor_dir(self) -> Path:
        """Everything the monitor writes: ``<state>/data/monitor``."""
        return self.platform.state_dir / "data" / "monitor"

    @property
    def state_path(self) -> Path:
        """The SQLite file of the state that outlives a crash (coverage, label join)."""
        return self.monitor_dir / "state.sqlite3"
