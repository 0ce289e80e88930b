"""Live quality: labels from emails.feedback joined with verdicts by message key.

Memory is bounded: the newest ``capacity`` verdicts (and labels that arrived
before their verdict) are remembered; the metrics of a version cover its last
``window`` labelled verdicts.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any


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
    """Joins verdicts and labels; keeps per-version sliding confusion counts."""

    def __init__(self, capacity: int, window: int) -> None:
        self.capacity = capacity
        self.window = window
        self._verdicts: OrderedDict[str, tuple[str, int, bool]] = OrderedDict()
        self._early_labels: OrderedDict[str, bool] = OrderedDict()
        self._pairs: dict[tuple[str, int], deque[tuple[bool, bool]]] = {}
        self.total_labels: dict[tuple[str, int], int] = {}
        self.unmatched_labels = 0  # labels whose verdict was never seen (or forgotten)

    @staticmethod
    def _remember(store: OrderedDict[str, Any], key: str, value: Any, capacity: int) -> int:
        store[key] = value
        store.move_to_end(key)
        dropped = 0
        while len(store) > capacity:
            store.popitem(last=False)
            dropped += 1
        return dropped

    def _join(self, key: str, verdict: tuple[str, int, bool], actual_spam: bool) -> Joined:
        model_name, version, predicted = verdict
        pairs = self._pairs.setdefault((model_name, version), deque(maxlen=self.window))
        pairs.append((predicted, actual_spam))
        self.total_labels[(model_name, version)] = (
            self.total_labels.get((model_name, version), 0) + 1
        )
        return Joined(model_name, version, predicted, actual_spam)

    def verdict(self, key: str, model_name: str, version: int, verdict: str) -> Joined | None:
        """Remember a verdict; joined at once when its label came first."""
        entry = (model_name, version, verdict == "spam")
        early = self._early_labels.pop(key, None)
        if early is not None:
            return self._join(key, entry, early)
        self._remember(self._verdicts, key, entry, self.capacity)
        return None

    def label(self, key: str, label: str) -> Joined | None:
        """Join a label with its verdict (kept for later when the verdict has not come yet).

        A second label for the same message is not counted again (its verdict was
        consumed by the first): the last label of a key wins only for training.
        """
        actual = label == "spam"
        verdict = self._verdicts.pop(key, None)
        if verdict is None:
            self.unmatched_labels += self._remember(self._early_labels, key, actual, self.capacity)
            return None
        return self._join(key, verdict, actual)

    def metrics(self, model_name: str, version: int) -> QualityMetrics:
        """Confusion counts over the version's last ``window`` labelled verdicts."""
        pairs = self._pairs.get((model_name, version), ())
        tp = sum(1 for p, a in pairs if p and a)
        fp = sum(1 for p, a in pairs if p and not a)
        tn = sum(1 for p, a in pairs if not p and not a)
        fn = sum(1 for p, a in pairs if not p and a)
        return QualityMetrics(labels=len(pairs), tp=tp, fp=fp, tn=tn, fn=fn)

    def versions(self) -> list[tuple[str, int]]:
        """Every (model, version) with at least one labelled verdict."""
        return sorted(self._pairs)
