"""Drift windows, the PSI check against a reference profile, and the alert gate.

Pure logic (no Kafka, no MLflow): the handlers feed verdicts in and get closed
windows out. ``HistogramDrift.check`` scores every window cheaply (PSI from histogram
counts with numpy, the same binning as Evidently); ``EvidentlyDrift.check`` runs the
real Evidently report (HTML + JSON) only when a window drifted or a periodic report
is due.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
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


# ------------------------------------------------------------------ reference statistics
DISCRETE_MAX_UNIQUE = (
    20  # Evidently: a column with <= 20 distinct reference values is binned by value
)


@dataclass(frozen=True)
class ColumnReference:
    """What the PSI of one column needs from the reference, computed once per profile.

    ``sorted_values``: the finite reference values, sorted (bin counts by binary search);
    ``values`` / ``counts``: the distinct values and their counts when the column has at
    most ``DISCRETE_MAX_UNIQUE`` of them (Evidently then bins by value, not by range).
    """

    sorted_values: np.ndarray
    values: np.ndarray | None
    counts: np.ndarray | None

    @property
    def size(self) -> int:
        """Finite reference values."""
        return int(self.sorted_values.size)


def column_references(frame: pd.DataFrame) -> dict[str, ColumnReference]:
    """Per drift column of a reference frame: its sorted finite values (and value counts)."""
    references: dict[str, ColumnReference] = {}
    for column in DRIFT_COLUMNS:
        if column not in frame.columns:
            continue
        data = np.asarray(frame[column], dtype=np.float64)
        finite = np.sort(data[np.isfinite(data)])
        if finite.size == 0:
            continue
        values, counts = np.unique(finite, return_counts=True)
        discrete = values.size <= DISCRETE_MAX_UNIQUE
        references[column] = ColumnReference(
            finite, values if discrete else None, counts if discrete else None
        )
    return references


@dataclass(frozen=True)
class Profile:
    """The reference a version's windows are compared with."""

    model_name: str
    version: int
    frame: pd.DataFrame  # columns: a subset of DRIFT_COLUMNS (for the Evidently report)
    source: str  # where the rows came from, e.g. "snapshot:train" or "parity:test"
    columns: dict[str, ColumnReference] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", column_references(self.frame))


# ------------------------------------------------------------------ PSI from counts
def _fill_zeroes(percents: np.ndarray) -> np.ndarray:
    """Evidently's ``feel_zeroes``: empty bins get a small share so the log is finite."""
    nonzero = percents[percents != 0]
    smallest = float(nonzero.min())
    return np.where(percents == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001, percents)


def sturges_edges(low: float, high: float, size: int) -> np.ndarray:
    """``np.histogram_bin_edges(data, bins="sturges")`` from the data's min, max and size."""
    width = (high - low) / (np.log2(size) + 1.0)
    bins = int(np.ceil((high - low) / width)) if width else 1
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def _bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(values, edges)[0]`` of sorted values in O(bins log n)."""
    positions = np.searchsorted(sorted_values, edges, side="left")
    positions[-1] = np.searchsorted(sorted_values, edges[-1], side="right")  # last bin closed
    return np.diff(positions)


def column_psi(reference: ColumnReference, current: np.ndarray) -> float:
    """PSI of one column exactly as Evidently 0.7.23 computes it (``stattests/psi.py``).

    ``current``: the window's finite values. Evidently bins a column with more than 20
    distinct reference values into Sturges-rule equal-width bins over the combined
    (reference + window) range, otherwise by distinct value; empty bins get a tiny share
    (``feel_zeroes``). Here the reference side comes from its sorted values, so the cost is
    O(bins log reference + window) instead of a pandas concat and value_counts.
    """
    if reference.values is None or reference.counts is None:
        ref = reference.sorted_values
        low = min(float(ref[0]), float(current.min()))
        high = max(float(ref[-1]), float(current.max()))
        edges = sturges_edges(low, high, ref.size + current.size)
        ref_percents = _bin_counts(ref, edges) / ref.size
        cur_percents = np.histogram(current, edges)[0] / current.size
    else:
        cur_values, cur_counts = np.unique(current, return_counts=True)
        keys = np.union1d(reference.values, cur_values)
        ref_full = np.zeros(keys.size)
        ref_full[np.searchsorted(keys, reference.values)] = reference.counts
        cur_full = np.zeros(keys.size)
        cur_full[np.searchsorted(keys, cur_values)] = cur_counts
        ref_percents = ref_full / reference.size
        cur_percents = cur_full / current.size
    ref_percents = _fill_zeroes(ref_percents)
    cur_percents = _fill_zeroes(cur_percents)
    return float(np.sum((ref_percents - cur_percents) * np.log(ref_percents / cur_percents)))


# ------------------------------------------------------------------ windows
@dataclass
class Window:
    """Verdicts of one model version, oldest first, in a preallocated columnar buffer.

    One row per verdict (the DRIFT_COLUMNS values, NaN when missing), written in place:
    O(columns) per verdict and a fixed memory of ``capacity`` rows. A full window takes
    no more verdicts (it is closed or parked first). The first and last offset of each
    partition in the window say which records it covers (the commit floor, coverage).
    """

    model_name: str
    version: int
    capacity: int
    opened_at: float  # monotonic seconds
    values: np.ndarray = field(init=False, repr=False)
    size: int = field(default=0, init=False)
    first_offsets: dict[int, int] = field(default_factory=dict, init=False)
    last_offsets: dict[int, int] = field(default_factory=dict, init=False)
    _first: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _last: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _min_ms: int | None = field(default=None, init=False, repr=False)
    _max_ms: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.values = np.full((self.capacity, len(DRIFT_COLUMNS)), np.nan)

    def add(self, row: Observation) -> None:
        """Write a verdict in the next row (ValueError when the window is full)."""
        if self.size >= self.capacity:
            raise ValueError("the window is full: close or park it first")
        features = row.features
        self.values[self.size] = [features.get(name, math.nan) for name in HANDCRAFTED_NAMES] + [
            row.probability
        ]
        self.size += 1
        self.first_offsets.setdefault(row.partition, row.offset)
        self.last_offsets[row.partition] = row.offset
        if self._first is None:
            self._first = (row.partition, row.offset)
        self._last = (row.partition, row.offset)
        if self._min_ms is None or row.timestamp_ms < self._min_ms:
            self._min_ms = row.timestamp_ms
        if self._max_ms is None or row.timestamp_ms > self._max_ms:
            self._max_ms = row.timestamp_ms

    def __len__(self) -> int:
        return self.size

    def full(self) -> bool:
        """No room for another verdict."""
        return self.size >= self.capacity

    def due(self, now: float, max_age_s: float, min_size: int) -> bool:
        """Full, or old enough (``max_age_s`` > 0) with at least ``min_size`` verdicts."""
        if self.size >= self.capacity:
            return True
        return max_age_s > 0 and now - self.opened_at >= max_age_s and self.size >= min_size

    def column(self, name: str) -> np.ndarray:
        """The window's finite values of one drift column."""
        data: np.ndarray = self.values[: self.size, DRIFT_COLUMNS.index(name)]
        finite: np.ndarray = data[np.isfinite(data)]
        return finite

    def frame(self) -> pd.DataFrame:
        """The window as a DataFrame of the drift columns (missing values are NaN)."""
        return pd.DataFrame(self.values[: self.size].copy(), columns=list(DRIFT_COLUMNS))

    def describe(self) -> DriftWindow:
        """Size, first/last offsets (arrival order, across partitions) and record times."""
        if not self.size or self._first is None or self._last is None:
            return DriftWindow(size=0)
        assert self._min_ms is not None and self._max_ms is not None
        return DriftWindow(
            size=self.size,
            first_offset=self._first[1],
            last_offset=self._last[1],
            start=datetime.fromtimestamp(self._min_ms / 1000, UTC),
            end=datetime.fromtimestamp(self._max_ms / 1000, UTC),
        )


class Windows:
    """The open window of each (model name, version), the full ones waiting for a profile,
    and the closed ones not yet evaluated: together, what the commit floor holds back.

    Bounded: at most ``max_versions`` versions have windows (the least recently used
    version's windows are settled unevaluated to make room) and ``max_parked`` full
    windows wait per version. Every window taken out of here ends in ``settle``.
    """

    def __init__(
        self,
        size: int,
        max_age_s: float,
        min_size: int,
        clock: Callable[[], float],
        max_parked: int = 4,
        max_versions: int = 8,
        expire_s: float = 0.0,
    ) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self.min_size = min_size
        self.clock = clock
        self.max_versions = max_versions
        self.expire_s = expire_s
        self.open: OrderedDict[tuple[str, int], Window] = OrderedDict()  # LRU order
        # Full windows waiting for their version's reference profile (newest kept).
        self.max_parked = max_parked
        self.parked: dict[tuple[str, int], deque[Window]] = {}
        self.unsettled: dict[int, Window] = {}  # id -> every window not settled yet

    def add(self, model_name: str, version: int, row: Observation) -> Window:
        """Add a verdict to its version's open window (opened on first use)."""
        key = (model_name, version)
        window = self.open.get(key)
        if window is None:
            window = self.open[key] = Window(model_name, version, self.size, self.clock())
            self.unsettled[id(window)] = window
        else:
            self.open.move_to_end(key)
        window.add(row)
        return window

    def evict_versions(self) -> list[Window]:
        """Windows of the least recently used versions beyond ``max_versions`` (removed;
        the caller settles them)."""
        evicted: list[Window] = []
        keys = list(dict.fromkeys([*self.parked, *self.open]))
        while len(keys) > self.max_versions:
            key = next(k for k in self.open if k in keys) if self.open else keys[0]
            keys.remove(key)
            evicted += self.take_parked(*key)
            window = self.open.pop(key, None)
            if window is not None:
                evicted.append(window)
        return evicted

    def park_if_full(self, model_name: str, version: int) -> Window | None:
        """Set a full window aside until its profile exists; a new one opens. Returns the
        oldest parked window when it had to be dropped to make room (the caller settles it)."""
        key = (model_name, version)
        window = self.open.get(key)
        if window is None or not window.full():
            return None
        parked = self.parked.setdefault(key, deque())
        dropped = parked.popleft() if len(parked) >= self.max_parked else None
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

    def take_expired(self) -> list[Window]:
        """Open windows older than ``expire_s`` that will never be due (too few verdicts):
        a version that stopped serving must not hold the commit floor back forever."""
        if self.expire_s <= 0:
            return []
        now = self.clock()
        expired = [k for k, w in self.open.items() if now - w.opened_at >= self.expire_s]
        return [self.open.pop(k) for k in expired]

    def settle(self, window: Window) -> None:
        """The window is evaluated (or given up): its verdicts no longer hold the floor."""
        self.unsettled.pop(id(window), None)

    def floor(self, partition: int) -> int | None:
        """The first offset of ``partition`` in a window not yet settled (None: none)."""
        offsets = [
            w.first_offsets[partition]
            for w in self.unsettled.values()
            if partition in w.first_offsets
        ]
        return min(offsets) if offsets else None


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


def drift_result(
    scores: dict[str, float], *, method: str, threshold: float, share: float, report: Any = None
) -> DriftResult:
    """Drifted columns (score above ``threshold``) and the window's verdict (share)."""
    drifted = [
        DriftedFeature(feature=c, statistic=method, score=round(s, 6), threshold=threshold)
        for c, s in sorted(scores.items(), key=lambda kv: -kv[1])
        if s > threshold  # the original design's rule: drift when PSI exceeds 0.1
    ]
    drifted_share = len(drifted) / len(scores) if scores else 0.0
    return DriftResult(
        scores=scores,
        drifted=drifted,
        share=drifted_share,
        drift=drifted_share >= share,
        method=method,
        threshold=threshold,
        report=report,
    )


class HistogramDrift:
    """PSI per column from histogram counts (numpy), the same numbers as Evidently's PSI.

    The per-window check of the stream: O(columns x (bins log reference + window)), no
    pandas, no Evidently, no HTML. ``EvidentlyDrift`` makes the report people open.
    """

    method = "psi"

    def __init__(self, *, threshold: float = 0.1, share: float = 0.3) -> None:
        self.threshold = threshold
        self.share = share

    def scores(self, profile: Profile, window: Window) -> dict[str, float]:
        """column -> PSI, on the columns both the reference and the window have values for."""
        scores: dict[str, float] = {}
        for column, reference in profile.columns.items():
            current = window.column(column)
            if current.size:
                value = column_psi(reference, current)
                scores[column] = value if math.isfinite(value) else 0.0
        if not scores:
            raise ValueError("no column in common between the window and the reference")
        return scores

    def check(self, profile: Profile, window: Window) -> DriftResult:
        """The window's drift against its version's reference profile."""
        return drift_result(
            self.scores(profile, window),
            method=self.method,
            threshold=self.threshold,
            share=self.share,
        )


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
        return drift_result(
            column_scores(snapshot.dict()),
            method=self.method,
            threshold=self.threshold,
            share=self.share,
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
