"""The committed AsyncAPI documents are the ones the services' apps generate now."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"


def test_asyncapi_documents_are_current() -> None:
    # A subprocess: building the apps sets MLflow's global tracking URI.
    env = {**os.environ, "SPAMOPS_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-m", "spamops_cli.asyncapi", "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:] + "\nrun `make asyncapi`"


def test_every_catalogue_topic_a_service_touches_has_a_real_payload() -> None:
    for path in DOCS.glob("*.json"):
        spec = json.loads(path.read_text())
        for name, message in spec["components"]["messages"].items():
            ref = message["payload"]["$ref"]
            assert ref != "#/components/schemas/EmptyPayload", (path.name, name)
            assert ref.rsplit("/", 1)[-1] in spec["components"]["schemas"]
