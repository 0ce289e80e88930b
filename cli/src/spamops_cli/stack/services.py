"""The spamops services as processes of the local stack.

Each runs ``python -m spamops_<name>`` from the workspace's environment, with
the stack's settings exported as SPAMOPS_* variables, and is ready when its
/metrics endpoint reports ``spamops_service_ready 1`` (FastStream started,
broker connected, subscribers consuming).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import ClassVar

import httpx
from spamops_runtime.acl import service_principal

from spamops_cli.stack import secrets
from spamops_cli.stack.component import Component

# Kafka credentials a service must not inherit from the shell that ran `spamops up`.
_KAFKA_CREDENTIALS = (
    "SPAMOPS_KAFKA_SASL_USERNAME",
    "SPAMOPS_KAFKA_SASL_PASSWORD",
    "SPAMOPS_KAFKA_SASL_PASSWORD_FILE",
)


class Service(Component):
    """A spamops service (FastStream app) started beside Kafka, Redis, MLflow and Triton."""

    module: ClassVar[str]
    start_timeout = 120.0  # imports (ray, mlflow, feast) take a while on a cold disk
    stop_timeout = 60.0  # lets an in-flight handler finish and commit

    @property
    def metrics_port(self) -> int:
        """Where the service serves /metrics and its readiness gauge."""
        return self.settings.service_ports[self.name]

    def ports(self) -> list[int]:
        """The metrics port (Kafka is reached as a client)."""
        return [self.metrics_port]

    def metrics_url(self) -> str:
        """Prometheus metrics URL (and the readiness gauge)."""
        return f"http://{self.settings.host}:{self.metrics_port}/metrics"

    def endpoint(self) -> str:
        """Where to look at it: its metrics."""
        return self.metrics_url()

    def cmdline_marker(self) -> str:
        """``-m spamops_<name>``."""
        return f"-m {self.module}"

    def prepare(self) -> None:
        """Create the data directory (the process's working directory)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """The service's entry point in the interpreter running the CLI (the workspace venv)."""
        return [sys.executable, "-m", self.module]

    @property
    def principal(self) -> str:
        """The service's own Kafka user (``spamops-<name>``) on a secure stack."""
        return service_principal(self.name)

    def env(self) -> dict[str, str]:
        """The caller's environment plus the stack's settings, which win.

        On a secure stack the service gets its own principal and the path of its
        password file (SPAMOPS_KAFKA_SASL_PASSWORD_FILE), never a password.
        """
        env = super().env()
        for name in _KAFKA_CREDENTIALS:
            env.pop(name, None)
        settings = self.settings
        if settings.kafka_secure:
            settings = secrets.as_local_user(settings, self.principal)
        env.update(settings.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def is_ready(self, timeout: float = 2.0) -> bool:
        """``spamops_service_ready{service="<name>"} 1.0`` on /metrics."""
        try:
            response = httpx.get(self.metrics_url(), timeout=timeout)
        except httpx.HTTPError:
            return False
        pattern = rf'^spamops_service_ready\{{service="{re.escape(self.name)}"\}} 1\.0$'
        return response.status_code == 200 and re.search(pattern, response.text, re.M) is not None


class Trainer(Service):
    """DatasetReady / DriftDetected -> ModelTrained."""

    name = "trainer"
    module = "spamops_trainer"
    stop_timeout = 120.0  # a training in progress is given time to finish its trial


class RegistryBridge(Service):
    """ModelTrained / PromotionApproved -> MLflow registry and Triton."""

    name = "registry-bridge"
    module = "spamops_registry_bridge"

    def env(self) -> dict[str, str]:
        """On a secure stack: the approval key's file and the approvers, unless the caller set them.

        Secure mode refuses to start without both; the local defaults are the stack's own
        key (``<state>/secrets/approval.key``, which `spamops approve` signs with) and the
        local user plus ``on-call`` (the drift scenario's approver).
        """
        env = super().env()
        if not self.settings.kafka_secure:
            return env
        if not env.get("SPAMOPS_APPROVAL_SECRET", "").strip():
            env.pop("SPAMOPS_APPROVAL_SECRET", None)
            env.setdefault(
                "SPAMOPS_APPROVAL_SECRET_FILE", str(secrets.approval_key_file(self.settings))
            )
        if not env.get("SPAMOPS_REGISTRY_BRIDGE_APPROVERS", "").strip():
            user = os.environ.get("USER") or "local-user"
            env["SPAMOPS_REGISTRY_BRIDGE_APPROVERS"] = json.dumps([user, "on-call"])
        return env


class Inference(Service):
    """emails.inbox -> emails.verdicts through Triton."""

    name = "inference"
    module = "spamops_inference"


class Monitor(Service):
    """emails.verdicts + emails.feedback -> monitoring.drift."""

    name = "monitor"
    module = "spamops_monitor"


class Gateway(Service):
    """HTTP API: emails to emails.inbox, answered from emails.verdicts."""

    name = "gateway"
    module = "spamops_gateway"

    def ports(self) -> list[int]:
        """The metrics port and the HTTP API's."""
        return [self.metrics_port, self.settings.gateway_port]

    def endpoint(self) -> str:
        """The HTTP API (OpenAPI at /docs)."""
        return self.settings.gateway_http

    def prepare(self) -> None:
        """The data directory, and the local API key on first start (both roles).

        Its hash goes to the gateway's key file; the key itself to
        ``<state>/secrets/gateway-api.key`` (0600), which ``spamops classify`` reads.
        """
        super().prepare()
        secrets.gateway_key_file(self.settings)


class Milter(Service):
    """Postfix's milter: each mail through the gateway's classify path, X-Spam-* headers."""

    name = "milter"
    module = "spamops_milter"

    def ports(self) -> list[int]:
        """The metrics port and the port Postfix connects to (smtpd_milters)."""
        return [self.metrics_port, self.settings.milter_port]

    def endpoint(self) -> str:
        """What to put in Postfix's main.cf."""
        return f"smtpd_milters = inet:{self.settings.host}:{self.settings.milter_port}"


# The order they start in: the milter after the gateway it asks.
SERVICES: tuple[type[Service], ...] = (
    Trainer,
    RegistryBridge,
    Inference,
    Monitor,
    Gateway,
    Milter,
)
