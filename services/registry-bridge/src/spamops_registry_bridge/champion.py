"""The champion scored on the challenger's test split, so the gate compares like with like.

A challenger trained on newer data (a drift retraining) is tested on newer,
harder messages than the champion was; comparing their own test metrics would
punish exactly the retraining that fixes a shift. So the production model is
run on the challenger's held-out test rows: its own feature pipeline, the same
point-in-time reputation inputs the challenger had (train-split labels of the
challenger's snapshot), its ONNX file and its own threshold.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from spamops_features.mail import MailParseError, parse_email
from spamops_features.pipeline import FeaturePipeline
from spamops_features.reputation import ReputationStore
from spamops_features.snapshot_io import load_snapshot
from spamops_schemas import ClassificationMetrics, ModelTrained
from spamops_schemas.registry import PIPELINE_ARTIFACT
from spamops_schemas.registry import RUN_TAG_MODEL_TRAINED as TAG_MODEL_TRAINED

from spamops_registry_bridge.adapters import MlflowRegistry
from spamops_registry_bridge.onnx_export import onnx_spam_probability

logger = logging.getLogger(__name__)


def metrics_of(y: np.ndarray, p: np.ndarray, threshold: float) -> ClassificationMetrics:
    """F1, precision, recall, ROC AUC and false-positive rate of probabilities ``p``."""
    from sklearn.metrics import roc_auc_score

    predicted = p >= threshold
    spam = y == 1
    tp = int(np.sum(predicted & spam))
    fp = int(np.sum(predicted & ~spam))
    fn = int(np.sum(~predicted & spam))
    tn = int(np.sum(~predicted & ~spam))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return ClassificationMetrics(
        f1=2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        precision=precision,
        recall=recall,
        roc_auc=float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else 0.0,
        false_positive_rate=fp / (fp + tn) if fp + tn else 0.0,
    )


def champion_on_challenger_test(
    registry: MlflowRegistry, champion_version: int, champion_run: str, challenger: ModelTrained
) -> ClassificationMetrics:
    """The production model's metrics on the challenger's test split (raises on failure)."""
    params = registry.run_params(challenger.run_id)
    frame = load_snapshot(params["dataset_uri"], params["dataset_sha256"])
    reputation = ReputationStore.open(Path(tempfile.mkdtemp(prefix="spamops-gate-")), None)
    rep_all = reputation.historical(frame)  # the challenger's own point-in-time inputs
    test = np.flatnonzero(frame["split"].to_numpy() == "test")
    emails, rows = [], []
    for i in test:
        try:
            emails.append(parse_email(bytes(frame["raw"].iloc[i])))
            rows.append(i)
        except MailParseError:
            continue
    labels = (frame["label"].to_numpy()[rows] == "spam").astype(int)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = FeaturePipeline.load(registry.download(champion_run, PIPELINE_ARTIFACT, tmp))
    x = pipeline.transform(emails, rep_all[rows])
    onnx_bytes = registry.load_onnx(champion_run, champion_version)
    probabilities = onnx_spam_probability(onnx_bytes, x)
    stored = registry.run_tag(champion_run, TAG_MODEL_TRAINED)
    threshold = ModelTrained.from_bytes(stored).threshold if stored else 0.5
    metrics = metrics_of(labels, probabilities, threshold)
    logger.info(
        "champion scored on the challenger's test split",
        extra={"champion_version": champion_version, "rows": len(rows), "f1": metrics.f1},
    )
    return metrics
