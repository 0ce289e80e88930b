"""The local stack (Kafka, Redis, MLflow, Triton, the Evidently UI, the services) as processes
in ``.spamops/``.

``up`` installs what is missing and starts each component, ``down`` stops what
``up`` started, ``status`` reports, ``ensure_topics`` creates the topic
catalogue. ``python -m spamops_cli.stack {install,up,down,status}`` runs them too.
"""

from __future__ import annotations

from spamops_cli.stack.manager import (
    COMPONENT_NAMES,
    INFRASTRUCTURE_NAMES,
    SERVICE_NAMES,
    VIEWER_NAMES,
    ComponentStatus,
    down,
    install,
    status,
    stop,
    up,
)
from spamops_cli.stack.paths import TOOLS_DIR_ENV, StackError, StackPaths
from spamops_cli.stack.topics import ensure_topics

__all__ = [
    "COMPONENT_NAMES",
    "INFRASTRUCTURE_NAMES",
    "SERVICE_NAMES",
    "TOOLS_DIR_ENV",
    "VIEWER_NAMES",
    "ComponentStatus",
    "StackError",
    "StackPaths",
    "down",
    "ensure_topics",
    "install",
    "status",
    "stop",
    "up",
]
