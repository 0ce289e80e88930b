"""Keeping the local stack healthy: log rotation and restarts of crashed processes.

``spamops up`` rotates the logs once; ``spamops up --watch`` runs ``supervise``
in a loop: it rotates the logs above ``log_max_bytes`` and starts again every
component that crashed (its pid file is there, its process is not: ``down`` and
``stop`` remove the pid file, so a stopped component is never restarted). Each
restart is counted in ``run/restarts.json``, which ``spamops status`` shows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spamops_runtime.rotation import rotate_if_larger
from spamops_runtime.settings import PlatformSettings

from spamops_cli.stack.paths import StackError, StackPaths
from spamops_cli.stack.process import read_pid

logger = logging.getLogger(__name__)

RESTARTS_FILE = "restarts.json"


def rotate_logs(settings: PlatformSettings) -> list[Path]:
    """Rotate every ``logs/*.log`` above ``log_max_bytes`` (copytruncate); the rotated ones."""
    logs = StackPaths.from_settings(settings).logs
    if not logs.is_dir():
        return []
    return [
        path
        for path in sorted(logs.glob("*.log"))
        if rotate_if_larger(path, settings.log_max_bytes, settings.log_backups, copytruncate=True)
    ]


def restarts(settings: PlatformSettings) -> dict[str, dict[str, Any]]:
    """Per component: ``count``, ``last_at``, ``last_error`` of the restarts so far."""
    path = StackPaths.from_settings(settings).run / RESTARTS_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record_restart(settings: PlatformSettings, name: str, error: str | None) -> None:
    path = StackPaths.from_settings(settings).run / RESTARTS_FILE
    data = restarts(settings)
    entry = data.setdefault(name, {"count": 0})
    entry["count"] = int(entry.get("count", 0)) + 1
    entry["last_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    entry["last_error"] = error
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), "utf-8")
    os.replace(tmp, path)


def crashed(settings: PlatformSettings) -> list[str]:
    """Components with a pid file whose process is gone (crashed or killed, not stopped)."""
    from spamops_cli.stack.manager import COMPONENT_NAMES, _all

    paths = StackPaths.from_settings(settings)
    every = _all(settings, paths)
    return [
        name
        for name in COMPONENT_NAMES
        if read_pid(every[name].pid_file) is not None and every[name].running_pid() is None
    ]


@dataclass
class Round:
    """What one supervision round did."""

    rotated: list[Path] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def supervise(settings: PlatformSettings) -> Round:
    """One round: rotate the logs, start again what crashed (each counted, even if it fails)."""
    from spamops_cli.stack.manager import up

    result = Round(rotated=rotate_logs(settings))
    for name in crashed(settings):
        logger.warning("%s crashed: starting it again", name)
        try:
            up(settings, components=[name])
        except StackError as exc:
            first_line = str(exc).splitlines()[0]
            result.failed[name] = first_line
            _record_restart(settings, name, first_line)
            continue
        result.restarted.append(name)
        _record_restart(settings, name, None)
    return result
