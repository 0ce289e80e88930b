#!/usr/bin/env python3
"""Container health check: is the service consuming?

Exit 0 when the service's Prometheus endpoint shows
``spamops_service_ready{service="<name>"} 1.0``, 1 otherwise. Standard library
only, so it runs in any image that has the service's Python. Used by the
Dockerfiles' HEALTHCHECK and by the Kubernetes readiness probes.

Usage: ``spamops-healthcheck <service>`` (default: ``$SPAMOPS_SERVICE_NAME``).
The port is the service's entry in ``SPAMOPS_SERVICE_PORTS`` (JSON), as for the
service itself, else its default.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

DEFAULT_SERVICE_PORTS = {
    "trainer": 9101,
    "registry-bridge": 9102,
    "inference": 9103,
    "monitor": 9104,
    "milter": 9106,
}


def ready_line(service: str) -> str:
    """The exposition line of a ready service."""
    return f'spamops_service_ready{{service="{service}"}} 1.0'


def is_ready(metrics_text: str, service: str) -> bool:
    """Whether the /metrics text reports the service ready."""
    want = ready_line(service)
    return any(line.strip() == want for line in metrics_text.splitlines())


def main(argv: list[str]) -> int:
    service = argv[1] if len(argv) > 1 else os.environ.get("SPAMOPS_SERVICE_NAME", "")
    ports = dict(DEFAULT_SERVICE_PORTS)
    ports.update(json.loads(os.environ.get("SPAMOPS_SERVICE_PORTS") or "{}"))
    port = int(os.environ.get("SPAMOPS_HEALTHCHECK_PORT") or ports.get(service, 0))
    if not service or not port:
        print(f"unknown service {service!r}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if is_ready(text, service) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
