"""MLflow tracking server: SQLite backend and local artifact store in ``data/mlflow``."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from spamops_cli.stack.component import BOOTSTRAP_HINT, Component
from spamops_cli.stack.paths import StackError


class MLflow(Component):
    """``mlflow server`` from the workspace's virtual environment."""

    name = "mlflow"
    start_timeout = 120.0  # the first start creates and migrates the SQLite schema
    stop_timeout = 20.0

    @property
    def db(self) -> Path:
        """Tracking and registry store."""
        return self.data_dir / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        """Artifact store, served by the tracking server (``mlflow-artifacts:/``)."""
        return self.data_dir / "artifacts"

    def ports(self) -> list[int]:
        """The HTTP port."""
        return [self.settings.mlflow_port]

    def endpoint(self) -> str:
        """Tracking URI."""
        return f"http://{self.settings.host}:{self.settings.mlflow_port}"

    def cmdline_marker(self) -> str:
        """The backend store path is unique to this state directory."""
        return str(self.db)

    def _executable(self) -> Path:
        # The mlflow next to the running interpreter: same venv as the platform.
        exe = Path(sys.executable).parent / "mlflow"
        if not exe.exists():
            raise StackError(f"mlflow: {exe} not found; {BOOTSTRAP_HINT} (uv sync)")
        return exe

    def install(self) -> None:
        """Only checks the executable: mlflow is a dependency of the workspace."""
        self._executable()

    def prepare(self) -> None:
        """Create the data and artifact directories."""
        self.artifacts.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """One worker is plenty locally and saves ~150 MB per extra worker."""
        s = self.settings
        return [
            str(self._executable()),
            "server",
            "--backend-store-uri", f"sqlite:///{self.db}",
            "--artifacts-destination", str(self.artifacts),
            "--host", s.host,
            "--port", str(s.mlflow_port),
            "--workers", "1",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        """No telemetry, and no job runner (spamops uses no server-side MLflow jobs)."""
        env = super().env()
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        # The job runner adds ~7 huey consumer processes, about 1 GB of RSS.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        return env

    def is_ready(self, timeout: float = 2.0) -> bool:
        """GET /health answers 200."""
        try:
            response = httpx.get(f"{self.endpoint()}/health", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200
