"""The registry bridge's outside world: the MLflow registry and Triton's model repository."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from spamops_runtime.model_registry import is_not_found
from spamops_runtime.triton_repo import (
    TritonRepositoryClient,
    model_versions,
    write_model,
)
from spamops_schemas import ClassificationMetrics
from spamops_schemas.registry import (
    MODEL_FILE_ARTIFACT,
    PARITY_ARTIFACT,
    RUN_TAG_MODEL_SHA256,
    TAG_APPROVAL_PREFIX,
)
from spamops_schemas.registry import VERSION_TAG_SOURCE_EVENT as TAG_SOURCE_EVENT

from spamops_registry_bridge.triton_model import INPUT, MODEL_PY, OUTPUT, local_config

logger = logging.getLogger(__name__)

# Tags on a registered model version (lineage, and the progress of each step so a
# replayed or interrupted event resumes where it stopped): spamops_schemas.registry.


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version as the bridge sees it."""

    version: int
    run_id: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


class MlflowRegistry:
    """Registered model versions, aliases, tags and run artifacts (blocking calls)."""

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        import mlflow

        self._mlflow = mlflow
        # load_model and download_artifacts resolve models:/ URIs through the global URI.
        mlflow.set_tracking_uri(tracking_uri)
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.model_name = model_name

    # ------------------------------------------------------------ versions
    def _info(self, mv: Any) -> VersionInfo:
        return VersionInfo(
            version=int(mv.version),
            run_id=str(mv.run_id),
            tags=dict(mv.tags or {}),
            aliases=tuple(getattr(mv, "aliases", ()) or ()),
        )

    def version(self, version: int) -> VersionInfo | None:
        """One version, or None if it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self._client.get_model_version(self.model_name, str(version)))
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise  # MLflow down or failing: the wiring retries, never "unknown version"

    def version_for_event(self, model_trained_event_id: str) -> VersionInfo | None:
        """The version already registered for a ModelTrained (replays and resumptions)."""
        found = self._client.search_model_versions(
            f"name = '{self.model_name}' and tags.`{TAG_SOURCE_EVENT}` = '{model_trained_event_id}'"
        )
        return self._info(found[0]) if found else None

    def register(self, model_uri: str, run_id: str, tags: dict[str, str]) -> VersionInfo:
        """A new version of the registered model (created on first use)."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # MLflow 3 logged models (models:/m-<id>) are registered by their model id.
        logged = model_uri.startswith("models:/m-")
        model_id = model_uri.removeprefix("models:/") if logged else None
        mv = self._client.create_model_version(
            self.model_name, model_uri, run_id=run_id, tags=tags, model_id=model_id
        )
        return self._info(mv)

    def set_tags(self, version: int, tags: dict[str, str]) -> None:
        """Tags on a version."""
        for key, value in tags.items():
            self._client.set_model_version_tag(self.model_name, str(version), key, value)

    def alias_version(self, alias: str) -> int | None:
        """The version an alias points to, or None."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self._client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            if is_not_found(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
                return None  # no such alias (or no such model yet)
            raise  # an outage is not "no champion"
        return int(mv.version)

    def set_alias(self, alias: str, version: int) -> None:
        """Point an alias at a version."""
        self._client.set_registered_model_alias(self.model_name, alias, str(version))

    def claim_approval(self, event_id: str, record_position: str) -> str:
        """Record that ``event_id`` was consumed from ``record_position``; returns the holder.

        The first record to claim an approval keeps it (stored in MLflow with the model,
        so a restarted or another bridge instance knows it). The same record coming back
        after a crash gets its own position back; a copy re-sent later gets another.
        """
        key = f"{TAG_APPROVAL_PREFIX}{event_id}"
        tags = self._client.get_registered_model(self.model_name).tags or {}
        if key in tags:
            return str(tags[key])
        self._client.set_registered_model_tag(self.model_name, key, record_position)
        return record_position

    def registered_versions(self) -> list[int]:
        """Every version number, ascending."""
        found = self._client.search_model_versions(f"name = '{self.model_name}'")
        return sorted(int(mv.version) for mv in found)

    # ------------------------------------------------------------ runs
    def run_metrics(self, run_id: str) -> ClassificationMetrics | None:
        """The test metrics a training logged (for the champion comparison)."""
        metrics = self._client.get_run(run_id).data.metrics
        try:
            return ClassificationMetrics(
                f1=metrics["test_f1"],
                precision=metrics["test_precision"],
                recall=metrics["test_recall"],
                roc_auc=metrics["test_roc_auc"],
                false_positive_rate=metrics["test_false_positive_rate"],
            )
        except KeyError:
            return None

    def run_params(self, run_id: str) -> dict[str, str]:
        """A run's parameters."""
        return dict(self._client.get_run(run_id).data.params)

    def download(self, run_id: str, artifact_path: str, dst: str) -> str:
        """Download a run artifact (file or folder) into ``dst``; returns its local path."""
        path: str = self._mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=dst,
            tracking_uri=self.tracking_uri,
        )  # fmt: skip
        return path

    def run_tag(self, run_id: str, key: str) -> str | None:
        """A tag of a run."""
        value = self._client.get_run(run_id).data.tags.get(key)
        return str(value) if value is not None else None

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        """Tag a run (e.g. with the ModelRejected it got)."""
        self._client.set_tag(run_id, key, value)

    def run_experiment_name(self, run_id: str) -> str | None:
        """The name of the experiment a run belongs to (None: no such run)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise
        return str(self._client.get_experiment(run.info.experiment_id).name)

    def logged_model_run(self, model_id: str) -> str | None:
        """The run that logged an MLflow 3 logged model (``models:/m-...``), if it exists."""
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_logged_model(model_id).source_run_id
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise

    def model_file(self, run_id: str) -> tuple[bytes, str | None]:
        """The run's booster file (plain UBJSON data) and the sha256 the trainer recorded."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.download(run_id, MODEL_FILE_ARTIFACT, tmp)
            data = Path(path).read_bytes()
        return data, self.run_tag(run_id, RUN_TAG_MODEL_SHA256)

    @staticmethod
    def load_xgboost(data: bytes) -> Any:
        """An XGBClassifier from booster bytes: data only, no code is loaded or run."""
        import xgboost as xgb

        model = xgb.XGBClassifier()
        model.load_model(bytearray(data))
        return model

    def parity_sample(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The test rows and XGBoost probabilities the trainer logged for this check."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self._mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=PARITY_ARTIFACT,
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
            )
            with np.load(path, allow_pickle=False) as data:
                return np.asarray(data["x"], np.float32), np.asarray(data["p"], np.float64)

    def onnx_artifact(self, version: int) -> str:
        """Artifact path of a version's ONNX file on its run (one per version: a run can
        back several versions, and exports are not byte-identical)."""
        return f"onnx/v{version}/model.onnx"

    def store_onnx(self, run_id: str, version: int, onnx_bytes: bytes) -> str:
        """Log a version's ONNX file on the training run; returns its artifact URI."""
        artifact = self.onnx_artifact(version)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(onnx_bytes)
            self._client.log_artifact(run_id, str(path), str(Path(artifact).parent))
        return f"runs:/{run_id}/{artifact}"

    def load_onnx(self, run_id: str, version: int) -> bytes:
        """A version's ONNX file."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self._mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=self.onnx_artifact(version), dst_path=tmp,
                tracking_uri=self.tracking_uri,
            )  # fmt: skip
            return Path(path).read_bytes()


def sha256_hex(data: bytes) -> str:
    """Hex sha256."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class TritonDeployer:
    """Writes versions into the model repository, (re)loads them, checks they answer."""

    repository: Path
    http_endpoint: str
    max_batch_size: int = 64
    dynamic_batching: bool = True
    max_queue_delay_microseconds: int = 200
    instance_count: int = 1
    ready_timeout_s: float = 120.0
    repository_key: str | None = None  # Triton's model-repository API key, when restricted

    def deploy(
        self, name: str, version: int, onnx_bytes: bytes, n_inputs: int, serve: Sequence[int]
    ) -> None:
        """Write ``version`` of ``name`` and load the model serving ``serve`` (ready on return).

        Versions not in ``serve`` are unloaded by the same load (their files stay,
        so a rollback can serve them again). Versions already served keep
        answering while Triton loads the new one.
        """
        write_model(
            self.repository,
            name,
            config=self.config(name, n_inputs, serve),
            files={"model.py": MODEL_PY, "model.onnx": onnx_bytes},
            version=version,
        )
        with TritonRepositoryClient(
            self.http_endpoint, timeout=self.ready_timeout_s, key=self.repository_key
        ) as client:
            client.load(name)
            deadline = time.monotonic() + self.ready_timeout_s
            while not all(client.is_ready(name, v) for v in serve):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"triton: {name} versions {list(serve)} not ready")
                time.sleep(0.2)
        logger.info("triton model ready", extra={"triton_model": name, "versions": list(serve)})

    def config(self, name: str, n_inputs: int, serve: Sequence[int]) -> str:
        """The local config.pbtxt."""
        return local_config(
            name,
            n_inputs,
            serve,
            max_batch_size=self.max_batch_size,
            dynamic_batching=self.dynamic_batching,
            max_queue_delay_microseconds=self.max_queue_delay_microseconds,
            instance_count=self.instance_count,
        )

    def versions_on_disk(self, name: str) -> list[int]:
        """Version folders present for ``name``."""
        return model_versions(self.repository, name)

    def infer(self, name: str, version: int, x: np.ndarray) -> np.ndarray:
        """Spam probabilities from Triton for ``x`` (pinned version), float64 ``[n]``."""
        import tritonclient.http as triton_http

        client = triton_http.InferenceServerClient(self.http_endpoint)
        try:
            out: list[np.ndarray] = []
            for start in range(0, len(x), self.max_batch_size):
                rows = np.ascontiguousarray(x[start : start + self.max_batch_size], np.float32)
                tensor = triton_http.InferInput(INPUT, list(rows.shape), "FP32")
                tensor.set_data_from_numpy(rows)
                result = client.infer(
                    name,
                    [tensor],
                    model_version=str(version),
                    outputs=[triton_http.InferRequestedOutput(OUTPUT)],
                )
                values = result.as_numpy(OUTPUT)
                if values is None:
                    raise RuntimeError(f"triton: {name} v{version} returned no {OUTPUT}")
                out.append(np.asarray(values, np.float64)[:, 0])
            return np.concatenate(out) if out else np.empty(0)
        finally:
            client.close()
