"""Write models into a Triton model repository and (un)load them through its HTTP API.

The local Triton runs with ``--model-control-mode=explicit``: a model on disk is
served only once ``POST /v2/repository/models/<name>/load`` asked for it. The
layout Triton expects::

    <repository>/<name>/config.pbtxt
    <repository>/<name>/<version>/model.py      (Python backend)
    <repository>/<name>/<version>/model.onnx    (any file the model reads)

Files are written into a temporary folder and renamed into place, so a load
never sees half a model. Used by the stack's tests and by the registry bridge.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
DEFAULT_LOAD_TIMEOUT = 120.0  # a Python-backend model starts a stub process and imports


class TritonRepositoryError(RuntimeError):
    """Triton refused a repository call (load, unload) or was unreachable."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, Triton data type and per-row dims."""

    name: str
    data_type: str  # e.g. "TYPE_FP32", "TYPE_STRING"
    dims: tuple[int, ...]

    def to_pbtxt(self) -> str:
        """This tensor as a protobuf-text block."""
        dims = ", ".join(str(d) for d in self.dims)
        return f'  {{ name: "{self.name}" data_type: {self.data_type} dims: [ {dims} ] }}'


def python_model_config(
    name: str,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int = 64,
    dynamic_batching: bool = True,
    max_queue_delay_microseconds: int = 200,
    instance_count: int = 1,
    parameters: Mapping[str, str] | None = None,
    versions: Sequence[int] | None = None,
    backend: str = "python",
) -> str:
    """``config.pbtxt`` of a CPU model (dims exclude the batch dimension).

    ``backend`` is ``python`` (the local Triton runs ``model.py``) or
    ``onnxruntime`` (Triton's own ONNX Runtime backend, e.g. on Kubernetes).
    ``versions`` pins the served versions (``version_policy: specific``); None
    serves the latest version only, Triton's default.
    """
    lines = [
        f'name: "{name}"',
        f'backend: "{backend}"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        ",\n".join(spec.to_pbtxt() for spec in inputs),
        "]",
        "output [",
        ",\n".join(spec.to_pbtxt() for spec in outputs),
        "]",
    ]
    if dynamic_batching and max_batch_size > 0:
        lines.append(
            f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_microseconds} }}"
        )
    lines.append(f"instance_group [ {{ count: {instance_count} kind: KIND_CPU }} ]")
    if versions:
        listed = ", ".join(str(v) for v in sorted(set(versions)))
        lines.append(f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_model(
    repository: Path,
    name: str,
    *,
    config: str,
    files: Mapping[str, str | bytes],
    version: int = 1,
) -> Path:
    """Write (or replace) version ``version`` of model ``name`` and its ``config.pbtxt``.

    ``files`` maps paths relative to the version folder (``"model.py"``,
    ``"model.onnx"``) to their content. Returns the model's folder.
    """
    if version < 1:
        raise ValueError("Triton model versions start at 1")
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    # Build the version folder beside the repository (same filesystem), then rename.
    staging = Path(tempfile.mkdtemp(dir=repository.parent, prefix=f".staging-{name}-"))
    try:
        for relative, content in files.items():
            target = staging / relative
            if not target.resolve().is_relative_to(staging.resolve()):
                raise ValueError(f"file {relative!r} escapes the version folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        final = model_dir / str(version)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _atomic_write(model_dir / CONFIG_FILE, config)
    logger.info("triton repository: wrote %s version %d", name, version)
    return model_dir


def write_python_model(
    repository: Path,
    name: str,
    *,
    model_py: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    version: int = 1,
    extra_files: Mapping[str, str | bytes] | None = None,
    **config: Any,
) -> Path:
    """Write a Python-backend model: ``model.py`` (+ extra files) and its config.

    ``config`` goes to :func:`python_model_config` (``max_batch_size``, ...).
    """
    text = python_model_config(name, inputs=inputs, outputs=outputs, **config)
    files: dict[str, str | bytes] = {"model.py": model_py, **(extra_files or {})}
    return write_model(repository, name, config=text, files=files, version=version)


def model_versions(repository: Path, name: str) -> list[int]:
    """Versions of ``name`` present on disk, ascending."""
    model_dir = repository / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def remove_version(repository: Path, name: str, version: int) -> None:
    """Delete one version folder (unload it first, or let the next load drop it)."""
    shutil.rmtree(repository / name / str(version), ignore_errors=True)


def remove_model(repository: Path, name: str) -> None:
    """Delete a model's folder (unload it first)."""
    shutil.rmtree(repository / name, ignore_errors=True)


# Header Triton checks on its model-repository API (--http-restricted-api).
REPOSITORY_KEY_HEADER = "spamops-repository-key"


def restricted_api_flags(key: str) -> list[str]:
    """tritonserver flags that put the model-repository API (HTTP and gRPC) behind ``key``."""
    return [
        f"--http-restricted-api=model-repository:{REPOSITORY_KEY_HEADER}={key}",
        f"--grpc-restricted-protocol=model-repository:{REPOSITORY_KEY_HEADER}={key}",
    ]


def _base_url(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def _check(response: httpx.Response, action: str) -> None:
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise TritonRepositoryError(f"{action}: HTTP {response.status_code}: {message}")


class TritonRepositoryClient:
    """Blocking client of Triton's repository and readiness endpoints.

    ``endpoint`` is ``settings.triton_http`` (``host:port``) or a full URL.
    """

    def __init__(
        self, endpoint: str, *, timeout: float = DEFAULT_LOAD_TIMEOUT, key: str | None = None
    ) -> None:
        # The repository API (load, unload, index) answers only with the key when Triton
        # runs with --http-restricted-api; readiness and inference need none.
        headers = {REPOSITORY_KEY_HEADER: key} if key else {}
        self._client = httpx.Client(base_url=_base_url(endpoint), timeout=timeout, headers=headers)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _post(self, path: str, body: Mapping[str, Any] | None, action: str) -> httpx.Response:
        try:
            response = self._client.post(path, json=body or {})
        except httpx.HTTPError as exc:
            raise TritonRepositoryError(f"{action}: {exc}") from exc
        _check(response, action)
        return response

    def load(self, name: str) -> None:
        """(Re)load ``name`` from the repository; returns once it is ready, raises if not."""
        self._post(f"/v2/repository/models/{name}/load", None, f"load {name}")
        logger.info("triton: loaded %s", name)

    def unload(self, name: str, *, unload_dependents: bool = False) -> None:
        """Unload ``name`` (its files stay in the repository)."""
        body = {"parameters": {"unload_dependents": unload_dependents}}
        self._post(f"/v2/repository/models/{name}/unload", body, f"unload {name}")
        logger.info("triton: unloaded %s", name)

    def index(self, *, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository's models with their state (``name``, ``version``, ``state``)."""
        response = self._post("/v2/repository/index", {"ready": ready_only}, "index")
        result: list[dict[str, Any]] = response.json()
        return result

    def is_ready(self, name: str, version: int | None = None) -> bool:
        """Whether ``name`` (or one version of it) is loaded and ready."""
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        try:
            return self._client.get(path).status_code == 200
        except httpx.HTTPError:
            return False


def model_repository(state_dir: Path) -> Path:
    """The local stack's model repository for a state directory (``data/triton/models``)."""
    return state_dir / "data" / "triton" / "models"
