"""Settings shared by every spamops process, read from ``SPAMOPS_*`` environment variables.

One class describes the platform (where state lives, the ports and endpoints of
Kafka, Redis, MLflow and Triton); each service nests it inside its own settings
class with a service prefix, e.g. ``SPAMOPS_TRAINER_NUM_SAMPLES``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PlatformSettings(BaseSettings):
    """Where the platform runs: state directory, host, ports and client endpoints."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_", extra="ignore", frozen=True)

    home: Path = Field(
        default=Path(".spamops"), description="State directory (data, logs, pids, tools)."
    )
    host: str = Field(default="127.0.0.1", description="Address every local endpoint binds to.")
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    mlflow_port: int = 5000
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="Overrides host:kafka_port (e.g. a remote cluster)."
    )
    redis_url: str | None = Field(default=None, description="Overrides redis://host:redis_port.")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Overrides http://host:mlflow_port."
    )
    triton_url: str | None = Field(default=None, description="Overrides host:triton_grpc_port.")
    triton_http_url: str | None = Field(
        default=None, description="Overrides host:triton_http_port."
    )
    model_name: str = Field(default="spam-detector", description="MLflow registered model.")
    log_level: str = Field(default="INFO")
    log_format: str = Field(default="json", description="json or text.")

    @cached_property
    def state_dir(self) -> Path:
        """Absolute path of the state directory."""
        return self.home.expanduser().resolve()

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka bootstrap servers for clients."""
        return self.kafka_bootstrap_servers or f"{self.host}:{self.kafka_port}"

    @property
    def redis(self) -> str:
        """Redis URL for clients."""
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking URI for clients."""
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def triton_grpc(self) -> str:
        """Triton gRPC endpoint (host:port) for tritonclient."""
        return self.triton_url or f"{self.host}:{self.triton_grpc_port}"

    @property
    def triton_http(self) -> str:
        """Triton HTTP endpoint (host:port) for tritonclient and the repository API."""
        return self.triton_http_url or f"{self.host}:{self.triton_http_port}"


class ServiceSettings(BaseSettings):
    """Base of a service's own settings; subclasses set ``env_prefix`` (SPAMOPS_<NAME>_)."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_SERVICE_", extra="ignore")

    platform: PlatformSettings = Field(default_factory=PlatformSettings)
    metrics_port: int = Field(default=0, description="Prometheus /metrics port; 0 = disabled.")
    group_id: str = Field(default="", description="Kafka consumer group of the service.")
    max_attempts: int = Field(
        default=3, description="Tries of a failing handler before its record is dead-lettered."
    )
    retry_backoff_seconds: float = Field(default=1.0, description="First retry delay (doubles).")
