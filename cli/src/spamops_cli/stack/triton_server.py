"""Triton Inference Server from the ``nvidia-pytriton`` wheel, in a virtual env of its own.

The wheel pins numpy < 2, so it cannot share the platform's environment. We do
not use PyTriton's Python API: only its bundled ``tritonserver`` binary, copied
somewhere writable with the Python-backend stub of our Python version.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import httpx
from spamops_runtime.triton_repo import model_repository, restricted_api_flags

from spamops_cli.stack.component import Component, require_executable
from spamops_cli.stack.paths import StackError, file_lock

logger = logging.getLogger(__name__)

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
EXTRA_REQUIREMENTS = ("onnxruntime",)
PYTHON_VERSION = "3.11"  # must match the Python-backend stub copied below


class Triton(Component):
    """``tritonserver`` with the Python backend; model repository in ``data/triton/models``."""

    name = "triton"
    start_timeout = 90.0  # (re)loads every model of the repository before it is ready
    stop_timeout = 30.0

    # ------------------------------------------------------------ layout
    @property
    def tools_dir(self) -> Path:
        """Triton's venv, server copy and completion markers."""
        return self.paths.tools / "triton"

    @property
    def venv(self) -> Path:
        """Virtual env with nvidia-pytriton (numpy < 2) and onnxruntime; runs model.py."""
        return self.tools_dir / "venv"

    @property
    def server_dir(self) -> Path:
        """Writable copy of the wheel's ``pytriton/tritonserver`` plus the stub."""
        return self.tools_dir / "server"

    @property
    def venv_marker(self) -> Path:
        """Written last by the venv install."""
        return self.tools_dir / "venv.installed"

    @property
    def server_marker(self) -> Path:
        """Written last by the server copy."""
        return self.tools_dir / "server.installed"

    @property
    def model_repository(self) -> Path:
        """Triton's model repository (explicit model control)."""
        return model_repository(self.paths.state)

    def site_packages(self) -> Path:
        """The triton venv's site-packages."""
        found = sorted(self.venv.glob("lib/python3*/site-packages"))
        if not found:
            raise StackError(f"triton: no site-packages under {self.venv}")
        return found[0]

    # ------------------------------------------------------------ contract
    def ports(self) -> list[int]:
        """HTTP, gRPC and metrics ports."""
        s = self.settings
        return [s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port]

    def endpoint(self) -> str:
        """HTTP and gRPC endpoints."""
        s = self.settings
        return f"http://{s.host}:{s.triton_http_port} grpc {s.host}:{s.triton_grpc_port}"

    def cmdline_marker(self) -> str:
        """The model repository path is unique to this state directory."""
        return f"--model-repository={self.model_repository}"

    def is_installed(self) -> bool:
        """Whether both the venv and the server copy are complete."""
        return self.venv_marker.exists() and self.server_marker.exists()

    def install(self) -> None:
        """Create the venv with uv and copy the server out of it (each step once)."""
        if self.is_installed():
            return
        with file_lock(self.paths.tools / ".triton-install.lock"):
            if not self.venv_marker.exists():
                self._install_venv()
            if not self.server_marker.exists():
                self._install_server()

    def _install_venv(self) -> None:
        uv = require_executable(self.name, "uv", "pip install uv")
        log = self.paths.logs / "triton-install.log"
        logger.info("triton: creating %s with %s", self.venv, PYTRITON_REQUIREMENT)
        self.server_marker.unlink(missing_ok=True)  # the server copy comes from this venv
        shutil.rmtree(self.venv, ignore_errors=True)
        self.tools_dir.mkdir(parents=True, exist_ok=True)
        self.run_tool(
            [uv, "venv", "--no-project", "-q", "-p", PYTHON_VERSION, str(self.venv)],
            what="uv venv",
            log=log,
        )
        python = self.venv / "bin" / "python"
        self.run_tool(
            [
                uv, "pip", "install", "-q", "--python", str(python),
                PYTRITON_REQUIREMENT, *EXTRA_REQUIREMENTS,
            ],
            what="uv pip install",
            log=log,
        )  # fmt: skip
        self.venv_marker.write_text(f"{PYTRITON_REQUIREMENT} {' '.join(EXTRA_REQUIREMENTS)}\n")

    def _install_server(self) -> None:
        source = self.site_packages() / "pytriton" / "tritonserver"
        stub = source / "python_backend_stubs" / PYTHON_VERSION / "triton_python_backend_stub"
        if not (source / "bin" / "tritonserver").exists() or not stub.exists():
            raise StackError(f"triton: {source} lacks bin/tritonserver or the {stub.name}")
        logger.info("triton: copying the server to %s", self.server_dir)
        shutil.rmtree(self.server_dir, ignore_errors=True)
        shutil.copytree(
            source, self.server_dir, ignore=shutil.ignore_patterns("python_backend_stubs")
        )
        target = self.server_dir / "backends" / "python" / "triton_python_backend_stub"
        shutil.copy2(stub, target)
        target.chmod(0o755)
        self.server_marker.write_text(f"{source}\n")

    def prepare(self) -> None:
        """Create the model repository."""
        if not self.is_installed():
            raise StackError("triton: not installed (run `python -m spamops_cli.stack install`)")
        self.model_repository.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """Explicit model control; the repository's models are loaded again at start."""
        s = self.settings
        cmd = [
            str(self.server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.server_dir / 'backends'}",
            f"--cache-directory={self.server_dir / 'caches'}",
            "--model-control-mode=explicit",
            f"--http-address={s.host}",
            f"--http-port={s.triton_http_port}",
            f"--grpc-address={s.host}",
            f"--grpc-port={s.triton_grpc_port}",
            f"--metrics-address={s.host}",
            f"--metrics-port={s.triton_metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
            "--pinned-memory-pool-byte-size=0",  # CPU only: no CUDA pinned memory
            # A broken model must not keep the server (and the stack) down, and
            # "ready" means "accepts requests and repository calls": each model
            # has its own readiness endpoint.
            "--exit-on-error=false",
            "--strict-readiness=false",
        ]
        # Only holders of the key (the registry-bridge, the CLI's status) may load or unload.
        cmd += restricted_api_flags(self.repository_key())
        if any(self.model_repository.glob("*/config.pbtxt")):
            # After down/up the repository is what was deployed: serve it again.
            cmd.append("--load-model=*")
        return cmd

    def repository_key(self) -> str:
        """The model-repository API key (created once, a private file in <home>/secrets)."""
        from spamops_cli.stack.secrets import ensure_random_file

        path = ensure_random_file(self.settings.triton_repository_key_path)
        return path.read_text("utf-8").strip()

    def env(self) -> dict[str, str]:
        """The wheel's bundled libraries, and the venv's python for the backend stub."""
        env = super().env()
        # The stub embeds Python: nothing of the platform's venv may leak into it.
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        libs = str(self.site_packages() / "nvidia_pytriton.libs")
        previous = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{libs}:{previous}" if previous else libs
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        return env

    def is_ready(self, timeout: float = 2.0) -> bool:
        """GET /v2/health/ready answers 200."""
        s = self.settings
        try:
            response = httpx.get(
                f"http://{s.host}:{s.triton_http_port}/v2/health/ready", timeout=timeout
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200
