"""Live quality: labels from emails.feedback joined with verdicts by message key.

The join is stored in the monitor's ``StateStore`` (SQLite under its state dir) and
is bounded: the newest ``capacity`` verdicts (and labels that arrived before their
verdict) are remembered; the metrics of a version cover its last ``window`` labelled
verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spamops_monitor.state import StateStore


@dataclass(frozen=True)
class QualityMetrics:
    """Confusion counts and rates of one version (spam is the positive class)."""

    labels: int
    tp: int
    fp: int
    tn: int
    fn: int

    @staticmethod
    def _ratio(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    @property
    def precision(self) -> float | None:
        """tp / (tp + fp); None without a spam verdict."""
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        """tp / (tp + fn); None without a spam label."""
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        """2 tp / (2 tp + fp + fn); None with no spam at all."""
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def false_positive_rate(self) -> float | None:
        """fp / (fp + tn): ham flagged as spam; None without a ham label."""
        return self._ratio(self.fp, self.fp + self.tn)

    def as_dict(self) -> dict[str, Any]:
        """For live_quality.json."""
        return {
            "labels": self.labels,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_positive_rate": self.false_positive_rate,
        }


@dataclass(frozen=True)
class Joined:
    """A verdict with its label."""

    model_name: str
    version: int
    predicted_spam: bool
    actual_spam: bool


class LiveQuality:
    """Joins verdicts and labels; per-version confusion counts over the last ``window`` pairs.

    The join lives in a ``StateStore`` (SQLite; in memory unless one is given), so it
    survives a crash and is shared by the monitor processes that share the state dir.
    """

    def __init__(self, capacity: int, window: int, store: StateStore | None = None) -> None:
        self.capacity = capacity
        self.window = window
        self.store = store or StateStore(":memory:", join_capacity=capacity, quality_window=window)

    @property
    def unmatched_labels(self) -> int:
        """Early labels forgotten (capacity) before their verdict came."""
        return self.store.forgotten_labels

    def _join(self, verdict: tuple[str, int, bool], actual_spam: bool) -> Joined:
        model_name, version, predicted = verdict
        self.store.add_pair(model_name, version, predicted, actual_spam)
        return Joined(model_name, version, predicted, actual_spam)

    def verdict(self, key: str, model_name: str, version: int, verdict: str) -> Joined | None:
        """Remember a verdict; joined at once when its label came first."""
        entry = (model_name, version, verdict == "spam")
        early = self.store.take_early_label(key)
        if early is not None:
            return self._join(entry, early)
        self.store.keep_verdict(key, entry)
        return None

    def label(self, key: str, label: str) -> Joined | None:
        """Join a label with its verdict (kept for later when the verdict has not come yet).

        A second label for the same message is not counted again (its verdict was
        consumed by the first): the last label of a key wins only for training.
        """
        actual = label == "spam"
        verdict = self.store.take_verdict(key)
        if verdict is None:
            self.store.keep_early_label(key, actual)
            return None
        return self._join(verdict, actual)

    def metrics(self, model_name: str, version: int) -> QualityMetrics:
        """Confusion counts over the version's last ``window`` labelled verdicts."""
        pairs = self.store.pairs(model_name, version)
        tp = sum(1 for p, a in pairs if p and a)
        fp = sum(1 for p, a in pairs if p and not a)
        tn = sum(1 for p, a in pairs if not p and not a)
        fn = sum(1 for p, a in pairs if not p and a)
        return QualityMetrics(labels=len(pairs), tp=tp, fp=fp, tn=tn, fn=fn)

    def total_labels(self, model_name: str, version: int) -> int:
        """Labels ever joined with a verdict of the version."""
        return self.store.label_total(model_name, version)

    def versions(self) -> list[tuple[str, int]]:
        """Every (model, version) with at least one labelled verdict."""
        return self.store.versions()
