"""Settings of the monitor service (environment variables SPAMOPS_MONITOR_*)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    """monitor: emails.verdicts + emails.feedback -> monitoring.drift."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_MONITOR_", extra="ignore")

    service_name = "monitor"
    group_id: str = "spamops-monitor"
