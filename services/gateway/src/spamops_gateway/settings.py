"""Settings of the gateway (environment variables SPAMOPS_GATEWAY_*).

Where it listens is the platform's (``SPAMOPS_HOST``, ``SPAMOPS_GATEWAY_PORT``):
clients read the same settings to find it. No field here may be called ``port``
or ``url``, which would read those platform variables.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings

# The inference service's max_message_bytes default: a larger email would only be
# dead-lettered as too-large, so the gateway refuses it at the door (413). A unit
# test keeps the two equal.
MAX_EMAIL_BYTES = 10 * 2**20


def default_instance_id() -> str:
    """``<hostname>-<gateway port>``: stable across restarts of the same instance."""
    port = os.environ.get("SPAMOPS_GATEWAY_PORT", "8080")
    return f"{socket.gethostname()}-{port}"


class GatewaySettings(ServiceSettings):
    """gateway: HTTP API -> emails.inbox; emails.verdicts + emails.inbox.dlq -> answers."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_GATEWAY_", extra="ignore")

    service_name = "gateway"
    group_id: str = "spamops-gateway"

    instance_id: str = Field(
        default_factory=default_instance_id,
        description="This instance's name: its consumer groups are <group_id>-<instance_id> "
        "(verdicts) and ...-dlq, so every instance reads every verdict, and a restarted "
        "instance resumes where it committed. Keep it stable across restarts and unique "
        "per instance (default <hostname>-<gateway port>).",
    )
    verdict_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="POST /v1/classify waits this long for the verdict, then answers 504 "
        "with the message key (GET /v1/verdicts/{key} later).",
    )
    verdict_ttl_s: int = Field(
        default=3600,
        ge=1,
        description="Verdicts of the gateway's requests are kept in Redis this long for "
        "GET /v1/verdicts/{key} (about 1.5 KB each).",
    )
    max_email_bytes: int = Field(
        default=MAX_EMAIL_BYTES,
        ge=1,
        description="Largest email accepted (413 above): the inference service's limit.",
    )
    max_pending: int = Field(
        default=10_000,
        ge=1,
        description="Requests waiting for a verdict at once in this instance (503 above).",
    )
    # Per key: a mail server or a mail team behind one key sends as fast as the platform
    # serves (about 1,000 verdicts/s here); the limit is for a runaway client, not for them.
    rate_limit_per_s: float = Field(
        default=1000.0,
        ge=0,
        description="Requests per second per API key (token bucket refill; 0 = no limit).",
    )
    rate_limit_burst: int = Field(
        default=2000, ge=1, description="Requests an API key may send at once (bucket size)."
    )
    keys_file: Path | None = Field(
        default=None,
        description="JSON file of the API keys' SHA-256 hashes, names and roles "
        "(default <home>/secrets/gateway-keys.json; `spamops gateway-key create` adds one).",
    )
    redis_prefix: str = Field(
        default="spamops:gateway:", description="Prefix of the gateway's Redis keys."
    )
    batch_max_records: int = Field(
        default=500, ge=1, description="Verdicts fetched (and stored in Redis) together."
    )
    fetch_max_wait_ms: int = Field(
        default=10,
        ge=0,
        description="Kafka fetch.max.wait.ms of the verdict consumer (adds at most this to "
        "an answer's latency).",
    )
    drain_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="On shutdown, requests in flight get this long to be answered.",
    )

    @property
    def keys_path(self) -> Path:
        """The API key file in effect."""
        return (self.keys_file or self.platform.gateway_keys_path).expanduser()
