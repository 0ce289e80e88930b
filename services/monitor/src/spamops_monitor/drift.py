"""Drift windows, the Evidently check against a reference profile, and the alert gate.

Pure logic (no Kafka, no MLflow): the handlers feed verdicts in and get closed
windows out; ``EvidentlyDrift.check`` compares one window with a reference.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from spamops_features.handcrafted import HANDCRAFTED_NAMES
from spamops_schemas.events import DriftedFeature, DriftWindow

logger = logging.getLogger(__name__)

PROBABILITY = "spam_probability"
DRIFT_COLUMNS: tuple[str, ...] = (*HANDCRAFTED_NAMES, PROBABILITY)
Severity = Literal["low", "medium", "high"]
Kind = Literal["data", "performance"]


@dataclass(frozen=True)
class Observation:
    """One verdict as the drift check sees it."""

    features: dict[str, float]
    probability: float
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True)
class Profile:
    """The reference a version's windows are compared with."""

    model_name: str
    version: int
    frame: pd.DataFrame  # columns: a subset of DRIFT_COLUMNS
    source: str  # where the rows came from, e.g. "snapshot:train" or "parity:test"


@dataclass
class Window:
    """Verdicts of one model version, oldest first; bounded by ``capacity``."""

    model_name: str
    version: int
    capacity: int
    opened_at: float  # monotonic seconds
    rows: deque[Observation] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = deque(maxlen=self.capacity)

    def add(self, row: Observation) -> None:
        """Append; beyond capacity the oldest verdict falls out (bounded memory)."""
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def due(self, now: float, max_age_s: float, min_size: int) -> bool:
        """Full, or old enough (``max_age_s`` > 0) with at least ``min_size`` verdicts."""
        if len(self.rows) >= self.capacity:
            return True
        return max_age_s > 0 and now - self.opened_at >= max_age_s and len(self.rows) >= min_size

    def frame(self) -> pd.DataFrame:
        """The window as a DataFrame of the drift columns (missing values are NaN)."""
        records = [{**r.features, PROBABILITY: r.probability} for r in self.rows]
        return pd.DataFrame.from_records(records, columns=list(DRIFT_COLUMNS)).astype("float64")

    def describe(self) -> DriftWindow:
        """Size, first/last offsets (arrival order, across partitions) and record times."""
        if not self.rows:
            return DriftWindow(size=0)
        times = [r.timestamp_ms for r in self.rows]
        return DriftWindow(
            size=len(self.rows),
            first_offset=self.rows[0].offset,
            last_offset=self.rows[-1].offset,
            start=datetime.fromtimestamp(min(times) / 1000, UTC),
            end=datetime.fromtimestamp(max(times) / 1000, UTC),
        )


class Windows:
    """The open window of each (model name, version)."""

    def __init__(
        self,
        size: int,
        max_age_s: float,
        min_size: int,
        clock: Callable[[], float],
        max_parked: int = 4,
    ) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self.min_size = min_size
        self.clock = clock
        self.open: dict[tuple[str, int], Window] = {}
        # Full windows waiting for their version's reference profile (newest kept).
        self.max_parked = max_parked
        self.parked: dict[tuple[str, int], deque[Window]] = {}

    def add(self, model_name: str, version: int, row: Observation) -> Window:
        """Add a verdict to its version's open window (opened on first use)."""
        key = (model_name, version)
        window = self.open.get(key)
        if window is None:
            window = self.open[key] = Window(model_name, version, self.size, self.clock())
        window.add(row)
        return window

    def park_if_full(self, model_name: str, version: int) -> bool:
        """Set a full window aside until its profile exists; a new one opens. Returns
        whether the oldest parked window had to be dropped to make room."""
        key = (model_name, version)
        window = self.open.get(key)
        if window is None or len(window) < window.capacity:
            return False
        parked = self.parked.setdefault(key, deque())
        dropped = len(parked) >= self.max_parked
        if dropped:
            parked.popleft()
        parked.append(window)
        del self.open[key]
        return dropped

    def take_parked(self, model_name: str, version: int) -> list[Window]:
        """The version's parked windows, oldest first (removed)."""
        return list(self.parked.pop((model_name, version), ()))

    def take_if_due(self, model_name: str, version: int) -> Window | None:
        """The version's window if it is due (a new one opens with the next verdict)."""
        key = (model_name, version)
        window = self.open.get(key)
        if window is None or not window.due(self.clock(), self.max_age_s, self.min_size):
            return None
        del self.open[key]
        return window


@dataclass(frozen=True)
class DriftResult:
    """What one check found."""

    scores: dict[str, float]  # column -> drift score (PSI)
    drifted: list[DriftedFeature]
    share: float
    drift: bool
    method: str
    threshold: float
    report: Any = field(default=None, repr=False, compare=False)  # the Evidently snapshot


class EvidentlyDrift:
    """Evidently 0.7 DataDriftPreset: one score per column; drift by share of drifted columns."""

    def __init__(self, *, method: str = "psi", threshold: float = 0.1, share: float = 0.3) -> None:
        self.method = method
        self.threshold = threshold
        self.share = share

    def check(self, reference: pd.DataFrame, current: pd.DataFrame) -> DriftResult:
        """Compare ``current`` with ``reference`` on the columns both have values for."""
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        columns = [
            c
            for c in DRIFT_COLUMNS
            if c in reference.columns
            and c in current.columns
            and reference[c].notna().any()
            and current[c].notna().any()
        ]
        if not columns:
            raise ValueError("no column in common between the window and the reference")
        definition = DataDefinition(numerical_columns=columns)
        report = Report(
            [DataDriftPreset(method=self.method, threshold=self.threshold, drift_share=self.share)]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's divide warnings inside the binning
            snapshot = report.run(
                Dataset.from_pandas(current[columns], data_definition=definition),
                Dataset.from_pandas(reference[columns], data_definition=definition),
            )
        scores = column_scores(snapshot.dict())
        drifted = [
            DriftedFeature(
                feature=c, statistic=self.method, score=round(s, 6), threshold=self.threshold
            )
            for c, s in sorted(scores.items(), key=lambda kv: -kv[1])
            if s > self.threshold  # the original design's rule: drift when PSI exceeds 0.1
        ]
        share = len(drifted) / len(scores) if scores else 0.0
        return DriftResult(
            scores=scores,
            drifted=drifted,
            share=share,
            drift=share >= self.share,
            method=self.method,
            threshold=self.threshold,
            report=snapshot,
        )


def column_scores(report: dict[str, Any]) -> dict[str, float]:
    """column -> score from an Evidently 0.7 snapshot dict (its ValueDrift metrics)."""
    scores: dict[str, float] = {}
    for metric in report.get("metrics", []):
        config = metric.get("config") or {}
        if str(config.get("type", "")).endswith(":ValueDrift") and "column" in config:
            value = float(metric.get("value"))
            scores[str(config["column"])] = value if math.isfinite(value) else 0.0
    return scores


def severity(share: float, medium: float, high: float) -> Severity:
    """Severity from the drift share."""
    if share >= high:
        return "high"
    if share >= medium:
        return "medium"
    return "low"


class AlertGate:
    """Cooldown and dedupe: one DriftDetected per (model, version, kind) per cooldown.

    The last alert times are kept in a JSON file, so a restarted monitor does not
    raise the same alert again.
    """

    def __init__(self, cooldown_s: float, path: Path | None, clock: Callable[[], float]) -> None:
        self.cooldown_s = cooldown_s
        self.path = path
        self.clock = clock  # wall-clock seconds (persisted)
        self.last: dict[str, float] = {}
        if path is not None and path.is_file():
            try:
                self.last = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
            except (ValueError, AttributeError):
                logger.warning("unreadable alert state, starting afresh", extra={"path": str(path)})

    @staticmethod
    def _key(model_name: str, version: int, kind: Kind) -> str:
        return f"{model_name}/{version}/{kind}"

    def allows(self, model_name: str, version: int, kind: Kind) -> bool:
        """True when no alert of this kind was raised for the version within the cooldown."""
        last = self.last.get(self._key(model_name, version, kind))
        return last is None or self.clock() - last >= self.cooldown_s

    def record(self, model_name: str, version: int, kind: Kind) -> None:
        """Remember an alert (and persist it)."""
        self.last[self._key(model_name, version, kind)] = self.clock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.last, indent=1, sort_keys=True))
            tmp.replace(self.path)


def prune_reports(directory: Path, keep: int, protected: Iterable[str] = ()) -> None:
    """Keep the newest ``keep`` reports (HTML + JSON pairs) of a directory, and protected ones."""
    keep_names = set(protected)
    stems = sorted({p.stem for p in directory.glob("*.json")}, reverse=True)
    for stem in stems[keep:]:
        if stem in keep_names or stem.endswith("-drift"):
            continue
        for suffix in (".json", ".html"):
            (directory / (stem + suffix)).unlink(missing_ok=True)
