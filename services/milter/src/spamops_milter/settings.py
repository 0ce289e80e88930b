"""Settings of the milter (environment variables SPAMOPS_MILTER_*).

Where it listens is the platform's ``milter_port`` (``SPAMOPS_MILTER_PORT``, like
every other port of the local stack); what it asks and what it does with the answer
is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict
from spamops_runtime.settings import ServiceSettings

Policy = Literal["tag", "reject", "quarantine"]
Environment = Literal["production", "staging"]


class MilterSettings(ServiceSettings):
    """milter: Postfix -> the gateway's /v1/classify -> X-Spam-* headers, reject, quarantine."""

    model_config = SettingsConfigDict(env_prefix="SPAMOPS_MILTER_", extra="ignore")

    service_name = "milter"

    socket: str | None = Field(
        default=None,
        description="libmilter socket spec, e.g. inet:8890@127.0.0.1 or unix:/run/milter.sock; "
        "unset = inet:<SPAMOPS_MILTER_PORT>@<SPAMOPS_HOST>.",
    )
    gateway_url: str | None = Field(
        default=None,
        description="Base URL of the gateway; unset = the platform's (SPAMOPS_GATEWAY_URL, "
        "else http://<SPAMOPS_HOST>:<SPAMOPS_GATEWAY_PORT>).",
    )
    gateway_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait for the gateway's verdict; past it the mail is accepted "
        "and tagged X-Spam-Verdict: unchecked.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="Gateway API key; prefer api_key_file."
    )
    api_key_file: Path | None = Field(
        default=None,
        description="File holding the gateway API key (wins over the variable); "
        "default <home>/secrets/gateway-api.key when it exists.",
    )
    environment: Environment = Field(
        default="production",
        description="X-Environment of every classify request: the model that judges the mail.",
    )
    policy: Policy = Field(
        default="tag",
        description="tag: only add X-Spam-* headers; reject: refuse spam at or above "
        "reject_threshold with SMTP 550; quarantine: hold such spam in the MTA's quarantine "
        "(Postfix: the hold queue). Either way the headers are added to what is accepted.",
    )
    reject_threshold: float = Field(
        default=0.95,
        ge=0.0,
        le=1.0,
        description="Spam probability from which the reject and quarantine policies act "
        "(a spam verdict below it is only tagged).",
    )
    reject_reply: str = Field(
        default="Message rejected as spam",
        description="Text of the 550 5.7.1 reply when the reject policy refuses a mail.",
    )
    max_message_bytes: int = Field(
        default=10 * 2**20,
        ge=1,
        description="Larger mails are not collected nor sent to the gateway: accepted and "
        "tagged unchecked (the inference service refuses them too).",
    )
    mta_timeout_s: int = Field(
        default=600,
        ge=1,
        description="libmilter's timeout for the MTA's next command on a connection.",
    )

    @property
    def socket_spec(self) -> str:
        """The libmilter socket to listen on."""
        return self.socket or f"inet:{self.platform.milter_port}@{self.platform.host}"

    @property
    def gateway_base_url(self) -> str:
        """The gateway's base URL, without a trailing slash."""
        return (self.gateway_url or self.platform.gateway_http).rstrip("/")

    @property
    def api_key_path(self) -> Path:
        """Where the gateway API key is read from."""
        if self.api_key_file is not None:
            return self.api_key_file.expanduser().resolve()
        return self.platform.gateway_api_key_path

    def read_api_key(self) -> str | None:
        """The API key: the file's content (stripped) if it is there, else the variable."""
        try:
            key = self.api_key_path.read_text("utf-8").strip()
        except OSError:
            key = ""
        if key:
            return key
        return self.api_key.get_secret_value() if self.api_key is not None else None
