"""Why a model version judged a mail as it did: XGBoost's per-input contributions.

One implementation for ``spamops explain`` and the gateway's explanation route:
the deciding version's own feature pipeline and booster (downloaded by
``spamops_runtime.model_registry.download_version_files``), the mail's inputs
recomputed from its raw bytes, and ``pred_contribs`` (SHAP values in log-odds:
bias + the contributions = the margin) named by the pipeline's input names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from spamops_features.mail import parse_email
from spamops_features.pipeline import FeaturePipeline
from spamops_features.reputation import ReputationStore

__all__ = ["Explanation", "ModelFiles", "explain_mail", "reputation_at"]


@dataclass(frozen=True)
class ModelFiles:
    """A model version's feature pipeline folder and booster file (UBJSON)."""

    pipeline_dir: Path
    booster_file: Path


@dataclass
class Explanation:
    """The largest contributions to the margin of one mail, and the recomputed probability."""

    probability: float
    bias: float
    contributions: list[tuple[str, float, float]] = field(default_factory=list)  # name, x, c

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "recomputed_probability": round(self.probability, 6),
            "bias": round(self.bias, 6),
            "contributions": [
                {"feature": name, "value": round(value, 6), "contribution": round(c, 6)}
                for name, value, c in self.contributions
            ],
        }


def explain_mail(
    files: ModelFiles, raw: bytes, reputation: np.ndarray | None, *, top: int = 10
) -> Explanation:
    """The ``top`` largest contributions (by size) of the version's booster on ``raw``.

    ``reputation``: the ``[1, 3]`` sender reputation to use (None: the unseen-domain
    defaults). Raises ``MailParseError`` for what is not a mail.
    """
    import xgboost as xgb

    pipeline = FeaturePipeline.load(files.pipeline_dir)
    booster = xgb.Booster()
    booster.load_model(str(files.booster_file))
    x = pipeline.transform([parse_email(raw)], reputation)
    matrix = xgb.DMatrix(x)
    contribs = booster.predict(matrix, pred_contribs=True)[0]
    names = pipeline.spec.names
    order = np.argsort(-np.abs(contribs[:-1]))[: max(0, top)]
    return Explanation(
        probability=float(booster.predict(matrix)[0]),
        bias=float(contribs[-1]),
        contributions=[(names[i], float(x[0, i]), float(contribs[i])) for i in order],
    )


def reputation_at(feast_dir: Path, redis_url: str, raw: bytes, at: datetime) -> np.ndarray | None:
    """The sender's reputation as the online store has it now, counted at ``at`` (the
    verdict's time) as serving counts it; None when the store cannot answer."""
    email = parse_email(raw)
    store = ReputationStore.open(feast_dir, redis_url)
    result = store.online([email.sender_domain], at, [email.date])
    return None if result.degraded else result.values
