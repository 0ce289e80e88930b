"""Figures logged with each training run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: services have no display

import matplotlib.pyplot as plt
import numpy as np


def confusion_figure(confusion: list[list[int]]) -> Any:
    """Confusion matrix on the test split (rows: truth ham/spam, columns: predicted)."""
    figure, axes = plt.subplots(figsize=(4, 4))
    matrix = np.array(confusion)
    axes.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(j, i, str(value), ha="center", va="center")
    axes.set_xticks([0, 1], ["ham", "spam"])
    axes.set_yticks([0, 1], ["ham", "spam"])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    figure.tight_layout()
    plt.close(figure)
    return figure


def importance_figure(model: Any, names: Sequence[str], top: int = 25) -> Any:
    """The ``top`` features by XGBoost gain, named by the feature spec."""
    scores = model.get_booster().get_score(importance_type="gain")
    ranked = sorted(
        ((names[int(k[1:])] if k[1:].isdigit() else k, v) for k, v in scores.items()),
        key=lambda kv: kv[1],
    )[-top:]
    figure, axes = plt.subplots(figsize=(6, max(3, len(ranked) * 0.25)))
    axes.barh([n for n, _ in ranked], [v for _, v in ranked])
    axes.set_xlabel("gain")
    figure.tight_layout()
    plt.close(figure)
    return figure
