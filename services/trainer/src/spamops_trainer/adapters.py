"""The trainer's outside world: MLflow tracking (runs, models, artifacts, lineage), the
labelled feedback replayed from Kafka, and the Feast reputation store."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from spamops_runtime.model_registry import is_not_found
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import DatasetReady, EmailLabeled, InboxRecordRef, ModelTrained
from spamops_schemas.codec import decode_event
from spamops_schemas.errors import EventDecodeError
from spamops_schemas.registry import (
    MODEL_FILE_ARTIFACT,
    PARITY_ARTIFACT,
    PIPELINE_ARTIFACT,
    RUN_TAG_ABANDONED,
    RUN_TAG_DATASET_REASON,
    RUN_TAG_MODEL_SHA256,
    TAG_CORRELATION,
    TAG_DATASET,
    TAG_SPEC,
)
from spamops_schemas.registry import RUN_TAG_MODEL_TRAINED as TAG_MODEL_TRAINED
from spamops_schemas.registry import RUN_TAG_PROGRESS as TAG_PROGRESS
from spamops_schemas.registry import RUN_TAG_SOURCE_EVENT as TAG_SOURCE_EVENT
from spamops_schemas.topics import EMAILS_FEEDBACK, EMAILS_INBOX

logger = logging.getLogger(__name__)


def code_version() -> str:
    """The git commit of the running code, or 'unknown' outside a checkout."""
    env = os.environ.get("SPAMOPS_CODE_VERSION")
    if env:
        return env
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class DatasetRef:
    """Where a training's snapshot lives, and when that training started."""

    dataset_id: str
    uri: str
    sha256: str
    created_ms: int


@dataclass(frozen=True)
class FeedbackMessage:
    """A message labelled on emails.feedback, with its raw bytes from emails.inbox."""

    message_key: str
    label: str
    raw: bytes
    group: str = "feedback"
    record: InboxRecordRef | None = None  # its emails.inbox record

    @property
    def source_id(self) -> str:
        """Unique in a snapshot: ``feedback/<inbox partition>-<offset>`` (else the key)."""
        if self.record is not None:
            return f"{self.group}/{self.record.partition}-{self.record.offset}"
        return f"{self.group}/{self.message_key}"


async def labelled_feedback(settings: PlatformSettings, since_ms: int) -> list[FeedbackMessage]:
    """Messages labelled on emails.feedback after ``since_ms``, with their inbox bytes.

    Replays both topics from the beginning up to their current end (they are
    the log of record; their retention bounds how far back a retraining sees).
    A label that names its inbox record (copied from the verdict) labels exactly
    that mail. A label with only a message key labels the mail with that key
    only when one mail has it: the Message-ID is the sender's to choose, so when
    several different mails share a key such a label is ambiguous and is left
    out (logged), never given to whichever mail came last. The last label of a
    mail wins; invalid EmailLabeled records are skipped (the monitor
    dead-letters them); labels whose mail is not in emails.inbox are logged.
    """
    by_record: dict[InboxRecordRef, tuple[str, str]] = {}  # record -> (key, label)
    by_key: dict[str, str] = {}
    async for record in read_topic(settings, EMAILS_FEEDBACK, client_id="spamops-trainer"):
        if record.timestamp_ms <= since_ms:
            continue
        try:
            event = decode_event(record.value, EmailLabeled)
        except EventDecodeError:
            continue
        if event.inbox_record is not None:
            by_record[event.inbox_record] = (event.message_key, event.label)
        else:
            by_key[event.message_key] = event.label
    if not by_record and not by_key:
        return []
    found: dict[InboxRecordRef, FeedbackMessage] = {}
    with_key: dict[str, dict[bytes, InboxRecordRef]] = {}  # distinct mails per labelled key
    async for record in read_topic(settings, EMAILS_INBOX, client_id="spamops-trainer"):
        if not record.value or record.key is None:
            continue
        ref = InboxRecordRef(record.partition, record.offset)
        named = by_record.get(ref)
        if named is not None and named[0] == record.key:
            found[ref] = FeedbackMessage(record.key, named[1], record.value, record=ref)
        if record.key in by_key:
            # The same bytes sent twice are one mail; different bytes are different mails.
            with_key.setdefault(record.key, {}).setdefault(record.value, ref)
    ambiguous = 0
    for key, label in by_key.items():
        mails = with_key.get(key, {})
        if len(mails) > 1:
            ambiguous += 1
            logger.warning(
                "label left out: several different mails share its message key and it names "
                "no inbox record",
                extra={"message_key": key, "mails": len(mails)},
            )
            continue
        for raw, ref in mails.items():
            found.setdefault(ref, FeedbackMessage(key, label, raw, record=ref))
    missing = len(by_record) + len(by_key) - ambiguous - len(found)
    if missing > 0:
        logger.warning("labelled messages not found in emails.inbox", extra={"missing": missing})
    return sorted(found.values(), key=lambda m: m.source_id)


@dataclass
class MlflowTracker:
    """Logs a training to an MLflow tracking server."""

    tracking_uri: str
    experiment: str

    def __post_init__(self) -> None:
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(self.tracking_uri)
        self._client = mlflow.MlflowClient(self.tracking_uri)

    def _experiment_id(self) -> str:
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(self._client.create_experiment(self.experiment))

    def finished_training(self, source_event_id: str) -> ModelTrained | None:
        """The ModelTrained of a finished run for this DatasetReady, if one exists (dedupe)."""
        runs = self._client.search_runs(
            [self._experiment_id()],
            filter_string=(
                f"tags.`{TAG_SOURCE_EVENT}` = '{source_event_id}' "
                "and attributes.status = 'FINISHED'"
            ),
            max_results=1,
        )
        if not runs:
            return None
        payload = runs[0].data.tags.get(TAG_MODEL_TRAINED)
        return ModelTrained.from_bytes(payload) if payload else None

    def close_abandoned_runs(self, source_event_id: str) -> list[str]:
        """Mark runs of this DatasetReady still RUNNING (and their trials) as KILLED.

        Records are handled one at a time per partition, so such a run was left by
        a trainer killed mid-training: the redelivered record trains again in a new run.
        """
        experiment = self._experiment_id()
        abandoned = self._client.search_runs(
            [experiment],
            filter_string=(
                f"tags.`{TAG_SOURCE_EVENT}` = '{source_event_id}' and attributes.status = 'RUNNING'"
            ),
        )
        closed = []
        for run in abandoned:
            run_id = run.info.run_id
            children = self._client.search_runs(
                [experiment],
                filter_string=(
                    f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'RUNNING'"
                ),
            )
            for child in children:
                self._client.set_terminated(child.info.run_id, status="KILLED")
            self._client.set_tag(run_id, RUN_TAG_ABANDONED, "trainer stopped mid-training")
            self._client.set_terminated(run_id, status="KILLED")
            closed.append(run_id)
        return closed

    @contextmanager
    def training_run(self, event: DatasetReady) -> Iterator[str]:
        """An MLflow run for one training; marked FAILED if the block raises."""
        mlflow = self._mlflow
        run = mlflow.start_run(
            experiment_id=self._experiment_id(),
            run_name=f"train-{event.dataset_id}",
            tags={
                TAG_SOURCE_EVENT: str(event.event_id),
                TAG_DATASET: event.dataset_id,
                TAG_CORRELATION: event.correlation_id,
                RUN_TAG_DATASET_REASON: event.reason,
                "mlflow.source.git.commit": code_version(),
            },
        )
        try:
            mlflow.log_dict(json.loads(event.model_dump_json()), "dataset/dataset_ready.json")
            mlflow.log_params(
                {
                    "dataset_id": event.dataset_id,
                    "dataset_uri": event.uri,
                    "dataset_sha256": event.sha256,
                    "dataset_rows": event.rows,
                    "parent_dataset_id": event.parent_dataset_id or "",
                }
            )
            yield run.info.run_id
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        else:
            mlflow.end_run(status="FINISHED")

    def log_trials(self, trials: list[dict[str, Any]]) -> None:
        """One nested child run per Ray Tune trial."""
        mlflow = self._mlflow
        experiment_id = self._experiment_id()  # else children land in "Default"
        for index, trial in enumerate(trials):
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=f"trial-{index:02d}", nested=True
            ):
                mlflow.log_params(trial["params"])
                mlflow.log_metrics({"val_f1": trial["val_f1"], "rounds": float(trial["rounds"])})
                mlflow.set_tag("stopped_early", str(trial["stopped_early"]).lower())

    def log_results(
        self,
        *,
        model: Any,
        pipeline_dir: Path,
        params: dict[str, Any],
        metrics: dict[str, float],
        spec_version: str,
        parity_x: np.ndarray,
        parity_p: np.ndarray,
        figures: dict[str, Any],
        extra: dict[str, Any],
    ) -> str:
        """Log parameters, metrics, the model and the fitted pipeline; returns the model URI."""
        mlflow = self._mlflow
        mlflow.log_params({f"best_{k}": v for k, v in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.set_tag(TAG_SPEC, spec_version)
        mlflow.log_artifacts(str(pipeline_dir), PIPELINE_ARTIFACT)
        with tempfile.TemporaryDirectory() as tmp:
            sample = Path(tmp) / Path(PARITY_ARTIFACT).name
            np.savez_compressed(sample, x=parity_x, p=parity_p)
            mlflow.log_artifact(str(sample), str(Path(PARITY_ARTIFACT).parent))
        for name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{name}.png")
        mlflow.log_dict(extra, "training_summary.json")
        with tempfile.TemporaryDirectory() as tmp:
            # The booster as plain data, with its sha256 on the run: what the bridge exports
            # (it never loads an MLmodel flavour, which could run code).
            model_file = Path(tmp) / Path(MODEL_FILE_ARTIFACT).name
            model.save_model(str(model_file))
            digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
            mlflow.log_artifact(str(model_file), str(Path(MODEL_FILE_ARTIFACT).parent))
            mlflow.set_tag(RUN_TAG_MODEL_SHA256, digest)
        # Also the MLflow model, for people who load it with mlflow.xgboost.
        info = mlflow.xgboost.log_model(model, name="model", model_format="ubj")
        return str(info.model_uri)

    def dataset_of(self, model_name: str, version: int) -> DatasetRef | None:
        """The snapshot a registered model version was trained on.

        Falls back to the latest finished training when the version is unknown
        to the registry (a drift event about a model this trainer never saw
        registered still retrains from the freshest data it has).
        """
        from mlflow.exceptions import MlflowException

        run_id: str | None = None
        try:
            run_id = self._client.get_model_version(model_name, str(version)).run_id
        except MlflowException as exc:
            if not is_not_found(exc):
                raise  # MLflow down: retried by the wiring, not "unknown version"
            logger.warning(
                "model version not in the registry; using the latest training",
                extra={"model_name": model_name, "version": version},
            )
        if run_id:
            run = self._client.get_run(run_id)
        else:
            runs = self._client.search_runs(
                [self._experiment_id()],
                # Trainings carry the source-event tag; their trial child runs do not.
                filter_string=(
                    f"tags.`{TAG_SOURCE_EVENT}` LIKE '%' and attributes.status = 'FINISHED'"
                ),
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if not runs:
                return None
            run = runs[0]
        params = run.data.params
        if "dataset_uri" not in params:
            return None
        return DatasetRef(
            dataset_id=params["dataset_id"],
            uri=params["dataset_uri"],
            sha256=params["dataset_sha256"],
            created_ms=int(run.info.start_time or 0),
        )

    def record_progress(self, run_id: str, done: int, total: int) -> None:
        """Trials finished so far, as a run tag (`spamops ingest --wait-trained` shows it)."""
        self._client.set_tag(run_id, TAG_PROGRESS, f"{done}/{total}")

    def record_model_trained(self, run_id: str, event: ModelTrained) -> None:
        """Keep the published event on the run, so a replay republishes the same one."""
        self._client.set_tag(run_id, TAG_MODEL_TRAINED, event.model_dump_json())
