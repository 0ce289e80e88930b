"""The trainer's handlers with small fakes (no Ray, no MLflow): reactions, bad input, drift.

The real training path (Ray Tune, MLflow, Feast) runs in tests/integration/test_trainer.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from spamops_cli.corpus import CorpusMessage, label_for_group
from spamops_features.snapshot import build_snapshot
from spamops_runtime.kafka import RecordContext, RejectRecord
from spamops_schemas import (
    ClassificationMetrics,
    DatasetReady,
    DriftDetected,
    Event,
    ModelTrained,
)
from spamops_schemas.events import DriftWindow
from spamops_trainer.adapters import DatasetRef, FeedbackMessage
from spamops_trainer.evaluation import choose_threshold, evaluate
from spamops_trainer.handlers import (
    DriftDeps,
    TrainerDeps,
    load_training_data,
    on_dataset_ready,
    on_drift_detected,
)
from spamops_trainer.training import PreparedData, prepare_features, serving_parity
from spamops_trainer.tuning import (
    REFERENCE_POINT,
    SearchConfig,
    TrialResult,
    ranked,
    reference_point,
)

RECORD = RecordContext(
    topic="t", partition=0, offset=0, key=None, headers={}, timestamp_ms=0, raw=b""
)


def raw_email(index: int, group: str) -> bytes:
    return (
        f"From: user{index}@{group}.example\nTo: you@example.org\n"
        f"Subject: {group} {index}\nMessage-ID: <{group}.{index}@example>\n"
        f"Date: Mon, {1 + index % 28:02d} Jul 2002 10:00:00 +0000\n\nbody {index}\n"
    ).encode()


def snapshot(tmp_path: Path, counts: dict[str, int]) -> DatasetReady:
    messages = [
        CorpusMessage(id=f"{i:04d}", group=g, label=label_for_group(g), raw=raw_email(i, g))
        for g, n in counts.items()
        for i in range(n)
    ]
    return build_snapshot(messages, tmp_path / "datasets")


# ------------------------------------------------------------------ threshold
def test_threshold_is_the_best_f1_under_the_false_positive_ceiling() -> None:
    y = np.array([0] * 200 + [1] * 100)
    p = np.concatenate([np.linspace(0.0, 0.3, 198), [0.6, 0.8], np.linspace(0.5, 1.0, 100)])
    # 0.5 flags the two hams at 0.6 and 0.8 (FPR 1 %), 0.61 one (0.5 %), 0.81 none.
    assert 0.6 < choose_threshold(y, p, max_fpr=0.005) <= 0.8
    chosen = choose_threshold(y, p, max_fpr=0.004)
    assert chosen > 0.8
    assert evaluate(y, p, threshold=chosen).false_positives == 0
    # Without a ceiling the best F1 wins, closest to 0.5 among equals.
    assert choose_threshold(y, p, max_fpr=1.0) <= 0.6


def test_threshold_is_deterministic_and_inside_the_grid() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.6 + rng.normal(0.2, 0.2, 500), 0, 1)
    first = choose_threshold(y, p)
    assert first == choose_threshold(y, p)
    assert 0.05 <= first <= 0.95


# ------------------------------------------------------------- bad datasets
def _trial(params: dict[str, Any], f1: float, loss: float = 0.1) -> TrialResult:
    return TrialResult(params=params, val_f1=f1, rounds=300, stopped_early=False, val_logloss=loss)


def test_finalists_are_the_reference_and_the_best_other_trials() -> None:
    from spamops_trainer.training import finalists
    from spamops_trainer.tuning import SearchResult

    reference = _trial(dict(REFERENCE_POINT), 0.970)
    others = [
        _trial({**REFERENCE_POINT, "max_depth": depth, "n_estimators": 100}, f1, loss)
        for depth, f1, loss in [(3, 0.99, 0.2), (4, 0.98, 0.1), (5, 0.98, 0.05), (6, 0.95, 0.1)]
    ]
    result = SearchResult(best_params=others[0].params, best_val_f1=0.99,
                          trials=[*others, reference])  # fmt: skip
    chosen = finalists(result, SearchConfig(), count=3)
    # The reference first (ties in cross-validation go to it), then by F1, ties by log loss.
    assert [p["max_depth"] for p in chosen] == [8, 3, 5, 4]
    assert [t.params["max_depth"] for t in ranked([*others, reference])][:2] == [3, 5]
    without = finalists(result, SearchConfig(reference_point=False), count=2)
    assert [p["max_depth"] for p in without] == [3, 5]


def test_cross_validation_chooses_the_finalist_that_generalises(tmp_path: Path) -> None:
    """On noisy labels a deep, long model overfits: out of fold, the simple one wins."""
    from spamops_trainer.training import cross_validate

    rng = np.random.default_rng(0)
    x = rng.random((600, 8), dtype=np.float32)
    y = ((x[:, 0] + 0.3 * rng.standard_normal(600)) > 0.5).astype(int)
    prepared = PreparedData.__new__(PreparedData)
    object.__setattr__(prepared, "x", {"train": x[:450], "validation": x[450:]})
    object.__setattr__(prepared, "y", {"train": y[:450], "validation": y[450:]})
    simple = {**REFERENCE_POINT, "max_depth": 1, "n_estimators": 50}
    overfit = {**REFERENCE_POINT, "max_depth": 10, "n_estimators": 400, "learning_rate": 0.3,
               "subsample": 1.0, "colsample_bytree": 1.0, "min_child_weight": 0.5}  # fmt: skip
    scored = cross_validate(prepared, [overfit, simple], seed=0, max_fpr=0.2, folds=5)
    assert [c.params["max_depth"] for c in scored] == [10, 1]
    assert scored[1].f1 > scored[0].f1
    assert all(0.05 <= c.threshold <= 0.95 for c in scored)


def test_the_reference_point_fits_the_search_space() -> None:
    assert reference_point(SearchConfig(max_estimators=600))["n_estimators"] == 300
    small = reference_point(SearchConfig(max_estimators=60, report_every=25))
    assert small["n_estimators"] == 50  # inside qrandint(50, 60, 25)
    assert small["max_depth"] == REFERENCE_POINT["max_depth"]


def test_a_snapshot_with_a_wrong_sha256_is_rejected(tmp_path: Path) -> None:
    event = snapshot(tmp_path, {"easy-ham-1": 30, "spam-1": 30})
    bad = event.model_copy(update={"sha256": hashlib.sha256(b"other").hexdigest()})
    with pytest.raises(RejectRecord) as caught:
        load_training_data(bad)
    assert caught.value.reason == "bad-snapshot"


def test_a_missing_snapshot_is_rejected(tmp_path: Path) -> None:
    event = snapshot(tmp_path, {"easy-ham-1": 30, "spam-1": 30})
    gone = event.model_copy(update={"uri": (tmp_path / "nope.parquet").as_uri()})
    with pytest.raises(RejectRecord) as caught:
        load_training_data(gone)
    assert caught.value.reason == "bad-snapshot"


def test_a_one_class_snapshot_is_rejected(tmp_path: Path) -> None:
    event = snapshot(tmp_path, {"easy-ham-1": 40})
    with pytest.raises(RejectRecord) as caught:
        load_training_data(event)
    assert caught.value.reason == "one-class"


def test_a_good_snapshot_loads(tmp_path: Path) -> None:
    event = snapshot(tmp_path, {"easy-ham-1": 30, "spam-1": 30})
    frame = load_training_data(event)
    assert len(frame) == 60


# ------------------------------------------------------------- features
def test_prepare_features_fits_on_train_and_serves_what_it_trained_on(tmp_path: Path) -> None:
    event = snapshot(tmp_path, {"easy-ham-1": 40, "spam-1": 40})
    frame = load_training_data(event)
    prepared = prepare_features(frame, None)
    spec = prepared.pipeline.spec
    assert spec.n_inputs == 528 == prepared.x["test"].shape[1]
    # Train rows carry the out-of-fold linear score, the others the full model's.
    oof = prepared.pipeline.train_linear_scores
    assert oof is not None
    assert np.array_equal(prepared.x["train"][:, -1], np.clip(oof, *_bounds(prepared, -1)))
    # Every row lies inside the training range the pipeline saves and serving clips to.
    lower, upper = prepared.pipeline.lower, prepared.pipeline.upper
    assert lower is not None and upper is not None
    for x in prepared.x.values():
        assert np.all((x >= lower) & (x <= upper))
    # The saved pipeline recomputes the test rows' inputs exactly (train/serve parity).
    directory = prepared.pipeline.save(tmp_path / "pipeline")
    assert serving_parity(prepared, directory) == 0.0


def _bounds(prepared: PreparedData, column: int) -> tuple[float, float]:
    assert prepared.pipeline.lower is not None and prepared.pipeline.upper is not None
    return float(prepared.pipeline.lower[column]), float(prepared.pipeline.upper[column])


# -------------------------------------------------------------- dedupe
@dataclass
class FakeTracker:
    done: ModelTrained | None = None
    parent: DatasetRef | None = None
    asked: list[tuple[str, int]] = field(default_factory=list)

    def finished_training(self, source_event_id: str) -> ModelTrained | None:
        return self.done

    def dataset_of(self, model_name: str, version: int) -> DatasetRef | None:
        self.asked.append((model_name, version))
        return self.parent


def trained_for(event: DatasetReady) -> ModelTrained:
    return event.caused(
        ModelTrained,
        producer="trainer",
        run_id="r1",
        model_uri="models:/m-1",
        dataset_id=event.dataset_id,
        metrics=ClassificationMetrics(
            f1=0.99, precision=0.99, recall=0.99, roc_auc=0.999, false_positive_rate=0.001
        ),
        best_params={"max_depth": 6},
        feature_spec_version="1.0.0+x",
        n_features=528,
        training_seconds=1.0,
    )


async def test_a_replayed_dataset_ready_republishes_and_does_not_train(tmp_path: Path) -> None:
    event = snapshot(tmp_path, {"easy-ham-1": 30, "spam-1": 30})
    published: list[Event] = []

    async def publish(e: Event) -> None:
        published.append(e)

    previous = trained_for(event)
    deps = TrainerDeps(
        tracker=FakeTracker(done=previous),  # type: ignore[arg-type]
        publish=publish,
        # A search that would fail loudly if it ran: it must not.
        search=SearchConfig(num_samples=0, max_concurrent_trials=0, time_budget_s=0),
    )
    await on_dataset_ready(event, RECORD, deps)
    assert published == [previous]


# ---------------------------------------------------------------- drift
def drift_event(version: int = 3) -> DriftDetected:
    return DriftDetected(
        producer="monitor",
        model_name="spam-detector",
        model_version=version,
        window=DriftWindow(size=500),
        drift_share=0.4,
    )


def drift_deps(tmp_path: Path, parent: DatasetRef | None, feedback: list[FeedbackMessage]) -> Any:
    published: list[Event] = []
    since: list[int] = []
    now = [1000.0]

    async def publish(e: Event) -> None:
        published.append(e)

    async def labelled(since_ms: int) -> list[FeedbackMessage]:
        since.append(since_ms)
        return feedback

    deps = DriftDeps(
        tracker=FakeTracker(parent=parent),  # type: ignore[arg-type]
        publish=publish,
        feedback=labelled,
        snapshots_dir=tmp_path / "datasets",
        cooldown_s=600,
        clock=lambda: now[0],
    )
    return deps, published, since, now


def parent_ref(event: DatasetReady) -> DatasetRef:
    return DatasetRef(event.dataset_id, event.uri, event.sha256, created_ms=1_700_000_000_000)


async def test_drift_builds_parent_plus_feedback_and_publishes_dataset_ready(
    tmp_path: Path,
) -> None:
    parent = snapshot(tmp_path, {"easy-ham-1": 30, "spam-1": 30})
    feedback = [
        FeedbackMessage(f"fb-{i}", "spam" if i % 2 else "ham", raw_email(i, "spam-2"))
        for i in range(10)
    ]
    deps, published, since, _ = drift_deps(tmp_path, parent_ref(parent), feedback)
    drift = drift_event()
    await on_drift_detected(drift, RECORD, deps)

    assert since == [1_700_000_000_000]  # only labels given after the parent's training
    assert deps.tracker.asked == [("spam-detector", 3)]
    [ready] = published
    assert isinstance(ready, DatasetReady)
    assert ready.reason == "drift"
    assert ready.parent_dataset_id == parent.dataset_id
    assert ready.rows == 70
    assert ready.counts_by_group["feedback"] == 10
    assert ready.correlation_id == drift.correlation_id
    assert ready.causation_id == drift.event_id
    assert ready.producer == "trainer"
    assert len(load_training_data(ready)) == 70


async def test_a_burst_of_drift_events_retrains_once_per_cooldown(tmp_path: Path) -> None:
    parent = snapshot(tmp_path, {"easy-ham-1": 30, "spam-1": 30})
    feedback = [FeedbackMessage("fb-1", "spam", raw_email(1, "spam-2"))]
    deps, published, _, now = drift_deps(tmp_path, parent_ref(parent), feedback)
    for _ in range(5):
        await on_drift_detected(drift_event(), RECORD, deps)
    assert len(published) == 1
    now[0] += 601  # after the cooldown, a new shift retrains again
    await on_drift_detected(drift_event(), RECORD, deps)
    assert len(published) == 2


async def test_drift_without_feedback_does_not_retrain(tmp_path: Path) -> None:
    parent = snapshot(tmp_path, {"easy-ham-1": 30, "spam-1": 30})
    deps, published, _, _ = drift_deps(tmp_path, parent_ref(parent), [])
    await on_drift_detected(drift_event(), RECORD, deps)
    assert published == []


async def test_drift_without_any_training_is_dead_lettered(tmp_path: Path) -> None:
    deps, published, _, _ = drift_deps(tmp_path, None, [])
    with pytest.raises(RejectRecord) as caught:
        await on_drift_detected(drift_event(), RECORD, deps)
    assert caught.value.reason == "no-parent-dataset"
    assert published == []


async def test_a_failed_drift_publish_does_not_start_the_cooldown(tmp_path: Path) -> None:
    """The retried DriftDetected must still retrain: the cooldown starts after the publish."""
    parent = snapshot(tmp_path, {"easy-ham-1": 30, "spam-1": 30})
    feedback = [FeedbackMessage("fb-1", "spam", raw_email(1, "spam-2"))]
    deps, published, _, _ = drift_deps(tmp_path, parent_ref(parent), feedback)
    working = deps.publish

    async def kafka_down(event: Event) -> None:
        raise ConnectionError("kafka away")

    deps.publish = kafka_down
    drift = drift_event()
    with pytest.raises(ConnectionError):
        await on_drift_detected(drift, RECORD, deps)
    deps.publish = working
    await on_drift_detected(drift, RECORD, deps)  # the wiring's retry of the same record
    assert len(published) == 1
