"""Kafka credentials of the secure local stack (``spamops up --secure``).

One random password per principal of the ACL table (and the admin), each in
``<state>/secrets/<principal>.password`` with mode 0600 in a 0700 directory,
created once and kept across ``down``/``up`` (Kafka's storage is formatted with
them). The file ``<state>/secrets/secure`` marks a state directory whose
Kafka runs with SASL/SCRAM and ACLs, so later commands know without a flag.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from spamops_runtime.acl import ADMIN, principals
from spamops_runtime.api_keys import ROLES, add_key
from spamops_runtime.api_keys import write_private as write_private
from spamops_runtime.settings import PlatformSettings

# Name of the file of the controller listener's static PLAIN password (not a password).
CONTROLLER_SECRET = "kafka-controller"  # noqa: S105
MARKER = "secure"


def secrets_dir(settings: PlatformSettings) -> Path:
    """``<state>/secrets``."""
    return settings.state_dir / "secrets"


def password_file(settings: PlatformSettings, principal: str) -> Path:
    """Where the password of ``principal`` is kept."""
    return secrets_dir(settings) / f"{principal}.password"


def is_secure_state(settings: PlatformSettings) -> bool:
    """Whether this state directory's stack was started with ``--secure``."""
    return (secrets_dir(settings) / MARKER).is_file()


def set_secure_state(settings: PlatformSettings, secure: bool) -> None:
    """Write or remove the marker (the passwords are kept either way)."""
    marker = secrets_dir(settings) / MARKER
    if secure:
        _private_dir(secrets_dir(settings))
        marker.write_text("SASL_PLAINTEXT\n")
    else:
        marker.unlink(missing_ok=True)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def ensure_random_file(
    path: Path, token: Callable[[], str] = lambda: secrets.token_urlsafe(24)
) -> Path:
    """``path``, holding a random ``token()`` written privately when missing, kept after."""
    if not path.is_file():
        write_private(path, token() + "\n")
    return path


def ensure_passwords(settings: PlatformSettings) -> dict[str, Path]:
    """Every principal's password file (created when missing), by principal name."""
    return {
        name: ensure_random_file(password_file(settings, name))
        for name in (*principals(), CONTROLLER_SECRET)
    }


def read_password(settings: PlatformSettings, principal: str) -> str:
    """The password of ``principal`` (OSError if it was never generated)."""
    return password_file(settings, principal).read_text("utf-8").strip()


def as_local_user(settings: PlatformSettings, principal: str = ADMIN) -> PlatformSettings:
    """``settings`` authenticating to the local Kafka as ``principal`` (its password file)."""
    return settings.as_kafka_user(principal, password_file(settings, principal))


def approval_key_path(settings: PlatformSettings) -> Path:
    """Where the local secure stack keeps its HMAC key for promotion approvals."""
    return secrets_dir(settings) / "approval.key"


def approval_key_file(settings: PlatformSettings) -> Path:
    """The local secure stack's approval key file (created when missing)."""
    return ensure_random_file(approval_key_path(settings), lambda: secrets.token_hex(32))


def gateway_key_file(settings: PlatformSettings) -> Path:
    """The local stack's gateway API key (both roles), created on first use.

    The key in clear goes to ``<state>/secrets/gateway-api.key`` (0600) for the
    CLI and the tests; the gateway's key file keeps only its hash.
    """
    path = settings.gateway_api_key_path
    if not path.is_file():
        key = add_key(settings.gateway_keys_path, "local", sorted(ROLES))
        write_private(path, key + "\n")
    return path
