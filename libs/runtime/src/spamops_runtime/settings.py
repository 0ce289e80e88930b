"""Settings shared by every spamops process, read from ``SPAMOPS_*`` environment variables.

One class describes the platform (where state lives, the ports and endpoints of
Kafka, Redis, MLflow and Triton); each service nests it inside its own settings
class with a service prefix, e.g. ``SPAMOPS_TRAINER_NUM_SAMPLES``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where each service serves /metrics (and its readiness gauge) by default.
DEFAULT_SERVICE_PORTS: dict[str, int] = {
    "trainer": 9101,
    "registry-bridge": 9102,
    "inference": 9103,
    "monitor": 9104,
    "gateway": 9105,
    "milter": 9106,
}


KafkaSecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT"]
SASL_MECHANISM: Literal["SCRAM-SHA-512"] = "SCRAM-SHA-512"


class KafkaCredentialsError(ValueError):
    """SASL is on but the username or password is missing or unreadable."""


class PlatformSettings(BaseSettings):
    """Where the platform runs: state directory, host, ports and client endpoints."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_", extra="ignore", frozen=True)

    home: Path = Field(
        default=Path(".spamops"), description="State directory (data, logs, pids, tools)."
    )
    host: str = Field(default="127.0.0.1", description="Address every local endpoint binds to.")
    kafka_port: int = Field(default=9092, description="Kafka client listener.")
    kafka_controller_port: int = Field(default=9093, description="Kafka KRaft controller listener.")
    redis_port: int = Field(default=6379, description="Redis (Feast online store).")
    mlflow_port: int = Field(default=5000, description="MLflow tracking server and UI.")
    triton_http_port: int = Field(
        default=8000, description="Triton HTTP (inference, repository API)."
    )
    triton_grpc_port: int = Field(
        default=8001, description="Triton gRPC (the inference service's client)."
    )
    triton_metrics_port: int = Field(default=8002, description="Triton Prometheus metrics.")
    milter_port: int = Field(
        default=8890,
        description="Where the milter listens for the MTA (Postfix smtpd_milters = "
        "inet:host:milter_port).",
    )
    gateway_port: int = Field(default=8080, description="The gateway's HTTP API.")
    evidently_ui_port: int = Field(
        default=8050, description="Evidently UI (`evidently ui`): the monitor's drift reports."
    )
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
    gateway_url: str | None = Field(
        default=None, description="Overrides http://host:gateway_port (the clients' gateway)."
    )
    evidently_ui_url: str | None = Field(
        default=None,
        description="Overrides http://host:evidently_ui_port: the base of the report links the "
        "monitor puts in DriftDetected.",
    )
    evidently_workspace: Path | None = Field(
        default=None,
        description="Evidently workspace the monitor adds each report's snapshot to and the "
        "Evidently UI serves (default <home>/data/evidently).",
    )
    triton_repository_key_file: Path | None = Field(
        default=None,
        description="File holding the key of Triton's model-repository API (load/unload); "
        "default <home>/secrets/triton-repository.key when it exists.",
    )
    service_ports: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_SERVICE_PORTS),
        description="Prometheus /metrics port of each service (JSON object in the environment).",
    )
    corpus_cache: Path | None = Field(
        default=None,
        description="Cache of the downloaded corpus (default <home>/cache/corpus); "
        "several state directories may share one.",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default="PLAINTEXT",
        description="PLAINTEXT, or SASL_PLAINTEXT for SCRAM authentication and ACLs.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512"] = Field(
        default=SASL_MECHANISM, description="SASL mechanism (the only one the stack sets up)."
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL user (principal), e.g. spamops-trainer."
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; prefer kafka_sasl_password_file."
    )
    kafka_sasl_password_file: Path | None = Field(
        default=None, description="File holding the SASL password (wins over the variable)."
    )
    model_name: str = Field(default="spam-detector", description="MLflow registered model.")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field(default="json", description="json or text.")
    log_max_bytes: int = Field(
        default=50 * 2**20,
        ge=0,
        description="A service log or trace file larger than this is rotated (0 = never): "
        "trace files by their writer, the stack's logs by `spamops up` and `up --watch`.",
    )
    log_backups: int = Field(
        default=3, ge=0, description="Rotated files kept per log or trace file (name.1 ...)."
    )

    @cached_property
    def state_dir(self) -> Path:
        """Absolute path of the state directory."""
        return self.home.expanduser().resolve()

    @property
    def corpus_cache_dir(self) -> Path:
        """Where the corpus tarball and its extraction are cached."""
        if self.corpus_cache is not None:
            return self.corpus_cache.expanduser().resolve()
        return self.state_dir / "cache" / "corpus"

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka bootstrap servers for clients."""
        return self.kafka_bootstrap_servers or f"{self.host}:{self.kafka_port}"

    @property
    def kafka_secure(self) -> bool:
        """Whether clients authenticate to Kafka (SASL/SCRAM)."""
        return self.kafka_security_protocol != "PLAINTEXT"

    def kafka_password(self) -> str | None:
        """The SASL password: the file's content (stripped) if a file is set, else the variable."""
        if self.kafka_sasl_password_file is not None:
            try:
                return self.kafka_sasl_password_file.expanduser().read_text("utf-8").strip()
            except OSError as exc:
                raise KafkaCredentialsError(
                    f"cannot read the Kafka password file {self.kafka_sasl_password_file}: "
                    f"{exc.strerror}"
                ) from None
        if self.kafka_sasl_password is not None:
            return self.kafka_sasl_password.get_secret_value()
        return None

    def kafka_client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments that authenticate a client (empty for PLAINTEXT).

        The one place every aiokafka client of the platform gets them from
        (``make_broker`` turns them into FastStream's ``security=``).
        """
        if not self.kafka_secure:
            return {}
        password = self.kafka_password()
        if not self.kafka_sasl_username or not password:
            raise KafkaCredentialsError(
                f"SPAMOPS_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "SPAMOPS_KAFKA_SASL_USERNAME and SPAMOPS_KAFKA_SASL_PASSWORD_FILE "
                "(or SPAMOPS_KAFKA_SASL_PASSWORD)"
            )
        return {
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_plain_username": self.kafka_sasl_username,
            "sasl_plain_password": password,
        }

    def as_kafka_user(self, username: str, password_file: Path) -> PlatformSettings:
        """These settings, authenticating to Kafka as ``username`` with the password in a file."""
        return self.model_copy(
            update={
                "kafka_security_protocol": "SASL_PLAINTEXT"
                if not self.kafka_secure
                else self.kafka_security_protocol,
                "kafka_sasl_username": username,
                "kafka_sasl_password": None,
                "kafka_sasl_password_file": password_file,
            }
        )

    @property
    def redis(self) -> str:
        """Redis URL for clients."""
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking URI for clients."""
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def evidently_ui(self) -> str:
        """Evidently UI base URL (no trailing slash)."""
        return (self.evidently_ui_url or f"http://{self.host}:{self.evidently_ui_port}").rstrip("/")

    @property
    def evidently_workspace_dir(self) -> Path:
        """Absolute path of the Evidently workspace."""
        if self.evidently_workspace is not None:
            return self.evidently_workspace.expanduser().resolve()
        return self.state_dir / "data" / "evidently"

    @property
    def triton_grpc(self) -> str:
        """Triton gRPC endpoint (host:port) for tritonclient."""
        return self.triton_url or f"{self.host}:{self.triton_grpc_port}"

    @property
    def triton_http(self) -> str:
        """Triton HTTP endpoint (host:port) for tritonclient and the repository API."""
        return self.triton_http_url or f"{self.host}:{self.triton_http_port}"

    @property
    def gateway_http(self) -> str:
        """Base URL of the gateway's HTTP API for clients."""
        return self.gateway_url or f"http://{self.host}:{self.gateway_port}"

    @property
    def gateway_keys_path(self) -> Path:
        """The gateway's API keys, hashed (``spamops_runtime.api_keys``)."""
        return self.state_dir / "secrets" / "gateway-keys.json"

    @property
    def gateway_api_key_path(self) -> Path:
        """The local stack's own gateway API key, in clear (mode 0600), for the CLI."""
        return self.state_dir / "secrets" / "gateway-api.key"

    @property
    def triton_repository_key_path(self) -> Path:
        """Where the key of Triton's model-repository API is kept."""
        if self.triton_repository_key_file is not None:
            return self.triton_repository_key_file.expanduser().resolve()
        return self.state_dir / "secrets" / "triton-repository.key"

    def triton_repository_key(self) -> str | None:
        """The key of Triton's model-repository API, or None (an unrestricted Triton)."""
        try:
            return self.triton_repository_key_path.read_text("utf-8").strip() or None
        except OSError:
            return None

    def to_env(self) -> dict[str, str]:
        """SPAMOPS_* variables that make ``PlatformSettings()`` in a child process equal this.

        The endpoints are written resolved, so overrides survive the hop. A Kafka
        password travels as its file's path; in clear only when there is no file.
        """
        env = {
            "SPAMOPS_HOME": str(self.state_dir),
            "SPAMOPS_HOST": self.host,
            "SPAMOPS_KAFKA_PORT": str(self.kafka_port),
            "SPAMOPS_KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
            "SPAMOPS_REDIS_PORT": str(self.redis_port),
            "SPAMOPS_MLFLOW_PORT": str(self.mlflow_port),
            "SPAMOPS_TRITON_HTTP_PORT": str(self.triton_http_port),
            "SPAMOPS_TRITON_GRPC_PORT": str(self.triton_grpc_port),
            "SPAMOPS_TRITON_METRICS_PORT": str(self.triton_metrics_port),
            "SPAMOPS_MILTER_PORT": str(self.milter_port),
            "SPAMOPS_GATEWAY_PORT": str(self.gateway_port),
            "SPAMOPS_EVIDENTLY_UI_PORT": str(self.evidently_ui_port),
            "SPAMOPS_EVIDENTLY_UI_URL": self.evidently_ui,
            "SPAMOPS_EVIDENTLY_WORKSPACE": str(self.evidently_workspace_dir),
            "SPAMOPS_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "SPAMOPS_REDIS_URL": self.redis,
            "SPAMOPS_MLFLOW_TRACKING_URI": self.mlflow_uri,
            "SPAMOPS_TRITON_URL": self.triton_grpc,
            "SPAMOPS_TRITON_HTTP_URL": self.triton_http,
            "SPAMOPS_GATEWAY_URL": self.gateway_http,
            "SPAMOPS_TRITON_REPOSITORY_KEY_FILE": str(self.triton_repository_key_path),
            "SPAMOPS_SERVICE_PORTS": json.dumps(self.service_ports),
            "SPAMOPS_MODEL_NAME": self.model_name,
            "SPAMOPS_LOG_LEVEL": self.log_level,
            "SPAMOPS_LOG_FORMAT": self.log_format,
            "SPAMOPS_LOG_MAX_BYTES": str(self.log_max_bytes),
            "SPAMOPS_LOG_BACKUPS": str(self.log_backups),
            "SPAMOPS_CORPUS_CACHE": str(self.corpus_cache_dir),
            "SPAMOPS_KAFKA_SECURITY_PROTOCOL": self.kafka_security_protocol,
            "SPAMOPS_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
        }
        if self.kafka_sasl_username is not None:
            env["SPAMOPS_KAFKA_SASL_USERNAME"] = self.kafka_sasl_username
        if self.kafka_sasl_password_file is not None:
            env["SPAMOPS_KAFKA_SASL_PASSWORD_FILE"] = str(
                self.kafka_sasl_password_file.expanduser().resolve()
            )
        elif self.kafka_sasl_password is not None:
            env["SPAMOPS_KAFKA_SASL_PASSWORD"] = self.kafka_sasl_password.get_secret_value()
        return env


class ServiceSettings(BaseSettings):
    """Base of a service's own settings; subclasses set ``env_prefix`` (SPAMOPS_<NAME>_)."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_SERVICE_", extra="ignore")

    # The service's name in PlatformSettings.service_ports (set by each subclass).
    service_name: ClassVar[str] = ""

    platform: PlatformSettings = Field(default_factory=PlatformSettings)
    metrics_port: int | None = Field(
        default=None,
        description="Prometheus /metrics port; 0 = disabled; unset = the platform's "
        "service_ports entry of this service.",
    )
    group_id: str = Field(default="", description="Kafka consumer group of the service.")
    max_attempts: int = Field(
        default=3, description="Tries of a failing handler before its record is dead-lettered."
    )
    retry_backoff_seconds: float = Field(default=1.0, description="First retry delay (doubles).")

    @property
    def metrics_listen_port(self) -> int:
        """The /metrics port in effect (0 = disabled)."""
        if self.metrics_port is not None:
            return self.metrics_port
        return self.platform.service_ports.get(self.service_name, 0)


# SPAMOPS_* variables read outside the settings classes: tools, containers, tests.
OTHER_VARIABLES: frozenset[str] = frozenset({
    "SPAMOPS_AUTO_PROMOTE",  # spamops ingest --promote-first
    "SPAMOPS_API_KEY",  # spamops classify: the gateway API key (else the local stack's)
    "SPAMOPS_BATCH_NUM_CPUS",  # spamops score --num-cpus (in-process Ray)
    "SPAMOPS_CODE_VERSION",  # the git commit recorded on MLflow runs
    "SPAMOPS_APPROVERS",  # docker-compose: SPAMOPS_REGISTRY_BRIDGE_APPROVERS
    # The registry-bridge's approval keys, also read by `spamops approve`.
    "SPAMOPS_APPROVAL_SECRET",
    "SPAMOPS_APPROVAL_SECRET_FILE",
    "SPAMOPS_APPROVAL_SECRET_PREVIOUS",
    "SPAMOPS_SERVICE_NAME",  # container health check
    "SPAMOPS_HEALTHCHECK_PORT",
    "SPAMOPS_TOOLS_DIR",  # local stack: where Kafka/Triton are installed
    "SPAMOPS_STACK_DIR",
    "SPAMOPS_DEPLOY_TOOLS",  # make deploy-check
    "SPAMOPS_IT_STACK",  # tests
    "SPAMOPS_IT_GATEWAY",  # the milter's Postfix test: the gateway double or the stack's
    "SPAMOPS_FAULTS_REPORT",
})  # fmt: skip


def field_env_names(cls: type[BaseSettings]) -> dict[str, list[str]]:
    """Each field of a settings class with the environment variables it reads.

    Its aliases when it has some, else the class's prefix + the field name.
    """
    from pydantic import AliasChoices

    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    names: dict[str, list[str]] = {}
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names[name] = [str(choice).upper() for choice in alias.choices]
        elif isinstance(alias, str):
            names[name] = [alias.upper()]
        else:
            names[name] = [f"{prefix}{name.upper()}"]
    return names


def _env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads."""
    return {env for names in field_env_names(cls).values() for env in names}


def _service_prefix(service: str) -> str:
    return "SPAMOPS_" + service.upper().replace("-", "_") + "_"


def unknown_variables(settings: ServiceSettings, environ: Mapping[str, str]) -> list[str]:
    """``SPAMOPS_*`` variables in ``environ`` that nothing reads: most likely typos.

    A variable of another service (its prefix) is that service's business and skipped,
    so one environment can serve every process (the local stack, compose).
    """
    known = _env_names(PlatformSettings) | _env_names(type(settings)) | OTHER_VARIABLES
    own = _service_prefix(settings.service_name)
    others = tuple(
        _service_prefix(name) for name in DEFAULT_SERVICE_PORTS if _service_prefix(name) != own
    )
    return sorted(
        name
        for name in environ
        if name.startswith("SPAMOPS_") and name not in known and not name.startswith(others)
    )
