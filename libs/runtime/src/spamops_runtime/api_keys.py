"""API keys of the gateway: generated here, stored hashed, checked by the gateway.

The key file (``<state>/secrets/gateway-keys.json`` by default, mode 0600) maps
the SHA-256 of each key to its name and roles::

    {"keys": {"<sha256 hex>": {"name": "mail-relay", "roles": ["classify"],
                               "created_at": "2026-01-01T00:00:00+00:00"}}}

Only hashes are at rest: a leaked file does not let anyone call the gateway.
A plain SHA-256 is enough because the keys are 256 random bits (``new_key``),
not passwords: there is nothing to guess, so a slow hash (argon2, bcrypt)
would only slow down every request. The gateway and ``spamops gateway-key``
share this module, so the format has one implementation.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROLE_CLASSIFY = "classify"
ROLE_LABEL = "label"
ROLES: frozenset[str] = frozenset({ROLE_CLASSIFY, ROLE_LABEL})
KEY_PREFIX = "spk_"


class ApiKeyError(ValueError):
    """An unknown role, or a key file that cannot be read."""


@dataclass(frozen=True)
class ApiKey:
    """What a key is allowed to do (its holder's name, for logs and rate limits)."""

    name: str
    roles: frozenset[str]


def new_key() -> str:
    """A fresh random key (``spk_`` + 43 URL-safe characters, 256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as stored in the key file."""
    return hashlib.sha256(key.strip().encode("utf-8")).hexdigest()


def _check_roles(roles: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(r.strip() for r in roles if r.strip())
    unknown = chosen - ROLES
    if unknown or not chosen:
        raise ApiKeyError(f"roles must be among {sorted(ROLES)}, not {sorted(unknown) or '[]'}")
    return chosen


def load_keys(path: Path) -> dict[str, ApiKey]:
    """The key file's entries by hash; an absent file has none (every request is refused)."""
    try:
        data: Any = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ApiKeyError(f"cannot read the API key file {path}: {exc}") from exc
    entries = data.get("keys", {}) if isinstance(data, dict) else {}
    keys: dict[str, ApiKey] = {}
    for digest, entry in entries.items():
        if not isinstance(entry, dict):
            continue
        roles = frozenset(str(r) for r in entry.get("roles", ())) & ROLES
        keys[str(digest).lower()] = ApiKey(name=str(entry.get("name", "unnamed")), roles=roles)
    return keys


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file readable by its owner only (directory 0700), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(path)


def add_key(path: Path, name: str, roles: Iterable[str], key: str | None = None) -> str:
    """Add a key with ``name`` and ``roles`` to the key file; returns it (shown once)."""
    chosen = _check_roles(roles)
    key = key or new_key()
    try:
        data: Any = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        raise ApiKeyError(f"cannot read the API key file {path}: {exc}") from exc
    if not isinstance(data, dict):
        data = {}
    data.setdefault("keys", {})[hash_key(key)] = {
        "name": name,
        "roles": sorted(chosen),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return key


class KeyRing:
    """The key file, read again when it changes (a new key works without a restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._keys = load_keys(self.path)
            self._stamp = stamp

    def lookup(self, key: str) -> ApiKey | None:
        """The key's entry, or None for an unknown key."""
        self._reload()
        return self._keys.get(hash_key(key))

    def __len__(self) -> int:
        self._reload()
        return len(self._keys)
