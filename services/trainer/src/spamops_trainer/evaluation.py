"""Model quality on a labelled split: the metrics ModelTrained carries, and more."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score


@dataclass
class Evaluation:
    """Metrics of a model on one split."""

    f1: float
    precision: float
    recall: float
    roc_auc: float
    false_positive_rate: float
    false_positives: int
    confusion: list[list[int]]  # [[tn, fp], [fn, tp]]
    per_group: dict[str, float] = field(default_factory=dict)  # spam: recall, ham: 1 - FPR

    def as_mlflow_metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat metric names for MLflow."""
        metrics = {
            f"{prefix}f1": self.f1,
            f"{prefix}precision": self.precision,
            f"{prefix}recall": self.recall,
            f"{prefix}roc_auc": self.roc_auc,
            f"{prefix}false_positive_rate": self.false_positive_rate,
            f"{prefix}false_positives": float(self.false_positives),
        }
        for group, value in self.per_group.items():
            metrics[f"{prefix}group_{group.replace('-', '_')}"] = value
        return metrics


def evaluate(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    *,
    threshold: float = 0.5,
    groups: np.ndarray | None = None,
) -> Evaluation:
    """Score spam probabilities against labels (1 = spam).

    ``per_group`` gives, for each source group, the share classified correctly:
    recall for spam groups, 1 - false-positive rate for ham groups.
    """
    predicted = (probabilities >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    both_classes = len(np.unique(y_true)) == 2
    per_group: dict[str, float] = {}
    if groups is not None:
        for group in sorted(set(groups.tolist())):
            mask = groups == group
            per_group[str(group)] = float(np.mean(predicted[mask] == y_true[mask]))
    return Evaluation(
        f1=float(f1_score(y_true, predicted, zero_division=0)),
        precision=float(precision_score(y_true, predicted, zero_division=0)),
        recall=float(recall_score(y_true, predicted, zero_division=0)),
        roc_auc=float(roc_auc_score(y_true, probabilities)) if both_classes else 0.0,
        false_positive_rate=float(fp / (fp + tn)) if (fp + tn) else 0.0,
        false_positives=int(fp),
        confusion=[[int(tn), int(fp)], [int(fn), int(tp)]],
        per_group=per_group,
    )


def choose_threshold(
    y_true: np.ndarray, probabilities: np.ndarray, *, max_fpr: float = 0.005
) -> float:
    """The decision threshold with the best F1 whose false-positive rate is at most ``max_fpr``.

    Chosen on the validation split (never the test split). Candidates are a fixed
    grid 0.05..0.95, so the choice is deterministic; ties go to the threshold
    closest to 0.5. When no threshold meets ``max_fpr`` the best F1 wins.
    """
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    ham = y_true == 0
    spam = ~ham
    best: tuple[bool, float, float] | None = None
    chosen = 0.5
    for threshold in grid:
        predicted = probabilities >= threshold
        tp = int(np.sum(predicted & spam))
        fp = int(np.sum(predicted & ham))
        fn = int(np.sum(~predicted & spam))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        fpr = fp / int(ham.sum()) if ham.any() else 0.0
        key = (fpr <= max_fpr, f1, -abs(float(threshold) - 0.5))
        if best is None or key > best:
            best, chosen = key, float(threshold)
    return chosen
