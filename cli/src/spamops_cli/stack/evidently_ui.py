"""Evidently UI: ``evidently ui`` serving the monitor's workspace (its drift reports)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from spamops_cli.stack.component import BOOTSTRAP_HINT, Component
from spamops_cli.stack.paths import StackError


class EvidentlyUI(Component):
    """``evidently ui --workspace <state>/data/evidently`` from the workspace's environment.

    The monitor adds a snapshot per drift report to that directory (a project per model)
    and links it from DriftDetected; the UI reads the directory on every request, so new
    snapshots show up without a restart.
    """

    name = "evidently"
    start_timeout = 90.0  # imports evidently, pandas, plotly: ~7 s on a quiet machine
    stop_timeout = 15.0

    @property
    def workspace(self) -> Path:
        """The directory the monitor writes and the UI serves."""
        return self.settings.evidently_workspace_dir

    def ports(self) -> list[int]:
        """The HTTP port."""
        return [self.settings.evidently_ui_port]

    def endpoint(self) -> str:
        """The UI's URL (projects list)."""
        return f"http://{self.settings.host}:{self.settings.evidently_ui_port}"

    def cmdline_marker(self) -> str:
        """The workspace path is unique to this state directory."""
        return str(self.workspace)

    def _executable(self) -> Path:
        exe = Path(sys.executable).parent / "evidently"
        if not exe.exists():
            raise StackError(f"evidently: {exe} not found; {BOOTSTRAP_HINT} (uv sync)")
        return exe

    def install(self) -> None:
        """Only checks the executable: evidently is a dependency of the monitor."""
        self._executable()

    def prepare(self) -> None:
        """Create the workspace (and the data directory, the process's working directory)."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """The UI in the foreground, bound to the stack's host."""
        s = self.settings
        return [
            str(self._executable()), "ui",
            "--workspace", str(self.workspace),
            "--host", s.host,
            "--port", str(s.evidently_ui_port),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        """No usage telemetry (Evidently honours DO_NOT_TRACK)."""
        env = super().env()
        env["DO_NOT_TRACK"] = "1"
        return env

    def is_ready(self, timeout: float = 2.0) -> bool:
        """GET /api/version answers 200."""
        try:
            response = httpx.get(f"{self.endpoint()}/api/version", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200
