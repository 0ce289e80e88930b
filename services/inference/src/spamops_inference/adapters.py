"""The inference service's outside world: MLflow (which version, its pipeline), Triton."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import OrderedDict

import numpy as np
from spamops_features.pipeline import FeaturePipeline
from spamops_runtime.model_registry import serving_aliases
from spamops_schemas import InboxRecordRef, ModelTrained
from spamops_schemas.registry import PIPELINE_ARTIFACT
from spamops_schemas.registry import RUN_TAG_MODEL_TRAINED as TAG_MODEL_TRAINED

from spamops_inference.serving import ServingModel

logger = logging.getLogger(__name__)

TRITON_INPUT = "input"
TRITON_OUTPUT = "spam_probability"


class MlflowModels:
    """Resolves aliases and loads a version's feature pipeline and threshold from MLflow."""

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        self._mlflow = mlflow
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.model_name = model_name

    def aliases(self) -> dict[str, int]:
        """alias -> version (staging, production: those that exist)."""
        return serving_aliases(self.tracking_uri, self.model_name)

    def load(self, alias: str, version: int) -> ServingModel:
        """The version's pipeline (verified against this feature code) and threshold."""
        mv = self._client.get_model_version(self.model_name, str(version))
        run_id = str(mv.run_id)
        run = self._client.get_run(run_id)
        trained_json = run.data.tags.get(TAG_MODEL_TRAINED)
        threshold = ModelTrained.from_bytes(trained_json).threshold if trained_json else 0.5
        with tempfile.TemporaryDirectory() as tmp:
            local = self._mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=PIPELINE_ARTIFACT, dst_path=tmp,
                tracking_uri=self.tracking_uri,
            )  # fmt: skip
            pipeline = FeaturePipeline.load(local)
        return ServingModel(
            alias=alias,
            model_name=self.model_name,
            version=version,
            threshold=threshold,
            pipeline=pipeline,
            triton_model=f"{self.model_name}-{alias}",
        )


class ModelNotServedError(Exception):
    """Triton does not serve the model version asked for (unloaded after a switch)."""


class TritonUnavailableError(RuntimeError):
    """Triton could not be reached (retry; nothing is committed meanwhile)."""


class TritonScorer:
    """Spam probabilities from Triton over async gRPC, the model version pinned."""

    def __init__(self, grpc_endpoint: str, *, rows_per_request: int, timeout_s: float) -> None:
        import tritonclient.grpc.aio as triton_aio

        self._aio = triton_aio
        self._client = triton_aio.InferenceServerClient(grpc_endpoint)
        self.rows_per_request = rows_per_request
        self.timeout_s = timeout_s

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()

    async def _request(self, model: str, version: int, rows: np.ndarray) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        tensor = self._aio.InferInput(TRITON_INPUT, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        try:
            result = await self._client.infer(
                model,
                [tensor],
                model_version=str(version),
                outputs=[self._aio.InferRequestedOutput(TRITON_OUTPUT)],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            text = str(exc)
            if "unknown model" in text.lower() or "is not found" in text or "not ready" in text:
                raise ModelNotServedError(f"{model} v{version}: {text}") from exc
            if "UNAVAILABLE" in status or "DEADLINE" in status or "unavailable" in text:
                raise TritonUnavailableError(text) from exc
            raise
        values = result.as_numpy(TRITON_OUTPUT)
        if values is None:
            raise RuntimeError(f"triton {model} v{version} returned no {TRITON_OUTPUT}")
        return np.asarray(values, dtype=np.float64)[:, 0]

    async def score(self, model: str, version: int, x: np.ndarray) -> np.ndarray:
        """P(spam) per row; requests of ``rows_per_request`` rows run concurrently."""
        if len(x) == 0:
            return np.empty(0)
        step = self.rows_per_request
        parts = await asyncio.gather(
            *(self._request(model, version, x[i : i + step]) for i in range(0, len(x), step))
        )
        return np.concatenate(parts)


class RecentSenders:
    """The sender domains of recently classified mail, for labels (bounded).

    Remembered per inbox record, the platform's own id of a mail. A label that
    names its record (``EmailLabeled.inbox_record``, copied from the verdict)
    gets exactly that mail's sender. A label with only a message key gets the
    sender only when every remembered mail with that key has the same one: the
    Message-ID is the sender's to choose, so a second mail reusing it must not
    steer a label (and the reputation it moves) to its own domain or away.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._by_record: OrderedDict[InboxRecordRef, tuple[str, str]] = OrderedDict()
        self._by_key: dict[str, set[InboxRecordRef]] = {}
        self.capacity = capacity

    def remember(self, key: str, record: InboxRecordRef, domain: str) -> None:
        """Keep the newest ``capacity`` records."""
        self._forget(record)
        self._by_record[record] = (key, domain)
        self._by_key.setdefault(key, set()).add(record)
        while len(self._by_record) > self.capacity:
            self._forget(next(iter(self._by_record)))

    def _forget(self, record: InboxRecordRef) -> None:
        known = self._by_record.pop(record, None)
        if known is None:
            return
        records = self._by_key.get(known[0])
        if records is not None:
            records.discard(record)
            if not records:
                del self._by_key[known[0]]

    def domain(self, key: str, record: InboxRecordRef | None = None) -> str | None:
        """The sender domain of a classified mail, if remembered and unambiguous.

        Raises ``AmbiguousKeyError`` when only ``key`` is given and mails with
        different senders share it.
        """
        if record is not None:
            known = self._by_record.get(record)
            return known[1] if known is not None and known[0] == key else None
        domains = {self._by_record[r][1] for r in self._by_key.get(key, ())}
        if len(domains) > 1:
            raise AmbiguousKeyError(key, len(self._by_key[key]))
        return next(iter(domains), None)


class AmbiguousKeyError(LookupError):
    """Several remembered mails with different senders share one message key."""

    def __init__(self, key: str, mails: int) -> None:
        super().__init__(f"{mails} mails with different senders share the message key {key!r}")
        self.key = key
